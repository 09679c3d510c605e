// The executor: for each database with a df schema, waits for work (LISTEN
// df_work, plus a slow poll for lost notifications), claims runs under a
// lease it keeps renewing, and walks each claimed instance's graph. Steps run
// on connections logged in as the instance's submitter.
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import type { Logger } from 'pino';
import { buildGraph, GraphError, type Node } from './graph.js';
import { Aborted, delay, Parking, runInstance, Suspended, type Effects } from './interpreter.js';
import { install } from '../schema/install.js';
import { SchemaIncomplete, SchemaRefused } from '../schema/verify.js';
import { loadParser } from './statement-kind.js';
import { cutReason, limitStepResults, releaseClean, runSqlStep, stepErrorText } from './steps.js';
import { cannotLogIn, loginRefusal } from './credentials.js';
import type { PgError } from '../proxy/protocol.js';
import { LostRun, Store, type InstanceRow, type Loaded } from './store.js';
import { StepError } from './substitute.js';
import { VERSION } from '../version.js';
import { TERMINAL_STATUSES } from '../workflow/model.js';

export interface ExecutorOptions {
  /** The executor's own connection to a database (owner of the df schema, or superuser). */
  control: (database: string) => pg.ClientConfig;
  /** A step's connection: logs in as `role` (no password unless the configuration supplies one). */
  step: (database: string, role: string) => pg.ClientConfig;
  log: Logger;
  /** Lease length; a dead executor's runs are taken over this long after its last renewal. */
  leaseSeconds: number;
  /** Safety-net poll for work whose notification was lost. */
  pollMs: number;
  allowSuperuserInstances: boolean;
  /** Instances one database's worker holds at once. */
  maxInstances: number;
  /** Instances of one submitting role one database's worker holds at once; 0: no cap beyond maxInstances. */
  maxInstancesPerRole: number;
  /** Days finished instances are kept (0: forever). */
  retentionDays: number;
  /** Most finished instances kept, the newest (0: no cap). */
  retentionMaxInstances: number;
  /** How often retention runs (default a minute). */
  pruneIntervalMs?: number;
  /** Told of the executor's own writes the schema refused (a bug); tests fail on any. */
  onFault?: (what: string) => void;
  /** Largest result a step may return, in bytes (rows as they arrive, and the JSON stored). */
  maxStepResult: number;
  /** Connections per (database, role) for steps. */
  stepPoolSize: number;
  /** Serve only these databases; default: every database with a df schema, and any a client uses. */
  databases?: string[];
  /** The role that owns the df schema (the control login is a member of it); default: the control login itself. */
  dfOwner?: string;
}

export const EXECUTOR_DEFAULTS = {
  leaseSeconds: 30,
  pollMs: 2000,
  maxInstances: 1000,
  maxInstancesPerRole: 0,
  retentionDays: 30,
  retentionMaxInstances: 0,
  maxStepResult: 64 * 1024 * 1024,
  stepPoolSize: 10,
} as const;

/**
 * The executor's own connections read rows users write (labels, vars,
 * queries): a message larger than this would not fit a string, and would end
 * the process inside the socket's 'data' handler; the connection is cut instead.
 */
const CONTROL_MAX_MESSAGE = 500 * 1024 * 1024;

/** How long the executor trusts its answer to "can this role become superuser?". */
const ESCALATION_CACHE_MS = 5000;

/** How long checkLogin's answer stands: a login that worked, and one that did not (so a fixed passfile is seen soon). */
const LOGIN_OK_MS = 60_000;
const LOGIN_FAILED_MS = 5000;
const LOGIN_CACHE_MAX = 10_000;
/** A login check that takes longer lets df.start through (the steps will say what is wrong). */
const LOGIN_CHECK_MS = 10_000;
/** A step whose login is refused tries this often, LOGIN_RETRY_MS x attempt apart, before it fails. */
const LOGIN_ATTEMPTS = 3;
const LOGIN_RETRY_MS = 1000;

/** How long a refused database stays refused before a statement's use checks it again (discovery rechecks every minute too). */
const REFUSED_RECHECK_MS = 60_000;
/** A wait at least this long parks its instance (shorter ones stay in memory: no round trips for them). */
const PARK_MIN_MS = 2000;
/** A parked run is claimed this long after it is due (clocks of the proxy and PostgreSQL tick apart). */
const WAKE_MARGIN_MS = 5;

/** Retention passes: how often, and how much each deletes at most (batches of PRUNE_BATCH instances). */
const PRUNE_EVERY_MS = 60_000;
const PRUNE_BATCH = 500;
const PRUNE_BATCHES = 200;

/** How long a step connection stays open once idle. */
const STEP_IDLE_MS = 1000;

/** How long an install that failed, or a df schema a restore is still writing, is left alone before a statement's use tries again. */
const RETRY_MS = 5000;

const TERMINAL = new Set<string>(TERMINAL_STATUSES);

export class Executor {
  readonly owner = randomUUID();
  private readonly workers = new Map<string, Promise<DatabaseWorker>>();
  private readonly serving = new Set<string>();
  /** Databases not served: why (last logged), when it was found, and how long that answer stands. */
  private readonly refused = new Map<string, { reason: string; at: number; forMs: number; incomplete: boolean }>();
  private discoverTimer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(private readonly opts: ExecutorOptions) {}

  /** Installs or upgrades the df schema of `database` and starts serving it (once). */
  serve(database: string): Promise<void> {
    if (this.closed) return Promise.reject(new Error('the executor is stopped'));
    let w = this.workers.get(database);
    if (!w) {
      w = DatabaseWorker.start(database, this.owner, this.opts);
      this.workers.set(database, w);
      w.then(
        () => {
          this.serving.add(database);
          this.refused.delete(database);
        },
        (err: unknown) => {
          this.workers.delete(database); // a later use retries
          const reason = (err as Error).message;
          // One line per database and reason, however often discovery or statements come back to it.
          const logged = this.refused.get(database)?.reason === reason;
          const incomplete = err instanceof SchemaIncomplete;
          this.refused.set(database, { reason, at: Date.now(), forMs: err instanceof SchemaRefused ? REFUSED_RECHECK_MS : RETRY_MS, incomplete });
          if (logged) return;
          if (err instanceof SchemaRefused) this.opts.log.error({ database, reason }, `refusing to serve database "${database}": ${reason}`);
          else if (incomplete) this.opts.log.info({ database, reason }, `not serving database "${database}" yet: ${reason}`);
          else this.opts.log.error({ database, err: reason }, `cannot install the df schema in database "${database}": ${reason}`);
        },
      );
    }
    return w.then(() => {});
  }

  /**
   * For a statement that uses the df schema: the schema is installed when
   * first needed, never because a client connected (a pg_restore through
   * the proxy must find the database as it left it). Undefined when there
   * is nothing to do; else a promise, never rejected, of the reason df
   * cannot be used in `database` (undefined: it can, or a restore is writing
   * it and the statement is part of that).
   */
  ensure(database: string): Promise<string | undefined> | undefined {
    if (this.serving.has(database) || this.closed) return undefined;
    if (this.opts.databases && !this.opts.databases.includes(database)) return undefined;
    const known = this.refused.get(database);
    if (known && Date.now() - known.at < known.forMs) return known.incomplete ? undefined : Promise.resolve(known.reason);
    return this.serve(database).then(
      () => undefined,
      (err: unknown) => (err instanceof SchemaIncomplete ? undefined : (err as Error).message),
    );
  }

  /**
   * Serves every database that already has a df schema (work left by an
   * earlier run must resume without waiting for a client), now and every minute.
   */
  async discover(fromDatabase: string): Promise<void> {
    const scan = async (): Promise<void> => {
      const c = new pg.Client(this.opts.control(fromDatabase));
      c.on('error', () => {});
      let names: string[];
      try {
        await c.connect();
        const { rows } = await c.query<{ datname: string }>('SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate');
        names = rows.map((r) => r.datname);
      } finally {
        await c.end().catch(() => {});
      }
      for (const db of names) {
        if (this.workers.has(db) || this.closed) continue;
        const probe = new pg.Client(this.opts.control(db));
        probe.on('error', () => {});
        try {
          await probe.connect();
          const { rows } = await probe.query<{ has: boolean }>(`SELECT to_regclass('df.migrations') IS NOT NULL AS has`);
          if (rows[0]?.has) await this.serve(db);
        } catch {
          // serve() logged why; an unreachable database is left for the next scan.
        } finally {
          await probe.end().catch(() => {});
        }
      }
    };
    // Configured databases get their schema now. A refused database, or one a restore is
    // still writing, is logged and left alone (rechecked every minute); the others are served.
    const serveUnlessRefused = (db: string): Promise<void> =>
      this.serve(db).catch((err: unknown) => {
        if (!(err instanceof SchemaRefused) && !(err instanceof SchemaIncomplete)) throw err;
      });
    if (this.opts.databases) {
      for (const db of this.opts.databases) await serveUnlessRefused(db);
      this.discoverTimer = setInterval(() => {
        for (const db of this.opts.databases!) if (!this.workers.has(db) && !this.closed) void this.serve(db).catch(() => {});
      }, 60_000);
      this.discoverTimer.unref();
      return;
    }
    await scan();
    this.discoverTimer = setInterval(() => void scan().catch((err: unknown) => this.opts.log.warn({ err: (err as Error).message }, 'database scan failed')), 60_000);
    this.discoverTimer.unref();
  }

  /**
   * Closes every connection of the executor to these databases (DROP DATABASE,
   * ALTER DATABASE ... RENAME and CREATE DATABASE ... TEMPLATE refuse while
   * anyone is connected): their workers stop, handing their runs back, and
   * other databases' steps there lose their pooled connections. A database is
   * served again when a client next uses it.
   */
  async release(names: string[]): Promise<void> {
    const all = [...this.workers.entries()];
    await Promise.all(
      all.map(async ([db, pending]) => {
        const w = await pending.catch(() => undefined);
        if (!w) return;
        if (names.includes(db)) {
          if (this.workers.get(db) === pending) this.workers.delete(db);
          this.serving.delete(db);
          this.opts.log.info({ database: db }, 'letting go of the database: a statement needs nobody connected to it');
          await w.close();
        } else {
          await w.releaseStepPools(names);
        }
      }),
    );
  }

  /** checkLogin's answers per database and role, until when they stand; a promise while one is being found. */
  private readonly logins = new Map<string, { refusal: PgError | undefined; until: number } | Promise<PgError | undefined>>();

  /**
   * Whether steps can log in to `database` as `role`: the error df.start
   * fails with when they cannot (the workflow could never run), else
   * undefined. Tried as a step logs in, on the step pool when the database
   * is served, so the connection goes on to serve steps. A known answer
   * comes back at once, without a promise.
   */
  checkLogin(database: string, role: string): PgError | undefined | Promise<PgError | undefined> {
    if (this.closed || (this.opts.databases && !this.opts.databases.includes(database))) return undefined;
    const key = `${database}\0${role}`;
    const known = this.logins.get(key);
    if (known instanceof Promise) return known;
    if (known && Date.now() < known.until) return known.refusal;
    const pending = this.tryLogin(database, role).then(({ refusal, forMs }) => {
      if (this.logins.size >= LOGIN_CACHE_MAX) this.logins.clear();
      this.logins.set(key, { refusal, until: Date.now() + forMs });
      return refusal;
    });
    this.logins.set(key, pending);
    return pending;
  }

  private async tryLogin(database: string, role: string): Promise<{ refusal: PgError | undefined; forMs: number }> {
    const worker = this.serving.has(database) ? await this.workers.get(database)?.catch(() => undefined) : undefined;
    const login = worker ? worker.stepLogin(database, role) : loginOnce(this.opts.step(database, role));
    let timer: NodeJS.Timeout | undefined;
    const slow = new Promise<'slow'>((resolve) => (timer = setTimeout(() => resolve('slow'), LOGIN_CHECK_MS)));
    const outcome = await Promise.race([login.then(() => 'ok' as const, (err: unknown) => ({ err })), slow]).finally(() => clearTimeout(timer));
    if (outcome === 'ok') return { refusal: undefined, forMs: LOGIN_OK_MS };
    const refused = outcome === 'slow' ? undefined : loginRefusal(outcome.err);
    if (!refused) {
      // Not a refusal of this role (the server is down, the database is gone): df.start reports its own errors.
      const err = outcome === 'slow' ? `no answer in ${LOGIN_CHECK_MS / 1000}s` : (outcome.err as Error)?.message;
      this.opts.log.debug({ database, role, err }, 'step login check inconclusive');
      return { refusal: undefined, forMs: LOGIN_FAILED_MS };
    }
    const refusal = cannotLogIn(role, refused);
    this.opts.log.warn({ database, role, err: refused.reason }, refusal.message);
    return { refusal, forMs: LOGIN_FAILED_MS };
  }

  /** Stops claiming, stops running steps (they roll back) and hands the runs back. */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.discoverTimer);
    const all = await Promise.allSettled([...this.workers.values()]);
    await Promise.all(all.map((r) => (r.status === 'fulfilled' ? r.value.close() : undefined)));
  }
}

/** Logs in with `config` and out again; rejects with the login's error. */
async function loginOnce(config: pg.ClientConfig): Promise<void> {
  const c = new pg.Client({ ...config, connectionTimeoutMillis: LOGIN_CHECK_MS });
  c.on('error', () => {});
  try {
    await c.connect();
  } finally {
    await c.end().catch(() => {});
  }
}

/** A step connection that keeps the server's reported settings (ParameterStatus), as they change. */
class StepClient extends pg.Client {
  readonly settings = new Map<string, string>();
  constructor(config?: pg.ClientConfig) {
    super(config);
    (this as unknown as { connection: NodeJS.EventEmitter }).connection.on(
      'parameterStatus',
      (m: { parameterName: string; parameterValue: string }) => this.settings.set(m.parameterName, m.parameterValue),
    );
  }
}

interface Held {
  abort: AbortController;
  /** The submitting role's oid, for the per-role cap and fair claiming. */
  submitter: string;
}

class DatabaseWorker {
  private readonly held = new Map<string, Held>();
  private readonly stepPools = new Map<string, pg.Pool>();
  private listener: pg.Client | undefined;
  private pollTimer: NodeJS.Timeout | undefined;
  private renewTimer: NodeJS.Timeout | undefined;
  private pruneTimer: NodeJS.Timeout | undefined;
  private wakeTimer: NodeJS.Timeout | undefined;
  private wakeAtMs = Infinity;
  private pruning = false;
  private claiming = false;
  private claimAgain = false;
  /** Held instances named by df_cancel notifications, to be looked up before anything is stopped. */
  private readonly cancelHints = new Set<string>();
  private readonly escalation = new Map<string, { value: boolean; at: number }>();
  private checkingHints = false;
  private closing = false;
  private readonly log: Logger;

  private constructor(
    private readonly database: string,
    private readonly pool: pg.Pool,
    private readonly store: Store,
    private readonly opts: ExecutorOptions,
  ) {
    this.log = opts.log.child({ database });
    // On acquire, not connect: the connection that installed the schema is in the pool already.
    const guarded = new WeakSet<object>();
    pool.on('acquire', (client) => {
      if (guarded.has(client)) return;
      guarded.add(client);
      limitStepResults(client, CONTROL_MAX_MESSAGE, false);
    });
    store.onWriteError = (err, ids) => {
      this.log.warn({ err: (err as Error).message, instances: ids }, 'status write failed: handing the instances back');
      for (const id of ids) {
        this.held.get(id)?.abort.abort(new LostRun(id));
        void this.store.release(id, 1).catch(() => {});
      }
    };
  }

  static async start(database: string, owner: string, opts: ExecutorOptions): Promise<DatabaseWorker> {
    await loadParser();
    // Executor bookkeeping commits asynchronously: a status write lost in a crash is
    // recomputed on replay. Step checkpoints (step connections) and finish() stay synchronous.
    const control = opts.control(database);
    const pool = new pg.Pool({ ...control, options: `${control.options ?? ''} -c synchronous_commit=off`, max: 4, idleTimeoutMillis: 30_000 });
    pool.on('error', (err) => opts.log.warn({ database, err: err.message }, 'executor connection lost'));
    // A connection dying while checked out errors on the client, which must not crash the process: the query fails instead.
    pool.on('connect', (client) => client.on('error', () => {}));
    try {
      const client = await pool.connect();
      try {
        const installed = await install(client, opts.dfOwner);
        if (installed.migrations.length || installed.functions) {
          opts.log.info({ database, migrations: installed.migrations, functions: installed.functions }, 'df schema installed');
        }
        if (installed.operatorsMissing) {
          // Optional: the proxy compiles the DSL itself; DO blocks, triggers and direct clients need them (or df.seq(...) and the like).
          opts.log.warn(
            { database, reason: installed.operatorsMissing },
            `the DSL operators (~> |=> & | ?> !> @>) are not installed in database "${database}": ${installed.operatorsMissing}; ` +
              'grant it CREATE on schema public and restart, or see pg-durable-proxy check',
          );
        }
        // What df.start checks without the proxy: databases => NULL means every database.
        await client.query(
          `INSERT INTO df.settings (name, value)
           SELECT * FROM unnest(ARRAY['allow_superuser_instances', 'proxy_version', 'databases'], ARRAY[$1, $2, $3]) AS s(name, value)
            WHERE value IS NOT NULL
           ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value`,
          [String(opts.allowSuperuserInstances), VERSION, opts.databases?.join(',') ?? null],
        );
        if (!opts.databases) await client.query(`DELETE FROM df.settings WHERE name = 'databases'`);
      } finally {
        client.release();
      }
    } catch (err) {
      await pool.end().catch(() => {});
      throw err;
    }
    const w = new DatabaseWorker(database, pool, new Store(pool, owner, opts.leaseSeconds), opts);
    await w.listen();
    w.pollTimer = setInterval(() => {
      w.wake();
      void w.scheduleNextDue();
    }, opts.pollMs);
    void w.scheduleNextDue();
    w.renewTimer = setInterval(() => void w.renew(), (opts.leaseSeconds * 1000) / 3);
    w.pruneTimer = setInterval(() => void w.prune(), opts.pruneIntervalMs ?? PRUNE_EVERY_MS);
    void w.prune();
    w.wake();
    opts.log.info({ database }, 'executor serving database');
    return w;
  }

  private async listen(again = false): Promise<void> {
    const client = new pg.Client(this.opts.control(this.database));
    // Any role may NOTIFY these channels: a notification is a hint to look, never an order.
    client.on('notification', (n) => {
      if (n.channel === 'df_work') this.wake();
      else if (n.channel === 'df_cancel' && n.payload && this.held.has(n.payload)) this.cancelHint(n.payload);
    });
    let reconnecting = false;
    const reconnect = (): void => {
      if (this.closing || reconnecting) return; // 'end' and a failed connect may both report one loss
      reconnecting = true;
      if (this.listener === client) this.listener = undefined;
      client.removeAllListeners('end');
      void client.end().catch(() => {});
      setTimeout(() => void this.listen(true).catch(() => {}), 1000).unref();
    };
    client.on('error', (err) => this.log.warn({ err: err.message }, 'LISTEN connection lost'));
    client.on('end', reconnect);
    try {
      await client.connect();
      await client.query('LISTEN df_work; LISTEN df_cancel');
    } catch (err) {
      if (again) reconnect(); // at start-up the caller reports it
      else client.removeAllListeners('end');
      throw err;
    }
    this.listener = client;
    this.wake(); // work may have arrived while no one listened
  }

  private wake(): void {
    if (this.closing) return;
    if (this.claiming) {
      this.claimAgain = true;
      return;
    }
    this.claiming = true;
    void this.claimLoop()
      .catch((err: unknown) => this.log.error({ err: (err as Error).message }, 'claiming work failed'))
      .finally(() => (this.claiming = false));
  }

  private cancelHint(id: string): void {
    this.cancelHints.add(id);
    if (this.checkingHints) return;
    this.checkingHints = true;
    void this.checkCancelHints().finally(() => (this.checkingHints = false));
  }

  /**
   * Stops the held instances named in df_cancel notifications whose status,
   * read on the executor's own connection, is terminal. However many
   * notifications arrive, one look-up runs at a time, for all named so far.
   */
  private async checkCancelHints(): Promise<void> {
    while (this.cancelHints.size > 0 && !this.closing) {
      const ids = [...this.cancelHints].filter((id) => this.held.has(id));
      this.cancelHints.clear();
      if (ids.length === 0) return;
      try {
        for (const id of await this.store.ended(ids)) this.held.get(id)?.abort.abort(new Aborted('cancelled'));
      } catch (err) {
        // The lease renewal notices a cancelled run too (its run row is gone), a little later.
        this.log.warn({ err: (err as Error).message }, 'cannot check a cancellation');
        return;
      }
    }
  }

  private async claimLoop(): Promise<void> {
    do {
      this.claimAgain = false;
      const room = this.opts.maxInstances - this.held.size;
      if (room <= 0) return;
      const perRole = new Map<string, number>();
      for (const h of this.held.values()) perRole.set(h.submitter, (perRole.get(h.submitter) ?? 0) + 1);
      let claimed: Loaded[];
      try {
        claimed = await this.store.claim(Math.min(room, 64), perRole, this.opts.maxInstancesPerRole);
      } catch (err) {
        this.log.warn({ err: (err as Error).message }, 'claiming work failed; retrying at the next poll');
        return;
      }
      for (const l of claimed) this.start(l.instance.id, l);
      if (claimed.length === Math.min(room, 64)) this.claimAgain = true;
    } while (this.claimAgain && !this.closing);
  }

  private async renew(): Promise<void> {
    const ids = [...this.held.keys()];
    if (ids.length === 0) return;
    try {
      const still = await this.store.renew(ids);
      for (const id of ids) if (!still.has(id)) this.held.get(id)?.abort.abort(new LostRun(id));
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'lease renewal failed');
    }
  }

  /**
   * Retention: finished instances past --retention-days, or beyond the newest
   * --retention-max-instances, are deleted with their nodes, a small batch per
   * transaction (short locks, rows others hold skipped), a bounded number of
   * batches per pass, so a long backlog drains over a few passes.
   */
  private async prune(): Promise<void> {
    if (this.pruning || this.closing || (this.opts.retentionDays <= 0 && this.opts.retentionMaxInstances <= 0)) return;
    this.pruning = true;
    try {
      let total = 0;
      for (let batch = 0; batch < PRUNE_BATCHES && !this.closing; batch++) {
        const n = await this.store.prune(this.opts.retentionDays, this.opts.retentionMaxInstances, PRUNE_BATCH);
        total += n;
        if (n < PRUNE_BATCH) break;
      }
      if (total > 0) this.log.info({ pruned: total }, 'pruned finished instances past retention');
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'pruning finished instances failed; trying again later');
    } finally {
      this.pruning = false;
    }
  }

  /** Runs an instance; after an infrastructure failure (database restarting, connection lost) it resumes from the checkpoints. */
  private start(id: string, claimed: Loaded): void {
    const h: Held = { abort: new AbortController(), submitter: claimed.instance.submitter };
    this.held.set(id, h);
    const signal = h.abort.signal;
    void (async () => {
      for (let attempt = 0; ; attempt++) {
        try {
          await this.run(id, signal, attempt === 0 ? claimed : await this.store.load(id));
          return;
        } catch (err) {
          if (signal.reason instanceof Suspended) {
            await this.park(id, signal.reason.wakeAt);
            return;
          }
          if (err instanceof Aborted || err instanceof LostRun || signal.aborted) return;
          const code = (err as { code?: string }).code;
          if (typeof code === 'string' && code.startsWith('23')) {
            // The schema refused one of the executor's own writes: a bug, not weather. Said loudly, then retried.
            this.opts.log.error({ instance: id, err: (err as Error).message, code }, 'the df schema refused a write of the executor');
            this.opts.onFault?.(`instance ${id}: ${(err as Error).message} (${code})`);
          }
          const waitMs = Math.min(30_000, 250 * 2 ** attempt);
          this.log.warn({ instance: id, err: (err as Error).message, retryInMs: waitMs }, 'instance interrupted; resuming from its checkpoints');
          await delay(waitMs, signal);
        }
      }
    })()
      .catch(() => {})
      .finally(() => {
        this.held.delete(id);
        this.wake();
      })
      .catch(() => {});
  }

  /**
   * Every branch of the instance waits: its queued writes go out, its run row
   * is handed back, not claimable before `wakeAt`, and nothing of it stays
   * here (no memory, no slot). The claim when it is due replays it from its
   * checkpoints; its sleeps' deadlines are durable.
   */
  private async park(id: string, wakeAt: Date): Promise<void> {
    try {
      await this.store.flush();
      await this.store.park(id, wakeAt);
      this.scheduleWake(wakeAt);
    } catch (err) {
      if (err instanceof LostRun) return; // cancelled or taken over meanwhile: nothing to park
      // The lease runs out instead, and a claim resumes it then.
      this.log.warn({ instance: id, err: (err as Error).message }, 'cannot park the instance; it resumes when its lease expires');
    }
  }

  /** Claims again at `at` (the earliest parked run this worker knows of). */
  private scheduleWake(at: Date): void {
    const t = at.getTime();
    if (t >= this.wakeAtMs || this.closing) return;
    clearTimeout(this.wakeTimer);
    this.wakeAtMs = t;
    this.wakeTimer = setTimeout(() => {
      this.wakeAtMs = Infinity;
      this.wake();
      void this.scheduleNextDue();
    }, Math.max(0, t - Date.now()) + WAKE_MARGIN_MS);
  }

  /** Runs parked by anyone (another proxy, an earlier run of this one) are due at some point: be there. */
  private async scheduleNextDue(): Promise<void> {
    try {
      const at = await this.store.nextDue();
      if (at) this.scheduleWake(at);
    } catch {
      // The poll looks again.
    }
  }

  private async run(id: string, signal: AbortSignal, loaded: Loaded | undefined): Promise<void> {
    if (!loaded || TERMINAL.has(loaded.instance.status)) {
      await this.store.drop(id);
      return;
    }
    const { instance, nodes } = loaded;
    const fail = (message: string): Promise<boolean> =>
      this.store.finish(id, instance.root_node, { status: 'failed', raw: JSON.stringify(message), output: message });
    if (loaded.invalid !== undefined) {
      this.log.warn({ instance: id, reason: loaded.invalid }, 'instance row does not validate: failing the instance');
      await fail(loaded.invalid);
      return;
    }
    if (instance.role === null) {
      await fail('the role that started this instance no longer exists');
      return;
    }
    if (!this.opts.allowSuperuserInstances && (instance.rolsuper || (await this.escalates(instance.submitter)))) {
      await fail(
        `pg-durable-proxy: superuser instances are disabled. submitted_by "${instance.role}" ${instance.rolsuper ? 'is a superuser' : 'can act as a superuser'}.`,
      );
      return;
    }
    // Checked at df.start too; the setting may have changed since.
    if (instance.database !== null && this.opts.databases && !this.opts.databases.includes(instance.database)) {
      await fail(`database "${instance.database}" is not served by pg-durable-proxy (its --databases setting: ${this.opts.databases.join(',')})`);
      return;
    }
    let root: Node;
    try {
      root = buildGraph(nodes, instance.root_node);
    } catch (err) {
      if (err instanceof GraphError) {
        await fail(`Invalid durable function: ${err.message}`);
        return;
      }
      throw err;
    }
    const vars: Record<string, string> = {};
    for (const [k, v] of Object.entries(instance.vars)) vars[k] = v ?? '';
    const held = this.held.get(id);
    const parking = held ? new Parking(PARK_MIN_MS, (wakeAt) => held.abort.abort(new Suspended(wakeAt))) : undefined;
    const outcome = await runInstance(root, { instanceId: id, label: instance.label ?? '', vars, effects: this.effects(instance, signal), parking }, signal);
    if (signal.aborted) throw new Aborted();
    const ended =
      outcome.kind === 'ok'
        ? await this.store.finish(id, root.id, { status: 'completed', raw: outcome.value, output: outcome.value })
        : await fail(outcome.kind === 'failed' ? outcome.error : 'unexpected break');
    this.log.debug({ instance: id, status: outcome.kind, ended }, 'instance finished');
  }

  private effects(instance: InstanceRow, instanceSignal: AbortSignal): Effects {
    const store = this.store;
    const id = instance.id;
    const database = instance.database ?? this.database;
    const lost = (err: unknown): never => {
      if (err instanceof LostRun || instanceSignal.aborted) throw new Aborted();
      throw err;
    };
    return {
      runSql: async (node, sql, stamp, signal) => {
        const client = await this.stepConnection(database, instance.role!, signal);
        // Substitution quotes for standard_conforming_strings = on, a startup option of step connections
        // that something between the proxy and PostgreSQL (a pooler) could have dropped.
        const scs = (client as unknown as StepClient).settings.get('standard_conforming_strings');
        if (scs !== 'on') {
          client.release(true);
          throw new StepError(
            `the step connection runs with standard_conforming_strings = ${scs ?? 'unknown'}; steps need it on ` +
              '(is a connection pooler between the proxy and PostgreSQL dropping startup options?)',
          );
        }
        let discard = false;
        try {
          const result = await runSqlStep(
            { client, cancel: () => this.pool.query('SELECT pg_cancel_backend($1)', [(client as unknown as { processID: number }).processID]).then(() => {}) },
            sql,
            { instanceId: id, nodeId: node.id, owner: store.owner, stamp },
            {
              sameDatabase: database === this.database,
              checkpointElsewhere: (r) => store.checkpoint(id, node.id, stamp, r),
              signal,
              maxResult: this.opts.maxStepResult,
            },
          );
          store.forget(id, node.id); // its 'running', if still queued, is obsolete
          return result;
        } catch (err) {
          // A connection cut for an oversized result is dead: it must not go back to the pool.
          discard = signal.aborted || !(err instanceof StepError) || cutReason(client) !== undefined;
          if ((err as { code?: string }).code === '40001' && !(err instanceof StepError)) throw new LostRun(id);
          throw err;
        } finally {
          if (discard) client.release(true);
          else releaseClean(client, sql);
        }
      },
      record: (node, status, stamp, raw) => store.record({ instanceId: id, nodeId: node.id, status, stamp, raw }),
      setIteration: (node, stamp, iteration) => store.setIteration(id, node.id, stamp, iteration).catch(lost),
      sleepDeadline: (node, stamp, seconds) => store.sleepDeadline(id, node.id, stamp, seconds).catch(lost),
    };
  }

  /**
   * The superuser check of df.start, again at claim (the role may have been
   * granted a superuser's membership since). Asked once per role a few
   * seconds: it costs a planning of the check's SQL each time.
   */
  private async escalates(roleOid: string): Promise<boolean> {
    const hit = this.escalation.get(roleOid);
    if (hit && Date.now() - hit.at < ESCALATION_CACHE_MS) return hit.value;
    const value = await this.store.escalates(roleOid);
    if (this.escalation.size > 10_000) this.escalation.clear();
    this.escalation.set(roleOid, { value, at: Date.now() });
    return value;
  }

  /** Ends the step connections to these databases (new ones are made when a step needs them). */
  async releaseStepPools(databases: string[]): Promise<void> {
    const ending: Promise<void>[] = [];
    for (const [key, pool] of this.stepPools) {
      if (!databases.includes(key.slice(0, key.indexOf('\0')))) continue;
      this.stepPools.delete(key);
      ending.push(pool.end().catch(() => {}));
    }
    await Promise.all(ending);
  }

  /**
   * A step's connection. A refused login (no password known, a wrong one, no
   * pg_hba rule) may be an operator's fix in progress: it is tried a few
   * times, a second or two apart, then the step fails with what df.start
   * says of such a submitter. Anything else is the server's trouble: the
   * caller resumes the instance later.
   */
  private async stepConnection(database: string, role: string, signal: AbortSignal): Promise<pg.PoolClient> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.stepPool(database, role).connect();
      } catch (err) {
        const refused = loginRefusal(err);
        if (refused && attempt < LOGIN_ATTEMPTS) {
          this.log.warn({ role, err: refused.reason, attempt }, 'step login refused; trying again');
          await delay(LOGIN_RETRY_MS * attempt, signal);
          continue;
        }
        if (refused) throw new StepError(cannotLogIn(role, refused).message);
        if ((err as { code?: string }).code === '3D000') {
          throw new StepError(`cannot connect to database "${database}" as role "${role}" to run the step: ${stepErrorText(err)}`);
        }
        throw err;
      }
    }
  }

  /** Logs in as the steps of `role` do; the connection stays in the step pool for them. */
  stepLogin(database: string, role: string): Promise<void> {
    // A worker stopping makes no new pool; all connections busy: one of its own answers rather than wait for one.
    const pool = this.closing ? undefined : this.stepPool(database, role);
    if (!pool || (pool.idleCount === 0 && pool.totalCount >= this.opts.stepPoolSize)) return loginOnce(this.opts.step(database, role));
    return pool.connect().then((client) => client.release());
  }

  private stepPool(database: string, role: string): pg.Pool {
    const key = `${database}\0${role}`;
    let p = this.stepPools.get(key);
    if (!p) {
      // Idle step connections go after a second: a database a workflow stepped into can be dropped right after.
      p = new pg.Pool({ ...this.opts.step(database, role), Client: StepClient, max: this.opts.stepPoolSize, idleTimeoutMillis: STEP_IDLE_MS });
      p.on('error', (err) => this.log.warn({ role, err: err.message }, 'step connection lost'));
      p.on('connect', (client) => {
        client.on('error', () => {});
        limitStepResults(client, this.opts.maxStepResult, true);
      });
      this.stepPools.set(key, p);
    }
    return p;
  }

  async close(): Promise<void> {
    this.closing = true;
    clearInterval(this.pollTimer);
    clearInterval(this.renewTimer);
    clearInterval(this.pruneTimer);
    clearTimeout(this.wakeTimer);
    const ids = [...this.held.keys()];
    for (const h of this.held.values()) h.abort.abort(new Aborted('executor stopping'));
    // Give the aborted runs a moment to roll back, then hand them to whoever runs next.
    const deadline = Date.now() + 5000;
    while (this.held.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    await Promise.all(ids.map((id) => this.store.release(id, 0).catch(() => {})));
    await this.store.flush().catch(() => {});
    this.listener?.removeAllListeners('end');
    await this.listener?.end().catch(() => {});
    await Promise.all([...this.stepPools.values()].map((p) => p.end().catch(() => {})));
    await this.pool.end().catch(() => {});
  }
}

