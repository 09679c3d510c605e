// Signals: df.wait_for_signal and df.signal, through the proxy and in plain
// SQL. A signal sent before its wait is kept and delivered when the wait
// begins; each signal is taken by one wait, oldest first; a waiting instance
// parks (no memory, no slot) and a signal wakes it at once.
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRoles, runWorkflow, startDurable, type Durable } from '../helpers/durable.js';
import { eventually } from '../helpers/wait.js';

let d: Durable;
let app: pg.Client;
let su: pg.Client;

beforeAll(async () => {
  d = await startDurable('pgdp_signals');
  app = await d.connect();
  su = await d.direct();
  await app.query('CREATE TABLE got (v text, at timestamptz DEFAULT clock_timestamp())');
});
afterAll(async () => {
  await d?.close();
});

const start = async (c: pg.Client, expr: string): Promise<string> => (await c.query<{ id: string }>(`SELECT df.start(${expr}) AS id`)).rows[0]!.id;
const awaitEnd = async (id: string): Promise<{ status: string; result: unknown }> => {
  await app.query('SELECT df.await_instance($1, 30)', [id]);
  const { rows } = await app.query<{ status: string; result: string | null }>('SELECT status, df.result(id) AS result FROM df.instances WHERE id = $1', [id]);
  return { status: rows[0]!.status, result: rows[0]!.result === null ? null : JSON.parse(rows[0]!.result) };
};
/** Until the instance's run is parked: handed back, with no executor holding it. */
const untilParked = (id: string): Promise<void> =>
  eventually(async () => (await su.query(`SELECT owner IS NULL AND lease_expires > now() AS p FROM df.runs WHERE instance_id = $1`, [id])).rows[0]?.p === true, `instance ${id} to park`);

describe('df.wait_for_signal and df.signal', () => {
  // $s.data of an object is its JSON text (quoted, no cast), as in pg_durable.
  it('a waiting instance parks; the signal wakes it and its payload is the result, usable by name', async () => {
    const id = await start(app, `df.wait_for_signal('approve') |=> 's' ~> 'SELECT $s.data AS d, $s.timed_out AS t'`);
    await untilParked(id);
    expect((await su.query('SELECT lease_expires FROM df.runs WHERE instance_id = $1', [id])).rows[0].lease_expires).toBe(Infinity);
    expect((await app.query(`SELECT df.signal($1, 'approve', '{"by": "ann"}') AS r`, [id])).rows[0].r).toBe('OK');
    const end = await awaitEnd(id);
    expect(end).toEqual({ status: 'completed', result: { rows: [{ d: '{"by":"ann"}', t: false }], row_count: 1 } });
    const node = (await su.query(`SELECT result FROM df.nodes WHERE instance_id = $1 AND node_type = 'SIGNAL'`, [id])).rows[0];
    expect(node.result).toEqual({ signal_name: 'approve', timed_out: false, data: { by: 'ann' } });
  });

  it('a signal sent before the wait is reached is kept and delivered (here: in the same transaction as the start)', async () => {
    await app.query('BEGIN');
    const id = await start(app, `df.wait_for_signal('early')`);
    await app.query(`SELECT df.signal($1, 'early', 'plain text')`, [id]);
    await app.query('COMMIT');
    // A payload that is not JSON arrives as a JSON string.
    expect(await awaitEnd(id)).toEqual({ status: 'completed', result: { signal_name: 'early', timed_out: false, data: 'plain text' } });
  });

  it('with a timeout and no signal, the wait ends timed out', async () => {
    const r = await runWorkflow(app, `df.start(df.wait_for_signal('never', 1))`);
    expect(r).toMatchObject({ status: 'completed', result: { signal_name: 'never', timed_out: true, data: null } });
  });

  it('repeated signals queue: each loop iteration takes the next one, in order', async () => {
    await app.query('TRUNCATE got');
    const id = await start(
      app,
      `df.loop(df.wait_for_signal('tick', 60) |=> 's' ~> 'INSERT INTO got (v) VALUES ($s.data)', 'SELECT count(*) < 3 FROM got')`,
    );
    for (const v of ['"one"', '"two"', '"three"']) await app.query(`SELECT df.signal($1, 'tick', $2)`, [id, v]);
    expect((await awaitEnd(id)).status).toBe('completed');
    expect((await app.query('SELECT v FROM got ORDER BY at')).rows.map((r) => r.v)).toEqual(['one', 'two', 'three']);
  });

  it('two same-named waits in a JOIN: one signal completes one of them, the next signal the other', async () => {
    const id = await start(app, `df.wait_for_signal('go') & df.wait_for_signal('go')`);
    await untilParked(id);
    await app.query(`SELECT df.signal($1, 'go', '1')`, [id]);
    await eventually(
      async () => (await su.query(`SELECT count(*)::int AS n FROM df.nodes WHERE instance_id = $1 AND node_type = 'SIGNAL' AND status = 'completed'`, [id])).rows[0].n === 1,
      'one wait to take the signal',
    );
    expect((await app.query('SELECT df.status($1) AS s', [id])).rows[0].s).toBe('running');
    await app.query(`SELECT df.signal($1, 'go', '2')`, [id]);
    const end = await awaitEnd(id);
    expect(end.status).toBe('completed');
    expect((end.result as { data: number }[]).map((r) => r.data).sort()).toEqual([1, 2]);
  });

  it('a signal to a finished instance says so; unknown and empty ids and names are refused', async () => {
    const r = await runWorkflow(app, `df.start('SELECT 1')`);
    await expect(app.query(`SELECT df.signal($1, 'late')`, [r.id])).rejects.toMatchObject({
      code: '55000',
      message: `Instance ${r.id} has already finished (completed): signal 'late' was not delivered`,
    });
    await expect(app.query(`SELECT df.signal('ffffffff', 'x')`)).rejects.toMatchObject({ code: 'P0002', message: 'Instance not found or access denied: ffffffff' });
    await expect(app.query(`SELECT df.signal('', 'x')`)).rejects.toMatchObject({ message: 'df.signal: instance_id must not be empty' });
    await expect(app.query(`SELECT df.signal($1, '')`, [r.id])).rejects.toMatchObject({ message: 'Signal name must not be empty' });
  });

  it('bounded: a payload over the step-result limit is refused; an instance keeps at most 1000 signals no wait has taken', async () => {
    const id = await start(app, `df.wait_for_signal('never-sent', 60)`);
    const limit = Number((await su.query(`SELECT value FROM df.settings WHERE name = 'max_step_result'`)).rows[0].value);
    expect(limit).toBe(64 * 1024 * 1024);
    await su.query(`UPDATE df.settings SET value = '1000' WHERE name = 'max_step_result'`);
    try {
      await expect(app.query(`SELECT df.signal($1, 'big', $2)`, [id, JSON.stringify('x'.repeat(2000))])).rejects.toMatchObject({
        code: '54000',
        message: expect.stringMatching(/^df\.signal: the payload \(2002 bytes\) is larger than the limit of 1000 bytes/),
      });
    } finally {
      await su.query(`UPDATE df.settings SET value = $1 WHERE name = 'max_step_result'`, [String(limit)]);
    }
    await app.query(`SELECT df.signal($1, 'other', '{}') FROM generate_series(1, 1000)`, [id]);
    await expect(app.query(`SELECT df.signal($1, 'other', '{}')`, [id])).rejects.toMatchObject({
      code: '54000',
      message: `Instance ${id} already keeps 1000 signals no wait has taken: signal 'other' was not kept`,
    });
    await app.query('SELECT df.cancel($1)', [id]);
  });

  it("another role's instance cannot be signalled: it is not found", async () => {
    await createRoles(['pgdp_sig_bob']);
    await su.query(`SELECT df.grant_usage('pgdp_sig_bob')`);
    const id = await start(app, `df.wait_for_signal('mine', 30)`);
    const bob = await d.connect('pgdp_sig_bob', 'pgdp_sig_bob-pw');
    await expect(bob.query(`SELECT df.signal($1, 'mine')`, [id])).rejects.toMatchObject({ code: 'P0002', message: `Instance not found or access denied: ${id}` });
    await app.query('SELECT df.cancel($1)', [id]);
  });

  it('refused at df.start with the position of the call: an empty name, a timeout that is not positive', async () => {
    for (const [expr, message] of [
      [`df.wait_for_signal('')`, 'Signal name must not be empty'],
      [`df.wait_for_signal('x', 0)`, 'Timeout must be positive'],
    ] as const) {
      const sql = `SELECT df.start('SELECT 1' ~> ${expr})`;
      const err = await app.query(sql).then(() => undefined, (e: unknown) => e as { code: string; message: string; position: string });
      expect(err).toMatchObject({ code: '22023', message });
      expect(sql.slice(Number(err!.position) - 1)).toMatch(/^df\.wait_for_signal/);
      // The SQL builders refuse it in the same words.
      await expect(app.query(`DO $$ BEGIN PERFORM df.start(${expr}); END $$`)).rejects.toMatchObject({ code: '22023', message });
    }
  });

  it('from plain SQL: a DO block starts the wait and another signals it', async () => {
    await app.query(`CREATE TABLE started (id text)`);
    await app.query(`DO $$ BEGIN INSERT INTO started SELECT df.start(df.wait_for_signal('sql') ~> 'SELECT 42 AS n'); END $$`);
    const id = (await app.query('SELECT id FROM started')).rows[0].id as string;
    await app.query(`DO $$ BEGIN PERFORM df.signal((SELECT id FROM started), 'sql', '{}'); END $$`);
    expect(await awaitEnd(id)).toEqual({ status: 'completed', result: { rows: [{ n: 42 }], row_count: 1 } });
  });

  it('a hand-written SIGNAL node gets the same checks as the builder', async () => {
    const graph = JSON.stringify({ node_type: 'SIGNAL', query: JSON.stringify({ signal_name: '', timeout_seconds: null }) });
    await expect(app.query(`DO $$ BEGIN PERFORM df.start(${pg.escapeLiteral(graph)}); END $$`)).rejects.toMatchObject({ message: 'Signal name must not be empty' });
    const bad = JSON.stringify({ node_type: 'SIGNAL', query: 'approve' });
    await expect(app.query(`SELECT df.start(${pg.escapeLiteral(bad)})`)).rejects.toMatchObject({
      message: expect.stringMatching(/^Malformed Durofut JSON: a SIGNAL node takes \{"signal_name": \.\.\., "timeout_seconds": \.\.\.\}, not approve$/),
    });
  });
});
