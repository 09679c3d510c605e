// Waiting costs nothing: a sleep of two seconds or more parks its instance.
// The instance leaves the executor's memory and slots, its run row says when
// it is due, and it is claimed again then, resuming from its checkpoints.
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRoles, runWorkflow, startDurable, type Durable } from '../helpers/durable.js';
import { eventually } from '../helpers/wait.js';

let d: Durable;
let admin: pg.Client;
let su: pg.Client;

beforeAll(async () => {
  d = await startDurable('pgdp_parked', { maxInstances: 4 });
  admin = await d.connect();
  su = await d.direct();
  await admin.query('CREATE TABLE marks (what text, at timestamptz DEFAULT clock_timestamp())');
});
afterAll(async () => {
  await d?.close();
});

/** The run row of an instance: who holds it, and until when nobody may claim it. */
const run = async (id: string): Promise<{ owner: string | null; due: Date | null } | undefined> =>
  (await su.query('SELECT owner, lease_expires AS due FROM df.runs WHERE instance_id = $1', [id])).rows[0];

/** Claimed (a lease), then handed back with the deadline: no owner, not claimable before it. */
const untilParked = (id: string): Promise<void> =>
  eventually(async () => {
    const r = await run(id);
    return r !== undefined && r.owner === null && r.due !== null && r.due.getTime() > Date.now() + 1000;
  }, 'the instance to be parked', 5000);

describe('parked waits', () => {
  it('a sleep parks the instance: no executor holds its run until the deadline, and it wakes within a second of it', async () => {
    const { rows } = await admin.query<{ id: string }>(`SELECT df.start(df.sleep(3) ~> 'INSERT INTO marks VALUES (''woke'') RETURNING 1') AS id`);
    const id = rows[0]!.id;
    await untilParked(id);
    const parked = (await run(id))!;
    const deadline = (await su.query<{ wake_at: Date }>(`SELECT wake_at FROM df.nodes WHERE instance_id = $1 AND node_type = 'SLEEP'`, [id])).rows[0]!.wake_at;
    expect(parked.due!.getTime()).toBe(deadline.getTime());
    expect((await su.query('SELECT status FROM df.instances WHERE id = $1', [id])).rows[0].status).toBe('running');
    expect((await admin.query('SELECT df.await_instance($1, 30) AS s', [id])).rows[0].s).toBe('completed');
    const woke = (await admin.query<{ at: Date }>(`SELECT at FROM marks WHERE what = 'woke'`)).rows[0]!.at;
    expect(woke.getTime()).toBeGreaterThanOrEqual(deadline.getTime());
    expect(woke.getTime() - deadline.getTime()).toBeLessThan(1000);
  });

  it('a deadline past 24.8 days (longer than a timer can wait) parks without a timer firing at once', async () => {
    // Node fires a setTimeout of more than 2^31-1 ms at once, with a TimeoutOverflowWarning: the executor
    // would then look for due work in a loop. The executor here runs in this process, so its warnings come here.
    const warnings: string[] = [];
    const onWarning = (w: Error): void => void warnings.push(w.name);
    process.on('warning', onWarning);
    try {
      const { rows } = await admin.query<{ id: string }>(`SELECT df.start(df.sleep(40 * 86400) ~> 'SELECT 1') AS id`);
      const id = rows[0]!.id;
      await untilParked(id);
      // The executor's wake timer is set as the park completes; a poll later it has looked at the deadline again.
      await eventually(async () => (await su.query(`SELECT count(*)::int AS n FROM df.runs WHERE instance_id = $1 AND owner IS NULL`, [id])).rows[0].n === 1, 'parked');
      expect(warnings).not.toContain('TimeoutOverflowWarning');
      await admin.query('SELECT df.cancel($1)', [id]);
    } finally {
      process.off('warning', onWarning);
    }
  });

  it('parked instances hold no slot: with 4 slots, 12 sleepers of one role and another role runs at once', async () => {
    await createRoles(['pgdp_pk_other']);
    await (await d.superuser()).query(`SELECT df.grant_usage('pgdp_pk_other')`);
    const sleepers: string[] = [];
    for (let i = 0; i < 12; i++) sleepers.push((await admin.query<{ id: string }>(`SELECT df.start(df.sleep(600), 'sleeper') AS id`)).rows[0]!.id);
    await eventually(
      async () =>
        (await su.query(`SELECT count(*)::int AS n FROM df.runs WHERE owner IS NULL AND lease_expires > now() + interval '60 seconds' AND instance_id = ANY ($1)`, [sleepers]))
          .rows[0].n === 12,
      'all 12 sleepers to be parked',
      20_000,
    );
    const other = await d.connect('pgdp_pk_other', 'pgdp_pk_other-pw');
    expect((await runWorkflow(other, `df.start('SELECT 1 AS one')`, [], 10)).status).toBe('completed');
    for (const id of sleepers) await admin.query('SELECT df.cancel($1)', [id]);
  });

  it('df.cancel of a parked instance cancels it: it never wakes, its later steps never run', async () => {
    const { rows } = await admin.query<{ id: string }>(`SELECT df.start(df.sleep(3) ~> 'INSERT INTO marks VALUES (''after cancel'') RETURNING 1') AS id`);
    const id = rows[0]!.id;
    await untilParked(id);
    await admin.query('SELECT df.cancel($1)', [id]);
    expect(await run(id)).toBeUndefined(); // nothing left to claim
    expect((await admin.query('SELECT df.await_instance($1, 10) AS s', [id])).rows[0].s).toBe('cancelled');
    expect((await admin.query(`SELECT count(*)::int AS n FROM marks WHERE what = 'after cancel'`)).rows[0].n).toBe(0);
  });

  it('a JOIN of a sleep and steps: the steps run at once and once; the instance parks only when all of it waits', async () => {
    const r = await runWorkflow(
      admin,
      `df.start(df.join(df.sleep(3), 'INSERT INTO marks VALUES (''joined'') RETURNING pg_sleep(0.5)' ~> 'INSERT INTO marks VALUES (''joined'') RETURNING 1'))`,
    );
    expect(r.status).toBe('completed');
    const marks = await admin.query<{ n: number; first: Date }>(`SELECT count(*)::int AS n, min(at) AS first FROM marks WHERE what = 'joined'`);
    expect(marks.rows[0]!.n).toBe(2);
    const started = (await su.query<{ at: Date }>('SELECT created_at AS at FROM df.instances WHERE id = $1', [r.id])).rows[0]!.at;
    expect(marks.rows[0]!.first.getTime() - started.getTime()).toBeLessThan(1000);
  });
});
