// Engine metrics (src/engine/metrics.ts): counters and histograms fed by the
// engine's events, gauges read from the database at scrape time, and the
// same families on the real command's admin endpoint beside the proxy's own.
import pg from 'pg';
import type { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EngineEvents } from '../../src/engine/events.js';
import { engineMetrics, GAUGE_QUERY } from '../../src/engine/metrics.js';
import { dbUrl, freshDatabase, startDurable, type Durable } from '../helpers/durable.js';
import { env, runCli, type CliProcess } from '../helpers/proxy.js';
import { eventually, untilActivity } from '../helpers/wait.js';

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** The samples of a Prometheus text exposition. */
function parse(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    out.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return out;
}

/** The value of the sample `name` with (at least) these labels; undefined if there is none. */
const pick = (samples: Sample[], name: string, labels: Record<string, string>): number | undefined =>
  samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;

const DB = 'pgdp_metrics';
let d: Durable;
let reg: Registry;
let app: pg.Client;
let su: pg.Client;

const scrape = async (r: Registry = reg): Promise<Sample[]> => parse(await r.metrics());
/** A sample of this suite's database. */
const value = async (name: string, labels: Record<string, string> = {}): Promise<number | undefined> =>
  pick(await scrape(), name, { database: DB, ...labels });
const until = (name: string, labels: Record<string, string>, n: number): Promise<void> =>
  eventually(async () => (await value(name, labels)) === n, `${name}${JSON.stringify(labels)} to be ${n}`);
const states = async (): Promise<Record<string, number | undefined>> => {
  const s = await scrape();
  return Object.fromEntries(
    ['runnable', 'running', 'parked_sleep', 'parked_signal', 'parked_schedule'].map((state) => [state, pick(s, 'pgdp_instances', { database: DB, state })]),
  );
};
const start = async (expr: string): Promise<string> => (await app.query<{ id: string }>(`SELECT df.start(${expr}) AS id`)).rows[0]!.id;
const awaitEnd = async (id: string): Promise<string> => (await app.query<{ s: string }>('SELECT df.await_instance($1, 30) AS s', [id])).rows[0]!.s;

beforeAll(async () => {
  // One slot: a second instance started while one runs waits, runnable, for it.
  d = await startDurable(DB, { maxInstances: 1, retentionDays: 30, pruneIntervalMs: 100 });
  reg = engineMetrics(d.executor);
  if (env().mode === 'managed') {
    // The df owner gives the app role HTTP steps, as an administrator would (the egress policy still refuses every request).
    const owner = new pg.Client(dbUrl(env().executorUrl, DB));
    await owner.connect();
    await owner.query(`SELECT df.grant_usage($1, include_http => true, with_grant => true)`, [env().app.user]).finally(() => owner.end());
  }
  app = await d.connect();
  su = await d.direct();
});
afterAll(async () => {
  await d?.close();
});

describe('engine metrics', () => {
  it('idle: every series of the database is there at 0, nothing is runnable, and nothing goes to the global registry', async () => {
    const s = await scrape();
    for (const name of [
      'pgdp_instances_started_total', 'pgdp_instances_completed_total', 'pgdp_instances_failed_total', 'pgdp_instances_cancelled_total',
      'pgdp_claims_total', 'pgdp_lease_takeovers_total', 'pgdp_signals_delivered_total', 'pgdp_instances_pruned_total',
      'pgdp_metrics_scrape_errors_total', 'pgdp_signals_kept', 'pgdp_oldest_runnable_seconds', 'pgdp_start_to_first_step_seconds_count',
    ]) {
      expect(pick(s, name, { database: DB }), name).toBe(0);
    }
    for (const kind of ['sql', 'http']) {
      expect(pick(s, 'pgdp_steps_total', { database: DB, kind })).toBe(0);
      expect(pick(s, 'pgdp_steps_failed_total', { database: DB, kind })).toBe(0);
      expect(pick(s, 'pgdp_step_duration_seconds_count', { database: DB, kind })).toBe(0);
    }
    for (const outcome of ['success', 'client_error', 'server_error', 'refused', 'failed']) {
      expect(pick(s, 'pgdp_http_requests_total', { database: DB, outcome })).toBe(0);
    }
    expect(await states()).toEqual({ runnable: 0, running: 0, parked_sleep: 0, parked_signal: 0, parked_schedule: 0 });
    // No label carries anything but the database and the fixed sets.
    const labelNames = new Set(s.flatMap((x) => Object.keys(x.labels)));
    expect([...labelNames].sort()).toEqual(['database', 'kind', 'le', 'outcome', 'state']);
    const { register } = await import('prom-client');
    expect(register.getMetricsAsArray().filter((m) => (m as unknown as { name: string }).name.startsWith('pgdp_'))).toEqual([]);
  });

  it('completed, failed, HTTP refused, and a backlog: one running, one runnable for as long as the slot is taken, then cancelled', async () => {
    expect(await awaitEnd(await start(`'SELECT 1 AS one' ~> 'SELECT 2 AS two'`))).toBe('completed');
    expect(await awaitEnd(await start(`'SELECT 1/0'`))).toBe('failed');
    // No --http-allow: the egress policy refuses every request.
    expect(await awaitEnd(await start(`df.http('http://example.com/', 'GET')`))).toBe('failed');

    const sleeper = await start(`'SELECT pg_sleep(30)'`);
    await untilActivity(su, `pid <> pg_backend_pid() AND state = 'active' AND query LIKE $1`, '%pg_sleep(30)%');
    const waiting = await start(`'SELECT 3 AS three'`);
    await eventually(async () => {
      const s = await states();
      return s.running === 1 && s.runnable === 1;
    }, 'one instance running, one runnable');
    await eventually(async () => (await value('pgdp_oldest_runnable_seconds'))! > 0.2, 'the runnable instance to have waited a moment');
    await app.query('SELECT df.cancel($1)', [sleeper]);
    expect(await awaitEnd(waiting)).toBe('completed');

    await until('pgdp_instances_cancelled_total', {}, 1);
    await until('pgdp_instances_completed_total', {}, 2);
    const s = await scrape();
    const at = (name: string, labels: Record<string, string> = {}): number | undefined => pick(s, name, { database: DB, ...labels });
    expect(at('pgdp_instances_failed_total')).toBe(2);
    expect(at('pgdp_instances_started_total')).toBe(5);
    expect(at('pgdp_claims_total')).toBe(5);
    expect(at('pgdp_lease_takeovers_total')).toBe(0);
    // SQL: two, one (failed), the waiting one; the cancelled sleep was stopped, not ended.
    expect(at('pgdp_steps_total', { kind: 'sql' })).toBe(4);
    expect(at('pgdp_steps_failed_total', { kind: 'sql' })).toBe(1);
    expect(at('pgdp_steps_total', { kind: 'http' })).toBe(1);
    expect(at('pgdp_steps_failed_total', { kind: 'http' })).toBe(1);
    expect(at('pgdp_http_requests_total', { outcome: 'refused' })).toBe(1);
    expect(at('pgdp_http_requests_total', { outcome: 'success' })).toBe(0);
    expect(at('pgdp_step_duration_seconds_count', { kind: 'sql' })).toBe(4);
    expect(at('pgdp_step_duration_seconds_count', { kind: 'http' })).toBe(1);
    expect(at('pgdp_start_to_first_step_seconds_count')).toBe(5);
    // The waiting instance's first step came after the sleeper was cancelled: more than 0.2 s.
    expect(at('pgdp_start_to_first_step_seconds_bucket', { le: '0.1' })).toBeLessThan(5);
    expect(at('pgdp_start_to_first_step_seconds_bucket', { le: '+Inf' })).toBe(5);
    expect(at('pgdp_step_duration_seconds_sum', { kind: 'sql' })).toBeGreaterThan(0);
    expect(at('pgdp_oldest_runnable_seconds')).toBe(0);
    expect(await states()).toEqual({ runnable: 0, running: 0, parked_sleep: 0, parked_signal: 0, parked_schedule: 0 });
  });

  it('parked instances by what they wait for; kept signals; a delivered signal', async () => {
    const sleeper = await start(`df.sleep(600)`);
    const waiter = await start(`df.wait_for_signal('go')`);
    // A daily tick twelve hours from now (UTC): far enough never to come during the test.
    const tick = new Date(Date.now() + 12 * 3600_000);
    const scheduled = await start(`df.wait_for_schedule('${tick.getUTCMinutes()} ${tick.getUTCHours()} * * *', 'UTC')`);
    await eventually(
      async () => JSON.stringify(await states()) === JSON.stringify({ runnable: 0, running: 0, parked_sleep: 1, parked_signal: 1, parked_schedule: 1 }),
      'one parked instance of each kind',
    );
    expect(await value('pgdp_oldest_runnable_seconds')).toBe(0);
    expect(await value('pgdp_signals_kept')).toBe(0);

    // A signal no wait asks for is kept, and does not wake the instance.
    await app.query(`SELECT df.signal($1, 'other', '{}')`, [waiter]);
    expect(await value('pgdp_signals_kept')).toBe(1);
    expect((await states()).parked_signal).toBe(1);

    await app.query(`SELECT df.signal($1, 'go', '{"ok": true}')`, [waiter]);
    expect(await awaitEnd(waiter)).toBe('completed');
    await until('pgdp_signals_delivered_total', {}, 1);
    await until('pgdp_instances_completed_total', {}, 3);
    // The instance finished: its untaken signal waits for nothing any more.
    expect(await value('pgdp_signals_kept')).toBe(0);
    expect(await states()).toEqual({ runnable: 0, running: 0, parked_sleep: 1, parked_signal: 0, parked_schedule: 1 });
    // Claimed once each, the waiter again when its signal came.
    expect(await value('pgdp_claims_total')).toBe(9);

    // Parked instances cancelled: nobody held them, so no executor saw the cancellation (a documented limit).
    for (const id of [sleeper, scheduled]) await app.query('SELECT df.cancel($1)', [id]);
    expect(await states()).toEqual({ runnable: 0, running: 0, parked_sleep: 0, parked_signal: 0, parked_schedule: 0 });
    expect(await value('pgdp_instances_cancelled_total')).toBe(1);
  });

  it('retention: the instances pruned are counted', async () => {
    // Three instances finished 40 days ago, straight into the tables (as retention.test.ts seeds them).
    await su.query('BEGIN');
    await su.query('SET LOCAL session_replication_role = replica');
    await su.query(
      `INSERT INTO df.instances (id, root_node, status, submitted_by, created_at, updated_at)
       SELECT 'ffff000' || g, 'ffff000' || g, 'completed', current_user::regrole, now() - interval '40 days', now() - interval '40 days'
         FROM generate_series(1, 3) g`,
    );
    await su.query(
      `INSERT INTO df.nodes (id, instance_id, node_type, query, status, submitted_by)
       SELECT 'ffff000' || g, 'ffff000' || g, 'SQL', 'SELECT 1', 'completed', current_user::regrole FROM generate_series(1, 3) g`,
    );
    await su.query('COMMIT');
    await until('pgdp_instances_pruned_total', {}, 3);
    // Those gone; the suite's own eight, finished minutes ago, stay.
    expect((await su.query(`SELECT count(*) FILTER (WHERE id LIKE 'ffff%')::int AS old, count(*)::int AS n FROM df.instances`)).rows[0]).toEqual({ old: 0, n: 8 });
  });

  it('a database whose gauges cannot be read is left out of the scrape and counted; the rest of the scrape goes on', async () => {
    const quick = engineMetrics(d.executor, { readTimeoutMs: 300 });
    const locker = await d.direct();
    await locker.query('BEGIN');
    await locker.query('LOCK TABLE df.runs IN ACCESS EXCLUSIVE MODE');
    let during: Sample[];
    try {
      during = await scrape(quick);
    } finally {
      await locker.query('ROLLBACK');
    }
    expect(pick(during, 'pgdp_metrics_scrape_errors_total', { database: DB })).toBe(1);
    for (const name of ['pgdp_instances', 'pgdp_signals_kept', 'pgdp_oldest_runnable_seconds']) {
      expect(during.filter((x) => x.name === name), name).toEqual([]);
    }
    expect(pick(during, 'pgdp_instances_completed_total', { database: DB })).toBe(0); // this registry's own counters
    const after = await scrape(quick);
    expect(pick(after, 'pgdp_metrics_scrape_errors_total', { database: DB })).toBe(1);
    expect(pick(after, 'pgdp_instances', { database: DB, state: 'runnable' })).toBe(0);
    expect(pick(after, 'pgdp_oldest_runnable_seconds', { database: DB })).toBe(0);
  });

  it('the gauges reach df.nodes and df.signals by key only: their cost follows the unfinished work, not the history', async () => {
    // History: finished instances with nodes, and signals they never took (kept, of finished instances).
    await su.query('BEGIN');
    await su.query('SET LOCAL session_replication_role = replica');
    await su.query(
      `INSERT INTO df.instances (id, root_node, status, submitted_by) SELECT lpad(to_hex(g), 8, '0'), lpad(to_hex(g), 8, '0'), 'completed', current_user::regrole
         FROM generate_series(1, 20000) g`,
    );
    await su.query(
      `INSERT INTO df.nodes (id, instance_id, node_type, query, status, submitted_by)
       SELECT lpad(to_hex(g), 8, '0'), lpad(to_hex(g), 8, '0'), 'SQL', 'SELECT 1', 'completed', current_user::regrole FROM generate_series(1, 20000) g`,
    );
    await su.query(
      `INSERT INTO df.signals (instance_id, name, data, sent_by) SELECT lpad(to_hex(g), 8, '0'), 'never', '{}', current_user::regrole FROM generate_series(1, 20000) g`,
    );
    await su.query('COMMIT');
    await su.query('ANALYZE df.instances, df.nodes, df.signals, df.runs');
    const plan = (await su.query<{ 'QUERY PLAN': string }>(`EXPLAIN ${GAUGE_QUERY}`)).rows.map((r) => r['QUERY PLAN']).join('\n');
    expect(plan, plan).not.toMatch(/Seq Scan on (instances|nodes|signals)\b/);
    expect(plan, plan).not.toMatch(/Bitmap Heap Scan on (instances|nodes|signals)\b/);
    expect(plan.match(/ on nodes\b/g), plan).toHaveLength(1); // each run row's state is worked out once
    expect(await value('pgdp_signals_kept')).toBe(0);
  });

  it('an error from one database leaves the others', async () => {
    const events = new EngineEvents();
    const row = { runnable: 2, running: 1, parked_sleep: 0, parked_signal: 0, parked_schedule: 0, oldest_runnable: 7.5, signals_kept: 4 };
    const r = engineMetrics({
      events,
      databases: () => ['good', 'bad'],
      readEach: async <R,>() => new Map<string, R[] | Error>([['good', [row as R]], ['bad', new Error('boom')]]),
    });
    events.emit('ended', { database: 'good', instance: 'abcdef01', status: 'cancelled' });
    const s = await scrape(r);
    expect(pick(s, 'pgdp_instances', { database: 'good', state: 'runnable' })).toBe(2);
    expect(pick(s, 'pgdp_oldest_runnable_seconds', { database: 'good' })).toBe(7.5);
    expect(pick(s, 'pgdp_signals_kept', { database: 'good' })).toBe(4);
    expect(pick(s, 'pgdp_instances', { database: 'bad' })).toBeUndefined();
    expect(pick(s, 'pgdp_metrics_scrape_errors_total', { database: 'bad' })).toBe(1);
    expect(pick(s, 'pgdp_metrics_scrape_errors_total', { database: 'good' })).toBe(0);
    expect(pick(s, 'pgdp_instances_cancelled_total', { database: 'good' })).toBe(1);
    expect(pick(s, 'pgdp_instances_cancelled_total', { database: 'bad' })).toBe(0);
  });
});

describe('the command', () => {
  let cli: CliProcess | undefined;
  afterAll(async () => {
    if (!cli) return;
    cli.child.kill('SIGTERM');
    await cli.exited;
  });

  it("serves the engine's metrics on the admin endpoint's /metrics, beside the proxy's own", async () => {
    const database = 'pgdp_metrics_cli';
    await freshDatabase(database);
    const e = env();
    // Steps log in as crash.test.ts's proxies do: the trust socket (embedded), the passfile (managed).
    const steps =
      e.socketDir !== undefined
        ? ['--step-url', `postgres://steps@127.0.0.1:${e.pgPort}/${database}?host=${encodeURIComponent(e.socketDir)}`, '--allow-superuser-instances', 'true']
        : ['--executor-url', dbUrl(e.executorUrl, database), '--step-passfile', e.passfile];
    cli = runCli([
      '--upstream', dbUrl(e.adminUrl, database), '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--log-level', 'info',
      '--databases', database, ...steps,
    ]);
    await cli.ready;
    // The log (stdout) may come a moment after the ready line (stderr).
    let admin: string | undefined;
    await eventually(() => {
      admin = cli!
        .stdout()
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as { msg: string; admin?: string })
        .find((l) => l.msg === 'admin endpoint listening')?.admin;
      return admin !== undefined;
    }, 'the admin endpoint log line');
    expect(admin).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const res = await fetch(`${admin}/metrics`);
    expect(res.status).toBe(200);
    const text = await res.text();
    for (const [name, type] of [
      ['pgdp_instances_started_total', 'counter'], ['pgdp_instances_completed_total', 'counter'], ['pgdp_instances_failed_total', 'counter'],
      ['pgdp_instances_cancelled_total', 'counter'], ['pgdp_steps_total', 'counter'], ['pgdp_steps_failed_total', 'counter'],
      ['pgdp_claims_total', 'counter'], ['pgdp_lease_takeovers_total', 'counter'], ['pgdp_http_requests_total', 'counter'],
      ['pgdp_signals_delivered_total', 'counter'], ['pgdp_instances_pruned_total', 'counter'], ['pgdp_metrics_scrape_errors_total', 'counter'],
      ['pgdp_step_duration_seconds', 'histogram'], ['pgdp_start_to_first_step_seconds', 'histogram'],
      ['pgdp_instances', 'gauge'], ['pgdp_signals_kept', 'gauge'], ['pgdp_oldest_runnable_seconds', 'gauge'],
      ['pgdp_queries_total', 'counter'], // the proxy's own
    ]) {
      expect(text).toContain(`# TYPE ${name} ${type}\n`);
    }
    const s = parse(text);
    expect(pick(s, 'pgdp_instances', { database, state: 'parked_signal' })).toBe(0);
    expect(pick(s, 'pgdp_oldest_runnable_seconds', { database })).toBe(0);
    expect(pick(s, 'pgdp_metrics_scrape_errors_total', { database })).toBe(0);
  });
});
