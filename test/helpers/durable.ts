// A proxy with its executor against its own database of the test PostgreSQL,
// so that test files running in parallel never share workflows.
import { httpPolicy } from '../../src/config.js';
import { execFileSync } from 'node:child_process';
import { appendFileSync, readFileSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { pino } from 'pino';
import { EXECUTOR_DEFAULTS, Executor, type ExecutorOptions } from '../../src/engine/executor.js';
import { startInOwnTransaction, type NewStartLimits } from '../../src/engine/start.js';
import { connectionTargets, type StepLogin, type Targets } from '../../src/engine/targets.js';
import { DslInterceptor, loadDslParser } from '../../src/dsl/interceptor.js';
import { env, startProxy, type RunningProxy } from './proxy.js';
import { EXECUTOR } from './roles.js';

const EXECUTOR_SCRIPT = path.resolve(import.meta.dirname, '../../sql/executor-role.sql');

export interface Durable extends RunningProxy {
  database: string;
  executor: Executor;
  /** A client through the proxy, as the app role (the superuser in embedded mode) unless a user is given. */
  connect(user?: string, password?: string): Promise<pg.Client>;
  /** The test superuser, through the proxy. */
  superuser(): Promise<pg.Client>;
  /** The test superuser straight to the database (not through the proxy). */
  direct(): Promise<pg.Client>;
}

export const dbUrl = (url: string, database: string): string => {
  const u = new URL(url);
  u.pathname = '/' + database;
  return u.toString();
};

/**
 * Creates `database` afresh on the test server. In managed mode it belongs to
 * the ordinary app role, and the executor gets what sql/executor-role.sql
 * grants in it (run as the README says).
 */
export async function freshDatabase(database: string): Promise<void> {
  const e = env();
  const admin = new pg.Client(e.adminUrl);
  await admin.connect();
  try {
    await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
    await admin.query(`CREATE DATABASE ${database}${e.mode === 'managed' ? ` OWNER ${e.app.user}` : ''}`);
  } finally {
    await admin.end();
  }
  if (e.mode === 'managed') {
    execFileSync(path.join(e.pgBin!, 'psql'), [dbUrl(e.adminUrl, database), '-q', '-v', `executor=${EXECUTOR.user}`, '-f', EXECUTOR_SCRIPT], { stdio: 'pipe' });
  }
}

/** Test roles that start workflows: LOGIN, password `<name>-pw` (in the passfile), df usage granted once the schema exists. */
export async function createRoles(names: string[]): Promise<void> {
  const e = env();
  const admin = new pg.Client(e.adminUrl);
  await admin.connect();
  try {
    for (const n of names) {
      await admin.query(`DO $$ BEGIN CREATE ROLE ${n} LOGIN PASSWORD '${n}-pw'; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$`);
    }
  } finally {
    await admin.end();
  }
  const known = readFileSync(e.passfile, 'utf8');
  const lines = names.filter((n) => !known.includes(`:${n}:`)).map((n) => `${e.pgHost}:${e.pgPort}:*:${n}:${n}-pw\n`);
  if (lines.length) appendFileSync(e.passfile, lines.join(''));
}

/** How the test executor's steps log in: the trust socket (embedded), the passfile over TCP (managed). */
export function stepLogin(): StepLogin {
  const e = env();
  return e.socketDir !== undefined
    ? { socketDir: e.socketDir, port: e.pgPort }
    : { url: `postgres://${e.pgHost}:${e.pgPort}/postgres?sslmode=disable`, passfile: e.passfile };
}

export function executorOptions(database: string, over: Partial<ExecutorOptions> = {}): ExecutorOptions {
  const e = env();
  return {
    ...EXECUTOR_DEFAULTS,
    ...connectionTargets(dbUrl(e.executorUrl, database), stepLogin()),
    log: pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' }),
    // As the command defaults: allowed on the embedded sandbox, refused on a managed service.
    allowSuperuserInstances: e.mode === 'embedded',
    databases: [database],
    // No HTTP step may go anywhere unless a test allows it.
    http: httpPolicy({ httpAllow: undefined, httpMaxRequestBytes: 1024 * 1024, httpMaxResponseBytes: 10 * 1024 * 1024, httpMaxTimeoutSeconds: 300 }),
    ...over,
  };
}

/** The executor's options, plus how transaction_mode => 'new' starts log in, and whether df.start checks the steps' login first (as the command does). */
export type DurableOverrides = Partial<ExecutorOptions> & { start?: Targets['start']; checkLogin?: boolean };

/** `fresh: false` serves `database` as it is (a restored copy, say) instead of creating it afresh. */
export async function startDurable(
  database: string,
  overrides: DurableOverrides = {},
  newStarts?: NewStartLimits,
  { fresh = true }: { fresh?: boolean } = {},
): Promise<Durable> {
  const { start, checkLogin, ...over } = overrides;
  if (fresh) await freshDatabase(database);
  // A write of the executor's own that the schema refuses is a bug: the suite fails when it closes.
  const faults: string[] = [];
  const executor = new Executor(executorOptions(database, { onFault: (what) => faults.push(what), ...over }));
  await executor.discover(database);
  await loadDslParser();
  const p = await startProxy({
    upstreamUrl: dbUrl(env().adminUrl, database),
    interceptor: new DslInterceptor(pino({ level: 'silent' }), {
      startElsewhere: startInOwnTransaction(
        start ?? connectionTargets(dbUrl(env().executorUrl, database), stepLogin()).start,
        newStarts,
      ),
      ...(checkLogin ? { checkLogin: (db: string, role: string) => executor.checkLogin(db, role) } : {}),
      releaseDatabases: (names) => executor.release(names),
      ensureSchema: (db) => executor.ensure(db),
    }),
  });
  const clients: pg.Client[] = [];
  const open = async (url: string): Promise<pg.Client> => {
    const c = new pg.Client(url);
    await c.connect();
    clients.push(c);
    return c;
  };
  const app = env().app;
  if (env().mode === 'managed') {
    // The app role owns the database; the df owner lets it use df and pass that on, as the README's set-up does.
    const c = new pg.Client(dbUrl(env().executorUrl, database));
    await c.connect();
    await c.query('SELECT df.grant_usage($1, false, true)', [app.user]).finally(() => c.end());
  }
  return {
    ...p,
    database,
    executor,
    connect: (user = app.user, password = app.password) => open(p.url(user, password, database)),
    superuser: () => open(dbUrl(p.adminUrl, database)),
    direct: () => open(dbUrl(env().adminUrl, database)),
    close: async () => {
      await Promise.all(clients.map((c) => c.end().catch(() => {})));
      await p.close();
      await executor.close();
      if (faults.length > 0) throw new Error(`the df schema refused writes of the executor:\n${faults.join('\n')}`);
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
