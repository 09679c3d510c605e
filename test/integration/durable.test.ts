// Workflows through the proxy, run by its executor on the test PostgreSQL:
// the node types, results, statuses and failures a pg_durable user relies on.
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRoles, runWorkflow, startDurable, type Durable } from '../helpers/durable.js';
import { eventually } from '../helpers/wait.js';

let d: Durable;
let admin: pg.Client;

beforeAll(async () => {
  d = await startDurable('pgdp_durable');
  admin = await d.connect();
  await admin.query('CREATE TABLE log (step text, at timestamptz DEFAULT clock_timestamp())');
});
afterAll(async () => {
  await d?.close();
});

describe('sequences and results', () => {
  it('runs a chain in order and returns the last step result, with named results substituted', async () => {
    const r = await runWorkflow(
      admin,
      `df.start('SELECT 41 AS n, ''a''''b'' AS s' |=> 'x' ~> 'SELECT $x + 1 AS n, $x.s AS s, $x.n AS again' |=> 'y' ~> 'SELECT $y * 2 AS n', 'chain')`,
    );
    expect(r.status).toBe('completed');
    expect(r.result).toEqual({ rows: [{ n: 84 }], row_count: 1 });
    const nodes = await admin.query(`SELECT node_type, status, result_name, result FROM df.nodes WHERE instance_id = $1`, [r.id]);
    expect(nodes.rows.map((n) => n.status)).toEqual(Array(nodes.rows.length).fill('completed'));
    // |=> binds to the whole chain on its left (a THEN, whose result is its right step's).
    expect(nodes.rows.find((n) => n.result_name === 'y')).toMatchObject({ node_type: 'THEN', result: { rows: [{ n: 42, s: "a'b", again: 41 }], row_count: 1 } });
  });

  it('types every column: numbers, numeric as text, timestamps in UTC, arrays, bytea, json, intervals', async () => {
    const r = await runWorkflow(
      admin,
      `df.start($$SELECT true AS b, 7::int8 AS i, 1.5::float8 AS f, 'NaN'::float8 AS nan, 12.50::numeric AS num,
        '2024-06-15 14:30:00+02'::timestamptz AS tz, '2024-06-15 14:30:00.5'::timestamp AS ts, '2024-06-15'::date AS d,
        ARRAY[1, NULL, 3] AS arr, ARRAY['a b', 'c'] AS texts, '\\x0102'::bytea AS bin, '{"k": [1]}'::jsonb AS j,
        '1 day 2 hours'::interval AS iv, NULL::text AS nothing$$)`,
    );
    expect(r.status).toBe('completed');
    expect(r.result).toEqual({
      row_count: 1,
      rows: [{
        b: true, i: 7, f: 1.5, nan: null, num: '12.50', tz: '2024-06-15T12:30:00+00:00', ts: '2024-06-15T14:30:00.5', d: '2024-06-15',
        arr: [1, null, 3], texts: ['a b', 'c'], bin: 'AQI=', j: { k: [1] }, iv: '1 day 02:00:00', nothing: null,
      }],
    });
  });

  it('keeps the column order of a result for $name (first column), though df.nodes stores jsonb', async () => {
    const r = await runWorkflow(admin, `df.start('SELECT 2 AS zz, 1 AS aa' |=> 'r' ~> 'SELECT $r AS first')`);
    expect(r.result).toEqual({ rows: [{ first: 2 }], row_count: 1 });
  });

  it('a statement without RETURNING has no rows as its result, even when a rule makes rows with DO INSTEAD SELECT (as in a prepared execution in pg_durable)', async () => {
    await admin.query(`CREATE TABLE doubled (a int);
      CREATE RULE doubled_insert AS ON INSERT TO doubled DO INSTEAD SELECT NEW.a * 2 AS twice`);
    const r = await runWorkflow(
      admin,
      `df.start('INSERT INTO log (step) VALUES (''no rows'')' |=> 'plain' ~> 'INSERT INTO doubled VALUES (21)' |=> 'ruled' ~> 'SELECT 1')`,
    );
    expect(r.status).toBe('completed');
    const nodes = await admin.query(`SELECT result_name, result FROM df.nodes WHERE instance_id = $1 AND result_name IS NOT NULL ORDER BY result_name`, [r.id]);
    expect(nodes.rows).toEqual([
      { result_name: 'plain', result: { rows: [], row_count: 0 } },
      { result_name: 'ruled', result: { rows: [], row_count: 0 } },
    ]);
    expect((await admin.query(`SELECT count(*)::int AS n FROM log WHERE step = 'no rows'`)).rows[0].n).toBe(1);
    // With RETURNING the rows are the result, and the checkpoint stores them.
    const ret = await runWorkflow(admin, `df.start('INSERT INTO log (step) VALUES (''returned'') RETURNING step')`);
    const stored = await admin.query(`SELECT result FROM df.nodes WHERE instance_id = $1 AND node_type = 'SQL'`, [ret.id]);
    expect(stored.rows[0].result).toEqual({ rows: [{ step: 'returned' }], row_count: 1 });
  });

  it('substitutes variables snapshotted at start, and the instance id and label', async () => {
    await admin.query(`SELECT df.setvar('tbl', 'log')`);
    const { rows } = await admin.query<{ id: string }>(`SELECT df.start('INSERT INTO {tbl} (step) VALUES (''{sys_instance_id}/{sys_label}'') RETURNING step', 'lbl') AS id`);
    await admin.query(`SELECT df.setvar('tbl', 'nowhere')`); // too late: the instance has its snapshot
    await admin.query('SELECT df.await_instance($1)', [rows[0]!.id]);
    const res = await admin.query(`SELECT df.result($1) AS r`, [rows[0]!.id]);
    expect(JSON.parse(res.rows[0].r)).toEqual({ rows: [{ step: `${rows[0]!.id}/lbl` }], row_count: 1 });
    await admin.query('SELECT df.clearvars()');
  });
});

describe('failures', () => {
  it('fails the instance with the error text; nothing after the failed step runs', async () => {
    const r = await runWorkflow(admin, `df.start('SELECT 1' ~> 'SELECT * FROM no_such_table' ~> 'INSERT INTO log VALUES (''after failure'')')`);
    expect(r.status).toBe('failed');
    expect(r.result).toBeNull();
    expect(r.output).toBe('relation "no_such_table" does not exist (SQLSTATE 42P01)');
    const failed = await admin.query(`SELECT node_type, result FROM df.nodes WHERE instance_id = $1 AND status = 'failed' ORDER BY node_type`, [r.id]);
    expect(failed.rows.map((n) => n.node_type)).toEqual(['SQL', 'THEN', 'THEN']);
    for (const n of failed.rows) expect(n.result).toBe('relation "no_such_table" does not exist (SQLSTATE 42P01)');
    expect((await admin.query(`SELECT count(*)::int AS n FROM log WHERE step = 'after failure'`)).rows[0].n).toBe(0);
  });

  it('refuses a batch of statements in one step: at df.start when the proxy compiles it, else when the step runs', async () => {
    await expect(admin.query(`SELECT df.start('INSERT INTO log VALUES (''batch''); SELECT 1')`)).rejects.toMatchObject({ code: '42601' });
    const r = await runWorkflow(admin, 'df.start($1)', ["INSERT INTO log VALUES ('batch'); SELECT 1"]);
    expect(r.status).toBe('failed');
    expect(r.output).toMatch(/cannot insert multiple commands into a prepared statement/);
    expect((await admin.query(`SELECT count(*)::int AS n FROM log WHERE step = 'batch'`)).rows[0].n).toBe(0);
  });

  it('fails a step whose $reference finds no rows, naming it', async () => {
    const r = await runWorkflow(admin, `df.start('SELECT 1 WHERE false' |=> 'e' ~> 'SELECT $e')`);
    expect(r.status).toBe('failed');
    expect(r.output).toBe('$e has no rows — query returned zero results');
  });

  it('a failing write fails its step; the next workflow runs on the same connections as if nothing happened', async () => {
    const r = await runWorkflow(admin, `df.start('INSERT INTO no_such_table VALUES (1)' ~> 'INSERT INTO log VALUES (''after failed insert'')')`);
    expect(r.output).toBe('relation "no_such_table" does not exist (SQLSTATE 42P01)');
    for (let i = 0; i < 12; i++) {
      // more workflows than step connections: every pooled connection is reused
      const ok = await runWorkflow(admin, `df.start('INSERT INTO log VALUES (''reused'')' ~> 'SELECT count(*)::int AS n FROM log WHERE step = ''reused''')`);
      expect(ok.result).toEqual({ rows: [{ n: i + 1 }], row_count: 1 });
    }
    expect((await admin.query(`SELECT count(*)::int AS n FROM log WHERE step = 'after failed insert'`)).rows[0].n).toBe(0);
  });

  it('no session state survives a step: SET, TEMP tables and PREPAREd statements do not reach later steps', async () => {
    const dirty = await runWorkflow(
      admin,
      `df.start('SET datestyle = ''German''' ~> 'CREATE TEMP TABLE leak (a int)' ~> 'PREPARE leak AS SELECT 1' ~> 'SELECT set_config(''search_path'', ''nowhere'', false)')`,
    );
    expect(dirty.status).toBe('completed');
    for (let i = 0; i < 12; i++) {
      // more workflows than step connections: every pooled connection is looked at
      const r = await runWorkflow(
        admin,
        `df.start($$SELECT current_setting('datestyle') AS ds, current_setting('df.in_workflow') AS w, current_setting('search_path') AS sp,
                   to_regclass('pg_temp.leak') IS NULL AS no_temp, (SELECT count(*) FROM pg_prepared_statements WHERE name = 'leak')::int AS prepared$$)`,
      );
      expect(r.result).toEqual({ rows: [{ ds: 'ISO, MDY', w: 'true', sp: '"$user", public', no_temp: true, prepared: 0 }], row_count: 1 });
    }
  });

  it('a step that deallocates prepared statements fails with a clear error instead of retrying', async () => {
    // The pool hands the last connection back first: the second step finds the checkpoint prepared by the first.
    const r = await runWorkflow(admin, `df.start('SELECT 1' ~> 'DEALLOCATE ALL')`);
    expect(r.status).toBe('failed');
    expect(r.output).toMatch(/^the step deallocated the executor's prepared checkpoint, so it cannot commit: .*\(SQLSTATE 26000\)$/);
  });

  it('fails the step when its own COMMIT fails (a deferred constraint), and nothing of it stays', async () => {
    await admin.query(`CREATE TABLE parent (id int PRIMARY KEY);
      CREATE TABLE child (parent int REFERENCES parent DEFERRABLE INITIALLY DEFERRED)`);
    const r = await runWorkflow(admin, `df.start('INSERT INTO child VALUES (7)' ~> 'INSERT INTO log VALUES (''after commit failure'')')`);
    expect(r.status).toBe('failed');
    expect(r.output).toMatch(/violates foreign key constraint .* \(SQLSTATE 23503\)$/);
    expect((await admin.query('SELECT count(*)::int AS n FROM child')).rows[0].n).toBe(0);
    expect((await admin.query(`SELECT count(*)::int AS n FROM log WHERE step = 'after commit failure'`)).rows[0].n).toBe(0);
  });

  it('fails df.break() outside a loop', async () => {
    const r = await runWorkflow(admin, `df.start('SELECT 1' ~> df.break())`);
    expect(r.output).toBe('df.break() was called outside of a loop. df.break() may only be used inside df.loop().');
  });
});

describe('branches', () => {
  it('JOIN waits for all branches and returns their results in order; a failed branch names its number', async () => {
    const ok = await runWorkflow(admin, `df.start(df.join3('SELECT 1 AS a', 'SELECT 2 AS b', 'SELECT 3 AS c'))`);
    expect(ok.result).toEqual([
      { rows: [{ a: 1 }], row_count: 1 },
      { rows: [{ b: 2 }], row_count: 1 },
      { rows: [{ c: 3 }], row_count: 1 },
    ]);
    const bad = await runWorkflow(admin, `df.start('SELECT 1' & 'SELECT 1/0' & 'SELECT 3')`);
    expect(bad.status).toBe('failed');
    expect(bad.output).toBe('JOIN branch 1 failed: JOIN branch 2 failed: division by zero (SQLSTATE 22012)');
  });

  it('JOIN branches run concurrently', async () => {
    const branch = `'SELECT clock_timestamp() AS began, pg_sleep(0.5)::text AS slept, clock_timestamp() AS ended'`;
    const r = await runWorkflow(admin, `df.start(${branch} & ${branch} & ${branch})`);
    expect(r.status).toBe('completed');
    // Every branch began before any ended: they overlapped, not one after another.
    const rows = (r.result as unknown[]).flat(2).map((b) => (b as { rows: { began: string; ended: string }[] }).rows[0]!); // (a & b) & c nests
    const lastBegan = Math.max(...rows.map((b) => Date.parse(b.began)));
    const firstEnded = Math.min(...rows.map((b) => Date.parse(b.ended)));
    expect(lastBegan).toBeLessThan(firstEnded);
  });

  it('a RACE loser that writes without RETURNING (sent with its checkpoint in one round trip) is cancelled and leaves nothing', async () => {
    const r = await runWorkflow(admin, `df.start('INSERT INTO log SELECT ''slow insert'' FROM pg_sleep(30)' | 'SELECT ''fast'' AS w')`);
    expect(r.result).toEqual({ rows: [{ w: 'fast' }], row_count: 1 });
    await eventually(
      async () => (await admin.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE query LIKE 'INSERT INTO log SELECT%'`)).rows[0].n === 0,
      'the loser to be cancelled',
    );
    expect((await admin.query(`SELECT count(*)::int AS n FROM log WHERE step = 'slow insert'`)).rows[0].n).toBe(0);
    const loser = await admin.query(`SELECT status FROM df.nodes WHERE instance_id = $1 AND node_type = 'SQL' AND query LIKE 'INSERT%'`, [r.id]);
    expect(loser.rows[0].status).not.toBe('completed');
  });

  it('RACE returns the first branch to finish and stops the loser: its statement is cancelled, its later steps never run', async () => {
    const r = await runWorkflow(admin, `df.start(('SELECT pg_sleep(30)' ~> 'INSERT INTO log VALUES (''loser'')') | 'SELECT ''fast'' AS w')`);
    expect(r.status).toBe('completed');
    expect(r.result).toEqual({ rows: [{ w: 'fast' }], row_count: 1 });
    await eventually(
      async () => (await admin.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'`)).rows[0].n === 0,
      'the losing statement to be cancelled',
    );
    // The instance ended with the loser: no node of it is left running, the loser's next step never started
    // (and could not commit now: its checkpoint is fenced by the run row, gone with the instance's end).
    const nodes = await admin.query<{ query: string | null; node_type: string; status: string }>(
      `SELECT query, node_type, status FROM df.nodes WHERE instance_id = $1 ORDER BY id`, [r.id],
    );
    expect(nodes.rows.filter((n) => n.status === 'running')).toEqual([]);
    expect(nodes.rows.find((n) => n.query === 'SELECT pg_sleep(30)')!.status).toBe('failed');
    expect(nodes.rows.find((n) => n.query?.startsWith('INSERT INTO log'))!.status).toBe('pending');
    expect((await admin.query(`SELECT count(*)::int AS n FROM log WHERE step = 'loser'`)).rows[0].n).toBe(0);
  });

  it('completed_at is set only when an instance completed (pg_durable leaves it NULL on failed ones)', async () => {
    const ok = await runWorkflow(admin, `df.start('SELECT 1')`);
    const failed = await runWorkflow(admin, `df.start('SELECT 1/0')`);
    const rows = await admin.query<{ id: string; completed: boolean }>(
      `SELECT id, completed_at IS NOT NULL AS completed FROM df.instances WHERE id = ANY ($1)`, [[ok.id, failed.id]],
    );
    expect(Object.fromEntries(rows.rows.map((x) => [x.id, x.completed]))).toEqual({ [ok.id]: true, [failed.id]: false });
  });

  it('a fast failure wins a RACE', async () => {
    const r = await runWorkflow(admin, `df.start('SELECT pg_sleep(5)' | 'SELECT 1/0')`);
    expect(r.output).toBe('RACE right branch failed: division by zero (SQLSTATE 22012)');
  });

  it('IF takes the branch its condition selects; ?> !> and if_rows', async () => {
    const yes = await runWorkflow(admin, `df.start('SELECT true' ?> 'SELECT ''then'' AS b' !> 'SELECT ''else'' AS b')`);
    expect(yes.result).toEqual({ rows: [{ b: 'then' }], row_count: 1 });
    const no = await runWorkflow(admin, `df.start(df.if('SELECT 0', 'SELECT ''then'' AS b', 'SELECT ''else'' AS b'))`);
    expect(no.result).toEqual({ rows: [{ b: 'else' }], row_count: 1 });
    const rows = await runWorkflow(admin, `df.start('SELECT 1 WHERE false' |=> 'q' ~> df.if_rows('q', 'SELECT ''some'' AS b', 'SELECT ''none'' AS b'))`);
    expect(rows.result).toEqual({ rows: [{ b: 'none' }], row_count: 1 });
    const missing = await runWorkflow(admin, `df.start(df.if_rows('nope', 'SELECT 1', 'SELECT 2'))`);
    expect(missing.output).toBe("df.if_rows: result 'nope' not found");
  });
});

describe('loops and timers', () => {
  it('a while loop runs its body until the condition is false and returns the last body result', async () => {
    await admin.query('CREATE TABLE counter (n int)');
    await admin.query('INSERT INTO counter VALUES (0)');
    const r = await runWorkflow(admin, `df.start(df.loop('UPDATE counter SET n = n + 1 RETURNING n', 'SELECT n < 3 FROM counter'))`);
    expect(r.status).toBe('completed');
    expect(r.result).toEqual({ rows: [{ n: 3 }], row_count: 1 });
    const loop = await admin.query(`SELECT iteration, status FROM df.nodes WHERE instance_id = $1 AND node_type = 'LOOP'`, [r.id]);
    expect(loop.rows[0]).toEqual({ iteration: 3, status: 'completed' });
  });

  it('df.break leaves the innermost loop with its value; a prefix step runs once', async () => {
    await admin.query('CREATE TABLE ticks (n int)');
    const r = await runWorkflow(
      admin,
      `df.start('INSERT INTO log VALUES (''prefix'')' ~> @> ('INSERT INTO ticks VALUES (1) RETURNING (SELECT count(*) + 1 FROM ticks) AS c' |=> 'c' ~> ('SELECT $c >= 2' ?> df.break('{"done": true}') !> 'SELECT 0')))`,
    );
    expect(r.status).toBe('completed');
    expect(r.result).toEqual({ done: true });
    expect((await admin.query('SELECT count(*)::int AS n FROM ticks')).rows[0].n).toBe(2);
    expect((await admin.query(`SELECT count(*)::int AS n FROM log WHERE step = 'prefix'`)).rows[0].n).toBe(1);
    // The nodes the break passed through (the IF, the THEN) ended completed, not failed: nothing failed here.
    const statuses = (await (await d.direct()).query(`SELECT node_type, status FROM df.nodes WHERE instance_id = $1`, [r.id])).rows;
    expect(statuses.filter((n) => n.status !== 'completed' && n.status !== 'pending')).toEqual([]);
  });

  it('df.sleep waits durably and records its deadline', async () => {
    const r = await runWorkflow(
      admin,
      `df.start(df.sleep(1) ~> 'SELECT clock_timestamp() - created_at >= interval ''1 second'' AS waited FROM df.instances WHERE id = ''{sys_instance_id}''')`,
    );
    expect(r.result).toEqual({ rows: [{ waited: true }], row_count: 1 });
    const s = await admin.query(
      `SELECT n.result, n.wake_at >= i.created_at + interval '1 second' AS deadline_set FROM df.nodes n JOIN df.instances i ON i.id = n.instance_id
        WHERE n.instance_id = $1 AND n.node_type = 'SLEEP'`,
      [r.id],
    );
    expect(s.rows[0]).toEqual({ result: { slept: true, seconds: 1 }, deadline_set: true });
  });

  it('a sleep in a loop sleeps in every iteration (each gets a deadline of its own), in a root loop and a nested one', async () => {
    await admin.query('CREATE TABLE naps (at timestamptz DEFAULT clock_timestamp())');
    for (const [what, wrap] of [['root', (b: string) => b], ['nested', (b: string) => `'SELECT 1' ~> ${b}`]] as const) {
      await admin.query('TRUNCATE naps');
      const r = await runWorkflow(
        admin,
        `df.start(${wrap(`df.loop(df.sleep(1) ~> 'INSERT INTO naps DEFAULT VALUES RETURNING 1', 'SELECT count(*) < 3 FROM naps')`)})`,
      );
      expect(r.status, what).toBe('completed');
      const gaps = await admin.query<{ gap: number }>(
        `SELECT extract(epoch FROM at - lag(at) OVER (ORDER BY at))::float8 AS gap FROM naps ORDER BY at`,
      );
      // Three naps; the second and third each came at least a second after the one before.
      expect(gaps.rows.length, what).toBe(3);
      for (const g of gaps.rows.slice(1)) expect(g.gap, what).toBeGreaterThanOrEqual(0.95);
    }
  });
});

describe('lifecycle', () => {
  it('df.cancel stops the running step, and nothing after it runs', async () => {
    const { rows } = await admin.query<{ id: string }>(`SELECT df.start('SELECT pg_sleep(30)' ~> 'INSERT INTO log VALUES (''after cancel'')') AS id`);
    const id = rows[0]!.id;
    await eventually(async () => (await admin.query(`SELECT 1 FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'`)).rows.length > 0, 'the step to run');
    expect((await admin.query('SELECT df.cancel($1) AS m', [id])).rows[0].m).toBe(`Instance ${id} cancelled: Cancelled by user`);
    await eventually(async () => (await admin.query(`SELECT 1 FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'`)).rows.length === 0, 'the step to be cancelled');
    await new Promise((r) => setTimeout(r, 300));
    expect((await admin.query('SELECT status, output FROM df.instances WHERE id = $1', [id])).rows[0]).toEqual({ status: 'cancelled', output: 'Cancelled by user' });
    expect((await admin.query(`SELECT count(*)::int AS n FROM log WHERE step = 'after cancel'`)).rows[0].n).toBe(0);
  });

  it('a start is part of the caller transaction: rolled back, it never runs; it runs only after COMMIT', async () => {
    await admin.query('BEGIN');
    await admin.query(`SELECT df.start('INSERT INTO log VALUES (''rolled back'')')`);
    await admin.query('ROLLBACK');
    await admin.query('BEGIN');
    const { rows } = await admin.query<{ id: string }>(`SELECT df.start('INSERT INTO log VALUES (''committed'')') AS id`);
    await new Promise((r) => setTimeout(r, 300));
    const other = await d.direct();
    expect((await other.query('SELECT count(*)::int AS n FROM df.instances WHERE id = $1', [rows[0]!.id])).rows[0].n).toBe(0);
    await admin.query('COMMIT');
    await admin.query('SELECT df.await_instance($1)', [rows[0]!.id]);
    const log = await admin.query(`SELECT step FROM log WHERE step IN ('rolled back', 'committed')`);
    expect(log.rows).toEqual([{ step: 'committed' }]);
  });

  it('statements that cannot run in a transaction block run on their own (at-least-once)', async () => {
    // CREATE INDEX CONCURRENTLY waits for every open transaction, df.await_instance's included: poll instead.
    const { rows } = await admin.query<{ id: string }>(`SELECT df.start('CREATE INDEX CONCURRENTLY log_step ON log (step)' ~> 'VACUUM log' ~> 'SELECT 1 AS ok') AS id`);
    await eventually(async () => (await admin.query('SELECT df.status($1) AS s', [rows[0]!.id])).rows[0].s === 'completed', 'the workflow to complete', 30_000);
    expect((await admin.query(`SELECT to_regclass('log_step') IS NOT NULL AS has`)).rows[0].has).toBe(true);
  });
});

describe('identity and isolation', () => {
  beforeAll(async () => {
    await createRoles(['pgdp_alice', 'pgdp_bob']);
    for (const r of ['pgdp_alice', 'pgdp_bob']) {
      await admin.query(`SELECT df.grant_usage('${r}')`);
      await admin.query(`GRANT ALL ON log TO ${r}`);
    }
  });

  it('a step runs as its submitter and cannot climb back to the executor role', async () => {
    const alice = await d.connect('pgdp_alice', 'pgdp_alice-pw');
    const who = await runWorkflow(alice, `df.start('SELECT current_user AS cu, session_user AS su')`);
    expect(who.result).toEqual({ rows: [{ cu: 'pgdp_alice', su: 'pgdp_alice' }], row_count: 1 });
    const reset = await runWorkflow(alice, `df.start('SELECT set_config(''role'', ''postgres'', false)')`);
    expect(reset.status).toBe('failed');
    expect(reset.output).toMatch(/permission denied to set role "postgres"/);
    const sessionAuth = await runWorkflow(alice, `df.start('SET SESSION AUTHORIZATION postgres')`);
    expect(sessionAuth.status).toBe('failed');
  });

  it('a role sees only its own instances, nodes and variables', async () => {
    const alice = await d.connect('pgdp_alice', 'pgdp_alice-pw');
    const bob = await d.connect('pgdp_bob', 'pgdp_bob-pw');
    const { rows } = await alice.query<{ id: string }>(`SELECT df.start('SELECT 1', 'alice job') AS id`);
    await alice.query(`SELECT df.setvar('secret', 'a')`);
    expect((await bob.query('SELECT count(*)::int AS n FROM df.instances WHERE id = $1', [rows[0]!.id])).rows[0].n).toBe(0);
    expect((await bob.query('SELECT count(*)::int AS n FROM df.nodes WHERE instance_id = $1', [rows[0]!.id])).rows[0].n).toBe(0);
    expect((await bob.query(`SELECT df.getvar('secret') AS v`)).rows[0].v).toBeNull();
    await expect(bob.query('SELECT df.cancel($1)', [rows[0]!.id])).rejects.toThrow(`Instance not found or access denied: ${rows[0]!.id}`);
    expect((await alice.query('SELECT df.await_instance($1)', [rows[0]!.id])).rows[0].await_instance).toBe('completed');
  });

  it("an instance's submitter is fixed once written, even for a role that bypasses row-level security", async () => {
    const alice = await d.connect('pgdp_alice', 'pgdp_alice-pw');
    // A sleep keeps the run row (and the nodes) there while the submitter is tampered with.
    const { rows } = await alice.query<{ id: string }>(`SELECT df.start(df.sleep(2) ~> 'SELECT current_user AS u') AS id`);
    const su = await d.direct();
    for (const [table, key] of [['instances', 'id'], ['nodes', 'instance_id'], ['runs', 'instance_id']] as const) {
      await su.query('BEGIN');
      const err = await su.query(`UPDATE df.${table} SET submitted_by = 'pgdp_bob' WHERE ${key} = $1`, [rows[0]!.id]).catch((e: unknown) => e);
      await su.query('ROLLBACK');
      expect(err, table).toMatchObject({ code: '42501', message: `df.${table}.submitted_by cannot change: a workflow runs as the role that started it` });
    }
    expect((await alice.query('SELECT df.await_instance($1) AS s', [rows[0]!.id])).rows[0].s).toBe('completed');
    expect(JSON.parse((await alice.query('SELECT df.result($1) AS r', [rows[0]!.id])).rows[0].r)).toEqual({ rows: [{ u: 'pgdp_alice' }], row_count: 1 });
  });

  it('a role without df usage cannot start workflows', async () => {
    await createRoles(['pgdp_nobody']);
    const nobody = await d.connect('pgdp_nobody', 'pgdp_nobody-pw');
    await expect(nobody.query(`SELECT df.start('SELECT 1')`)).rejects.toThrow(/permission denied for schema df/);
  });
});

describe("transaction_mode => 'new'", () => {
  it('starts in a transaction of its own, as the session role: it survives the caller rollback', async () => {
    await createRoles(['pgdp_carol']);
    await admin.query(`SELECT df.grant_usage('pgdp_carol')`);
    await admin.query('GRANT ALL ON log TO pgdp_carol');
    const carol = await d.connect('pgdp_carol', 'pgdp_carol-pw');
    await carol.query('BEGIN');
    const { rows, fields } = await carol.query(`SELECT df.start('INSERT INTO log VALUES (''new mode'')', 'own', transaction_mode => 'new')`);
    await carol.query('ROLLBACK');
    expect(fields.map((f) => f.name)).toEqual(['start']);
    const id = rows[0].start as string;
    expect(id).toMatch(/^[0-9a-f]{8}$/);
    expect((await carol.query('SELECT df.await_instance($1) AS s', [id])).rows[0].s).toBe('completed');
    // Read by a superuser: row-level security shows each role only its own instances.
    const inst = await (await d.direct()).query('SELECT label, submitted_by::text AS who FROM df.instances WHERE id = $1', [id]);
    expect(inst.rows).toEqual([{ label: 'own', who: 'pgdp_carol' }]);
    expect((await admin.query(`SELECT count(*)::int AS n FROM log WHERE step = 'new mode'`)).rows[0].n).toBe(1);
  });

  it('keeps an alias; in a failed transaction nothing starts', async () => {
    const named = await admin.query(`SELECT df.start('SELECT 1' ~> 'SELECT 2', transaction_mode => 'NEW') AS id`);
    expect((await admin.query('SELECT df.await_instance($1) AS s', [named.rows[0].id])).rows[0].s).toBe('completed');
    const before = (await admin.query('SELECT count(*)::int AS n FROM df.instances')).rows[0].n;
    await admin.query('BEGIN');
    await expect(admin.query('SELECT 1/0')).rejects.toThrow();
    await expect(admin.query(`SELECT df.start('SELECT 1', transaction_mode => 'new')`)).rejects.toMatchObject({ code: '25P02' });
    await admin.query('ROLLBACK');
    expect((await admin.query('SELECT count(*)::int AS n FROM df.instances')).rows[0].n).toBe(before);
  });

  it("a failed start reports the server's error at df.start; forms the proxy cannot start at once say why", async () => {
    const sql = `SELECT df.start('SELECT 1', database => 'no_such_db', transaction_mode => 'new')`;
    await expect(admin.query(sql)).rejects.toMatchObject({ code: '3D000', message: 'database "no_such_db" does not exist', position: '8' });
    // Bind parameters (a Parse may run many times) and statements with more than the call are left to df.start.
    await expect(admin.query(`SELECT df.start($1, transaction_mode => 'new')`, ['SELECT 1'])).rejects.toMatchObject({
      code: '0A000',
      hint: expect.stringContaining('as a simple query without bind parameters'),
    });
    await expect(admin.query(`SELECT df.start('SELECT 1', transaction_mode => 'new') FROM generate_series(1, 2)`)).rejects.toMatchObject({ code: '0A000' });
  });
});
