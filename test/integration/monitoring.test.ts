// pg_durable's monitoring and control functions through the proxy: what a
// dashboard or a script reads about instances, and the errors it can meet.
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRoles, runWorkflow, startDurable, type Durable } from '../helpers/durable.js';

let d: Durable;
let admin: pg.Client;

beforeAll(async () => {
  d = await startDurable('pgdp_monitoring');
  admin = await d.connect();
  await admin.query('CREATE TABLE counter (n int)');
  await admin.query('INSERT INTO counter VALUES (0)');
  await createRoles(['pgdp_mon_alice', 'pgdp_mon_bob']);
  for (const r of ['pgdp_mon_alice', 'pgdp_mon_bob']) await admin.query(`SELECT df.grant_usage('${r}')`);
});
afterAll(async () => {
  await d?.close();
});

describe('df.list_instances', () => {
  let batch: string[]; // newest first

  beforeAll(async () => {
    batch = [];
    for (let i = 0; i < 5; i++) batch.unshift((await runWorkflow(admin, `df.start('SELECT ${i} AS i', 'listing')`)).id);
    await runWorkflow(admin, `df.start('SELECT 1/0', 'listing-failed')`);
  });

  it('lists newest first with pg_durable’s six columns; filters by status', async () => {
    const { rows, fields } = await admin.query(`SELECT * FROM df.list_instances('completed', 5)`);
    expect(fields.map((f) => f.name)).toEqual(['instance_id', 'label', 'function_name', 'status', 'execution_count', 'output']);
    expect(rows.map((r) => r.instance_id)).toEqual(batch);
    expect(rows[0]).toMatchObject({
      label: 'listing',
      function_name: 'pg_durable::orchestration::execute-function-graph',
      status: 'completed',
      execution_count: '1',
      output: '{"rows":[{"i":4}],"row_count":1}',
    });
    const failed = await admin.query(`SELECT label, output FROM df.list_instances('failed')`);
    expect(failed.rows).toEqual([{ label: 'listing-failed', output: 'division by zero (SQLSTATE 22012)' }]);
  });

  it('pages by label with a keyset cursor: every instance once, the last page without a cursor', async () => {
    const page = async (after: string | null): Promise<{ instance_id: string; next_cursor: string | null }[]> =>
      (await admin.query(`SELECT * FROM df.list_instances(NULL, 2, 'listing', $1)`, [after])).rows;
    const seen: string[] = [];
    let cursor: string | null = null;
    for (let n = 0; n < 5; n++) {
      const rows = await page(cursor);
      seen.push(...rows.map((r) => r.instance_id));
      const cursors = new Set<string | null>(rows.map((r) => r.next_cursor));
      expect(cursors.size).toBe(1); // the same value on every row
      cursor = [...cursors][0]!;
      if (cursor === null) break;
    }
    expect(seen).toEqual(batch);
    expect(cursor).toBeNull();
  });

  it('refuses a limit out of range and a cursor that was not made by it', async () => {
    await expect(admin.query('SELECT * FROM df.list_instances(NULL, 0)')).rejects.toMatchObject({
      code: '22023',
      message: 'df.list_instances: limit_count must be at least 1',
    });
    await expect(admin.query('SELECT * FROM df.list_instances(NULL, 1001)')).rejects.toMatchObject({
      code: '22023',
      message: expect.stringContaining('exceeds the maximum of 1000'),
    });
    const hex = (s: string): string => Buffer.from(s).toString('hex');
    const forged = [hex('v1|yesterday|deadbeef'), hex('v1|2026-01-01T00:00:00.000000+00|DEADBEEF'), hex('v2|2026-01-01T00:00:00.000000+00|deadbeef')];
    for (const bad of ['zz', 'ab'.repeat(300), ...forged]) {
      await expect(admin.query(`SELECT * FROM df.list_instances(NULL, 10, NULL, $1)`, [bad])).rejects.toMatchObject({
        code: '22023',
        message: 'df.list_instances: invalid after_cursor',
      });
    }
  });
});

describe('df.instance_nodes', () => {
  const byQuery = (rows: Record<string, unknown>[], q: string): Record<string, unknown> => rows.find((r) => r.query === q)!;

  it('infers skipped for the untaken IF arm and for what follows a failed step, naming the ancestor', async () => {
    const r = await runWorkflow(admin, `df.start(('SELECT true AS ok' ?> 'SELECT ''then''' !> 'SELECT ''else''') ~> 'SELECT 1/0' ~> 'SELECT ''never''')`);
    expect(r.status).toBe('failed');
    const { rows, fields } = await admin.query('SELECT * FROM df.instance_nodes($1)', [r.id]);
    expect(fields).toHaveLength(12);
    const ifNode = rows.find((n) => n.node_type === 'IF')!;
    expect(byQuery(rows, `SELECT 'then'`)).toMatchObject({ status: 'completed', inferred_status: 'completed', inferred_status_from_ancestor_id: null });
    expect(byQuery(rows, `SELECT 'else'`)).toMatchObject({ status: 'pending', inferred_status: 'skipped', inferred_status_from_ancestor_id: ifNode.node_id });
    expect(byQuery(rows, 'SELECT 1/0')).toMatchObject({ status: 'failed', result: '"division by zero (SQLSTATE 22012)"', inferred_status: 'failed' });
    const outer = rows.find((n) => n.node_type === 'THEN' && n.right_node === byQuery(rows, `SELECT 'never'`).node_id)!;
    expect(byQuery(rows, `SELECT 'never'`)).toMatchObject({ status: 'pending', inferred_status: 'skipped', inferred_status_from_ancestor_id: outer.node_id });
    expect(JSON.parse(byQuery(rows, `SELECT 'then'`).status_details as string)).toEqual({ execution_id: `${r.id}::1` });
  });

  it('keeps the 0.1 form: (id, execution) gives 10 columns, all in execution 1', async () => {
    const r = await runWorkflow(admin, `df.start('SELECT 1' ~> 'SELECT 2')`);
    const { rows, fields } = await admin.query('SELECT * FROM df.instance_nodes($1, 1)', [r.id]);
    expect(fields.map((f) => f.name)).toEqual(['node_id', 'node_type', 'query', 'result_name', 'left_node', 'right_node', 'status', 'result', 'execution_id', 'updated_at']);
    expect(rows).toHaveLength(3);
    expect(rows.every((n) => n.execution_id === 1 && n.status === 'completed')).toBe(true);
  });
});

describe('instance info, executions and metrics', () => {
  it('a workflow without a root loop has one execution: its status, the nodes it finished, its duration and output', async () => {
    const r = await runWorkflow(admin, `df.start('SELECT 1 AS a' ~> 'SELECT pg_sleep(0.05), 2 AS b', 'info')`);
    const info = await admin.query('SELECT * FROM df.instance_info($1)', [r.id]);
    expect(info.rows).toEqual([{
      instance_id: r.id, label: 'info', function_name: 'pg_durable::orchestration::execute-function-graph',
      function_version: expect.stringMatching(/^\d+\.\d+\.\d+/), current_execution_id: '1', status: 'completed', output: r.output,
    }]);
    const ex = await admin.query('SELECT * FROM df.instance_executions($1)', [r.id]);
    expect(ex.rows).toHaveLength(1);
    expect(ex.rows[0]).toMatchObject({ execution_id: '1', status: 'Completed', event_count: '3', output: r.output });
    expect(Number(ex.rows[0].duration_ms)).toBeGreaterThanOrEqual(50);
  });

  it('a root loop counts an execution per iteration (pg_durable’s continue-as-new), newest first', async () => {
    await admin.query('UPDATE counter SET n = 0');
    const r = await runWorkflow(admin, `df.start(df.loop('UPDATE counter SET n = n + 1 RETURNING n', 'SELECT n < 3 FROM counter'), 'looping')`);
    expect(r.status).toBe('completed');
    expect((await admin.query('SELECT current_execution_id FROM df.instance_info($1)', [r.id])).rows[0].current_execution_id).toBe('3');
    expect((await admin.query(`SELECT execution_count FROM df.list_instances(NULL, 1000) WHERE instance_id = $1`, [r.id])).rows[0].execution_count).toBe('3');
    const ex = await admin.query('SELECT execution_id, status, event_count FROM df.instance_executions($1, 10)', [r.id]);
    expect(ex.rows).toEqual([
      { execution_id: '3', status: 'Completed', event_count: '3' }, // body, condition and the loop itself
      { execution_id: '2', status: 'ContinuedAsNew', event_count: '0' },
      { execution_id: '1', status: 'ContinuedAsNew', event_count: '0' },
    ]);
    expect((await admin.query('SELECT execution_id FROM df.instance_executions($1, 1)', [r.id])).rows).toEqual([{ execution_id: '3' }]);
    await expect(admin.query('SELECT * FROM df.instance_executions($1, 0)', [r.id])).rejects.toMatchObject({ code: '22023' });
  });

  it('df.metrics counts every role’s instances; only roles granted it may call it', async () => {
    const alice = await d.connect('pgdp_mon_alice', 'pgdp_mon_alice-pw');
    await runWorkflow(alice, `df.start('SELECT 1')`);
    await expect(alice.query('SELECT * FROM df.metrics()')).rejects.toThrow(/permission denied for function metrics/);
    // Counted by a superuser, whom row-level security does not hide any role's instances from.
    const all = await (await d.direct()).query<Record<string, string>>(`SELECT count(*) AS total, count(*) FILTER (WHERE status = 'completed') AS completed,
      count(*) FILTER (WHERE status = 'failed') AS failed FROM df.instances`);
    const m = await admin.query('SELECT * FROM df.metrics()');
    expect(m.rows[0]).toMatchObject({ total_instances: all.rows[0]!.total, completed_instances: all.rows[0]!.completed, failed_instances: all.rows[0]!.failed });
    expect(Number(m.rows[0].total_executions)).toBeGreaterThanOrEqual(Number(all.rows[0]!.total));
    expect(Number(m.rows[0].total_events)).toBeGreaterThan(0);
    await admin.query(`SELECT df.grant_usage('pgdp_mon_alice', false, true)`);
    expect((await alice.query('SELECT total_instances FROM df.metrics()')).rows[0].total_instances).toBe(all.rows[0]!.total);
  });

  it('another role’s instance is invisible: empty rows, NULL status and result, cancel refused', async () => {
    const alice = await d.connect('pgdp_mon_alice', 'pgdp_mon_alice-pw');
    const bob = await d.connect('pgdp_mon_bob', 'pgdp_mon_bob-pw');
    const r = await runWorkflow(alice, `df.start('SELECT 42 AS answer')`);
    for (const q of ['SELECT * FROM df.instance_info($1)', 'SELECT * FROM df.instance_executions($1)', 'SELECT * FROM df.instance_nodes($1)']) {
      expect((await bob.query(q, [r.id])).rows).toEqual([]);
    }
    expect((await bob.query('SELECT df.status($1) AS s, df.result($1) AS r', [r.id])).rows[0]).toEqual({ s: null, r: null });
    await expect(bob.query('SELECT df.cancel($1)', [r.id])).rejects.toMatchObject({ code: 'P0002' });
    expect((await alice.query('SELECT df.result($1) AS r', [r.id])).rows[0].r).toBe('{"rows": [{"answer": 42}], "row_count": 1}');
  });

  it('version, target database, engine schema and the df.run stub answer as pg_durable’s do', async () => {
    const { rows } = await admin.query('SELECT df.version() AS v, df.target_database() AS db, df.duroxide_schema() AS s, df.run() AS r');
    expect(rows[0]).toEqual({ v: expect.stringMatching(/^0\.2\.6 \(pg-durable-proxy \d+\.\d+\.\d+/), db: 'pgdp_monitoring', s: 'df', r: null });
  });
});

describe('status, result, await and cancel', () => {
  it('df.result is NULL until the root completes, and for a failure; df.status is NULL for an unknown id', async () => {
    const failed = await runWorkflow(admin, `df.start('SELECT 1/0')`);
    expect((await admin.query('SELECT df.result($1) AS r', [failed.id])).rows[0].r).toBeNull();
    const { rows } = await admin.query<{ id: string }>(`SELECT df.start(df.sleep(30) ~> 'SELECT 1') AS id`);
    expect((await admin.query('SELECT df.result($1) AS r', [rows[0]!.id])).rows[0].r).toBeNull();
    expect((await admin.query(`SELECT df.status('00000000') AS s`)).rows[0].s).toBeNull();
    await admin.query('SELECT df.cancel($1)', [rows[0]!.id]);
  });

  it('df.await_instance: a positive timeout, a known instance, and a timeout that names the status', async () => {
    await expect(admin.query(`SELECT df.await_instance('00000000', 0)`)).rejects.toMatchObject({ message: 'Timeout must be positive' });
    await expect(admin.query(`SELECT df.await_instance('00000000')`)).rejects.toMatchObject({ message: 'Instance not found: 00000000' });
    const { rows } = await admin.query<{ id: string }>(`SELECT df.start(df.sleep(30)) AS id`);
    const id = rows[0]!.id;
    await expect(admin.query('SELECT df.await_instance($1, 1)', [id])).rejects.toMatchObject({
      code: '57014',
      message: expect.stringMatching(new RegExp(`^Timeout after 1s waiting for instance ${id} \\(status: (pending|running)\\)`)),
    });
    expect((await admin.query('SELECT df.cancel($1, $2) AS m', [id, 'enough'])).rows[0].m).toBe(`Instance ${id} cancelled: enough`);
    const warnings: string[] = [];
    admin.on('notice', (n) => warnings.push(n.message ?? ''));
    expect((await admin.query('SELECT df.wait_for_completion($1) AS s', [id])).rows[0].s).toBe('cancelled');
    admin.removeAllListeners('notice');
    expect(warnings).toEqual(['df.wait_for_completion() is deprecated; use df.await_instance()']);
    expect((await admin.query('SELECT status, output FROM df.instances WHERE id = $1', [id])).rows[0]).toEqual({ status: 'cancelled', output: 'enough' });
  });

  it('cancelling a finished instance changes nothing', async () => {
    const r = await runWorkflow(admin, `df.start('SELECT 1')`);
    expect((await admin.query('SELECT df.cancel($1) AS m', [r.id])).rows[0].m).toBe(`Instance ${r.id} cancelled: Cancelled by user`);
    expect((await admin.query('SELECT df.status($1) AS s', [r.id])).rows[0].s).toBe('completed');
  });
});

describe('variables and grants', () => {
  it('variables are the caller’s own and transactional; a workflow may read but not change them', async () => {
    const alice = await d.connect('pgdp_mon_alice', 'pgdp_mon_alice-pw');
    await alice.query('SELECT df.clearvars()');
    await alice.query('BEGIN');
    await alice.query(`SELECT df.setvar('gone', 'x')`);
    await alice.query('ROLLBACK');
    expect((await alice.query(`SELECT df.setvar('kept', 'y') AS ok`)).rows[0].ok).toBe('OK');
    expect((await alice.query(`SELECT df.getvar('gone') AS g, df.getvar('kept') AS k`)).rows[0]).toEqual({ g: null, k: 'y' });
    const read = await runWorkflow(alice, `df.start('SELECT df.getvar(''kept'') AS v')`);
    expect(read.result).toEqual({ rows: [{ v: 'y' }], row_count: 1 });
    const write = await runWorkflow(alice, `df.start('SELECT df.setvar(''x'', ''1'')')`);
    expect(write.status).toBe('failed');
    expect(write.output).toMatch(/^df\.setvar\(\) cannot be called inside a workflow/);
    await alice.query(`SELECT df.unsetvar('kept')`);
    expect((await alice.query(`SELECT df.getvar('kept') AS k`)).rows[0].k).toBeNull();
  });

  it('df.revoke_usage takes df away again; both say so as pg_durable does', async () => {
    await createRoles(['pgdp_mon_carol']);
    const notices: string[] = [];
    const onNotice = (n: { message?: string }): void => void notices.push(n.message ?? '');
    admin.on('notice', onNotice);
    await admin.query(`SELECT df.grant_usage('pgdp_mon_carol')`);
    const carol = await d.connect('pgdp_mon_carol', 'pgdp_mon_carol-pw');
    expect((await runWorkflow(carol, `df.start('SELECT current_user AS u')`)).result).toEqual({ rows: [{ u: 'pgdp_mon_carol' }], row_count: 1 });
    await admin.query(`SELECT df.revoke_usage('pgdp_mon_carol')`);
    admin.off('notice', onNotice);
    expect(notices).toEqual(['pg_durable: granted df usage privileges to "pgdp_mon_carol"', 'pg_durable: revoked df usage privileges from "pgdp_mon_carol"']);
    await expect(carol.query(`SELECT df.start('SELECT 1')`)).rejects.toThrow(/permission denied for schema df/);
  });
});
