// What df.start refuses before anything runs, on a proxy that does not allow
// superuser instances (the default outside the embedded sandbox): who may
// submit, which modes and graphs are accepted, from the proxy's compiler and
// from the SQL builders alike.
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRoles, runWorkflow, startDurable, type Durable } from '../helpers/durable.js';

let d: Durable;
let admin: pg.Client;
let alice: pg.Client;

beforeAll(async () => {
  d = await startDurable('pgdp_start_checks', { allowSuperuserInstances: false });
  admin = await d.superuser();
  await createRoles(['pgdp_sc_alice']);
  await admin.query(`SELECT df.grant_usage('pgdp_sc_alice')`);
  await admin.query(`DO $$ BEGIN CREATE ROLE pgdp_sc_nologin NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$`);
  await admin.query(`SELECT df.grant_usage('pgdp_sc_nologin')`);
  alice = await d.connect('pgdp_sc_alice', 'pgdp_sc_alice-pw');
});
afterAll(async () => {
  await d?.close();
});

const count = async (): Promise<number> => (await admin.query('SELECT count(*)::int AS n FROM df.instances')).rows[0].n;

describe('who may start a workflow', () => {
  it('a superuser is refused, with a hint, in both the compiled and the SQL-built path', async () => {
    const before = await count();
    for (const sql of [`SELECT df.start('SELECT 1')`, `SELECT df.start($1)`]) {
      await expect(admin.query(sql, sql.includes('$1') ? ['SELECT 1'] : [])).rejects.toMatchObject({
        code: '42501',
        message: 'pg-durable-proxy: superuser instances are disabled. current_user "postgres" is a superuser.',
        hint: expect.stringContaining('--allow-superuser-instances'),
      });
    }
    expect(await count()).toBe(before);
    expect((await runWorkflow(alice, `df.start('SELECT current_user AS u')`)).result).toEqual({ rows: [{ u: 'pgdp_sc_alice' }], row_count: 1 });
  });

  it('a superuser instance that got into the table anyway is failed by the executor, and none of its steps runs', async () => {
    await admin.query('CREATE TABLE IF NOT EXISTS ran (x int)');
    // The SQL-side check reads a setting the proxy publishes; forge it for one transaction.
    await admin.query('BEGIN');
    await admin.query(`UPDATE df.settings SET value = 'true' WHERE name = 'allow_superuser_instances'`);
    const { rows } = await admin.query<{ id: string }>(`SELECT df.start($1) AS id`, ['INSERT INTO ran VALUES (1)']);
    await admin.query(`UPDATE df.settings SET value = 'false' WHERE name = 'allow_superuser_instances'`);
    await admin.query('COMMIT');
    expect((await admin.query('SELECT df.await_instance($1) AS s', [rows[0]!.id])).rows[0].s).toBe('failed');
    expect((await admin.query('SELECT output FROM df.instances WHERE id = $1', [rows[0]!.id])).rows[0].output).toBe(
      'pg-durable-proxy: superuser instances are disabled. submitted_by "postgres" is a superuser.',
    );
    expect((await admin.query('SELECT count(*)::int AS n FROM ran')).rows[0].n).toBe(0);
  });

  it('a role without LOGIN is refused: the executor could not log in as it to run the steps', async () => {
    await admin.query('GRANT pgdp_sc_nologin TO pgdp_sc_alice');
    await alice.query('SET ROLE pgdp_sc_nologin');
    try {
      await expect(alice.query(`SELECT df.start($1)`, ['SELECT 1'])).rejects.toMatchObject({
        code: '42501',
        message: expect.stringMatching(/^current_user "pgdp_sc_nologin" does not have LOGIN privilege/),
      });
    } finally {
      await alice.query('RESET ROLE');
    }
  });
});

describe('what df.start accepts', () => {
  it('transaction_mode is caller or new; the workflow is not NULL; the database exists', async () => {
    await expect(alice.query(`SELECT df.start('SELECT 1', transaction_mode => 'later')`)).rejects.toMatchObject({
      code: '22023',
      message: `invalid transaction_mode "later" for df.start(): expected 'caller' or 'new'`,
    });
    await expect(alice.query(`SELECT df.start($1)`, [null])).rejects.toMatchObject({ code: '22004', message: 'df.start: the workflow is NULL' });
    await expect(alice.query(`SELECT df.start($1, NULL, $2)`, ['SELECT 1', 'no_such_db'])).rejects.toMatchObject({
      code: '3D000',
      message: 'database "no_such_db" does not exist',
    });
  });

  const deep = (n: number): string => {
    let g = '{"node_type":"SQL","query":"SELECT 1"}';
    for (let i = 0; i < n; i++) g = `{"node_type":"THEN","left_node":${g},"right_node":{"node_type":"SQL","query":"SELECT 2"}}`;
    return g;
  };
  const wide = (n: number): string => {
    const leaf = '{"node_type":"SQL","query":"SELECT 1"}';
    return `{"node_type":"JOIN","left_node":${leaf},"right_node":${leaf},"extra_nodes":[${Array(n).fill(leaf).join(',')}]}`;
  };

  it('graphs deeper than 256 levels or larger than 10 000 nodes are refused by the proxy, with a position', async () => {
    const before = await count();
    for (const [graph, message] of [[deep(300), /^Workflow exceeds maximum nesting depth of 256$/], [wide(10_000), /^Workflow exceeds maximum node count of 10000$/]] as const) {
      const sql = `SELECT df.start('${graph}')`;
      const err = await alice.query(sql).then(() => undefined, (e: unknown) => e as { code: string; message: string; position: string });
      expect(err).toMatchObject({ code: '54000', message: expect.stringMatching(message) });
      expect(sql.slice(Number(err!.position) - 1)).toMatch(/^'\{"node_type"/);
    }
    expect(await count()).toBe(before);
  });

  it('the same limits hold where the proxy cannot see the workflow (bind parameters, the SQL builders)', async () => {
    await expect(alice.query('SELECT df.start($1)', [deep(300)])).rejects.toMatchObject({
      code: '54000',
      message: 'Workflow exceeds maximum nesting depth of 256',
    });
    await expect(alice.query('SELECT df.start($1)', [wide(10_000)])).rejects.toMatchObject({
      code: '54000',
      message: 'Workflow exceeds maximum node count of 10000',
    });
    await expect(alice.query('SELECT df.start($1)', ['{"node_type":"HTTPX","query":"x"}'])).rejects.toMatchObject({
      code: '22023',
      message: expect.stringMatching(/^Invalid durable function: Unknown node_type 'HTTPX'/),
    });
    // Just below the limits is fine.
    const ok = await runWorkflow(alice, 'df.start($1)', [deep(250)]);
    expect(ok.status).toBe('completed');
    expect((await alice.query('SELECT count(*)::int AS n FROM df.nodes WHERE instance_id = $1', [ok.id])).rows[0].n).toBe(501);
  });
});
