// Durability with real processes: proxies killed with SIGKILL, PostgreSQL
// stopped with `-m immediate`. Each proxy is the built command, as users run it.
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { pino } from 'pino';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { EmbeddedPostgres, freePort } from '../../src/embedded.js';
import { dbUrl, freshDatabase } from '../helpers/durable.js';
import { env, runCli, type CliProcess } from '../helpers/proxy.js';
import { eventually } from '../helpers/wait.js';

const running: CliProcess[] = [];
const clients: pg.Client[] = [];

afterEach(async () => {
  for (const c of clients.splice(0)) await c.end().catch(() => {});
  for (const p of running.splice(0)) {
    p.child.kill('SIGKILL');
    await p.exited;
  }
});

/**
 * A proxy command serving `database` of the server at `serverUrl`: steps log
 * in over `socketDir` (trust), or in managed mode as the README says, with
 * the executor's own login and a step password file.
 */
async function proxy(serverUrl: string, database: string, socketDir: string | undefined, extra: string[] = []): Promise<CliProcess> {
  const u = new URL(serverUrl);
  const e = env();
  const steps =
    socketDir !== undefined
      ? ['--step-url', `postgres://steps@127.0.0.1:${u.port}/${database}?host=${encodeURIComponent(socketDir)}`, '--allow-superuser-instances', 'true']
      : ['--executor-url', dbUrl(e.executorUrl, database), '--step-passfile', e.passfile];
  const p = runCli([
    '--upstream', dbUrl(serverUrl, database), '--listen', '127.0.0.1:0', '--admin', 'off', '--log-level', 'warn',
    '--databases', database, '--lease-timeout', '2', ...steps, ...extra,
  ]);
  running.push(p);
  await p.ready;
  return p;
}

async function connect(url: string): Promise<pg.Client> {
  const c = new pg.Client(url);
  c.on('error', () => {}); // the server may be restarted under it
  await c.connect();
  clients.push(c);
  return c;
}

async function kill(p: CliProcess): Promise<void> {
  p.child.kill('SIGKILL');
  await p.exited;
}

const chain = (n: number, step: (i: number) => string): string =>
  Array.from({ length: n }, (_, i) => `'${step(i + 1).replaceAll("'", "''")}'`).join(' ~> ');

/** A fresh database of the test server, served by a proxy command, and a direct client to it. */
async function freshlyServed(database: string, extra: string[] = []): Promise<{ proxy: CliProcess; db: pg.Client; anotherProxy: () => Promise<CliProcess> }> {
  const e = env();
  await freshDatabase(database);
  const anotherProxy = (): Promise<CliProcess> => proxy(e.adminUrl, database, e.socketDir, extra);
  const first = await anotherProxy();
  // Workflows are started straight on the server (as DO blocks or other clients do), by the app role.
  const app = new URL(dbUrl(e.adminUrl, database));
  app.username = e.app.user;
  app.password = e.app.password;
  if (e.mode === 'managed') {
    const owner = await connect(dbUrl(e.executorUrl, database));
    await owner.query('SELECT df.grant_usage($1, include_http => true)', [e.app.user]);
  }
  return { proxy: first, db: await connect(app.toString()), anotherProxy };
}

async function untilStatus(c: pg.Client, id: string, status: string, ms = 60_000): Promise<void> {
  await eventually(async () => (await c.query('SELECT status FROM df.instances WHERE id = $1', [id])).rows[0]?.status === status, `instance ${id} to be ${status}`, ms);
}

describe('a proxy killed mid-workflow', () => {
  it('kill -9 in the middle of a 20-step chain: after a restart the instance completes and each step ran exactly once', async () => {
    const { proxy: a, db, anotherProxy } = await freshlyServed('pgdp_crash_chain');
    await db.query('CREATE TABLE counter (n int); INSERT INTO counter VALUES (0)');
    const { rows } = await db.query<{ id: string }>(
      `SELECT df.start(${chain(20, () => 'UPDATE counter SET n = n + 1 RETURNING pg_sleep(0.1)')}) AS id`,
    );
    const id = rows[0]!.id;
    await eventually(async () => (await db.query('SELECT n FROM counter')).rows[0].n >= 5, 'five steps to run');
    await kill(a);
    const at = (await db.query('SELECT n FROM counter')).rows[0].n as number;
    expect(at).toBeLessThan(20);
    await anotherProxy();
    await untilStatus(db, id, 'completed');
    expect((await db.query('SELECT n FROM counter')).rows[0].n).toBe(20);
  });

  it('kill -9 during a long step: the step reruns cleanly, its first attempt leaves nothing', async () => {
    const { proxy: a, db, anotherProxy } = await freshlyServed('pgdp_crash_long');
    await db.query('CREATE TABLE marks (at timestamptz DEFAULT clock_timestamp())');
    const { rows } = await db.query<{ id: string }>(`SELECT df.start('INSERT INTO marks SELECT FROM pg_sleep(2)' ~> 'SELECT count(*) AS n FROM marks') AS id`);
    await eventually(
      async () => (await db.query(`SELECT 1 FROM pg_stat_activity WHERE query LIKE 'INSERT INTO marks%' AND state = 'active'`)).rows.length > 0,
      'the long step to run',
    );
    await kill(a);
    await anotherProxy();
    await untilStatus(db, rows[0]!.id, 'completed');
    expect((await db.query('SELECT count(*)::int AS n FROM marks')).rows[0].n).toBe(1);
    const result = await db.query('SELECT df.result($1) AS r', [rows[0]!.id]);
    expect(JSON.parse(result.rows[0].r)).toEqual({ rows: [{ n: 1 }], row_count: 1 });
  });
});

describe('a parked instance', () => {
  it('survives kill -9 of its proxy: it wakes at its deadline in the next proxy and completes once', async () => {
    const { proxy: a, db, anotherProxy } = await freshlyServed('pgdp_crash_parked');
    await db.query('CREATE TABLE woke (at timestamptz DEFAULT clock_timestamp())');
    const { rows } = await db.query<{ id: string }>(`SELECT df.start(df.sleep(4) ~> 'INSERT INTO woke DEFAULT VALUES RETURNING 1') AS id`);
    const id = rows[0]!.id;
    // The sleep's deadline is recorded (the instance then parks); the proxy dies while it waits.
    await eventually(
      async () =>
        (await db.query(`SELECT count(*)::int AS n FROM df.nodes WHERE instance_id = $1 AND node_type = 'SLEEP' AND wake_at > now() + interval '1 second'`, [id]))
          .rows[0].n === 1,
      'the sleep to record its deadline',
      10_000,
    );
    await kill(a);
    await anotherProxy();
    await untilStatus(db, id, 'completed', 30_000);
    expect((await db.query('SELECT count(*)::int AS n FROM woke')).rows[0].n).toBe(1);
    const deadline = (await db.query<{ at: Date }>(`SELECT wake_at AS at FROM df.nodes WHERE instance_id = $1 AND node_type = 'SLEEP'`, [id])).rows[0]!.at;
    const woke = (await db.query<{ at: Date }>('SELECT at FROM woke')).rows[0]!.at;
    expect(woke.getTime()).toBeGreaterThanOrEqual(deadline.getTime());
  });
});

/** Until the instance's run is parked waiting for a signal: no executor holds it, and no deadline. */
async function untilParkedForSignal(c: pg.Client, id: string): Promise<void> {
  await eventually(
    async () => (await c.query(`SELECT df.status($1) = 'running' AND NOT EXISTS (SELECT FROM df.nodes WHERE instance_id = $1 AND node_type = 'SIGNAL' AND status <> 'running') AS waiting`, [id])).rows[0].waiting === true,
    `instance ${id} to wait for its signal`,
  );
}

describe('a signal wait', () => {
  it('survives kill -9 of its proxy; a signal sent while no proxy runs is delivered by the next one, once', async () => {
    const { proxy: a, db, anotherProxy } = await freshlyServed('pgdp_crash_signal');
    await db.query('CREATE TABLE woke (data text)');
    const { rows } = await db.query<{ id: string }>(`SELECT df.start(df.wait_for_signal('go') |=> 's' ~> 'INSERT INTO woke VALUES ($s.data)') AS id`);
    const id = rows[0]!.id;
    await untilParkedForSignal(db, id);
    await kill(a);
    // Plain SQL: no proxy is needed to send it.
    await db.query(`SELECT df.signal($1, 'go', '"while down"')`, [id]);
    await anotherProxy();
    await untilStatus(db, id, 'completed', 30_000);
    expect((await db.query('SELECT data FROM woke')).rows).toEqual([{ data: 'while down' }]);
  });
});

describe('an HTTP step in flight', () => {
  it('kill -9 while the request is open: the next proxy makes it again with the same Idempotency-Key, and the node completes once', async () => {
    const keys: string[] = [];
    let first: (() => void) | undefined;
    const server = http.createServer((req, res) => {
      keys.push(String(req.headers['idempotency-key']));
      if (keys.length === 1) {
        // The first attempt never gets its answer: its proxy dies while it waits.
        first = () => res.destroy();
        return;
      }
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end('{"attempt": 2}');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const port = (server.address() as AddressInfo).port;
      const { proxy: a, db, anotherProxy } = await freshlyServed('pgdp_crash_http', ['--http-allow', '127.0.0.1']);
      await db.query('CREATE TABLE after_http (n int)');
      const { rows } = await db.query<{ id: string }>(
        `SELECT df.start(df.http('http://127.0.0.1:${port}/hook', 'POST', '{}') |=> 'r' ~> 'INSERT INTO after_http VALUES ($r.status)') AS id`,
      );
      const id = rows[0]!.id;
      await eventually(() => keys.length === 1, 'the request to arrive');
      await kill(a);
      first?.();
      await anotherProxy();
      await untilStatus(db, id, 'completed', 30_000);
      expect(keys).toHaveLength(2);
      expect(keys[1]).toBe(keys[0]);
      expect(keys[0]).toMatch(new RegExp(`^${id}-[0-9a-f]{8}-0$`));
      expect((await db.query('SELECT n FROM after_http')).rows).toEqual([{ n: 200 }]);
    } finally {
      await new Promise((r) => server.close(r));
    }
  });
});

describe('several proxies on one database', () => {
  it('no step runs twice; when one proxy is killed the other finishes its work once the lease expires', async () => {
    const { proxy: a, db, anotherProxy } = await freshlyServed('pgdp_crash_pair');
    await anotherProxy(); // two proxies on one database
    await db.query('CREATE TABLE done (instance text, step int, at timestamptz DEFAULT clock_timestamp())');
    const ids: string[] = [];
    for (let i = 0; i < 20; i++) {
      const { rows } = await db.query<{ id: string }>(
        `SELECT df.start(${chain(5, (k) => `INSERT INTO done (instance, step) SELECT '{sys_instance_id}', ${k} FROM pg_sleep(0.05)`)}) AS id`,
      );
      ids.push(rows[0]!.id);
    }
    await eventually(async () => (await db.query('SELECT count(*)::int AS n FROM done')).rows[0].n >= 30, 'some steps to run');
    await kill(a);
    for (const id of ids) await untilStatus(db, id, 'completed');
    const { rows } = await db.query('SELECT count(*)::int AS n, count(DISTINCT (instance, step))::int AS distinct_steps FROM done');
    expect(rows[0]).toEqual({ n: 100, distinct_steps: 100 });
  });
});

describe('PostgreSQL restarted mid-workflow', () => {
  let server: EmbeddedPostgres | undefined;
  let tmp: string | undefined;
  afterAll(async () => {
    await server?.stop();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  it('pg_ctl stop -m immediate, then start: the workflow completes, each step once', async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'pgdp-crash-'));
    chmodSync(tmp, 0o755);
    const dataDir = path.join(tmp, 'data');
    const port = await freePort();
    const log = pino({ level: 'silent' });
    server = await EmbeddedPostgres.start({ dataDir, port, log });
    await proxy(server.url, 'postgres', server.socketDir);
    const db = await connect(server.url);
    await db.query('CREATE TABLE counter (n int); INSERT INTO counter VALUES (0)');
    const { rows } = await db.query<{ id: string }>(`SELECT df.start(${chain(10, () => 'UPDATE counter SET n = n + 1 RETURNING pg_sleep(0.2)')}) AS id`);
    await eventually(async () => (await db.query('SELECT n FROM counter')).rows[0].n >= 3, 'three steps to run');
    await server.stopImmediate();
    server = await EmbeddedPostgres.start({ dataDir, port, log });
    const again = await connect(server.url);
    await untilStatus(again, rows[0]!.id, 'completed');
    expect((await again.query('SELECT n FROM counter')).rows[0].n).toBe(10);
  });

  it('a signal sent, then PostgreSQL stopped with -m immediate before any proxy delivered it: delivered after the restart', async () => {
    const dataDir = path.join(tmp!, 'data');
    const port = Number(new URL(server!.url).port);
    const log = pino({ level: 'silent' });
    const p = await proxy(server!.url, 'postgres', server!.socketDir);
    const db = await connect(server!.url);
    await db.query('CREATE TABLE signalled (data text)');
    const { rows } = await db.query<{ id: string }>(`SELECT df.start(df.wait_for_signal('go') |=> 's' ~> 'INSERT INTO signalled VALUES ($s.data)') AS id`);
    const id = rows[0]!.id;
    await untilParkedForSignal(db, id);
    await kill(p);
    await db.query(`SELECT df.signal($1, 'go', '"kept"')`, [id]);
    await server!.stopImmediate();
    server = await EmbeddedPostgres.start({ dataDir, port, log });
    await proxy(server.url, 'postgres', server.socketDir);
    const again = await connect(server.url);
    await untilStatus(again, id, 'completed');
    expect((await again.query('SELECT data FROM signalled')).rows).toEqual([{ data: 'kept' }]);
  });
});
