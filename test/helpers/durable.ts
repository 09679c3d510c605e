// A proxy with its executor against its own database of the test PostgreSQL,
// so that test files running in parallel never share workflows.
import pg from 'pg';
import { pino } from 'pino';
import { EXECUTOR_DEFAULTS, Executor, type ExecutorOptions } from '../../src/engine/executor.js';
import { startInOwnTransaction, type NewStartLimits } from '../../src/engine/start.js';
import { connectionTargets } from '../../src/engine/targets.js';
import { DslInterceptor, loadDslParser } from '../../src/dsl/interceptor.js';
import { env, startProxy, type RunningProxy } from './proxy.js';

export interface Durable extends RunningProxy {
  database: string;
  executor: Executor;
  /** A client through the proxy, as the test superuser unless a user is given. */
  connect(user?: string, password?: string): Promise<pg.Client>;
  /** The test superuser straight to the database (not through the proxy). */
  direct(): Promise<pg.Client>;
}

export const dbUrl = (url: string, database: string): string => {
  const u = new URL(url);
  u.pathname = '/' + database;
  return u.toString();
};

/** Creates `database` afresh on the test server. */
export async function freshDatabase(database: string): Promise<void> {
  const admin = new pg.Client(env().adminUrl);
  await admin.connect();
  try {
    await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
    await admin.query(`CREATE DATABASE ${database}`);
  } finally {
    await admin.end();
  }
}

/** Test roles that start workflows: LOGIN, with df usage granted once the schema exists. */
export async function createRoles(names: string[]): Promise<void> {
  const admin = new pg.Client(env().adminUrl);
  await admin.connect();
  try {
    for (const n of names) {
      await admin.query(`DO $$ BEGIN CREATE ROLE ${n} LOGIN PASSWORD '${n}-pw'; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$`);
    }
  } finally {
    await admin.end();
  }
}

export function executorOptions(database: string, over: Partial<ExecutorOptions> = {}): ExecutorOptions {
  const e = env();
  return {
    ...EXECUTOR_DEFAULTS,
    ...connectionTargets(dbUrl(e.adminUrl, database), { socketDir: e.socketDir, port: e.pgPort }),
    log: pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' }),
    allowSuperuserInstances: true,
    databases: [database],
    ...over,
  };
}

export async function startDurable(database: string, over: Partial<ExecutorOptions> = {}, newStarts?: NewStartLimits): Promise<Durable> {
  await freshDatabase(database);
  const executor = new Executor(executorOptions(database, over));
  await executor.discover(database);
  await loadDslParser();
  const p = await startProxy({
    upstreamUrl: dbUrl(env().adminUrl, database),
    prepareDatabase: (db) => executor.prepare(db),
    interceptor: new DslInterceptor(pino({ level: 'silent' }), {
      startElsewhere: startInOwnTransaction(
        connectionTargets(dbUrl(env().adminUrl, database), { socketDir: env().socketDir, port: env().pgPort }).start,
        newStarts,
      ),
      releaseDatabases: (names) => executor.release(names),
    }),
  });
  const clients: pg.Client[] = [];
  const open = async (url: string): Promise<pg.Client> => {
    const c = new pg.Client(url);
    await c.connect();
    clients.push(c);
    return c;
  };
  const admin = new URL(env().adminUrl);
  return {
    ...p,
    database,
    executor,
    connect: (user = decodeURIComponent(admin.username), password = decodeURIComponent(admin.password)) =>
      open(p.url(user, password, database)),
    direct: () => open(dbUrl(env().adminUrl, database)),
    close: async () => {
      await Promise.all(clients.map((c) => c.end().catch(() => {})));
      await p.close();
      await executor.close();
    },
  };
}

/** Starts a workflow and waits for it to end; returns the instance row and df.result. */
export async function runWorkflow(
  c: pg.Client,
  startSql: string,
  params: unknown[] = [],
  timeoutSeconds = 30,
): Promise<{ id: string; status: string; output: string | null; result: unknown }> {
  const { rows } = await c.query<{ id: string }>(`SELECT ${startSql} AS id`, params);
  const id = rows[0]!.id;
  await c.query('SELECT df.await_instance($1, $2)', [id, timeoutSeconds]);
  const r = await c.query<{ status: string; output: string | null; result: string | null }>(
    'SELECT status, output, df.result(id) AS result FROM df.instances WHERE id = $1',
    [id],
  );
  const row = r.rows[0]!;
  return { id, status: row.status, output: row.output, result: row.result === null ? null : JSON.parse(row.result) };
}
