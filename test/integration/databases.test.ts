// Test suites (Django's, Rails', Prisma's) create, copy and drop databases
// through the connection they are given. PostgreSQL refuses DROP DATABASE,
// ALTER DATABASE ... RENAME and CREATE DATABASE ... TEMPLATE while anyone is
// connected to that database, and the executor is connected to every database
// it serves: the proxy lets go of it first. A template database is never
// served, so CREATE DATABASE can always copy it.
import pg from 'pg';
import { pino } from 'pino';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { DslInterceptor, loadDslParser } from '../../src/dsl/interceptor.js';
import { Executor } from '../../src/engine/executor.js';
import { dbUrl, executorOptions } from '../helpers/durable.js';
import { env, startProxy, type RunningProxy } from '../helpers/proxy.js';
import { eventually } from '../helpers/wait.js';

let executor: Executor;
let proxy: RunningProxy;
let admin: pg.Client;

const executorConnections = async (db: string): Promise<number> =>
  (
    await admin.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND application_name = 'pg-durable-proxy executor'`,
      [db],
    )
  ).rows[0]!.n;

/** Runs `sql` through the proxy as the test superuser, on a connection of its own. */
async function throughProxy(sql: string): Promise<void> {
  const c = new pg.Client(proxy.adminUrl);
  await c.connect();
  try {
    await c.query(sql);
  } finally {
    await c.end();
  }
}

/** Uses df in `db` through the proxy (the executor installs the schema and serves it first), then leaves. */
async function visit(db: string): Promise<void> {
  const c = new pg.Client(dbUrl(proxy.adminUrl, db));
  await c.connect();
  try {
    await c.query('SELECT count(*) FROM df.instances');
  } finally {
    await c.end();
  }
}

beforeAll(async () => {
  await loadDslParser();
  executor = new Executor({ ...executorOptions('postgres'), databases: undefined });
  proxy = await startProxy({
    interceptor: new DslInterceptor(pino({ level: 'silent' }), {
      releaseDatabases: (names) => executor.release(names),
      ensureSchema: (db) => executor.ensure(db),
    }),
  });
  admin = new pg.Client(env().adminUrl);
  await admin.connect();
  for (const db of ['pgdp_db_drop', 'pgdp_db_a', 'pgdp_db_b', 'pgdp_db_c', 'pgdp_db_copy']) await admin.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
});
afterAll(async () => {
  await proxy?.close();
  await executor?.close();
  await admin?.end();
});

it('DROP DATABASE through the proxy succeeds on a database the executor serves', async () => {
  await admin.query('CREATE DATABASE pgdp_db_drop');
  await visit('pgdp_db_drop');
  expect(await executorConnections('pgdp_db_drop')).toBeGreaterThan(0);
  await throughProxy('DROP DATABASE pgdp_db_drop');
  expect((await admin.query(`SELECT count(*)::int AS n FROM pg_database WHERE datname = 'pgdp_db_drop'`)).rows[0].n).toBe(0);
});

it('ALTER DATABASE ... RENAME and CREATE DATABASE ... TEMPLATE of a served database succeed; the renamed one is served again', async () => {
  await admin.query('CREATE DATABASE pgdp_db_a');
  await visit('pgdp_db_a');
  const c = new pg.Client(proxy.adminUrl);
  await c.connect();
  try {
    await c.query('ALTER DATABASE pgdp_db_a RENAME TO pgdp_db_b');
    await visit('pgdp_db_b');
    expect(await executorConnections('pgdp_db_b')).toBeGreaterThan(0);
    await c.query('CREATE DATABASE pgdp_db_c TEMPLATE pgdp_db_b');
    await c.query('DROP DATABASE pgdp_db_b');
    await c.query('DROP DATABASE pgdp_db_c');
  } finally {
    await c.end();
  }
});

it('a template database where a client uses df gets no df schema and no executor connection, so it can still be copied', async () => {
  await expect(visit('template1')).rejects.toMatchObject({ code: '55000', message: expect.stringContaining('it is a template database') });
  expect(await executorConnections('template1')).toBe(0);
  // The client's own backend (and the executor's probe) may take a moment to exit on a busy machine.
  await eventually(
    async () => (await admin.query<{ n: number }>(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = 'template1'`)).rows[0]!.n === 0,
    'nobody to be connected to template1',
  );
  await throughProxy('CREATE DATABASE pgdp_db_copy');
  const copy = new pg.Client(dbUrl(env().adminUrl, 'pgdp_db_copy'));
  await copy.connect();
  try {
    expect((await copy.query(`SELECT count(*)::int AS n FROM pg_namespace WHERE nspname = 'df'`)).rows[0].n).toBe(0);
  } finally {
    await copy.end();
    await admin.query('DROP DATABASE pgdp_db_copy');
  }
});

it('a database a workflow stepped into (database => ...) can be dropped straight away: idle step connections go within a second', async () => {
  for (const db of ['pgdp_db_home', 'pgdp_db_steps']) {
    await admin.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
    await admin.query(`CREATE DATABASE ${db}`);
  }
  const c = new pg.Client(dbUrl(proxy.adminUrl, 'pgdp_db_home'));
  await c.connect();
  try {
    const { rows } = await c.query<{ id: string }>(`SELECT df.start('SELECT current_database() AS db', database => 'pgdp_db_steps') AS id`);
    expect((await c.query('SELECT df.await_instance($1, 30) AS s', [rows[0]!.id])).rows[0].s).toBe('completed');
    expect(JSON.parse((await c.query('SELECT df.result($1) AS r', [rows[0]!.id])).rows[0].r)).toEqual({ rows: [{ db: 'pgdp_db_steps' }], row_count: 1 });
  } finally {
    await c.end();
  }
  // Straight to the server, as a test suite's teardown does (no proxy to let go first).
  const steps = async (): Promise<number> =>
    (await admin.query<{ n: number }>(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = 'pgdp_db_steps'`)).rows[0]!.n;
  const deadline = Date.now() + 3000;
  while ((await steps()) > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  expect(await steps()).toBe(0);
  await admin.query('DROP DATABASE pgdp_db_steps');
  await admin.query('DROP DATABASE pgdp_db_home WITH (FORCE)');
});
