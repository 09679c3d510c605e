// Months of use leave hundreds of thousands of finished instances in df. The
// executor's statements must not read them: with 300 000 finished instances
// seeded, the generic plans (what prepared statements run after a few
// executions) of the claim, the load and the node writes reach df.instances
// and df.nodes by key only, and workflows still run.
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HOT_STATEMENTS } from '../../src/engine/store.js';
import { runWorkflow, startDurable, type Durable } from '../helpers/durable.js';

const FINISHED = 300_000;
let d: Durable;
let su: pg.Client;

beforeAll(async () => {
  d = await startDurable('pgdp_history');
  su = await d.direct();
  // Straight into the tables (no triggers, no per-row checks): what weeks of finished workflows leave.
  await su.query('BEGIN');
  await su.query(`SET LOCAL session_replication_role = replica`);
  await su.query(
    `INSERT INTO df.instances (id, label, root_node, status, submitted_by, created_at, updated_at, completed_at)
     SELECT lpad(to_hex(g), 8, '0'), 'old', lpad(to_hex(g), 8, '0'), 'completed', current_user::regrole,
            now() - make_interval(secs => g), now() - make_interval(secs => g), now() - make_interval(secs => g)
       FROM generate_series(1, ${FINISHED}) g`,
  );
  await su.query(
    `INSERT INTO df.nodes (id, instance_id, node_type, query, status, result, raw_result, submitted_by, stamp)
     SELECT lpad(to_hex(g), 8, '0'), lpad(to_hex(g), 8, '0'), 'SQL', 'SELECT 1', 'completed', '{"rows": []}', '{"rows": []}', current_user::regrole, ''
       FROM generate_series(1, ${FINISHED}) g`,
  );
  await su.query('COMMIT');
  await su.query('ANALYZE df.instances, df.nodes, df.runs');
}, 180_000);
afterAll(async () => {
  await d?.close();
});

/** The plan PostgreSQL uses for `text` as a generic prepared statement. */
async function genericPlan(text: string, params: string[]): Promise<string> {
  await su.query('BEGIN');
  try {
    await su.query(`SET LOCAL plan_cache_mode = force_generic_plan`);
    await su.query(`PREPARE hot AS ${text}`);
    const { rows } = await su.query<{ 'QUERY PLAN': string }>(`EXPLAIN EXECUTE hot(${params.join(', ')})`);
    return rows.map((r) => r['QUERY PLAN']).join('\n');
  } finally {
    await su.query('ROLLBACK');
    await su.query('DEALLOCATE ALL');
  }
}

describe('cost independent of history', () => {
  const cases: [keyof typeof HOT_STATEMENTS, string[]][] = [
    ['claim', [`'${'0'.repeat(8)}-0000-4000-8000-${'0'.repeat(12)}'`, '30', '64', `'{}'::oid[]`, `'{}'::int[]`, '0']],
    ['load', [`'0000abcd'`]],
    // Retention with nothing to prune yet (every seeded instance is recent) must not read them all to find that out.
    ['prune', ['30', '0', '500']],
    ['writeNodes', [`'{0000abcd}'`, `'{0000abcd}'`, `'{running}'`, `'{""}'`, `'{NULL}'`, `'${'0'.repeat(8)}-0000-4000-8000-${'0'.repeat(12)}'`, `'{false}'`]],
  ];
  for (const [name, params] of cases) {
    it(`the ${name} statement reaches df.instances and df.nodes by key only (generic plan, ${FINISHED} finished instances)`, async () => {
      const plan = await genericPlan(HOT_STATEMENTS[name], params);
      expect(plan, plan).not.toMatch(/Seq Scan on (instances|nodes)\b/);
      expect(plan, plan).not.toMatch(/Bitmap Heap Scan on (instances|nodes)\b[\s\S]*status/);
    });
  }

  it('workflows run beside the history, and the history is untouched', async () => {
    const c = await d.connect();
    const r = await runWorkflow(c, `df.start('SELECT 1 AS a' ~> 'SELECT 2 AS b')`);
    expect(r).toMatchObject({ status: 'completed', result: { rows: [{ b: 2 }], row_count: 1 } });
    expect((await su.query(`SELECT count(*)::int AS n FROM df.instances WHERE label = 'old'`)).rows[0].n).toBe(FINISHED);
  });
});
