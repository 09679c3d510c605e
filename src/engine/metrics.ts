// The engine's metrics for the admin endpoint's /metrics: counters and
// histograms fed by the engine's events, gauges read at scrape time from each
// database served (one query per database, on the executor's own
// connections). The engine knows nothing of prom-client: this listens to it.
// Labels are the database and small fixed sets (step kind, HTTP outcome,
// state): never instance ids, SQL text, role names or values.
import type { Logger } from 'pino';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { EngineEvents, HttpOutcome, StepKind } from './events.js';

/** What the metrics need of the executor (Executor has it all). */
export interface MetricsSource {
  readonly events: EngineEvents;
  /** The databases served now. */
  databases(): string[];
  /** One read-only statement on each database served: its rows, or why not. */
  readEach<R extends Record<string, unknown>>(sql: string, timeoutMs: number): Promise<Map<string, R[] | Error>>;
}

export interface EngineMetricsOptions {
  /** Told when a database's gauges cannot be read (once per database and reason). */
  log?: Logger;
  /** How long the gauges' query may take per database (default 2 s). */
  readTimeoutMs?: number;
}

const STEP_KINDS: readonly StepKind[] = ['sql', 'http'];
const HTTP_OUTCOMES: readonly HttpOutcome[] = ['success', 'client_error', 'server_error', 'refused', 'failed'];
/** Where an unfinished instance's run stands; see GAUGE_QUERY. */
export const INSTANCE_STATES = ['runnable', 'running', 'parked_sleep', 'parked_signal', 'parked_schedule'] as const;
type State = (typeof INSTANCE_STATES)[number];

/** From a millisecond to a few minutes: SQL steps, HTTP calls, and the wait for a free slot. */
const SECONDS_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

/**
 * Every run row (df.runs holds only unfinished instances) classified by its
 * lease, as the claim reads it:
 * - runnable: claimable now (no lease, or one that ran out: a parked run
 *   that is due, a signal that woke it, a dead executor's run), since the
 *   later of its creation and its lease's end;
 * - running: an executor holds it (owner set, lease in the future);
 * - parked (no owner, not claimable before lease_expires): waiting for a
 *   signal if it awaits any (its wait may have a timeout too); else for a
 *   schedule's tick if a WAIT_SCHEDULE node of it runs with a deadline; else
 *   a sleep (a run handed back for a retry after a delay counts here too).
 * Kept signals are those of unfinished instances no wait has taken yet.
 * Per run row, the node and signal look-ups go by key (df.nodes' primary key,
 * df.signals' instance index), so the cost follows the unfinished work, never
 * the history; OFFSET 0 keeps each row's state computed once, not once per
 * count that reads it.
 */
export const GAUGE_QUERY = `SELECT count(*) FILTER (WHERE s.state = 'runnable')::int AS runnable,
       count(*) FILTER (WHERE s.state = 'running')::int AS running,
       count(*) FILTER (WHERE s.state = 'parked_sleep')::int AS parked_sleep,
       count(*) FILTER (WHERE s.state = 'parked_signal')::int AS parked_signal,
       count(*) FILTER (WHERE s.state = 'parked_schedule')::int AS parked_schedule,
       greatest(0, coalesce(extract(epoch FROM now() - min(s.since)), 0))::float8 AS oldest_runnable,
       coalesce(sum(s.kept), 0)::int AS signals_kept
  FROM (SELECT CASE
                 WHEN r.lease_expires IS NULL OR r.lease_expires < now() THEN 'runnable'
                 WHEN r.owner IS NOT NULL THEN 'running'
                 WHEN cardinality(r.awaits) > 0 THEN 'parked_signal'
                 WHEN EXISTS (SELECT FROM df.nodes n
                               WHERE n.instance_id = r.instance_id AND n.node_type = 'WAIT_SCHEDULE'
                                 AND n.status = 'running' AND n.wake_at IS NOT NULL) THEN 'parked_schedule'
                 ELSE 'parked_sleep'
               END AS state,
               CASE WHEN r.lease_expires IS NULL OR r.lease_expires < now() THEN greatest(r.created_at, r.lease_expires) END AS since,
               (SELECT count(*) FROM df.signals k WHERE k.instance_id = r.instance_id AND k.taken_at IS NULL) AS kept
          FROM df.runs r
        OFFSET 0) s`;

type GaugeRow = Record<State, number> & { oldest_runnable: number; signals_kept: number };

/** The engine's metrics, in a registry of their own (nothing goes to prom-client's global one). */
export function engineMetrics(source: MetricsSource, opts: EngineMetricsOptions = {}): Registry {
  const registry = new Registry();
  const registers = [registry];
  const readTimeoutMs = opts.readTimeoutMs ?? 2000;

  // Every series of a database exists (at 0) once the database is served or
  // seen in an event, so rate() and increase() see the first occurrence.
  const known = new Set<string>();
  const initialize = (database: string): void => {
    if (known.has(database)) return;
    known.add(database);
    for (const c of [started, completed, failed, cancelled, claims, takeovers, signals, pruned, scrapeErrors]) c.inc({ database }, 0);
    for (const kind of STEP_KINDS) {
      steps.inc({ database, kind }, 0);
      stepsFailed.inc({ database, kind }, 0);
      stepSeconds.zero({ database, kind });
    }
    for (const outcome of HTTP_OUTCOMES) http.inc({ database, outcome }, 0);
    firstStepSeconds.zero({ database });
  };
  const initializeServed = (): void => {
    for (const database of source.databases()) initialize(database);
  };

  const counter = <L extends string>(name: string, help: string, labelNames: L[] = []): Counter<'database' | L> =>
    new Counter({ name, help, labelNames: ['database', ...labelNames], registers, collect: initializeServed });
  const started = counter('pgdp_instances_started_total', 'Instances picked up for the first time (they were pending)');
  const completed = counter('pgdp_instances_completed_total', 'Instances that completed');
  const failed = counter('pgdp_instances_failed_total', 'Instances that failed');
  const cancelled = counter(
    'pgdp_instances_cancelled_total',
    'Instances cancelled while this executor held them (running or in a short wait); cancels of parked or pending instances are not seen',
  );
  const steps = counter('pgdp_steps_total', 'Steps that ended (kind: sql or http), failed ones included', ['kind']);
  const stepsFailed = counter('pgdp_steps_failed_total', 'Steps that failed (kind: sql or http)', ['kind']);
  const claims = counter('pgdp_claims_total', 'Instances claimed (new, woken from a wait, or taken over)');
  const takeovers = counter('pgdp_lease_takeovers_total', 'Instances claimed from an executor whose lease had expired');
  const http = counter(
    'pgdp_http_requests_total',
    'HTTP steps by outcome: success (1xx-3xx), client_error (4xx), server_error (5xx), refused (by the egress policy or the role\'s privileges), failed (no response)',
    ['outcome'],
  );
  const signals = counter('pgdp_signals_delivered_total', 'Signals taken by a signal wait');
  const pruned = counter('pgdp_instances_pruned_total', 'Finished instances deleted by retention');

  const histogram = <L extends string>(name: string, help: string, labelNames: L[] = []): Histogram<'database' | L> =>
    new Histogram({ name, help, labelNames: ['database', ...labelNames], buckets: SECONDS_BUCKETS, registers, collect: initializeServed });
  const stepSeconds = histogram('pgdp_step_duration_seconds', 'How long steps took (kind: sql or http)', ['kind']);
  const firstStepSeconds = histogram('pgdp_start_to_first_step_seconds', "From an instance's df.start commit to its first step beginning");

  // The gauges: one query per database per scrape, shared by the metrics read from it.
  const lastError = new Map<string, string>();
  let reading: Promise<Map<string, GaugeRow>> | undefined;
  const read = (): Promise<Map<string, GaugeRow>> =>
    (reading ??= source
      .readEach<GaugeRow>(GAUGE_QUERY, readTimeoutMs)
      .then((results) => {
        const rows = new Map<string, GaugeRow>();
        for (const [database, r] of results) {
          initialize(database);
          if (!(r instanceof Error) && r[0]) {
            rows.set(database, r[0]);
            lastError.delete(database);
            continue;
          }
          scrapeErrors.inc({ database });
          const reason = r instanceof Error ? r.message : 'no row';
          if (lastError.get(database) !== reason) opts.log?.warn({ database, err: reason }, 'cannot read the metrics of the database; its gauges are left out');
          lastError.set(database, reason);
        }
        return rows;
      })
      .finally(() => (reading = undefined)));
  const scrapeErrors = new Counter({
    name: 'pgdp_metrics_scrape_errors_total',
    help: "Scrapes that could not read a database's gauges (left out of that scrape)",
    labelNames: ['database'],
    registers,
    async collect() {
      await read();
    },
  });
  new Gauge({
    name: 'pgdp_instances',
    help: 'Unfinished instances by state: runnable (claimable now), running (held by an executor), parked_sleep, parked_signal, parked_schedule',
    labelNames: ['database', 'state'],
    registers,
    async collect() {
      const rows = await read();
      this.reset();
      for (const [database, row] of rows) for (const state of INSTANCE_STATES) this.set({ database, state }, row[state]);
    },
  });
  new Gauge({
    name: 'pgdp_signals_kept',
    help: 'Signals sent to unfinished instances that no wait has taken yet',
    labelNames: ['database'],
    registers,
    async collect() {
      const rows = await read();
      this.reset();
      for (const [database, row] of rows) this.set({ database }, row.signals_kept);
    },
  });
  new Gauge({
    name: 'pgdp_oldest_runnable_seconds',
    help: 'How long the oldest runnable instance has been claimable without being claimed (0: none)',
    labelNames: ['database'],
    registers,
    async collect() {
      const rows = await read();
      this.reset();
      for (const [database, row] of rows) this.set({ database }, row.oldest_runnable);
    },
  });

  const ev = source.events;
  ev.on('started', ({ database }) => started.inc({ database }));
  ev.on('firstStep', ({ database, latencyMs }) => {
    initialize(database);
    firstStepSeconds.observe({ database }, latencyMs / 1000);
  });
  ev.on('ended', ({ database, status }) => {
    initialize(database);
    (status === 'completed' ? completed : status === 'failed' ? failed : cancelled).inc({ database });
  });
  ev.on('step', ({ database, kind, ok, ms }) => {
    initialize(database);
    steps.inc({ database, kind });
    if (!ok) stepsFailed.inc({ database, kind });
    stepSeconds.observe({ database, kind }, ms / 1000);
  });
  ev.on('claimed', ({ database, instances, takeovers: n }) => {
    initialize(database);
    claims.inc({ database }, instances);
    takeovers.inc({ database }, n);
  });
  ev.on('http', ({ database, outcome }) => {
    initialize(database);
    http.inc({ database, outcome });
  });
  ev.on('signalTaken', ({ database }) => {
    initialize(database);
    signals.inc({ database });
  });
  ev.on('pruned', ({ database, instances }) => {
    initialize(database);
    pruned.inc({ database }, instances);
  });
  return registry;
}
