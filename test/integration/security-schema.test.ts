// Attacks on the df schema, made by an ordinary role through the proxy and
// straight against PostgreSQL (a user can always bypass the proxy), with the
// outcome read from the catalogs: nobody became superuser, no planted code
// ran, no row was written or learnt that the role may not write or see.
import pg from 'pg';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Executor } from '../../src/engine/executor.js';
import { createRoles, dbUrl, executorOptions, freshDatabase, runWorkflow, startDurable, type Durable } from '../helpers/durable.js';
import { env } from '../helpers/proxy.js';

const DB = 'pgdp_security_schema';
const MALLORY = 'pgdp_sx_mallory';
const ALICE = 'pgdp_sx_alice';

let d: Durable;
let admin: pg.Client;

/** A client straight to PostgreSQL (not through the proxy) as `user`. */
async function direct(user: string, database = DB): Promise<pg.Client> {
  const u = new URL(dbUrl(env().adminUrl, database));
  u.username = user;
  u.password = `${user}-pw`;
  const c = new pg.Client(u.toString());
  await c.connect();
  return c;
}

const isSuper = async (role: string): Promise<boolean> =>
  (await admin.query<{ s: boolean }>('SELECT rolsuper AS s FROM pg_roles WHERE rolname = $1', [role])).rows[0]!.s;

/** The planted code's counter: a sequence, because nextval survives the rollback of whatever called it. */
const planted = async (): Promise<boolean> =>
  (await admin.query<{ c: boolean }>('SELECT is_called AS c FROM public.pgdp_sx_pwned')).rows[0]!.c;

const SHADOWED = [['varchar', 'text'], ['varchar', 'varchar'], ['text', 'varchar'], ['regrole', 'regrole'], ['name', 'text']];

/**
 * Shadows in public that an unpinned search_path would prefer to pg_catalog's
 * (exact argument types). Planted only around the attack: they would catch
 * the test's own ad-hoc queries too, as they would an administrator's.
 */
async function plantPublic(): Promise<void> {
  const m = await direct(MALLORY);
  try {
    await m.query(`CREATE FUNCTION public.quote_ident(name) RETURNS text LANGUAGE sql AS
      $$ SELECT CASE WHEN public.pgdp_sx_payload() THEN pg_catalog.quote_ident($1::pg_catalog.text) END $$`);
    for (const [l, r] of SHADOWED) {
      await m.query(`CREATE FUNCTION public.pgdp_sx_eq(${l}, ${r}) RETURNS boolean LANGUAGE sql AS
        $$ SELECT public.pgdp_sx_payload() AND $1::pg_catalog.text OPERATOR(pg_catalog.=) $2::pg_catalog.text $$`);
      await m.query(`CREATE OPERATOR public.= (LEFTARG = ${l}, RIGHTARG = ${r}, FUNCTION = public.pgdp_sx_eq)`);
    }
  } finally {
    await m.end();
  }
}

async function dropPublic(): Promise<void> {
  await admin.query(`DROP FUNCTION IF EXISTS public.quote_ident(name)`);
  for (const [l, r] of SHADOWED) await admin.query(`DROP FUNCTION IF EXISTS public.pgdp_sx_eq(${l}, ${r}) CASCADE`);
}

beforeAll(async () => {
  d = await startDurable(DB);
  admin = await d.direct();
  await createRoles([MALLORY, ALICE]);
  await admin.query(`ALTER ROLE ${MALLORY} NOSUPERUSER`);
  for (const r of [MALLORY, ALICE]) await admin.query(`SELECT df.grant_usage('${r}')`);
  // Mallory may create in public, as every role could before PostgreSQL 15.
  await admin.query(`GRANT CREATE ON SCHEMA public TO ${MALLORY}`);
  const m = await direct(MALLORY);
  try {
    // The payload: counts itself, then tries to make Mallory a superuser (which works only when run as one).
    await m.query(`CREATE SEQUENCE public.pgdp_sx_pwned`);
    await m.query(`GRANT USAGE, SELECT, UPDATE ON SEQUENCE public.pgdp_sx_pwned TO PUBLIC`);
    await m.query(`CREATE FUNCTION public.pgdp_sx_payload() RETURNS boolean LANGUAGE plpgsql AS $$
      BEGIN
        PERFORM nextval('public.pgdp_sx_pwned');
        BEGIN EXECUTE 'ALTER ROLE ${MALLORY} SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END;
        RETURN true;
      END $$`);
    await m.query(`GRANT EXECUTE ON FUNCTION public.pgdp_sx_payload() TO PUBLIC`);
  } finally {
    await m.end();
  }
});

afterAll(async () => {
  await admin?.query(`DROP OWNED BY ${MALLORY} CASCADE`).catch(() => {});
  await d?.close();
});

/** Plants pg_temp shadows in a session: types and catalog relations that pg_temp would provide if it came first. */
async function plantTemp(c: pg.Client): Promise<void> {
  for (const t of ['jsonb', 'text', 'uuid', 'regrole', 'varchar']) {
    const base = t === 'regrole' ? 'oid' : t === 'jsonb' || t === 'varchar' ? 'text' : t === 'uuid' ? 'text' : 'varchar';
    await c.query(`CREATE DOMAIN pg_temp.${t} AS pg_catalog.${base} CHECK (public.pgdp_sx_payload())`);
  }
  for (const rel of ['pg_roles', 'pg_namespace', 'pg_database']) {
    await c.query(`CREATE TEMP VIEW ${rel} AS SELECT * FROM pg_catalog.${rel} WHERE public.pgdp_sx_payload()`);
  }
}

/**
 * Calls every df function: the user surface with real arguments, then every
 * function of the schema with typed NULLs. After plantTemp the caller's own
 * statements name every type and catalog relation qualified, so that only a
 * df function could reach a shadow.
 */
async function callEverything(c: pg.Client, admin: boolean): Promise<void> {
  const { rows } = await c.query<{ id: string }>(`SELECT df.start('SELECT 1 AS one', 'sx') AS id`);
  const id = rows[0]!.id;
  for (const q of [
    `SELECT df.status($1)`, `SELECT df.result($1)`, `SELECT * FROM df.instance_nodes($1)`, `SELECT * FROM df.instance_nodes($1, 1)`,
    `SELECT * FROM df.instance_info($1)`, `SELECT * FROM df.instance_executions($1)`, `SELECT df.cancel($1, 'sx')`,
    `SELECT df.await_instance($1, 5)`,
  ]) {
    await c.query(q, [id]);
  }
  for (const q of [
    `SELECT * FROM df.list_instances()`, `SELECT * FROM df.list_instances(NULL, 10, 'sx', NULL)`,
    `SELECT df.setvar('k', 'v')`, `SELECT df.getvar('k')`, `SELECT df.unsetvar('k')`, `SELECT df.clearvars()`,
    `SELECT df.version(), df.target_database(), df.duroxide_schema(), df.run()`,
    `SELECT df.seq('a', 'b'), df.join('a', 'b'), df.join3('a', 'b', 'c'), df.race('a', 'b'), df.as('a', 'x'),
            df.if('a', 'b', 'c'), df.if_rows('x', 'b', 'c'), df.loop('a'), df.loop('a', 'b'), df.break('v'), df.sleep(1), df.sql('a')`,
    `SELECT 'a' ~> 'b', 'a' |=> 'x', 'a' & 'b', 'a' | 'b', ('a' ?> 'b') !> 'c', @> 'a'`,
    `SELECT df.start(df.seq('SELECT 1', 'SELECT 2'))`,
    ...(admin ? [`SELECT * FROM df.metrics()`, `SELECT df.grant_usage('${ALICE}')`] : []),
  ]) {
    await c.query(q);
  }
  // The checkpoint takes any caller's arguments: without the executor's lease it refuses, whoever asks.
  if (admin) await c.query('SAVEPOINT cp');
  await expect(c.query(`SELECT df._checkpoint($1, 'deadbeef', pg_catalog.gen_random_uuid(), '', '{}')`, [id])).rejects.toMatchObject({
    code: '40001',
  });
  if (admin) await c.query('ROLLBACK TO SAVEPOINT cp');
  const { rows: fns } = await c.query<{ name: string; args: string | null }>(
    `SELECT pg_catalog.quote_ident(p.proname) AS name,
            (SELECT pg_catalog.string_agg('NULL::pg_catalog.' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(t.typname), ', ' ORDER BY a.n)
               FROM pg_catalog.unnest(p.proargtypes::pg_catalog.oid[]) WITH ORDINALITY AS a(t, n)
               JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) a.t) AS args
       FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace s ON s.oid OPERATOR(pg_catalog.=) p.pronamespace
      WHERE s.nspname OPERATOR(pg_catalog.=) 'df' AND p.prorettype OPERATOR(pg_catalog.<>) 'pg_catalog.trigger'::pg_catalog.regtype
        AND NOT p.proname OPERATOR(pg_catalog.=) ANY ('{await_instance,wait_for_completion}'::pg_catalog.name[])`,
  );
  expect(fns.length).toBeGreaterThan(40);
  const outer = admin; // the superuser's calls already run in a transaction block
  if (!outer) await c.query('BEGIN');
  for (const f of fns) {
    await c.query('SAVEPOINT s');
    await c.query(`SELECT * FROM df.${f.name}(${f.args ?? ''})`).catch(() => {});
    await c.query('ROLLBACK TO SAVEPOINT s');
  }
  if (!outer) await c.query('ROLLBACK');
}

describe('SECURITY DEFINER functions cannot be hijacked (search_path)', () => {
  it('every df function pins search_path to pg_catalog, then pg_temp', async () => {
    const { rows } = await admin.query<{ sig: string; definer: boolean; config: string[] | null }>(
      `SELECT p.oid::regprocedure::text AS sig, p.prosecdef AS definer, p.proconfig AS config
         FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'df'`,
    );
    expect(rows.filter((r) => r.definer).length).toBeGreaterThanOrEqual(5);
    const unpinned = rows.filter((r) => !(r.config ?? []).includes('search_path=pg_catalog, pg_temp')).map((r) => r.sig);
    expect(unpinned).toEqual([]);
  });

  it('a step that plants pg_temp.jsonb (a domain whose CHECK runs its own code) does not run it as the schema owner', async () => {
    const m = await d.connect(MALLORY, `${MALLORY}-pw`);
    const step = `DO $$ BEGIN
      EXECUTE 'CREATE DOMAIN pg_temp.jsonb AS pg_catalog.text CHECK (public.pgdp_sx_payload())';
      EXECUTE 'CREATE DOMAIN pg_temp.text AS pg_catalog.varchar CHECK (public.pgdp_sx_payload())';
      EXECUTE 'CREATE TEMP VIEW pg_roles AS SELECT * FROM pg_catalog.pg_roles WHERE public.pgdp_sx_payload()';
    END $$`;
    const r = await runWorkflow(m, `df.start($1)`, [step]);
    expect(r.status).toBe('completed');
    expect(await isSuper(MALLORY)).toBe(false);
    expect(await planted()).toBe(false);
  });

  it('with shadows planted in pg_temp and public, no df function runs them: called by the planter, and by a superuser', async () => {
    await plantPublic();
    try {
      const m = await direct(MALLORY);
      try {
        await plantTemp(m);
        await callEverything(m, false);
      } finally {
        await m.end();
      }
      // The superuser's search_path includes public, where Mallory's operators and functions are.
      const a = await d.direct();
      await a.query('BEGIN');
      await callEverything(a, true);
      await a.query('ROLLBACK');
    } finally {
      await dropPublic();
    }
    expect(await isSuper(MALLORY)).toBe(false);
    expect(await planted()).toBe(false);
  });
});

describe('the df functions are the only way to write instances (no planted rows, no probing of ids)', () => {
  it('a role cannot insert or update instances or nodes, not even its own, nor read the tokens', async () => {
    const m = await direct(MALLORY);
    try {
      const { rows } = await m.query<{ id: string }>(`SELECT df.start('SELECT 1') AS id`);
      for (const q of [
        `INSERT INTO df.instances (id, root_node, submitted_by) VALUES ('0000abcd', '0000abcd', '${MALLORY}')`,
        `INSERT INTO df.instances (id, root_node, submitted_by) VALUES ('0000abcd', '0000abcd', '${MALLORY}') ON CONFLICT DO NOTHING`,
        `INSERT INTO df.nodes (id, instance_id, node_type, query, submitted_by) VALUES ('0000abcd', '${rows[0]!.id}', 'SQL', 'SELECT 1', '${MALLORY}')`,
        `UPDATE df.instances SET status = 'completed' WHERE id = '${rows[0]!.id}'`,
        `UPDATE df.nodes SET query = 'SELECT 2' WHERE instance_id = '${rows[0]!.id}'`,
        `DELETE FROM df.instances WHERE id = '${rows[0]!.id}'`,
        `SELECT * FROM df.callers`,
        `SELECT * FROM df.runs`,
      ]) {
        await expect(m.query(q), q).rejects.toMatchObject({ code: '42501' });
      }
    } finally {
      await m.end();
    }
  });

  it('another role learns nothing of an instance id: status, result, nodes, cancel and checkpoint answer as for no instance', async () => {
    const alice = await d.connect(ALICE, `${ALICE}-pw`);
    const { rows } = await alice.query<{ id: string }>(`SELECT df.start('SELECT pg_sleep(0.5)') AS id`);
    const real = rows[0]!.id;
    const m = await direct(MALLORY);
    try {
      const answers = async (id: string): Promise<unknown[]> => {
        const out: unknown[] = [];
        out.push((await m.query('SELECT df.status($1) AS v, df.result($1) AS r', [id])).rows);
        out.push((await m.query('SELECT * FROM df.instance_nodes($1)', [id])).rows);
        out.push((await m.query('SELECT * FROM df.instance_info($1)', [id])).rows);
        out.push((await m.query('SELECT count(*) AS n FROM df.instances WHERE id = $1', [id])).rows);
        for (const q of [`SELECT df.cancel($1)`, `SELECT df._checkpoint($1, 'deadbeef', gen_random_uuid(), '', '{}')`]) {
          out.push(await m.query(q, [id]).then(() => 'ok', (e: { code: string; message: string }) => [e.code, e.message.replace(id, '<id>')]));
        }
        return out;
      };
      expect(await answers(real)).toEqual(await answers('0badc0de'));
    } finally {
      await m.end();
    }
    expect((await admin.query('SELECT df.await_instance($1) AS s', [real])).rows[0].s).toBe('completed');
  });

  it('what df.start stores is bounded, so the executor can always read it back: workflow 64 MiB, variables 64 MiB, label 2 kB', async () => {
    const m = await direct(MALLORY);
    try {
      await expect(m.query(`SELECT df.start(repeat('x', 67108865))`)).rejects.toMatchObject({ code: '54000' });
      await expect(m.query(`SELECT df.start('SELECT 1', repeat('l', 2049))`)).rejects.toMatchObject({
        code: '54000',
        message: 'df.start: the label takes 2049 bytes, more than the limit of 2048',
      });
      await m.query(`SELECT df.setvar('big', repeat('v', 67108865))`);
      await expect(m.query(`SELECT df.start('SELECT 1')`)).rejects.toMatchObject({ code: '54000', hint: expect.stringContaining('df.unsetvar') });
      await m.query(`SELECT df.unsetvar('big')`);
      await m.query(`SELECT df.start('SELECT 1', repeat('l', 2048))`);
    } finally {
      await m.end();
    }
  });

  it('the submitter cannot be forged: a token names only its own role, and the internals refuse a missing one', async () => {
    const m = await direct(MALLORY);
    try {
      await expect(m.query(`INSERT INTO df.callers (token, role) VALUES (gen_random_uuid(), '${ALICE}')`)).rejects.toMatchObject({ code: '42501' });
      await expect(m.query(`SELECT df._submit(gen_random_uuid(), 'SELECT 1', NULL, NULL)`)).rejects.toMatchObject({ code: '42501' });
      await expect(m.query(`SELECT df._cancel(gen_random_uuid(), '0badc0de', 'x')`)).rejects.toMatchObject({ code: '42501' });
      const { rows } = await m.query<{ id: string }>(`SELECT df._submit(df._token(), 'SELECT 1', NULL, NULL) AS id`);
      const who = await admin.query('SELECT submitted_by::text AS r FROM df.instances WHERE id = $1', [rows[0]!.id]);
      expect(who.rows[0].r).toBe(MALLORY);
    } finally {
      await m.end();
    }
  });
});

describe('a value from a result cannot change the statement it is substituted into', () => {
  it('with the role set to standard_conforming_strings = off, a stored \\\' value stays inside its literal', async () => {
    await admin.query(`ALTER ROLE ${ALICE} SET standard_conforming_strings = off`);
    try {
      await admin.query(`CREATE TABLE IF NOT EXISTS public.sx_data (v text); CREATE TABLE IF NOT EXISTS public.sx_out (v text)`);
      await admin.query(`GRANT SELECT, INSERT ON public.sx_data, public.sx_out TO ${ALICE}, ${MALLORY}`);
      // Another tenant controls the data the workflow reads.
      const payload = `x\\'); INSERT INTO public.sx_out VALUES ('pwned'); --`;
      const m = await direct(MALLORY);
      await m.query(`INSERT INTO public.sx_data VALUES ($1)`, [payload]);
      await m.end();
      const alice = await d.connect(ALICE, `${ALICE}-pw`);
      const r = await runWorkflow(
        alice,
        `df.start(('SELECT v FROM public.sx_data' |=> 'r') ~> 'INSERT INTO public.sx_out VALUES ($r), (''[$r]'')' ~> 'SHOW standard_conforming_strings')`,
      );
      expect(r.status).toBe('completed');
      expect(r.result).toEqual({ rows: [{ standard_conforming_strings: 'on' }], row_count: 1 });
      const out = await admin.query<{ v: string }>(`SELECT v FROM public.sx_out ORDER BY v`);
      expect(out.rows.map((x) => x.v).sort()).toEqual([payload, `[${payload}]`].sort());
    } finally {
      await admin.query(`ALTER ROLE ${ALICE} RESET standard_conforming_strings`);
    }
  });

  it('a step connection that does not run with standard_conforming_strings = on (its startup option lost) runs no step', async () => {
    // As if a pooler between the proxy and PostgreSQL had dropped the step connection's startup options.
    const e = env();
    const lost = await startDurable('pgdp_sx_scs', {
      step: (database, role) => ({ host: e.socketDir, port: e.pgPort, user: role, database }),
    });
    try {
      await admin.query(`ALTER ROLE ${ALICE} IN DATABASE pgdp_sx_scs SET standard_conforming_strings = off`);
      const a = await lost.direct();
      await a.query(`SELECT df.grant_usage('${ALICE}')`);
      await a.query(`CREATE TABLE public.sx_ran (x int); GRANT INSERT ON public.sx_ran TO ${ALICE}`);
      const alice = await lost.connect(ALICE, `${ALICE}-pw`);
      const r = await runWorkflow(alice, `df.start('INSERT INTO public.sx_ran VALUES (1)')`);
      expect(r.status).toBe('failed');
      expect(r.output).toMatch(/^the step connection runs with standard_conforming_strings = off; steps need it on/);
      expect((await a.query('SELECT count(*)::int AS n FROM public.sx_ran')).rows[0].n).toBe(0);
    } finally {
      await admin.query(`ALTER ROLE ${ALICE} IN DATABASE pgdp_sx_scs RESET standard_conforming_strings`);
      await lost.close();
    }
  });

  it('a step that turns standard_conforming_strings off does not leave it off for the next step on its connection', async () => {
    const alice = await d.connect(ALICE, `${ALICE}-pw`);
    const r = await runWorkflow(alice, `df.start('SET standard_conforming_strings = off' ~> 'SELECT current_setting(''standard_conforming_strings'') AS s')`);
    expect(r.result).toEqual({ rows: [{ s: 'on' }], row_count: 1 });
  });
});

describe('who may start a workflow, and where its steps run', () => {
  let strict: Durable;
  beforeAll(async () => {
    strict = await startDurable('pgdp_security_strict', { allowSuperuserInstances: false });
    const a = await strict.direct();
    await a.query(`DO $$ BEGIN CREATE ROLE pgdp_sx_super SUPERUSER NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$`);
    await createRoles(['pgdp_sx_member', 'pgdp_sx_files', 'pgdp_sx_program', 'pgdp_sx_plain']);
    await a.query(`GRANT pgdp_sx_super TO pgdp_sx_member`);
    await a.query(`GRANT pg_read_server_files TO pgdp_sx_files`);
    await a.query(`GRANT pg_execute_server_program TO pgdp_sx_program`);
    for (const r of ['pgdp_sx_member', 'pgdp_sx_files', 'pgdp_sx_program', 'pgdp_sx_plain']) await a.query(`SELECT df.grant_usage('${r}')`);
    await a.end();
  });
  afterAll(async () => {
    await strict?.close();
  });

  it('roles that can become superuser are refused like superusers; the instance never exists', async () => {
    for (const r of ['pgdp_sx_member', 'pgdp_sx_files', 'pgdp_sx_program']) {
      const c = await strict.connect(r, `${r}-pw`);
      for (const sql of [`SELECT df.start('SELECT 1')`, `SELECT df.start($1)`]) {
        await expect(c.query(sql, sql.includes('$1') ? ['SELECT 1'] : []), r).rejects.toMatchObject({
          code: '42501',
          message: `pg-durable-proxy: superuser instances are disabled. current_user "${r}" can act as a superuser.`,
        });
      }
    }
    const a = await strict.direct();
    expect((await a.query(`SELECT count(*)::int AS n FROM df.instances`)).rows[0].n).toBe(0);
    // One that got in anyway (the SQL-side check reads a setting the proxy publishes; forged for one transaction) is failed by the executor.
    const member = await strict.connect('pgdp_sx_member', 'pgdp_sx_member-pw');
    await a.query(`CREATE TABLE IF NOT EXISTS public.sx_ran (x int); GRANT INSERT ON public.sx_ran TO pgdp_sx_member`);
    await a.query(`UPDATE df.settings SET value = 'true' WHERE name = 'allow_superuser_instances'`);
    const { rows } = await member.query<{ id: string }>(`SELECT df.start('INSERT INTO public.sx_ran VALUES (1)') AS id`);
    await a.query(`UPDATE df.settings SET value = 'false' WHERE name = 'allow_superuser_instances'`);
    expect((await a.query('SELECT df.await_instance($1) AS s', [rows[0]!.id])).rows[0].s).toBe('failed');
    expect((await a.query('SELECT output FROM df.instances WHERE id = $1', [rows[0]!.id])).rows[0].output).toBe(
      'pg-durable-proxy: superuser instances are disabled. submitted_by "pgdp_sx_member" can act as a superuser.',
    );
    expect((await a.query('SELECT count(*)::int AS n FROM public.sx_ran')).rows[0].n).toBe(0);
    await a.query(`DELETE FROM df.instances`);
    const plain = await strict.connect('pgdp_sx_plain', 'pgdp_sx_plain-pw');
    expect((await runWorkflow(plain, `df.start('SELECT current_user AS u')`)).result).toEqual({ rows: [{ u: 'pgdp_sx_plain' }], row_count: 1 });
  });

  it('database => needs CONNECT there for the submitter, and a database the executor serves', async () => {
    await freshDatabase('pgdp_sx_closed');
    await freshDatabase('pgdp_sx_other');
    const a = await strict.direct();
    await a.query(`REVOKE CONNECT ON DATABASE pgdp_sx_closed FROM PUBLIC`);
    const plain = await strict.connect('pgdp_sx_plain', 'pgdp_sx_plain-pw');
    await expect(plain.query(`SELECT df.start('SELECT 1', database => 'pgdp_sx_closed')`)).rejects.toMatchObject({
      code: '42501',
      message: 'permission denied for database "pgdp_sx_closed"',
    });
    await expect(plain.query(`SELECT df.start('SELECT 1', database => 'pgdp_sx_other')`)).rejects.toMatchObject({
      code: '42501',
      message: 'database "pgdp_sx_other" is not served by pg-durable-proxy',
      hint: 'The proxy serves: pgdp_security_strict (its --databases setting).',
    });
    expect((await a.query(`SELECT count(*)::int AS n FROM df.instances`)).rows[0].n).toBe(1);
  });
});

describe('the executor serves only a df schema that is its own', () => {
  const logged: string[] = [];
  const log = pino({ level: 'info' }, { write: (line: string) => void logged.push(line) });
  const executorFor = (db: string): Executor => new Executor({ ...executorOptions(db), log, databases: [db] });

  it('a df schema planted by a role with CREATEDB (a trigger on df.settings) is refused, and its creator stays ordinary', async () => {
    await admin.query(`DROP DATABASE IF EXISTS pgdp_sx_planted WITH (FORCE)`);
    await admin.query(`ALTER ROLE ${MALLORY} CREATEDB`);
    const m = await direct(MALLORY, 'postgres');
    await m.query(`CREATE DATABASE pgdp_sx_planted`);
    await m.end();
    const p = await direct(MALLORY, 'pgdp_sx_planted');
    await p.query(`CREATE SCHEMA df`);
    await p.query(`CREATE TABLE df.migrations (version int PRIMARY KEY, name text, checksum text, applied_at timestamptz)`);
    await p.query(`CREATE TABLE df.settings (name text PRIMARY KEY, value text)`);
    await p.query(`CREATE FUNCTION df.pwn() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN EXECUTE 'ALTER ROLE ${MALLORY} SUPERUSER'; RETURN NEW; END $$`);
    await p.query(`CREATE TRIGGER pwn BEFORE INSERT OR UPDATE ON df.settings FOR EACH ROW EXECUTE FUNCTION df.pwn()`);
    await p.end();

    const ex = executorFor('pgdp_sx_planted');
    await ex.discover('pgdp_sx_planted'); // refuses, logs, does not throw
    await expect(ex.serve('pgdp_sx_planted')).rejects.toThrow(/df schema is not this executor's own: schema df is owned by pgdp_sx_mallory/);
    await ex.close();
    expect(await isSuper(MALLORY)).toBe(false);
    const lines = logged.filter((l) => l.includes('refusing to serve database \\"pgdp_sx_planted\\"'));
    expect(lines).toHaveLength(1);
    const c = await direct(MALLORY, 'pgdp_sx_planted');
    expect((await c.query(`SELECT count(*)::int AS n FROM df.settings`)).rows[0].n).toBe(0);
    await c.end();
    await admin.query(`ALTER ROLE ${MALLORY} NOCREATEDB`);
  });

  it('with --df-owner the schema is made as that role, and an executor that neither is it nor names it refuses the schema', async () => {
    await admin.query(`DO $$ BEGIN CREATE ROLE pgdp_sx_owner NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$`);
    const db = 'pgdp_sx_owned';
    await freshDatabase(db);
    // What a df owner needs: to create the schema, and (not being a superuser) the DSL operators in public.
    const setup = new pg.Client(dbUrl(env().adminUrl, db));
    await setup.connect();
    await setup.query(`GRANT CREATE ON DATABASE ${db} TO pgdp_sx_owner; GRANT CREATE ON SCHEMA public TO pgdp_sx_owner`);
    await setup.end();
    const owned = (): Executor => new Executor({ ...executorOptions(db), log, databases: [db], dfOwner: 'pgdp_sx_owner' });
    const first = owned();
    await first.serve(db);
    await first.close();
    const a = new pg.Client(dbUrl(env().adminUrl, db));
    await a.connect();
    const { rows } = await a.query<{ owner: string }>(
      `SELECT DISTINCT owner FROM (SELECT nspowner::regrole::text AS owner FROM pg_namespace WHERE nspname = 'df'
        UNION ALL SELECT relowner::regrole::text FROM pg_class WHERE relnamespace = 'df'::regnamespace
        UNION ALL SELECT proowner::regrole::text FROM pg_proc WHERE pronamespace = 'df'::regnamespace) o`,
    );
    await a.end();
    expect(rows).toEqual([{ owner: 'pgdp_sx_owner' }]);
    const other = executorFor(db);
    await expect(other.serve(db)).rejects.toThrow(/schema df is owned by pgdp_sx_owner/);
    await other.close();
    const again = owned();
    await again.serve(db);
    await again.close();
    await admin.query(`DROP DATABASE ${db} WITH (FORCE)`);
  });

  it('a schema that is ours but altered, or newer than this release, is refused', async () => {
    const tamper: [string, string, RegExp][] = [
      ['checksum', `UPDATE df.migrations SET checksum = 'x' WHERE version = 1`, /migration 1 \(schema\) differs/],
      ['newer migration', `INSERT INTO df.migrations VALUES (999, 'future', 'x', now())`, /migration 999 \(future\).*newer release/],
      ['newer functions', `UPDATE df.function_files SET release = '999.0.0'`, /installed by pg-durable-proxy 999\.0\.0, newer/],
      [
        'foreign trigger',
        `CREATE FUNCTION public.pgdp_sx_trg() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
         ALTER FUNCTION public.pgdp_sx_trg() OWNER TO ${MALLORY};
         CREATE TRIGGER t BEFORE INSERT ON df.settings FOR EACH ROW EXECUTE FUNCTION public.pgdp_sx_trg()`,
        /trigger t on df.settings runs public.pgdp_sx_trg\(\)/,
      ],
      [
        'pre-release schema',
        `ALTER TABLE df.migrations DROP COLUMN checksum`,
        /installed by a development version of pg-durable-proxy before the schema was squashed/,
      ],
      ['foreign rule', `CREATE RULE r AS ON INSERT TO df.settings DO ALSO NOTIFY x`, /rule r on df.settings/],
      ['foreign table', `CREATE TABLE df.extra (x int); ALTER TABLE df.extra OWNER TO ${MALLORY}`, /relation df.extra is owned by pgdp_sx_mallory/],
    ];
    for (const [what, sql, reason] of tamper) {
      const db = 'pgdp_sx_tampered';
      await freshDatabase(db);
      const first = executorFor(db);
      await first.serve(db);
      await first.close();
      const a = new pg.Client(dbUrl(env().adminUrl, db));
      await a.connect();
      await a.query(sql);
      await a.end();
      const again = executorFor(db);
      await expect(again.serve(db), what).rejects.toThrow(reason);
      await again.close();
    }
  });
});
