// Runs one claimed instance to its end: walks its graph with the interpreter,
// its steps on connections logged in as its submitter; parks it when all of it
// waits; after an infrastructure failure (the database restarting, a lost
// connection) resumes it from its checkpoints, with one backoff policy.
import pg from 'pg';
import type { Logger } from 'pino';
import type { ExecutorOptions } from './executor.js';
import { buildGraph, GraphError, type Node } from './graph.js';
import { Aborted, delay, Parking, runInstance, Suspended, type Effects } from './interpreter.js';
import { cutReason, limitStepResults, releaseClean, runSqlStep, stepErrorText } from './steps/sql.js';
import { idempotencyKey, runHttpStep } from './steps/http.js';
import { cannotLogIn, loginRefusal } from './credentials.js';
import { LostRun, type InstanceRow, type Loaded, type Store } from './store.js';
import { StepError } from './substitute.js';
import { TERMINAL_STATUSES } from '../workflow/model.js';

/** How long the executor trusts its answer to "can this role become superuser?". */
const ESCALATION_CACHE_MS = 5000;
/** A step whose login is refused tries this often, LOGIN_RETRY_MS x attempt apart, before it fails. */
const LOGIN_ATTEMPTS = 3;
const LOGIN_RETRY_MS = 1000;
/** A wait at least this long parks its instance (shorter ones stay in memory: no round trips for them). */
const PARK_MIN_MS = 2000;
/** How long a step connection stays open once idle. */
const STEP_IDLE_MS = 1000;
const TERMINAL = new Set<string>(TERMINAL_STATUSES);
/** Node types that are steps (they reach the database or the outside world). */
const STEP_TYPES = new Set<string>(['SQL', 'HTTP', 'HTTP_MULTIPART']);

/** A login check that takes longer lets df.start through (the steps will say what is wrong). */
export const LOGIN_CHECK_MS = 10_000;

/** An instance this worker runs: how to stop it, and whose it is. */
export interface Held {
  abort: AbortController;
  /** The submitting role's oid, for the per-role cap and fair claiming. */
  submitter: string;
  /** Tells the instance's signal waits that a signal may have arrived (set while it runs). */
  poke?: () => void;
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

/** Logs in with `config` and out again; rejects with the login's error. */
export async function loginOnce(config: pg.ClientConfig): Promise<void> {
  const c = new pg.Client({ ...config, connectionTimeoutMillis: LOGIN_CHECK_MS });
  c.on('error', () => {});
  try {
    await c.connect();
  } finally {
    await c.end().catch(() => {});
  }
}

export class InstanceRunner {
  private readonly stepPools = new Map<string, pg.Pool>();
  private readonly escalation = new Map<string, { value: boolean; at: number }>();
  private closing = false;

  constructor(
    private readonly database: string,
    /** The executor's own connections (cancelling a step runs there). */
    private readonly pool: pg.Pool,
    private readonly store: Store,
    private readonly opts: ExecutorOptions,
    private readonly log: Logger,
    /** The instances the worker holds (a run parks through its own entry). */
    private readonly held: Map<string, Held>,
    /** Called with the deadline of an instance just parked. */
    private readonly parked: (wakeAt: Date) => void,
  ) {}

  /**
   * Runs a claimed instance until it ends, parks, is stopped or is lost. Any
   * other failure is the infrastructure's: the instance is loaded again and
   * resumed from its checkpoints, after 250 ms doubling up to 30 s.
   */
  async drive(id: string, claimed: Loaded, signal: AbortSignal): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        await this.run(id, signal, attempt === 0 ? claimed : await this.store.load(id));
        return;
      } catch (err) {
        if (signal.reason instanceof Suspended) {
          await this.park(id, signal.reason.wakeAt, signal.reason.awaits);
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
  }

  /**
   * Every branch of the instance waits: its queued writes go out, its run row
   * is handed back, not claimable before `wakeAt`, and nothing of it stays
   * here (no memory, no slot). The claim when it is due replays it from its
   * checkpoints; its sleeps' deadlines are durable.
   */
  private async park(id: string, wakeAt: Date | null, awaits: readonly string[]): Promise<void> {
    try {
      await this.store.flush();
      await this.store.park(id, wakeAt, awaits);
      if (wakeAt) this.parked(wakeAt);
      this.opts.events?.emit('changed', { database: this.database, instance: id });
    } catch (err) {
      if (err instanceof LostRun) return; // cancelled or taken over meanwhile: nothing to park
      // The lease runs out instead, and a claim resumes it then.
      this.log.warn({ instance: id, err: (err as Error).message }, 'cannot park the instance; it resumes when its lease expires');
    }
  }

  private async run(id: string, signal: AbortSignal, loaded: Loaded | undefined): Promise<void> {
    if (!loaded || TERMINAL.has(loaded.instance.status)) {
      await this.store.drop(id);
      return;
    }
    const { instance, nodes } = loaded;
    const fail = async (message: string): Promise<boolean> => {
      const ended = await this.store.finish(id, instance.root_node, { status: 'failed', raw: JSON.stringify(message), output: message });
      if (ended) this.opts.events?.emit('ended', { database: this.database, instance: id, status: 'failed' });
      return ended;
    };
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
    if (instance.status === 'pending') this.opts.events?.emit('started', { database: this.database, instance: id });
    const vars: Record<string, string> = {};
    for (const [k, v] of Object.entries(instance.vars)) vars[k] = v ?? '';
    const held = this.held.get(id);
    const parking = held ? new Parking(PARK_MIN_MS, (wakeAt, awaits) => held.abort.abort(new Suspended(wakeAt, awaits))) : undefined;
    if (held) held.poke = () => parking?.poke();
    const outcome = await runInstance(root, { instanceId: id, label: instance.label ?? '', vars, effects: this.effects(loaded, signal), parking }, signal);
    if (signal.aborted) throw new Aborted();
    const ended =
      outcome.kind === 'ok'
        ? await this.store.finish(id, root.id, { status: 'completed', raw: outcome.value, output: outcome.value })
        : await fail(outcome.kind === 'failed' ? outcome.error : 'unexpected break');
    if (ended && outcome.kind === 'ok') this.opts.events?.emit('ended', { database: this.database, instance: id, status: 'completed' });
    this.log.debug({ instance: id, status: outcome.kind, ended }, 'instance finished');
  }

  private effects(loaded: Loaded, instanceSignal: AbortSignal): Effects {
    const instance = loaded.instance;
    const store = this.store;
    const id = instance.id;
    const database = instance.database ?? this.database;
    const lost = (err: unknown): never => {
      if (err instanceof LostRun || instanceSignal.aborted) throw new Aborted();
      throw err;
    };
    const runSql = this.sqlStep(instance, database);
    const events = this.opts.events;
    const db = this.database;
    const changed = (): void => void events?.emit('changed', { database: db, instance: id });
    // The instance's first step, however long it waited before it (a sleep, a signal): how long
    // it took from df.start's commit (created_at) to here. Known from the nodes: no step has run yet.
    let first = !loaded.nodes.some((n) => STEP_TYPES.has((n as { node_type?: string }).node_type ?? '') && (n as { status?: string }).status !== 'pending');
    const stepBegins = (): number => {
      if (first) {
        first = false;
        events?.emit('firstStep', { database: db, instance: id, latencyMs: Math.max(0, Date.now() - instance.created_at.getTime()) });
      }
      return performance.now();
    };
    const stepEnded = (kind: 'sql' | 'http', began: number, ok: boolean): void => {
      events?.emit('step', { database: db, kind, ok, ms: performance.now() - began });
      changed();
    };
    return {
      runSql: async (node, sql, stamp, signal) => {
        const began = stepBegins();
        let ok = false;
        try {
          const result = await runSql(node, sql, stamp, signal);
          ok = true;
          return result;
        } finally {
          if (!signal.aborted) stepEnded('sql', began, ok);
        }
      },
      record: (node, status, stamp, raw, broke) => {
        store.record({ instanceId: id, nodeId: node.id, status, stamp, raw, ...(broke ? { broke } : {}) });
        changed();
      },
      setIteration: (node, stamp, iteration) => store.setIteration(id, node.id, stamp, iteration).catch(lost),
      sleepDeadline: (node, stamp, seconds) => store.sleepDeadline(id, node.id, stamp, seconds).catch(lost),
      waitDeadline: (node, stamp, at) => store.waitDeadline(id, node.id, stamp, at).catch(lost),
      takeSignal: async (node, stamp, name) => {
        const raw = await store.takeSignal(id, node.id, stamp, name);
        if (raw !== null) {
          events?.emit('signalTaken', { database: db, instance: id });
          changed();
        }
        return raw;
      },
      complete: (node, stamp, raw) => store.complete(id, node.id, stamp, raw).then(changed, lost),
      runHttp: async (node, request, stamp, signal) => {
        // Checked again when the step runs: df.revoke_usage since the start stops it.
        if (!(await store.mayUseHttp(instance.submitter, node.type))) {
          events?.emit('http', { database: db, outcome: 'refused' });
          // The words df.start uses for a role without the grant.
          throw new StepError(
            `permission denied: role ${instance.role} may not run HTTP steps ` +
              `(an administrator grants it with SELECT df.grant_usage('${instance.role}', include_http => true))`,
          );
        }
        const began = stepBegins();
        let raw: string;
        try {
          raw = await runHttpStep(request, idempotencyKey(id, node.id, stamp), this.opts.http, signal, (outcome) =>
            events?.emit('http', { database: db, outcome }),
          );
        } catch (err) {
          if (!signal.aborted) stepEnded('http', began, false);
          throw err;
        }
        await store.complete(id, node.id, stamp, raw).catch(lost);
        stepEnded('http', began, true);
        return raw;
      },
      now: this.opts.clock ?? Date.now,
    };
  }

  /** Runs one SQL step of `instance` on a connection logged in as its submitter. */
  private sqlStep(instance: InstanceRow, database: string): NonNullable<Effects['runSql']> {
    const store = this.store;
    const id = instance.id;
    return async (node, sql, stamp, signal) => {
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

  /** Ends every step connection. */
  async close(): Promise<void> {
    this.closing = true;
    await Promise.all([...this.stepPools.values()].map((p) => p.end().catch(() => {})));
  }
}
