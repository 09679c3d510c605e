// Installing df as a role that is no superuser: without CREATE on public
// (PostgreSQL 15's default) df installs without the DSL operators, and they
// come once the role may create them; an install that fails leaves nothing
// behind (it is one transaction), and the statement that needed df says why.
import pg from 'pg';
import { pino } from 'pino';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Executor } from '../../src/engine/executor.js';
import { DslInterceptor, loadDslParser } from '../../src/dsl/interceptor.js';
import { dbUrl, executorOptions } from '../helpers/durable.js';
import { env, startProxy, type RunningProxy } from '../helpers/proxy.js';
import { EXECUTOR } from '../helpers/roles.js';

async function asAdmin(database: string, sql: string): Promise<pg.QueryResultRow[]> {
  const c = new pg.Client(dbUrl(env().adminUrl, database));
  await c.connect();
  try {
    return (await c.query(sql)).rows;
  } finally {
    await c.end();
  }
}

/** A database owned by the app role where the executor may create schemas but, as on PostgreSQL 15, nothing in public. */
async function database(name: string): Promise<void> {
  await asAdmin('postgres', `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  await asAdmin('postgres', `CREATE DATABASE ${name} OWNER ${env().app.user}`);
  await asAdmin(name, `GRANT CREATE ON DATABASE ${name} TO ${EXECUTOR.user}`);
}

const operators = async (name: string): Promise<number> =>
  Number(
    (await asAdmin(name, `SELECT count(*) AS n FROM pg_operator WHERE oprnamespace = 'public'::regnamespace AND oprcode::regproc::text LIKE 'df.%'`))[0]!.n,
  );

let running: { proxy: RunningProxy; executor: Executor } | undefined;
afterEach(async () => {
  await running?.proxy.close();
  await running?.executor.close();
  running = undefined;
});

/** A proxy whose executor serves whatever database a statement uses df in. */
async function proxyFor(name: string): Promise<RunningProxy> {
  const executor = new Executor({ ...executorOptions(name), databases: undefined });
  const proxy = await startProxy({
    upstreamUrl: dbUrl(env().adminUrl, name),
    interceptor: new DslInterceptor(pino({ level: 'silent' }), { ensureSchema: (db) => executor.ensure(db) }),
  });
  running = { proxy, executor };
  return proxy;
}

beforeAll(loadDslParser);

describe('df installed by a role that is no superuser', () => {
  it('without CREATE on public: df installs without the operators; the proxy compiles the DSL anyway; granted, they come', async () => {
    const name = 'pgdp_install_noops';
    await database(name);
    const proxy = await proxyFor(name);
    {
      // The executor (as the df owner) grants the app role, through the proxy: that statement installs df first.
      expect((await asAdmin(name, `SELECT count(*)::int AS n FROM pg_namespace WHERE nspname = 'df'`))[0]!.n).toBe(0);
      const p = new URL(dbUrl(proxy.adminUrl, name));
      p.username = EXECUTOR.user;
      p.password = EXECUTOR.password;
      const viaProxy = new pg.Client(p.toString());
      await viaProxy.connect();
      await viaProxy.query(`SELECT df.grant_usage('${env().app.user}')`);
      await viaProxy.end();
      expect(await operators(name)).toBe(0);
      const app = new pg.Client(proxy.url(env().app.user, env().app.password, name));
      await app.connect();
      try {
        // Through the proxy the operators are not needed: it compiles the DSL itself.
        const { rows } = await app.query<{ id: string }>(`SELECT df.start('SELECT 1 AS a' ~> 'SELECT 2 AS b') AS id`);
        expect((await app.query('SELECT df.await_instance($1, 30) AS s', [rows[0]!.id])).rows[0].s).toBe('completed');
        // Where the proxy cannot compile, the operators are missing and the constructor functions work.
        await expect(app.query(`DO $$ BEGIN PERFORM df.start('SELECT 1' ~> 'SELECT 2'); END $$`)).rejects.toMatchObject({ code: '42883' });
        await app.query(`DO $$ BEGIN PERFORM df.start(df.seq('SELECT 1', 'SELECT 2'), 'constructors'); END $$`);
      } finally {
        await app.end();
      }
      // Granted CREATE on public, the executor makes them when it next serves the database.
      await asAdmin(name, `GRANT CREATE ON SCHEMA public TO ${EXECUTOR.user}`);
      await running!.executor.release([name]);
      const again = new pg.Client(proxy.url(env().app.user, env().app.password, name));
      await again.connect();
      try {
        await again.query('SELECT count(*) FROM df.instances');
        expect(await operators(name)).toBe(7);
        await again.query(`DO $$ BEGIN PERFORM df.start('SELECT 1' ~> 'SELECT 2', 'operators'); END $$`);
      } finally {
        await again.end();
      }
    }
  });

  it('an install that fails leaves no df schema behind, and the statement that needed it says why', async () => {
    const name = 'pgdp_install_fails';
    await database(name);
    await asAdmin(name, `GRANT CREATE ON SCHEMA public TO ${EXECUTOR.user}`);
    // Someone else's operator of a DSL name in public: the installer must refuse, after having made everything else.
    await asAdmin(name, `CREATE OPERATOR public.~> (LEFTARG = text, RIGHTARG = text, FUNCTION = pg_catalog.textcat)`);
    const proxy = await proxyFor(name);
    const app = new pg.Client(proxy.url(env().app.user, env().app.password, name));
    await app.connect();
    try {
      const err = await app.query(`SELECT df.start('SELECT 1')`).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: '55000' });
      expect((err as Error).message).toMatch(/^pg-durable-proxy does not serve database "pgdp_install_fails": its df schema is not this executor's own: operator public\.~>\(text,text\) is owned by \w+ and runs textcat/);
      expect((err as { hint?: string }).hint).toContain('pg-durable-proxy check');
      // One transaction: no schema, no table, no function of the attempt is left.
      expect((await asAdmin(name, `SELECT count(*)::int AS n FROM pg_namespace WHERE nspname = 'df'`))[0]!.n).toBe(0);
    } finally {
      await app.end();
    }
  });
});
