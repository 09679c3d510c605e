// CancelRequest: clients hold the backend's pid with a secret issued by the
// proxy, which maps the key to the backend's own pid and secret.
import pg from 'pg';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cancelRequest } from '../../src/proxy/protocol.js';
import { env, startProxy, type RunningProxy } from '../helpers/proxy.js';
import { ROLES } from '../helpers/roles.js';
import { untilActivity } from '../helpers/wait.js';
import { RawConnection } from '../helpers/wire.js';

/** Resolves once the backend of `pid` is running `pg_sleep` (seen by a direct admin connection). */
const sleeping = (admin: pg.Client, pid: number): Promise<void> =>
  untilActivity(admin, `pid = $1 AND state = 'active' AND query LIKE '%pg_sleep%'`, pid);

describe('query cancellation', () => {
  let p: RunningProxy;
  let url: string;
  let admin: pg.Client;
  beforeAll(async () => {
    p = await startProxy();
    url = p.url(ROLES.scram.user, ROLES.scram.password);
    admin = new pg.Client({ connectionString: env().adminUrl });
    await admin.connect();
  });
  afterAll(async () => {
    await admin.end();
    await p.close();
  });

  it('the client’s BackendKeyData carries the backend’s pid (what pg_backend_pid() says)', async () => {
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    const { rows } = await c.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
    const key = c as unknown as { processID: number; secretKey: number };
    expect(key.processID).toBe(rows[0]!.pid);
    expect(p.proxy.stats.connectionsActive).toBeGreaterThan(0);
    await c.end();
  });

  it('node-postgres: pg_sleep(30) is cancelled (57014) and the session goes on', async () => {
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    const pid = (await c.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
    const q = c.query('SELECT pg_sleep(30)');
    await sleeping(admin, pid);
    // node-postgres's own cancel: a new connection carrying the key the proxy issued.
    const canceller = new pg.Client({ connectionString: url }) as unknown as { cancel(c: pg.Client, q: unknown): void };
    canceller.cancel(c, (c as unknown as { activeQuery: unknown }).activeQuery);
    // 57014 "due to user request" is the cancel itself: a sleep left alone would succeed.
    await expect(q).rejects.toMatchObject({ code: '57014', message: 'canceling statement due to user request' });
    expect((await c.query<{ n: number }>('SELECT 1 AS n')).rows).toEqual([{ n: 1 }]);
    await c.end();
  });

  it('postgres.js: query.cancel() stops pg_sleep(30) (57014)', async () => {
    const sql = postgres(url, { max: 1 });
    const pid = (await sql<{ pid: number }[]>`SELECT pg_backend_pid() AS pid`)[0]!.pid;
    const q = sql`SELECT pg_sleep(30)`;
    const result = q.then(
      () => undefined,
      (e: unknown) => e,
    );
    await sleeping(admin, pid);
    await q.cancel();
    expect(await result).toMatchObject({ code: '57014' });
    expect(await sql`SELECT 2 AS n`).toEqual([{ n: 2 }]);
    await sql.end();
  });

  it('a CancelRequest with the wrong secret cancels nothing', async () => {
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    const key = c as unknown as { processID: number; secretKey: number };
    const pid = (await c.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
    const q = c.query<{ done: string }>(`SELECT 'finished' AS done FROM pg_sleep(1)`);
    await sleeping(admin, pid);
    for (const [p1, s1] of [
      [key.processID, key.secretKey ^ 1],
      [pid + 1, key.secretKey], // the secret of another pid's key
    ] as const) {
      const raw = await RawConnection.connect(p.port);
      raw.write(cancelRequest(p1, s1));
      await raw.waitClosed();
    }
    expect((await q).rows).toEqual([{ done: 'finished' }]);
    await c.end();
  });
});
