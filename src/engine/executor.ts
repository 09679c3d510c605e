// The executor: for each database with a df schema, waits for work (LISTEN
// df_work, plus a slow poll for lost notifications), claims runs under a
// lease it keeps renewing, and walks each claimed instance's graph. Steps run
// on connections logged in as the instance's submitter.
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import type { Logger } from 'pino';
import { buildGraph, GraphError, type Node } from './graph.js';
import { Aborted, delay, runInstance, type Effects } from './interpreter.js';
import { migrate } from './migrate.js';
import { loadParser } from './statement-kind.js';
import { releaseClean, runSqlStep, stepErrorText } from './steps.js';
import { LostRun, Store, type InstanceRow, type Loaded } from './store.js';
import { StepError } from './substitute.js';
import { VERSION } from '../version.js';

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
  /** Connections per (database, role) for steps. */
  stepPoolSize: number;
  /** Serve only these databases; default: every database with a df schema, and any a client uses. */
  databases?: string[];
}

export const EXECUTOR_DEFAULTS = { leaseSeconds: 30, pollMs: 2000, maxInstances: 1000, stepPoolSize: 10 } as const;

const TERMINAL = new Set(['completed', 'failed', 'cancelled']);

export class Executor {
  readonly owner = randomUUID();
  private readonly workers = new Map<string, Promise<DatabaseWorker>>();
  private readonly serving = new Set<string>();
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
        () => this.serving.add(database),
        () => this.workers.delete(database), // a later use retries
      );
    }
    return w.then(() => {});
  }

  /** For the proxy's sessions: undefined when `database` is served already, else a promise that never rejects. */
  prepare(database: string): Promise<void> | undefined {
    if (this.serving.has(database) || this.closed) return undefined;
    if (this.opts.databases && !this.opts.databases.includes(database)) return undefined;
    return this.serve(database).catch((err: unknown) =>
      this.opts.log.error({ database, err: (err as Error).message }, 'cannot install the df schema; df.* will not work in this database'),
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
        } catch (err) {
          this.opts.log.debug({ database: db, err: (err as Error).message }, 'database not served');
        } finally {
          await probe.end().catch(() => {});
        }
      }
    };
    if (this.opts.databases) {
      for (const db of this.opts.databases) await this.serve(db);
      return;
    }
    await this.serve(fromDatabase);
    await scan();
    this.discoverTimer = setInterval(() => void scan().catch((err: unknown) => this.opts.log.warn({ err: (err as Error).message }, 'database scan failed')), 60_000);
    this.discoverTimer.unref();
  }

  /** Stops claiming, stops running steps (they roll back) and hands the runs back. */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.discoverTimer);
    const all = await Promise.allSettled([...this.workers.values()]);
    await Promise.all(all.map((r) => (r.status === 'fulfilled' ? r.value.close() : undefined)));
  }
}

interface Held {
  abort: AbortController;
}

class DatabaseWorker {
  private readonly held = new Map<string, Held>();
  private readonly stepPools = new Map<string, pg.Pool>();
  private listener: pg.Client | undefined;
  private pollTimer: NodeJS.Timeout | undefined;
  private renewTimer: NodeJS.Timeout | undefined;
  private claiming = false;
  private claimAgain = false;
  private closing = false;
  private readonly log: Logger;

  private constructor(
    private readonly database: string,
    private readonly pool: pg.Pool,
    private readonly store: Store,
    private readonly opts: ExecutorOptions,
  ) {
    this.log = opts.log.child({ database });
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
    const pool = new pg.Pool({ ...opts.control(database), options: '-c synchronous_commit=off', max: 4, idleTimeoutMillis: 30_000 });
    pool.on('error', (err) => opts.log.warn({ database, err: err.message }, 'executor connection lost'));
    // A connection dying while checked out errors on the client, which must not crash the process: the query fails instead.
    pool.on('connect', (client) => client.on('error', () => {}));
    try {
      const client = await pool.connect();
      try {
        const applied = await migrate(client);
        if (applied.length) opts.log.info({ database, versions: applied }, 'df schema installed');
        await client.query(
          `INSERT INTO df.settings (name, value) VALUES ('allow_superuser_instances', $1), ('proxy_version', $2)
           ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value`,
          [String(opts.allowSuperuserInstances), VERSION],
        );
      } finally {
        client.release();
      }
    } catch (err) {
      await pool.end().catch(() => {});
      throw err;
    }
    const w = new DatabaseWorker(database, pool, new Store(pool, owner, opts.leaseSeconds), opts);
    await w.listen();
    w.pollTimer = setInterval(() => w.wake(), opts.pollMs);
    w.renewTimer = setInterval(() => void w.renew(), (opts.leaseSeconds * 1000) / 3);
    w.wake();
    opts.log.info({ database }, 'executor serving database');
    return w;
  }

  private async listen(): Promise<void> {
    const client = new pg.Client(this.opts.control(this.database));
    client.on('notification', (n) => {
      if (n.channel === 'df_work') this.wake();
      else if (n.channel === 'df_cancel' && n.payload) this.held.get(n.payload)?.abort.abort(new Aborted('cancelled'));
    });
    const reconnect = (): void => {
      if (this.closing) return;
      this.listener = undefined;
      setTimeout(() => void this.listen().catch(() => reconnect()), 1000);
    };
    client.on('error', (err) => this.log.warn({ err: err.message }, 'LISTEN connection lost'));
    client.on('end', reconnect);
    await client.connect();
    await client.query('LISTEN df_work; LISTEN df_cancel');
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
    void this.claimLoop().finally(() => (this.claiming = false));
  }

  private async claimLoop(): Promise<void> {
    do {
      this.claimAgain = false;
      const room = this.opts.maxInstances - this.held.size;
      if (room <= 0) return;
      let claimed: Loaded[];
      try {
        claimed = await this.store.claim(Math.min(room, 64));
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

  /** Runs an instance; after an infrastructure failure (database restarting, connection lost) it resumes from the checkpoints. */
  private start(id: string, claimed: Loaded): void {
    const h: Held = { abort: new AbortController() };
    this.held.set(id, h);
    const signal = h.abort.signal;
    void (async () => {
      for (let attempt = 0; ; attempt++) {
        try {
          await this.run(id, signal, attempt === 0 ? claimed : await this.store.load(id));
          return;
        } catch (err) {
          if (err instanceof Aborted || err instanceof LostRun || signal.aborted) return;
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
      });
  }

  private async run(id: string, signal: AbortSignal, loaded: Loaded | undefined): Promise<void> {
    if (!loaded || TERMINAL.has(loaded.instance.status)) {
      await this.store.drop(id);
      return;
    }
    const { instance, nodes } = loaded;
    const fail = (message: string): Promise<boolean> =>
      this.store.finish(id, instance.root_node, { status: 'failed', raw: JSON.stringify(message), output: message });
    if (instance.role === null) {
      await fail('the role that started this instance no longer exists');
      return;
    }
    if (instance.rolsuper && !this.opts.allowSuperuserInstances) {
      await fail(`pg-durable-proxy: superuser instances are disabled. submitted_by "${instance.role}" is a superuser.`);
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
    const outcome = await runInstance(root, { instanceId: id, label: instance.label ?? '', vars, effects: this.effects(instance, signal) }, signal);
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
        const pool = this.stepPool(database, instance.role!);
        let client: pg.PoolClient;
        try {
          client = await pool.connect();
        } catch (err) {
          const code = (err as { code?: string }).code ?? '';
          if (code.startsWith('28') || code === '3D000') {
            throw new StepError(`cannot connect to database "${database}" as role "${instance.role}" to run the step: ${stepErrorText(err)}`);
          }
          throw err;
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
            },
          );
          store.forget(id, node.id); // its 'running', if still queued, is obsolete
          return result;
        } catch (err) {
          discard = signal.aborted || !(err instanceof StepError);
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

  private stepPool(database: string, role: string): pg.Pool {
    const key = `${database}\0${role}`;
    let p = this.stepPools.get(key);
    if (!p) {
      p = new pg.Pool({ ...this.opts.step(database, role), max: this.opts.stepPoolSize, idleTimeoutMillis: 10_000 });
      p.on('error', (err) => this.log.warn({ role, err: err.message }, 'step connection lost'));
      p.on('connect', (client) => client.on('error', () => {}));
      this.stepPools.set(key, p);
    }
    return p;
  }

  async close(): Promise<void> {
    this.closing = true;
    clearInterval(this.pollTimer);
    clearInterval(this.renewTimer);
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

