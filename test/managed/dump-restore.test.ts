// A database that uses df survives pg_dump and pg_restore (the server's own,
// PostgreSQL 15 in CI): operators, functions, instances and history come
// back unchanged, DO blocks using the DSL operators work in the copy, and
// the executor resumes the copy's pending work. A restore through the proxy
// works too: connecting installs nothing, the restore's own statements about
// df install nothing, and the copy is served once it is whole.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Executor } from '../../src/engine/executor.js';
import { DslInterceptor, loadDslParser } from '../../src/dsl/interceptor.js';
import { dbUrl, executorOptions, startDurable, type Durable } from '../helpers/durable.js';
import { env, startProxy, type RunningProxy } from '../helpers/proxy.js';
import { eventually } from '../helpers/wait.js';

const SOURCE = 'pgdp_dump_src';
const tmp = mkdtempSync(path.join(os.tmpdir(), 'pgdp-dump-'));
const archive = path.join(tmp, 'source.dump');

function tool(name: string, args: string[], password: string): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(path.join(env().pgBin!, name), args, { env: { ...process.env, PGPASSWORD: password }, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('error', reject);
    child.once('exit', (code) => resolve({ code, stderr }));
  });
}

const admin = (): { user: string; password: string; host: string; port: string } => {
  const u = new URL(env().adminUrl);
  return { user: decodeURIComponent(u.username), password: decodeURIComponent(u.password), host: u.hostname, port: u.port };
};

async function query<T extends pg.QueryResultRow>(url: string, sql: string, params: unknown[] = []): Promise<T[]> {
  const c = new pg.Client(url);
  await c.connect();
  try {
    return (await c.query<T>(sql, params)).rows;
  } finally {
    await c.end();
  }
}

/** Everything a user sees of df's state, in a stable order. */
const HISTORY = `SELECT i.id, i.label, i.status, i.output, i.submitted_by::text AS who, df.result(i.id) AS result,
                        (SELECT count(*)::int FROM df.nodes n WHERE n.instance_id = i.id) AS nodes
                   FROM df.instances i ORDER BY i.id`;

let src: Durable;
let history: Record<string, unknown>[];
let pending: string;

beforeAll(async () => {
  await loadDslParser();
  src = await startDurable(SOURCE);
  const app = await src.connect();
  await app.query('CREATE TABLE orders (id int PRIMARY KEY, state text)');
  await app.query(`INSERT INTO orders VALUES (1, 'new'), (2, 'new')`);
  // Finished history: a compiled workflow, one built by the SQL operators in a DO block, a failed one.
  const done = await app.query<{ id: string }>(`SELECT df.start('SELECT 1 AS one' ~> 'UPDATE orders SET state = ''paid'' WHERE id = 1 RETURNING id', 'pay 1') AS id`);
  await app.query(`DO $$ BEGIN PERFORM df.start('SELECT 2 AS two' ~> 'SELECT 3 AS three', 'from a DO block'); END $$`);
  const failed = await app.query<{ id: string }>(`SELECT df.start('SELECT 1/0', 'fails') AS id`);
  for (const id of [done.rows[0]!.id, failed.rows[0]!.id]) await app.query('SELECT df.await_instance($1)', [id]);
  await eventually(async () => (await app.query(`SELECT count(*)::int AS n FROM df.instances WHERE status IN ('pending', 'running')`)).rows[0].n === 0, 'the history to finish');
  // Pending work, left when no executor runs: the copy's executor must finish it.
  await src.executor.close();
  pending = (await app.query<{ id: string }>(`SELECT df.start('UPDATE orders SET state = ''shipped'' WHERE id = 2 RETURNING state', 'ship 2') AS id`)).rows[0]!.id;
  history = await query(dbUrl(env().adminUrl, SOURCE), HISTORY);
  const a = admin();
  const dump = await tool('pg_dump', ['-h', a.host, '-p', a.port, '-U', a.user, '-Fc', '-f', archive, SOURCE], a.password);
  expect(dump).toEqual({ code: 0, stderr: '' });
  // Through the proxy too (its statements about df are no workflow statements).
  const proxied = await tool('pg_dump', ['-h', src.host, '-p', String(src.port), '-U', a.user, '-Fc', '-f', path.join(tmp, 'proxied.dump'), SOURCE], a.password);
  expect(proxied).toEqual({ code: 0, stderr: '' });
});
afterAll(async () => {
  await src?.close();
  rmSync(tmp, { recursive: true, force: true });
});

/** In the copy, the DSL operators work and the executor finishes the pending workflow. */
async function expectWholeCopy(database: string, through: string): Promise<void> {
  // The DSL operators came along (in public): a DO block builds and starts a workflow with them.
  const app = env().app;
  const direct = new URL(dbUrl(env().adminUrl, database));
  direct.username = app.user;
  direct.password = app.password;
  await query(direct.toString(), `DO $$ BEGIN PERFORM df.start('SELECT 4 AS four' ~> 'SELECT 5 AS five', 'after restore'); END $$`);
  const c = new pg.Client(through);
  await c.connect();
  try {
    expect((await c.query('SELECT df.await_instance($1, 30) AS s', [pending])).rows[0].s).toBe('completed');
    expect((await c.query('SELECT state FROM orders WHERE id = 2')).rows[0].state).toBe('shipped');
    const { rows } = await c.query<{ id: string }>(`SELECT id FROM df.instances WHERE label = 'after restore'`);
    expect((await c.query('SELECT df.await_instance($1, 30) AS s', [rows[0]!.id])).rows[0].s).toBe('completed');
  } finally {
    await c.end();
  }
}

describe('pg_dump of a database that uses df', () => {
  it('restored straight into a new database: operators, functions, instances and history unchanged; pending work resumes', async () => {
    const target = 'pgdp_dump_direct';
    await query(env().adminUrl, `DROP DATABASE IF EXISTS ${target} WITH (FORCE)`);
    await query(env().adminUrl, `CREATE DATABASE ${target} OWNER ${env().app.user}`);
    const a = admin();
    const restore = await tool('pg_restore', ['-h', a.host, '-p', a.port, '-U', a.user, '-d', target, '--exit-on-error', archive], a.password);
    expect(restore).toEqual({ code: 0, stderr: '' });
    const ops = await query<{ n: number }>(
      dbUrl(env().adminUrl, target),
      `SELECT count(*)::int AS n FROM pg_operator WHERE oprnamespace = 'public'::regnamespace AND oprcode::regproc::text LIKE 'df.%'`,
    );
    expect(ops[0]!.n).toBe(7);
    expect(await query(dbUrl(env().adminUrl, target), HISTORY)).toEqual(history);
    const d = await startDurable(target, {}, undefined, { fresh: false });
    try {
      await expectWholeCopy(target, d.url(env().app.user, env().app.password, target));
    } finally {
      await d.close();
    }
  });

  it('restored through the proxy: connecting installs nothing, the restore succeeds, the copy is served once whole', async () => {
    const target = 'pgdp_dump_proxy';
    await query(env().adminUrl, `DROP DATABASE IF EXISTS ${target} WITH (FORCE)`);
    await query(env().adminUrl, `CREATE DATABASE ${target} OWNER ${env().app.user}`);
    // An executor that serves whatever database is used (no --databases), in front of the whole server.
    const executor = new Executor({ ...executorOptions(target), databases: undefined });
    let proxy: RunningProxy | undefined;
    try {
      await executor.discover('postgres');
      proxy = await startProxy({
        interceptor: new DslInterceptor(pino({ level: 'silent' }), {
          releaseDatabases: (names) => executor.release(names),
          ensureSchema: (db) => executor.ensure(db),
        }),
      });
      // A client that only connects (and runs plain SQL) leaves the database as it was.
      await query(dbUrl(proxy.adminUrl, target), 'SELECT 1');
      expect((await query<{ n: number }>(dbUrl(env().adminUrl, target), `SELECT count(*)::int AS n FROM pg_namespace WHERE nspname = 'df'`))[0]!.n).toBe(0);
      const a = admin();
      const restore = await tool('pg_restore', ['-h', proxy.host, '-p', String(proxy.port), '-U', a.user, '-d', target, '--exit-on-error', archive], a.password);
      expect(restore).toEqual({ code: 0, stderr: '' });
      expect(await query(dbUrl(env().adminUrl, target), HISTORY)).toEqual(history);
      await expectWholeCopy(target, proxy.url(env().app.user, env().app.password, target));
    } finally {
      await proxy?.close();
      await executor.close();
    }
  });

  it('a pg_restore that has written the tables but not yet their keys is left alone until it is whole', async () => {
    const target = 'pgdp_dump_partial';
    await query(env().adminUrl, `DROP DATABASE IF EXISTS ${target} WITH (FORCE)`);
    await query(env().adminUrl, `CREATE DATABASE ${target} OWNER ${env().app.user}`);
    const a = admin();
    // The pre-data and data sections only: what a restore has done before its last section.
    const partial = await tool('pg_restore', ['-h', a.host, '-p', a.port, '-U', a.user, '-d', target, '--section=pre-data', '--section=data', archive], a.password);
    expect(partial.code).toBe(0);
    const executor = new Executor(executorOptions(target));
    try {
      await executor.discover(target);
      expect(await executor.ensure(target)).toBeUndefined();
      // Not served: the pending run is not claimed, and nothing was installed over the restore.
      const runs = await query<{ owner: string | null }>(dbUrl(env().adminUrl, target), 'SELECT owner FROM df.runs');
      expect(runs.map((r) => r.owner)).toEqual([null]);
      const post = await tool('pg_restore', ['-h', a.host, '-p', a.port, '-U', a.user, '-d', target, '--section=post-data', archive], a.password);
      expect(post).toEqual({ code: 0, stderr: '' });
      // Whole now: served, and its pending work done.
      await executor.serve(target);
      expect((await query<{ s: string }>(dbUrl(env().adminUrl, target), 'SELECT df.await_instance($1, 30) AS s', [pending]))[0]!.s).toBe('completed');
    } finally {
      await executor.close();
    }
  });
});
