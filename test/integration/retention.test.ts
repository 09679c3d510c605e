// Retention: finished instances older than --retention-days, or beyond the
// newest --retention-max-instances, are pruned with their nodes; unfinished
// ones never are, whatever their age.
import type pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { startDurable, type Durable } from '../helpers/durable.js';
import { eventually } from '../helpers/wait.js';

let d: Durable | undefined;
afterEach(async () => {
  await d?.close();
  d = undefined;
});

/** `n` instances with one node each, straight into the tables, `ageDays` old, in `status`; ids from `from`. */
async function seed(su: pg.Client, from: number, n: number, status: string, ageDays: number): Promise<void> {
  await su.query('BEGIN');
  await su.query('SET LOCAL session_replication_role = replica');
  await su.query(
    `INSERT INTO df.instances (id, label, root_node, status, submitted_by, created_at, updated_at)
     SELECT lpad(to_hex(g), 8, '0'), $3, lpad(to_hex(g), 8, '0'), $3, current_user::regrole,
            now() - make_interval(days => $4) - make_interval(secs => g), now() - make_interval(days => $4) - make_interval(secs => g)
       FROM generate_series($1::int, $1::int + $2::int - 1) g`,
    [from, n, status, ageDays],
  );
  await su.query(
    `INSERT INTO df.nodes (id, instance_id, node_type, query, status, submitted_by)
     SELECT lpad(to_hex(g), 8, '0'), lpad(to_hex(g), 8, '0'), 'SQL', 'SELECT 1', 'completed', current_user::regrole
       FROM generate_series($1::int, $1::int + $2::int - 1) g`,
    [from, n],
  );
  await su.query('COMMIT');
}

const counts = async (su: pg.Client): Promise<Record<string, number>> =>
  Object.fromEntries(
    (await su.query<{ label: string; n: number }>(`SELECT label, count(*)::int AS n FROM df.instances GROUP BY label`)).rows.map((r) => [r.label, r.n]),
  );

describe('retention', () => {
  it('finished instances older than --retention-days go, with their nodes; recent ones and unfinished ones of any age stay', async () => {
    d = await startDurable('pgdp_retention_days', { retentionDays: 30, pruneIntervalMs: 100 });
    const su = await d.direct();
    await seed(su, 1, 700, 'completed', 40); // more than one batch
    await seed(su, 1000, 30, 'failed', 31);
    await seed(su, 2000, 20, 'cancelled', 29);
    await seed(su, 3000, 5, 'running', 90);
    await eventually(async () => (await counts(su)).completed === undefined && (await counts(su)).failed === undefined, 'the old finished instances to go', 20_000);
    expect(await counts(su)).toEqual({ cancelled: 20, running: 5 });
    expect((await su.query(`SELECT count(*)::int AS n FROM df.nodes n WHERE NOT EXISTS (SELECT FROM df.instances i WHERE i.id = n.instance_id)`)).rows[0].n).toBe(0);
    expect((await su.query(`SELECT count(*)::int AS n FROM df.nodes`)).rows[0].n).toBe(25);
  });

  it('with --retention-max-instances only the newest finished instances are kept', async () => {
    d = await startDurable('pgdp_retention_cap', { retentionDays: 0, retentionMaxInstances: 10, pruneIntervalMs: 100 });
    const su = await d.direct();
    await seed(su, 1, 25, 'completed', 1); // ids 1..25: the smaller the id, the newer
    await seed(su, 100, 3, 'pending', 400);
    await eventually(async () => (await counts(su)).completed === 10, 'the finished instances to come down to 10', 20_000);
    const kept = await su.query<{ id: string }>(`SELECT id FROM df.instances WHERE status = 'completed' ORDER BY id`);
    expect(kept.rows.map((r) => parseInt(r.id, 16))).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    expect((await counts(su)).pending).toBe(3);
  });
});
