// The executor: which databases it serves (discovered, configured, or where a
// statement first uses df), one worker per database (worker.ts: claims and
// leases; runner.ts: running one instance), and the step-login check of
// df.start.
import type { HttpPolicy } from '../http/index.js';
import { EngineEvents } from './events.js';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import type { Logger } from 'pino';
import { SchemaIncomplete, SchemaRefused } from '../schema/verify.js';
import { cannotLogIn, loginRefusal } from './credentials.js';
import type { PgError } from '../proxy/protocol.js';
import { LOGIN_CHECK_MS, loginOnce } from './runner.js';
import { DatabaseWorker } from './worker.js';

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
  /** Where HTTP steps may go, and how large and long they may be. */
  http: HttpPolicy;
  /** The clock schedules are computed on (ms since the epoch); tests move it. Default Date.now. */
  clock?: () => number;
  /** Where the engine reports what it does (metrics, the console listen); the executor makes one if not given. */
  events?: EngineEvents;
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

/** How long checkLogin's answer stands: a login that worked, and one that did not (so a fixed passfile is seen soon). */
const LOGIN_OK_MS = 60_000;
const LOGIN_FAILED_MS = 5000;
const LOGIN_CACHE_MAX = 10_000;

/** How long a refused database stays refused before a statement's use checks it again (discovery rechecks every minute too). */
const REFUSED_RECHECK_MS = 60_000;

/** How long an install that failed, or a df schema a restore is still writing, is left alone before a statement's use tries again. */
const RETRY_MS = 5000;

export class Executor {
  readonly owner = randomUUID();
  private readonly workers = new Map<string, Promise<DatabaseWorker>>();
  private readonly serving = new Set<string>();
  /** Databases not served: why (last logged), when it was found, and how long that answer stands. */
  private readonly refused = new Map<string, { reason: string; at: number; forMs: number; incomplete: boolean }>();
  private discoverTimer: NodeJS.Timeout | undefined;
  private closed = false;

  readonly events: EngineEvents;
  private readonly opts: ExecutorOptions & { events: EngineEvents };

  constructor(opts: ExecutorOptions) {
    this.events = opts.events ?? new EngineEvents();
    this.opts = { ...opts, events: this.events };
  }

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

  /** The databases served now. */
  databases(): string[] {
    return [...this.serving];
  }

  /**
   * Runs one read-only statement (no parameters) on the executor's own
   * connections to each database served, as the metrics read their gauges at
   * scrape time: per database its rows, or why not. Each database gets at
   * most `timeoutMs`, waiting for a connection included (statement_timeout
   * on the server; a connection that does not answer in time is closed).
   */
  async readEach<R extends pg.QueryResultRow>(sql: string, timeoutMs: number): Promise<Map<string, R[] | Error>> {
    const out = new Map<string, R[] | Error>();
    if (this.closed) return out; // stopping: its pools are closing
    await Promise.all(
      [...this.serving].map(async (database) => {
        try {
          const worker = await this.workers.get(database);
          // On the worker's own connections: the metrics open none of their own, which release() would
          // have to close before a DROP DATABASE.
          if (worker) out.set(database, await worker.read<R>(sql, timeoutMs));
        } catch (err) {
          out.set(database, err instanceof Error ? err : new Error(String(err)));
        }
      }),
    );
    return out;
  }

  /** Stops claiming, stops running steps (they roll back) and hands the runs back. */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.discoverTimer);
    const all = await Promise.allSettled([...this.workers.values()]);
    await Promise.all(all.map((r) => (r.status === 'fulfilled' ? r.value.close() : undefined)));
  }
}
