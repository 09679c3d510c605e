// The workflow graph as the executor holds it, rebuilt from df.nodes rows.
// Rows come from a table users can write to (their own instances), so they
// are validated with zod and the structure is checked before anything runs.
import { z } from 'zod';
import { CONFIGS, LIMITS, NODE_STATUSES, NODE_TYPES, type HttpConfig, type MultipartConfig } from '../workflow/model.js';

const nodeRow = z.object({
  id: z.string().regex(/^[0-9a-f]{8}$/),
  node_type: z.enum(NODE_TYPES),
  query: z.string().nullable(),
  result_name: z.string().nullable(),
  left_node: z.string().nullable(),
  right_node: z.string().nullable(),
  status: z.enum(NODE_STATUSES),
  stamp: z.string().nullable(),
  iteration: z.number().int().nullable(),
  raw_result: z.string().nullable(),
  wake_at: z.date().nullable(),
  broke: z.boolean().default(false),
});
export type NodeRow = z.infer<typeof nodeRow>;

/** What a node last recorded: replay uses it to skip work already done. */
export interface NodeState {
  status: NodeRow['status'];
  stamp: string | null;
  iteration: number | null;
  raw: string | null;
  wakeAt: Date | null;
  /** Ended by a df.break passing through it (raw is the break value). */
  broke: boolean;
}

interface Base {
  id: string;
  name: string | undefined;
  state: NodeState;
}

export type Node =
  | (Base & { type: 'SQL'; query: string })
  | (Base & { type: 'THEN'; left: Node; right: Node })
  | (Base & { type: 'IF'; then: Node; else: Node; condition: Node })
  | (Base & { type: 'IF_ROWS'; then: Node; else: Node; resultName: string })
  | (Base & { type: 'JOIN'; branches: Node[] })
  | (Base & { type: 'RACE'; left: Node; right: Node })
  | (Base & { type: 'LOOP'; body: Node; condition: Node | undefined })
  | (Base & { type: 'BREAK'; value: string })
  | (Base & { type: 'SLEEP'; seconds: number })
  | (Base & { type: 'SIGNAL'; signalName: string; timeoutSeconds: number | null })
  | (Base & { type: 'WAIT_SCHEDULE'; cron: string; timeZone: string | null })
  | (Base & { type: 'HTTP'; config: HttpConfig })
  | (Base & { type: 'HTTP_MULTIPART'; config: MultipartConfig });

export class GraphError extends Error {}

const { ifCondition: conditionConfig, ifRows: rowsConfig, joinExtra: extraConfig, loopCondition, BREAK: breakConfig } = CONFIGS;

function json(text: string, what: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    throw new GraphError(`${what} is not valid JSON`);
  }
}

function config<K extends 'SIGNAL' | 'WAIT_SCHEDULE' | 'HTTP' | 'HTTP_MULTIPART'>(type: K, q: string | null, id: string): z.infer<(typeof CONFIGS)[K]> {
  const parsed = CONFIGS[type].safeParse(json(q ?? 'null', `${type} node ${id} config`));
  if (!parsed.success) throw new GraphError(`${type} node ${id} has an invalid config: ${parsed.error.issues[0]?.message ?? 'malformed'}`);
  return parsed.data as z.infer<(typeof CONFIGS)[K]>;
}

/** Rebuilds the tree under `rootId`; throws GraphError on any inconsistency. */
export function buildGraph(rows: unknown[], rootId: string): Node {
  const byId = new Map<string, NodeRow>();
  for (const r of rows) {
    const parsed = nodeRow.safeParse(r);
    if (!parsed.success) throw new GraphError(`invalid node row: ${parsed.error.issues[0]?.message ?? 'malformed'}`);
    byId.set(parsed.data.id, parsed.data);
  }
  const seen = new Set<string>();
  const build = (id: string | null, depth: number, where: string): Node => {
    if (id === null) throw new GraphError(`${where}: missing child node`);
    const r = byId.get(id);
    if (!r) throw new GraphError(`${where}: node ${id} does not exist`);
    if (seen.has(id)) throw new GraphError(`node ${id} appears twice in the graph`);
    if (depth > LIMITS.depth) throw new GraphError(`the graph is deeper than ${LIMITS.depth} levels`);
    seen.add(id);
    const base: Base = {
      id,
      name: r.result_name ?? undefined,
      state: { status: r.status, stamp: r.stamp, iteration: r.iteration, raw: r.raw_result, wakeAt: r.wake_at, broke: r.broke },
    };
    const child = (c: string | null): Node => build(c, depth + 1, `${r.node_type} node ${id}`);
    const q = r.query;
    switch (r.node_type) {
      case 'SQL':
        if (q === null) throw new GraphError(`SQL node ${id} has no query`);
        return { ...base, type: 'SQL', query: q };
      case 'THEN':
        return { ...base, type: 'THEN', left: child(r.left_node), right: child(r.right_node) };
      case 'RACE':
        return { ...base, type: 'RACE', left: child(r.left_node), right: child(r.right_node) };
      case 'IF': {
        const cfg = json(q ?? 'null', `IF node ${id} config`);
        const cond = conditionConfig.safeParse(cfg);
        if (cond.success) return { ...base, type: 'IF', then: child(r.left_node), else: child(r.right_node), condition: child(cond.data.condition_node) };
        const rowsCond = rowsConfig.safeParse(cfg);
        if (rowsCond.success) {
          return { ...base, type: 'IF_ROWS', then: child(r.left_node), else: child(r.right_node), resultName: rowsCond.data.result_name };
        }
        throw new GraphError(`IF node ${id} has neither a condition node nor a result_has_rows condition`);
      }
      case 'JOIN': {
        const branches = [child(r.left_node), child(r.right_node)];
        if (q !== null) {
          const extra = extraConfig.safeParse(json(q, `JOIN node ${id} config`));
          if (!extra.success) throw new GraphError(`JOIN node ${id} has an invalid extra_nodes config`);
          for (const e of extra.data.extra_nodes) branches.push(child(e));
        }
        return { ...base, type: 'JOIN', branches };
      }
      case 'LOOP': {
        let condition: Node | undefined;
        if (q !== null) {
          const cond = loopCondition.safeParse(json(q, `LOOP node ${id} config`));
          if (!cond.success) throw new GraphError(`LOOP node ${id} has an invalid condition config`);
          condition = child(cond.data.condition_node);
        }
        return { ...base, type: 'LOOP', body: child(r.left_node), condition };
      }
      case 'BREAK': {
        const cfg = breakConfig.safeParse(json(q ?? 'null', `BREAK node ${id} config`));
        if (!cfg.success) throw new GraphError(`BREAK node ${id} has an invalid config`);
        // A value that is JSON is that JSON; other text becomes a JSON string.
        const v = cfg.data.break_value;
        let value = 'null';
        if (v !== null) {
          try {
            JSON.parse(v);
            value = v;
          } catch {
            value = JSON.stringify(v);
          }
        }
        return { ...base, type: 'BREAK', value };
      }
      case 'SLEEP': {
        const seconds = Number(q);
        if (q === null || !/^\d+$/.test(q.trim()) || !Number.isSafeInteger(seconds)) throw new GraphError(`SLEEP node ${id} has an invalid duration ${q}`);
        return { ...base, type: 'SLEEP', seconds };
      }
      case 'SIGNAL': {
        const c = config('SIGNAL', q, id);
        return { ...base, type: 'SIGNAL', signalName: c.signal_name, timeoutSeconds: c.timeout_seconds ?? null };
      }
      case 'WAIT_SCHEDULE': {
        const c = config('WAIT_SCHEDULE', q, id);
        return { ...base, type: 'WAIT_SCHEDULE', cron: c.cron_expr, timeZone: c.time_zone ?? null };
      }
      case 'HTTP':
        return { ...base, type: 'HTTP', config: config('HTTP', q, id) };
      case 'HTTP_MULTIPART':
        return { ...base, type: 'HTTP_MULTIPART', config: config('HTTP_MULTIPART', q, id) };
    }
  };
  return build(rootId, 1, 'instance');
}
