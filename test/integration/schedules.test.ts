// Schedules: df.wait_for_schedule waits for the next tick of a cron
// expression in a time zone. The executor's schedule clock is injected, so
// a tick is a few seconds away instead of at a real minute or day boundary.
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runWorkflow, startDurable, type Durable } from '../helpers/durable.js';
import { eventually } from '../helpers/wait.js';

let d: Durable;
let app: pg.Client;
let su: pg.Client;
/** The schedule clock runs `offset` ms ahead of the real one, unless a test sets its own. */
let offset = 0;
let clock: (() => number) | undefined;

beforeAll(async () => {
  d = await startDurable('pgdp_schedules', { clock: () => (clock ? clock() : Date.now() + offset) });
  app = await d.connect();
  su = await d.direct();
  await app.query('CREATE TABLE ran (at timestamptz DEFAULT clock_timestamp())');
});
afterAll(async () => {
  await d?.close();
});

/** Sets the schedule clock to `ms` before `at`. */
const clockBefore = (at: string, ms: number): void => {
  offset = Date.parse(at) - ms - Date.now();
};

describe('df.wait_for_schedule', () => {
  it('waits (parked) for the next tick in UTC, then the workflow goes on; the result is pg_durable\'s', async () => {
    clockBefore('2026-06-15T00:00:00Z', 3000);
    const before = Date.now();
    const r = await runWorkflow(app, `df.start(df.wait_for_schedule('0 0 * * *') |=> 'w' ~> 'INSERT INTO ran DEFAULT VALUES')`);
    expect(r.status).toBe('completed');
    const node = (await su.query(`SELECT result, wake_at FROM df.nodes WHERE instance_id = $1 AND node_type = 'WAIT_SCHEDULE'`, [r.id])).rows[0];
    expect(node.result).toEqual({ scheduled: true });
    // The tick was 3 s away on the schedule clock: the deadline recorded is 3 s after the start on the real one.
    expect(node.wake_at.getTime() - before).toBeGreaterThanOrEqual(2900);
    expect(node.wake_at.getTime() - before).toBeLessThan(4000);
    const ran = (await app.query<{ at: Date }>('SELECT at FROM ran')).rows[0]!.at;
    expect(ran.getTime()).toBeGreaterThanOrEqual(node.wake_at.getTime());
  });

  it('in a time zone: 02:00 in Europe/Paris is 00:00 UTC in summer', async () => {
    clockBefore('2026-07-01T00:00:00Z', 2500);
    const before = Date.now();
    const r = await runWorkflow(app, `df.start(df.wait_for_schedule('0 2 * * *', 'Europe/Paris'))`);
    expect(r).toMatchObject({ status: 'completed', result: { scheduled: true } });
    const at = (await su.query(`SELECT wake_at FROM df.nodes WHERE instance_id = $1`, [r.id])).rows[0].wake_at as Date;
    expect(at.getTime() - before).toBeGreaterThanOrEqual(2400);
    expect(at.getTime() - before).toBeLessThan(3500);
  });

  it('standard cron day of week: 1-5 is Monday to Friday (a Saturday waits for Monday)', async () => {
    // Saturday 2026-06-13 23:59:58 UTC: the next 0 0 * * 1-5 tick is not Sunday 00:00 (pg_durable's
    // cron would count 1-5 as Sunday to Thursday) but Monday 00:00, a day and 2 s away.
    clockBefore('2026-06-14T00:00:00Z', 2000);
    const id = (await app.query<{ id: string }>(`SELECT df.start(df.wait_for_schedule('0 0 * * 1-5')) AS id`)).rows[0]!.id;
    const before = Date.now();
    let wake: Date | undefined;
    await eventually(async () => {
      wake = (await su.query(`SELECT wake_at FROM df.nodes WHERE instance_id = $1 AND wake_at IS NOT NULL`, [id])).rows[0]?.wake_at;
      return wake !== undefined;
    }, 'the schedule to record its tick');
    const days = (wake!.getTime() - before) / 86_400_000;
    expect(days).toBeGreaterThan(1);
    expect(days).toBeLessThan(1.01);
    await app.query('SELECT df.cancel($1)', [id]);
  });

  it('a recurring job: @> (wait ~> step) runs once per tick', async () => {
    // Each time the schedule is read, its clock stands 1.2 s before the next minute of a timeline one minute further on.
    let minute = Date.parse('2026-09-01T00:00:00Z');
    clock = () => (minute += 60_000) - 1200;
    try {
      await app.query('CREATE TABLE ticks (at timestamptz DEFAULT clock_timestamp())');
      // Started in plain SQL (a DO block), as a trigger or a migration would.
      await app.query(`CREATE TABLE job (id text)`);
      await app.query(`DO $$ BEGIN INSERT INTO job SELECT df.start(@> (df.wait_for_schedule('* * * * *') ~> 'INSERT INTO ticks DEFAULT VALUES'), 'every minute'); END $$`);
      await eventually(async () => (await app.query('SELECT count(*)::int AS n FROM ticks')).rows[0].n >= 3, 'three ticks', 30_000);
      const id = (await app.query('SELECT id FROM job')).rows[0].id as string;
      expect((await app.query('SELECT df.status($1) AS s', [id])).rows[0].s).toBe('running');
      await app.query('SELECT df.cancel($1)', [id]);
    } finally {
      clock = undefined;
    }
  });

  it('a bad expression or time zone is refused at df.start, with the position of the call, in pg_durable\'s words', async () => {
    for (const [expr, message] of [
      [`df.wait_for_schedule('61 * * * *')`, /^Invalid cron expression '61 \* \* \* \*': /],
      [`df.wait_for_schedule('* * * *')`, /^Invalid cron expression '\* \* \* \*': /],
      [`df.wait_for_schedule('0 2 * * *', 'Mars/Olympus')`, /^Invalid time zone 'Mars\/Olympus'/],
    ] as const) {
      const sql = `SELECT df.start('SELECT 1' ~> ${expr})`;
      const err = await app.query(sql).then(() => undefined, (e: unknown) => e as { code: string; message: string; position: string });
      expect(err).toMatchObject({ code: '22023', message: expect.stringMatching(message) });
      expect(sql.slice(Number(err!.position) - 1)).toMatch(/^df\.wait_for_schedule/);
      const inSql = await app.query(`DO $$ BEGIN PERFORM df.start(${expr}); END $$`).then(() => undefined, (e: unknown) => e as Error);
      expect(inSql?.message).toBe(err!.message);
    }
  });
});
