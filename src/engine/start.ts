// df.start(..., transaction_mode => 'new'): the start commits on a connection
// of its own, logged in as the session's current role (what current_user says
// on the client's session, after any SET ROLE), so it survives the caller's
// rollback. One short-lived connection per start, as pg_durable opens one, and
// as in pg_durable only a few at once: every start is a server connection, and
// a client sending them by the thousand must not use up max_connections.
import pg from 'pg';

export interface NewStart {
  graph: string;
  label: string | null;
  database: string | null;
}

export interface NewStartLimits {
  /** Starts in flight at once (pg_durable's max_new_transaction_starts). */
  max: number;
  /** How long a start waits for one of them (pg_durable's new_transaction_start_timeout). */
  timeoutMs: number;
}

export const NEW_START_DEFAULTS: NewStartLimits = { max: 2, timeoutMs: 5000 };

/** A start that found no free slot in time: the client gets this error. */
export class StartLimitReached extends Error {
  readonly code = '53300';
  constructor(limits: NewStartLimits) {
    super(
      `pg-durable-proxy: transaction_mode => 'new' launch limit reached (--max-new-transaction-starts=${limits.max}). ` +
        `Timed out after ${limits.timeoutMs / 1000}s waiting for a free slot.`,
    );
  }
}

/** Starts a workflow in its own transaction; resolves to the instance id, rejects with the server's error. */
export function startInOwnTransaction(login: (database: string, role: string) => pg.ClientConfig, limits: NewStartLimits = NEW_START_DEFAULTS) {
  let running = 0;
  const waiting: (() => void)[] = [];
  const acquire = (): Promise<void> => {
    if (running < limits.max) {
      running++;
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      const go = (): void => {
        clearTimeout(timer);
        running++;
        resolve();
      };
      const timer = setTimeout(() => {
        waiting.splice(waiting.indexOf(go), 1);
        reject(new StartLimitReached(limits));
      }, limits.timeoutMs);
      waiting.push(go);
    });
  };
  const release = (): void => {
    running--;
    waiting.shift()?.();
  };
  return async (as: { role: string; database: string }, start: NewStart): Promise<string> => {
    await acquire();
    const client = new pg.Client({ ...login(as.database, as.role), connectionTimeoutMillis: 30_000 });
    client.on('error', () => {}); // a failure surfaces as the query's rejection
    try {
      await client.connect();
      const { rows } = await client.query<{ id: string }>('SELECT df.start($1, $2, $3) AS id', [start.graph, start.label, start.database]);
      return rows[0]!.id;
    } finally {
      await client.end().catch(() => {});
      release();
    }
  };
}
