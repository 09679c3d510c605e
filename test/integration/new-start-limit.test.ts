// transaction_mode => 'new' opens a server connection per start; as in
// pg_durable only a few run at once (--max-new-transaction-starts), and a start
// that finds no free slot within --new-transaction-start-timeout fails with
// 53300 instead of piling up connections.
import type pg from 'pg';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startDurable, type Durable } from '../helpers/durable.js';
import { untilActivity } from '../helpers/wait.js';

let d: Durable;
let admin: pg.Client;

beforeAll(async () => {
  d = await startDurable('pgdp_new_limit', {}, { max: 1, timeoutMs: 1000 });
  admin = await d.direct();
});
afterAll(async () => {
  await d?.close();
});

const START = `SELECT df.start('SELECT 1', 'limited', transaction_mode => 'new') AS id`;

it('a start beyond the limit waits for a slot, then fails with 53300; the one in flight completes', async () => {
  const first = await d.connect();
  const second = await d.connect();
  // Hold the first start inside df.start: its token insert waits for this lock.
  const blocker = await d.direct();
  await blocker.query('BEGIN');
  await blocker.query('LOCK TABLE df.callers IN ACCESS EXCLUSIVE MODE');
  const pending = first.query<{ id: string }>(START);
  await untilActivity(admin, `application_name = 'pg-durable-proxy new-transaction' AND wait_event_type = $1`, 'Lock');
  await expect(second.query(START)).rejects.toMatchObject({
    code: '53300',
    message: "pg-durable-proxy: transaction_mode => 'new' launch limit reached (--max-new-transaction-starts=1). Timed out after 1s waiting for a free slot.",
  });
  await blocker.query('COMMIT');
  const { rows } = await pending;
  expect((await admin.query(`SELECT count(*)::int AS n FROM df.instances WHERE label = 'limited'`)).rows[0].n).toBe(1);
  expect((await admin.query('SELECT df.await_instance($1) AS s', [rows[0]!.id])).rows[0].s).toBe('completed');
  // The slot is free again.
  const again = await second.query<{ id: string }>(START);
  expect((await admin.query('SELECT df.await_instance($1) AS s', [again.rows[0]!.id])).rows[0].s).toBe('completed');
});
