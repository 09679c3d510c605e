// The workflow model, defined once: node types, statuses and limits, as
// pg_durable has them. The compiler (dsl/) and the executor (engine/) take
// them from here; the df schema (sql/) keeps its own copies in SQL, which a
// test holds to these (test/integration/schema.test.ts).
import { z } from 'zod';

export const NODE_TYPES = ['SQL', 'THEN', 'IF', 'JOIN', 'LOOP', 'BREAK', 'RACE', 'SLEEP', 'WAIT_SCHEDULE', 'HTTP', 'HTTP_MULTIPART', 'SIGNAL'] as const;
export type NodeType = (typeof NODE_TYPES)[number];

/** Node types that hold a query (or their configuration) and no child nodes. */
export const LEAF_TYPES = ['SQL', 'SLEEP', 'WAIT_SCHEDULE', 'BREAK', 'HTTP', 'HTTP_MULTIPART', 'SIGNAL'] as const satisfies readonly NodeType[];

export const INSTANCE_STATUSES = ['pending', 'running', 'completed', 'failed', 'cancelled'] as const;
export type InstanceStatus = (typeof INSTANCE_STATUSES)[number];
/** An instance in one of these has ended: nothing of it runs again. */
export const TERMINAL_STATUSES = ['completed', 'failed', 'cancelled'] as const satisfies readonly InstanceStatus[];

export const NODE_STATUSES = ['pending', 'running', 'completed', 'failed'] as const;
export type NodeStatus = (typeof NODE_STATUSES)[number];

/** pg_durable's hard limits. */
export const LIMITS = {
  /** Nodes in one workflow graph. */
  nodes: 10_000,
  /** Nesting depth of a workflow graph. */
  depth: 256,
  /** Iterations of one loop. */
  loopIterations: 100_000,
  /** The shortest a loop iteration takes: a runaway loop cannot spin. */
  loopFloorMs: 1000,
  /** Rows a `$name.*` reference expands to. */
  expandedRows: 10_000,
} as const;

/**
 * The configuration a node keeps in its `query` column (JSON text), per node
 * type, as df.start writes it (sql/functions: df._config_error checks the
 * same shapes when a graph is submitted). The executor reads them back with
 * these schemas: the rows are in a table users write to.
 */
export const HTTP_METHODS = ['GET', 'POST', 'PUT', 'DELETE', 'PATCH'] as const;
export const MULTIPART_METHODS = ['POST', 'PUT', 'PATCH'] as const;
const seconds = z.number().int().positive().max(2_147_483_647);
const headers = z.record(z.string(), z.unknown()).nullable().optional();
export const CONFIGS = {
  ifCondition: z.object({ condition_node: z.string() }),
  ifRows: z.object({ condition_type: z.literal('result_has_rows'), result_name: z.string() }),
  joinExtra: z.object({ extra_nodes: z.array(z.string()) }),
  loopCondition: z.object({ condition_node: z.string() }),
  BREAK: z.object({ break_value: z.string().nullable() }),
  SIGNAL: z.object({ signal_name: z.string().min(1), timeout_seconds: seconds.nullable().optional() }),
  WAIT_SCHEDULE: z.object({ cron_expr: z.string(), time_zone: z.string().nullable().optional() }),
  HTTP: z.object({ url: z.string().min(1), method: z.enum(HTTP_METHODS), body: z.string().nullable().optional(), headers, timeout_seconds: seconds }),
  HTTP_MULTIPART: z.object({
    url: z.string().min(1),
    method: z.enum(MULTIPART_METHODS),
    parts: z.array(z.unknown()).min(1),
    headers,
    timeout_seconds: seconds,
  }),
} as const;
export type HttpConfig = z.infer<(typeof CONFIGS)['HTTP']>;
export type MultipartConfig = z.infer<(typeof CONFIGS)['HTTP_MULTIPART']>;
