// df.start(..., transaction_mode => 'new'): the start commits on a connection
// of its own, logged in as the session's current role (what current_user says
// on the client's session, after any SET ROLE), so it survives the caller's
// rollback. One short-lived connection per start, as pg_durable opens one.
import pg from 'pg';

export interface NewStart {
  graph: string;
  label: string | null;
  database: string | null;
}

/** Starts a workflow in its own transaction; resolves to the instance id, rejects with the server's error. */
export function startInOwnTransaction(login: (database: string, role: string) => pg.ClientConfig) {
  return async (as: { role: string; database: string }, start: NewStart): Promise<string> => {
    const client = new pg.Client({ ...login(as.database, as.role), connectionTimeoutMillis: 30_000 });
    client.on('error', () => {}); // a failure surfaces as the query's rejection
    await client.connect();
    try {
      const { rows } = await client.query<{ id: string }>('SELECT df.start($1, $2, $3) AS id', [start.graph, start.label, start.database]);
      return rows[0]!.id;
    } finally {
      await client.end().catch(() => {});
    }
  };
}
