// One tenant against the others: what a role can do to the executor with its
// own workflows, rows and notifications must stay with that role. Each attack
// is made for real; outcomes are read from the df tables.
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Executor } from '../../src/engine/executor.js';
import { createRoles, executorOptions, runWorkflow, startDurable, type Durable } from '../helpers/durable.js';
import { untilActivity } from '../helpers/wait.js';

const MiB = 1024 * 1024;

async function grant(admin: pg.Client, roles: string[]): Promise<void> {
  await createRoles(roles);
  for (const r of roles) await admin.query(`SELECT df.grant_usage('${r}')`);
}

describe('a step whose result is too large', () => {
  let d: Durable;
  let admin: pg.Client;
  beforeAll(async () => {
    d = await startDurable('pgdp_tenants_big', { maxStepResult: MiB });
    admin = await d.connect();
    await admin.query('CREATE TABLE big_marks (n int)');
  });
  afterAll(async () => {
    await d?.close();
  });

  it('fails with the limit named, leaves nothing committed, and the workflows beside it complete', async () => {
    const start = async (sql: string): Promise<string> => (await admin.query<{ id: string }>('SELECT df.start($1) AS id', [sql])).rows[0]!.id;
    // One 5 MiB row (announced in its header), 10 MiB of small rows (the running total), and rows
    // well under the limit whose JSON (the column name repeated per row) is over it.
    const oneRow = await start(`INSERT INTO big_marks VALUES (1) RETURNING repeat('x', 5000000) AS x`);
    const manyRows = await start(`SELECT n, repeat('y', 1000) AS y FROM generate_series(1, 10000) n`);
    const wideJson = await start(`SELECT '' AS ${'c'.repeat(63)} FROM generate_series(1, 15000)`);
    const others: string[] = [];
    for (let i = 0; i < 5; i++) others.push(await start(`SELECT ${i} AS ok, pg_sleep(0.2)`));
    for (const id of [oneRow, manyRows, wideJson, ...others]) await admin.query('SELECT df.await_instance($1, 30)', [id]);

    const { rows } = await admin.query<{ id: string; status: string; output: string }>('SELECT id, status, output FROM df.instances');
    const byId = new Map(rows.map((r) => [r.id, r]));
    const limitText = `larger than the limit of ${MiB} bytes (--max-step-result / PGDP_MAX_STEP_RESULT)`;
    expect(byId.get(oneRow)).toMatchObject({ status: 'failed', output: `the step's result is ${limitText}` });
    expect(byId.get(manyRows)).toMatchObject({ status: 'failed', output: `the step's result is ${limitText}` });
    expect(byId.get(wideJson)).toMatchObject({ status: 'failed', output: `the step's result as JSON is ${limitText}` });
    for (const id of others) expect(byId.get(id)?.status).toBe('completed');
    // The INSERT's transaction never got its Sync: it rolled back with the connection.
    expect((await admin.query('SELECT count(*)::int AS n FROM big_marks')).rows[0].n).toBe(0);
    const node = await admin.query(`SELECT status, result FROM df.nodes WHERE instance_id = $1 AND node_type = 'SQL'`, [oneRow]);
    expect(node.rows[0]).toEqual({ status: 'failed', result: `the step's result is ${limitText}` });

    // The executor goes on serving, on fresh connections.
    const after = await runWorkflow(admin, `df.start('SELECT 42 AS n')`);
    expect(after.result).toEqual({ rows: [{ n: 42 }], row_count: 1 });
  });

  it('a result just under the limit is stored whole', async () => {
    const r = await runWorkflow(admin, 'df.start($1)', [`SELECT repeat('z', ${MiB - 4096}) AS z`]);
    expect(r.status).toBe('completed');
    expect(((r.result as { rows: { z: string }[] }).rows[0]!.z).length).toBe(MiB - 4096);
  });
});

describe('a 600 MB value, with the default limit', () => {
  let d: Durable;
  let admin: pg.Client;
  beforeAll(async () => {
    d = await startDurable('pgdp_tenants_huge');
    admin = await d.connect();
  });
  afterAll(async () => {
    await d?.close();
  });

  it('a 600 MB row (or a 100 MB notice) fails its step; this process neither dies nor buffers it', async () => {
    let peak = 0;
    const base = process.memoryUsage().rss;
    const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 5);
    try {
      const row = await runWorkflow(admin, `df.start('SELECT repeat(''x'', 600000000) AS x')`, [], 60);
      const notice = await runWorkflow(admin, 'df.start($1)', [`DO $$ BEGIN RAISE NOTICE '%', repeat('x', 100000000); END $$`], 60);
      const beside = await runWorkflow(admin, `df.start('SELECT 1 AS ok')`);
      expect(row).toMatchObject({ status: 'failed', output: `the step's result is larger than the limit of ${64 * MiB} bytes (--max-step-result / PGDP_MAX_STEP_RESULT)` });
      expect(notice.status).toBe('failed');
      expect(notice.output).toMatch(/^the server sent a notice of 1\d{8} bytes for the step, more than the limit of 67108864 bytes/);
      expect(beside.status).toBe('completed');
    } finally {
      clearInterval(sampler);
    }
    // Buffering the row would add at least its 600 MB.
    expect(peak - base).toBeLessThan(200 * MiB);
  });
});

describe('a row that does not validate', () => {
  let d: Durable;
  beforeAll(async () => {
    d = await startDurable('pgdp_tenants_poison');
  });
  afterAll(async () => {
    await d?.close();
  });

  it('fails only its own instance; the others claimed with it complete', async () => {
    const db = await d.direct();
    await db.query('BEGIN');
    const ids: string[] = [];
    for (let i = 0; i < 6; i++) ids.push((await db.query<{ id: string }>(`SELECT df.start('SELECT ${i} AS n') AS id`)).rows[0]!.id);
    const badIf = (await db.query<{ id: string }>(`SELECT df.start(df.if('SELECT true', 'SELECT 1', 'SELECT 2')) AS id`)).rows[0]!.id;
    const [badVars, badArray] = [ids[1]!, ids[4]!];
    // What the zod schema refuses but the table's constraints allow.
    await db.query(`UPDATE df.instances SET vars = '{"a": 1}'::jsonb WHERE id = $1`, [badVars]);
    await db.query(`UPDATE df.instances SET vars = '[1, 2]'::jsonb WHERE id = $1`, [badArray]);
    await db.query(`UPDATE df.nodes SET query = '{"nope": 1}' WHERE instance_id = $1 AND node_type = 'IF'`, [badIf]);
    await db.query('COMMIT');

    for (const id of [...ids, badIf]) await db.query('SELECT df.await_instance($1, 30)', [id]);
    const { rows } = await db.query<{ id: string; status: string; output: string }>('SELECT id, status, output FROM df.instances WHERE id = ANY($1)', [[...ids, badIf]]);
    const byId = new Map(rows.map((r) => [r.id, r]));
    expect(byId.get(badVars)?.status).toBe('failed');
    expect(byId.get(badVars)?.output).toMatch(/^Invalid durable function: the instance row does not validate \(vars\.a: .*expected string/);
    expect(byId.get(badArray)?.status).toBe('failed');
    expect(byId.get(badArray)?.output).toMatch(/^Invalid durable function: the instance row does not validate \(vars: /);
    expect(byId.get(badIf)).toMatchObject({ status: 'failed', output: expect.stringMatching(/^Invalid durable function: IF node [0-9a-f]{8} has neither/) });
    for (const id of ids.filter((i) => i !== badVars && i !== badArray)) expect(byId.get(id)).toMatchObject({ status: 'completed' });
    // The failure is on the root node too, as for any other failure.
    const root = await db.query(`SELECT n.status FROM df.nodes n JOIN df.instances i ON i.id = n.instance_id AND n.id = i.root_node WHERE i.id = $1`, [badVars]);
    expect(root.rows[0].status).toBe('failed');
  });
});

describe('df_cancel notifications from another role', () => {
  let d: Durable;
  let admin: pg.Client;
  beforeAll(async () => {
    d = await startDurable('pgdp_tenants_notify');
    admin = await d.connect();
    await grant(admin, ['pgdp_tn_victim', 'pgdp_tn_prankster']);
    await admin.query('CREATE TABLE victim_log (step text)');
    await admin.query('GRANT ALL ON victim_log TO pgdp_tn_victim');
  });
  afterAll(async () => {
    await d?.close();
  });

  it('are hints: the executor reads the status, finds it running, and the instance completes with every step', async () => {
    const victim = await d.connect('pgdp_tn_victim', 'pgdp_tn_victim-pw');
    const prankster = await d.connect('pgdp_tn_prankster', 'pgdp_tn_prankster-pw');
    const { rows } = await victim.query<{ id: string }>(
      `SELECT df.start('INSERT INTO victim_log SELECT ''first'' FROM pg_sleep(3)' ~> 'INSERT INTO victim_log VALUES (''second'') RETURNING step') AS id`,
    );
    const id = rows[0]!.id;
    await untilActivity(admin, `query LIKE $1 AND state = 'active'`, 'INSERT INTO victim_log SELECT%');
    for (let i = 0; i < 50; i++) {
      await prankster.query(`NOTIFY df_cancel, '${id}'`);
      await prankster.query(`SELECT pg_notify('df_cancel', $1)`, [id]);
    }
    // Well inside the 30 s lease: an aborted step would only be retried after it expires.
    expect((await victim.query('SELECT df.await_instance($1, 20) AS s', [id])).rows[0].s).toBe('completed');
    const nodes = await admin.query(`SELECT status FROM df.nodes WHERE instance_id = $1 AND node_type = 'SQL'`, [id]);
    expect(nodes.rows).toEqual([{ status: 'completed' }, { status: 'completed' }]);
    expect((await admin.query('SELECT step FROM victim_log ORDER BY step')).rows).toEqual([{ step: 'first' }, { step: 'second' }]);
  });

  it('df.cancel racing the executor (claim, steps, end) never deadlocks with it: both take the run row first', async () => {
    const victim = await d.connect('pgdp_tn_victim', 'pgdp_tn_victim-pw');
    const ids: string[] = [];
    for (let i = 0; i < 60; i++) {
      const { rows } = await victim.query<{ id: string }>(`SELECT df.start('SELECT 1' ~> 'SELECT 2') AS id`);
      ids.push(rows[0]!.id);
      // Right after the start, while the executor claims it, runs it or ends it.
      await victim.query('SELECT df.cancel($1)', [rows[0]!.id]);
    }
    const { rows } = await victim.query<{ status: string }>('SELECT DISTINCT status FROM df.instances WHERE id = ANY($1)', [ids]);
    expect(rows.map((r) => r.status).every((st) => st === 'cancelled' || st === 'completed')).toBe(true);
  });

  it('a real df.cancel still stops the running step', async () => {
    const victim = await d.connect('pgdp_tn_victim', 'pgdp_tn_victim-pw');
    const { rows } = await victim.query<{ id: string }>(`SELECT df.start('SELECT pg_sleep(30)' ~> 'INSERT INTO victim_log VALUES (''after cancel'')') AS id`);
    await untilActivity(admin, `query = $1 AND state = 'active'`, 'SELECT pg_sleep(30)');
    await victim.query('SELECT df.cancel($1)', [rows[0]!.id]);
    await untilActivity(admin, `query = $1 AND state = 'active'`, 'SELECT pg_sleep(30)', false);
    expect((await victim.query('SELECT status FROM df.instances WHERE id = $1', [rows[0]!.id])).rows[0].status).toBe('cancelled');
  });
});

/**
 * Role A's 12 long-running workflows and role B's quick one, all pending before an
 * executor with 4 slots starts claiming: a proxy whose own executor claims
 * nothing (maxInstances 0) takes the starts, then a second executor serves.
 */
async function contention(database: string, over: { maxInstances: number; maxInstancesPerRole?: number }) {
  // Long steps hold their slots (a sleep would park and hold none).
  const d = await startDurable(database, { maxInstances: 0 });
  const admin = await d.connect();
  await grant(admin, ['pgdp_fair_a', 'pgdp_fair_b']);
  const a = await d.connect('pgdp_fair_a', 'pgdp_fair_a-pw');
  const b = await d.connect('pgdp_fair_b', 'pgdp_fair_b-pw');
  await a.query('BEGIN');
  const aIds: string[] = [];
  for (let i = 0; i < 12; i++) aIds.push((await a.query<{ id: string }>(`SELECT df.start('SELECT pg_sleep(3600)') AS id`)).rows[0]!.id);
  await a.query('COMMIT');
  const bId = (await b.query<{ id: string }>(`SELECT df.start('SELECT ''b'' AS who') AS id`)).rows[0]!.id;
  const executor = new Executor(executorOptions(database, over));
  await executor.discover(database);
  const statuses = async (): Promise<Record<string, number>> => {
    const { rows } = await admin.query<{ status: string; n: number }>(
      'SELECT status, count(*)::int AS n FROM df.instances WHERE id = ANY($1) GROUP BY status',
      [aIds],
    );
    return Object.fromEntries(rows.map((r) => [r.status, r.n]));
  };
  const close = async (): Promise<void> => {
    await admin.query(`UPDATE df.instances SET status = 'cancelled' WHERE status IN ('pending', 'running')`);
    await executor.close();
    await d.close();
  };
  return { d, admin, a, b, aIds, bId, statuses, close };
}

describe('claiming is fair across roles', () => {
  it("with 4 slots, one role's 12 long-running workflows do not keep another role's workflow waiting", async () => {
    const c = await contention('pgdp_tenants_fair', { maxInstances: 4 });
    try {
      // First-come order would give A all 4 slots for an hour.
      expect((await c.b.query('SELECT df.await_instance($1, 20) AS s', [c.bId])).rows[0].s).toBe('completed');
      const s = await c.statuses();
      expect(s.completed ?? 0).toBe(0);
      expect(s.pending).toBeGreaterThanOrEqual(8);
    } finally {
      await c.close();
    }
  });

  it('with a cap of 2 per role, A never holds more than 2 slots and B runs beside them', async () => {
    const c = await contention('pgdp_tenants_cap', { maxInstances: 4, maxInstancesPerRole: 2 });
    try {
      expect((await c.b.query('SELECT df.await_instance($1, 20) AS s', [c.bId])).rows[0].s).toBe('completed');
      // Every claim made after B finished saw 2 free slots: a later workflow of B completing proves one ran.
      const again = await runWorkflow(c.b, `df.start('SELECT ''b again'' AS who')`, [], 20);
      expect(again.status).toBe('completed');
      expect(await c.statuses()).toEqual({ running: 2, pending: 10 });
      const held = await c.admin.query(
        `SELECT count(*)::int AS n FROM df.runs WHERE instance_id = ANY($1) AND owner IS NOT NULL AND lease_expires > now()`,
        [c.aIds],
      );
      expect(held.rows[0].n).toBe(2);
    } finally {
      await c.close();
    }
  });
});
