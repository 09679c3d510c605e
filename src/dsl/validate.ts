// Checks a compiled graph before df.start runs, so that mistakes surface at
// the call with a position instead of as a failed instance later: size
// limits, a ?> never completed by !>, and every step's SQL through the real
// PostgreSQL parser.
import { parseSync } from 'libpg-query';
import { DslError, envelope, IDENTIFIER, partialIf } from './builders.js';
import { LIMITS } from '../workflow/model.js';

export const MAX_DEPTH = LIMITS.depth;
export const MAX_NODES = LIMITS.nodes;

type Obj = Record<string, unknown>;

export interface StepLocator {
  /** Byte offset in the statement for an offset in a step's text (or the step's constant when unknown). */
  (query: string, offset: number | undefined): number | undefined;
}

/** `{var}` and `$result` references as the parser can take them, offsets kept where possible. */
export function parsableStep(query: string, names: ReadonlySet<string>): { text: string; shifted: boolean } {
  let shifted = false;
  let text = query.replace(/\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (_m, n: string) => `_${n}_`);
  if (names.size === 0 || !text.includes('$')) return { text, shifted };
  const sorted = [...names].sort((a, b) => b.length - a.length);
  let out = '';
  let i = 0;
  while (i < text.length) {
    const d = text.indexOf('$', i);
    if (d < 0) break;
    out += text.slice(i, d);
    const name = sorted.find((n) => text.startsWith(n, d + 1));
    if (!name) {
      out += '$';
      i = d + 1;
      continue;
    }
    let end = d + 1 + name.length;
    if (text.startsWith('.*', end)) {
      out += `(SELECT 1) AS ${name}`;
      shifted = true;
      i = end + 2;
      continue;
    }
    const col = /^\.[A-Za-z_][A-Za-z0-9_]*/.exec(text.slice(end));
    if (col) end += col[0].length;
    else if (/[A-Za-z0-9_]/.test(text[end] ?? '')) {
      out += '$';
      i = d + 1;
      continue;
    }
    if (text[end] === '?') end++;
    out += '0'.padEnd(end - d, ' ');
    i = end;
  }
  text = out + text.slice(i);
  return { text, shifted };
}

export function validate(graph: string, graphAt: number, locate: StepLocator): void {
  const root = envelope(graph, true, graphAt);
  const queries: string[] = [];
  const names = new Set<string>();
  if (root === null) {
    queries.push(graph);
  } else {
    // The shape of each node is checked by df.start itself (df._insert_nodes), the one validator
    // of hand-written graphs, whichever way they arrive; here only what the SQL side cannot see:
    // each step's SQL. Size limits only bound this walk, in df.start's words.
    let count = 0;
    const walk = (n: Obj, depth: number): void => {
      if (++count > MAX_NODES) throw new DslError(`Workflow exceeds maximum node count of ${MAX_NODES}`, '54000', graphAt);
      if (depth > MAX_DEPTH) throw new DslError(`Workflow exceeds maximum nesting depth of ${MAX_DEPTH}`, '54000', graphAt);
      if (typeof n.result_name === 'string' && IDENTIFIER.test(n.result_name)) names.add(n.result_name);
      if (n.node_type === 'SQL' && typeof n.query === 'string') queries.push(n.query);
      // Children in the order they are written: condition, then the branches.
      for (const k of ['condition_node', 'left_node', 'right_node']) {
        const c = n[k];
        if (c && typeof c === 'object' && !Array.isArray(c)) walk(c as Obj, depth + 1);
      }
      if (Array.isArray(n.extra_nodes)) for (const e of n.extra_nodes) if (e && typeof e === 'object' && !Array.isArray(e)) walk(e as Obj, depth + 1);
    };
    walk(root, 1);
  }
  queries.forEach((q, i) => checkStep(q, i + 1, queries.length, names, locate));
}

function checkStep(query: string, index: number, total: number, names: ReadonlySet<string>, locate: StepLocator): void {
  const where = total > 1 ? `step ${index} of the workflow` : 'the workflow step';
  const shown = query.length > 60 ? query.slice(0, 57) + '...' : query;
  if (partialIf(query)) {
    throw new DslError(`${where} is an unfinished if: ?> needs its !> else branch`, '42601', locate(query, undefined),
      'The df operators all have the same precedence and group left to right: write c ?> (a ~> b) !> e.');
  }
  const { text, shifted } = parsableStep(query, names);
  let stmts: unknown[];
  try {
    stmts = (parseSync(text) as { stmts?: unknown[] }).stmts ?? [];
  } catch (err) {
    const e = err as Error & { sqlDetails?: { cursorPosition?: number } };
    const pos = e.sqlDetails?.cursorPosition;
    const offset = !shifted && pos !== undefined ? Buffer.byteLength(text.slice(0, Math.min(pos, text.length))) : undefined;
    throw new DslError(`${e.message} in ${where}: ${shown}`, '42601', locate(query, offset));
  }
  if (stmts.length > 1) {
    throw new DslError(`${where} holds ${stmts.length} statements; a step runs exactly one: ${shown}`, '42601', locate(query, undefined),
      'Write each statement as its own step: \'INSERT ...\' ~> \'UPDATE ...\'.');
  }
}
