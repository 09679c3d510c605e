// One database's side of the executor: waits for work (LISTEN df_work, a
// slow poll for lost notifications, a timer for the next parked run), claims
// runs under a lease it keeps renewing, hands each to the instance runner,
// and prunes finished instances past retention.
import pg from 'pg';
import type { Logger } from 'pino';
import type { ExecutorOptions } from './executor.js';
import { Aborted } from './interpreter.js';
import { InstanceRunner, type Held } from './runner.js';
import { install } from '../schema/install.js';
import { loadParser } from './statement-kind.js';
import { limitStepResults } from './steps/sql.js';
import { LostRun, Store, type Loaded } from './store.js';
import { VERSION } from '../version.js';

/**
 * The executor's own connections read rows users write (labels, vars,
 * queries): a message larger than this would not fit a string, and would end
 * the process inside the socket's 'data' handler; the connection is cut instead.
 */
const CONTROL_MAX_MESSAGE = 500 * 1024 * 1024;
/** A parked run is claimed this long after it is due (clocks of the proxy and PostgreSQL tick apart). */
const WAKE_MARGIN_MS = 5;
const MAX_TIMER_MS = 2 ** 31 - 1;
/** Retention passes: how often, and how much each deletes at most (batches of PRUNE_BATCH instances). */
const PRUNE_EVERY_MS = 60_000;
const PRUNE_BATCH = 500;
const PRUNE_BATCHES = 200;

export class DatabaseWorker {
  private readonly held = new Map<string, Held>();
  private readonly runner: InstanceRunner;
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
    this.runner = new InstanceRunner(database, pool, store, opts, this.log, this.held, (wakeAt) => this.scheduleWake(wakeAt));
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
           SELECT * FROM unnest(ARRAY['allow_superuser_instances', 'proxy_version', 'databases', 'max_step_result'], ARRAY[$1, $2, $3, $4]) AS s(name, value)
            WHERE value IS NOT NULL
           ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value`,
          [String(opts.allowSuperuserInstances), VERSION, opts.databases?.join(',') ?? null, String(opts.maxStepResult)],
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

  /** `sql` in a read-only transaction of its own on one of the worker's connections, within `timeoutMs` all told. */
  async read<R extends pg.QueryResultRow>(sql: string, timeoutMs: number): Promise<R[]> {
    const pool = this.pool;
    const began = Date.now();
    const pending = pool.connect();
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), timeoutMs)));
    const client = await Promise.race([pending, late]).finally(() => clearTimeout(timer));
    if (!client) {
      void pending.then((c) => c.release(), () => {});
      throw new Error(`no executor connection free within ${timeoutMs} ms`);
    }
    const left = Math.max(1, timeoutMs - (Date.now() - began));
    // Simple protocol: the three statements are one implicit transaction, which SET LOCAL lasts for.
    const query = { text: `SET LOCAL transaction_read_only = on; SET LOCAL statement_timeout = ${left}; ${sql}`, query_timeout: left + 500 };
    let failed: Error | undefined;
    try {
      const results = (await client.query(query as pg.QueryConfig)) as unknown as pg.QueryResult<R>[];
      return results[2]!.rows;
    } catch (err) {
      failed = err as Error; // a timed-out connection may still be busy: it is closed, not reused
      throw err;
    } finally {
      client.release(failed);
    }
  }

  private async listen(again = false): Promise<void> {
    const client = new pg.Client(this.opts.control(this.database));
    // Any role may NOTIFY these channels: a notification is a hint to look, never an order.
    client.on('notification', (n) => {
      if (n.channel === 'df_work') {
        this.wake();
        // A signal for an instance this worker runs: its waits look for it (a hint; they re-read).
        if (n.payload) this.held.get(n.payload)?.poke?.();
      }
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
        for (const [id, status] of await this.store.ended(ids)) {
          this.held.get(id)?.abort.abort(new Aborted('cancelled'));
          // Ends of this executor's own making are reported where they are made.
          if (status === 'cancelled') this.opts.events?.emit('ended', { database: this.database, instance: id, status });
        }
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
        const c = await this.store.claim(Math.min(room, 64), perRole, this.opts.maxInstancesPerRole);
        claimed = c.claimed;
        if (claimed.length > 0) this.opts.events?.emit('claimed', { database: this.database, instances: claimed.length, takeovers: c.takeovers });
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
      if (total > 0) {
        this.log.info({ pruned: total }, 'pruned finished instances past retention');
        this.opts.events?.emit('pruned', { database: this.database, instances: total });
      }
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'pruning finished instances failed; trying again later');
    } finally {
      this.pruning = false;
    }
  }

  /** Runs a claimed instance; its slot is free again when it ends, parks or is lost. */
  private start(id: string, claimed: Loaded): void {
    const h: Held = { abort: new AbortController(), submitter: claimed.instance.submitter };
    this.held.set(id, h);
    void this.runner
      .drive(id, claimed, h.abort.signal)
      .catch(() => {})
      .finally(() => {
        this.held.delete(id);
        this.wake();
      })
      .catch(() => {});
  }

  /** Ends the step connections to these databases (new ones are made when a step needs them). */
  releaseStepPools(databases: string[]): Promise<void> {
    return this.runner.releaseStepPools(databases);
  }

  /** Logs in as the steps of `role` do (see InstanceRunner.stepLogin). */
  stepLogin(database: string, role: string): Promise<void> {
    return this.runner.stepLogin(database, role);
  }

  /** Claims again at `at` (the earliest parked run this worker knows of). */
  private scheduleWake(at: Date): void {
    const t = at.getTime();
    if (t >= this.wakeAtMs || this.closing) return;
    clearTimeout(this.wakeTimer);
    this.wakeAtMs = t;
    // setTimeout fires at once for delays past 2^31-1 ms (24.8 days): a far deadline is looked at again then instead.
    this.wakeTimer = setTimeout(() => {
      this.wakeAtMs = Infinity;
      this.wake();
      void this.scheduleNextDue();
    }, Math.min(Math.max(0, t - Date.now()) + WAKE_MARGIN_MS, MAX_TIMER_MS));
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
    await this.runner.close();
    await this.pool.end().catch(() => {});
  }
}

