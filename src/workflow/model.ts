// The workflow model, defined once: node types, statuses and limits, as
// pg_durable has them. The compiler (dsl/) and the executor (engine/) take
// them from here; the df schema (sql/) keeps its own copies in SQL, which a
// test holds to these (test/integration/schema.test.ts).

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
