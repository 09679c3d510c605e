// Walks one instance's graph. State is node status, not history: a node
// whose row says it finished in the current loop iteration (its stamp) is not
// run again, its recorded result is used. So recovery is: reload, walk again.
import type { Node } from './graph.js';
import { LIMITS } from '../workflow/model.js';
import { StepError, substituteResults, substituteVars, truthy } from './substitute.js';
import { nextTick, parseSchedule, ScheduleError, type Schedule } from '../schedule/cron.js';
import { memoized } from './memo.js';

export type Outcome =
  | { kind: 'ok'; value: string }
  | { kind: 'failed'; error: string }
  /** df.break(): unwinds to the innermost loop. */
  | { kind: 'break'; value: string };

/** Stops a branch (RACE loser, cancelled instance, lost lease). */
export class Aborted extends Error {}

/**
 * The instance parks until `wakeAt` (null: no deadline) or a signal named in
 * `awaits`: every branch of it waits, nothing of it needs to stay in memory.
 */
export class Suspended extends Error {
  constructor(
    readonly wakeAt: Date | null,
    readonly awaits: readonly string[] = [],
  ) {
    super(`instance parked until ${wakeAt ? wakeAt.toISOString() : 'a signal'}`);
  }
}

/**
 * Decides when a waiting instance may leave memory: when every branch of it
 * waits (no step, no write in flight) and the earliest wait ends at least
 * `minMs` from now, `suspend` is called with that time; the caller aborts
 * the run and re-claims the instance when it is due (its sleeps' deadlines
 * are durable, so the replay picks up where it was). Checked on a later
 * macrotask: a branch that has just finished one step starts its next one
 * within the same turn, and must not be parked in between.
 */
export class Parking {
  private busy = 0;
  private readonly waits = new Set<{ until: number; awaits: string | undefined; poke: (() => void) | undefined }>();
  private checking = false;
  private parked = false;

  constructor(
    private readonly minMs: number,
    private readonly suspend: (wakeAt: Date | null, awaits: string[]) => void,
  ) {}

  /** Work in flight (a step, a durable write): the instance is not idle meanwhile. */
  async working<T>(work: () => Promise<T>): Promise<T> {
    this.busy++;
    try {
      return await work();
    } finally {
      this.busy--;
      this.check();
    }
  }

  /**
   * Waits until `until` (ms since the epoch; Infinity: no deadline), or, for
   * a wait on the signal `awaits`, until poke() says one may have arrived.
   * The instance may park meanwhile.
   */
  async wait(until: number, signal: AbortSignal, awaits?: string): Promise<void> {
    let poked: (() => void) | undefined;
    const pokedP = awaits === undefined ? undefined : new Promise<void>((r) => (poked = r));
    const w = { until, awaits, poke: poked };
    this.waits.add(w);
    this.check();
    // The timer ends with the wait, however it ends: a poked wait leaves no timer (nor abort listener) behind.
    const local = new AbortController();
    const stop = (): void => local.abort();
    signal.addEventListener('abort', stop, { once: true });
    try {
      const timer = delay(until - Date.now(), local.signal);
      if (pokedP) {
        timer.catch(() => {}); // the race below sees an abort through the signal check
        await Promise.race([timer, pokedP]);
        if (signal.aborted) throw new Aborted();
      } else {
        await timer;
      }
    } finally {
      signal.removeEventListener('abort', stop);
      local.abort();
      this.waits.delete(w);
    }
  }

  /** A signal for this instance may have arrived: its signal waits look again. */
  poke(): void {
    for (const w of this.waits) w.poke?.();
  }

  private check(): void {
    if (this.checking || this.parked) return;
    this.checking = true;
    setImmediate(() => {
      this.checking = false;
      if (this.parked || this.busy > 0 || this.waits.size === 0) return;
      let earliest = Infinity;
      const awaits = new Set<string>();
      for (const w of this.waits) {
        earliest = Math.min(earliest, w.until);
        if (w.awaits !== undefined) awaits.add(w.awaits);
      }
      if (earliest - Date.now() < this.minMs) return;
      this.parked = true;
      this.suspend(Number.isFinite(earliest) ? new Date(earliest) : null, [...awaits]);
    });
  }
}

/** What the interpreter needs from the world: all I/O goes through here. */
export interface Effects {
  /** Runs one SQL step and checkpoints it (in one transaction when it can). Returns the result JSON text. */
  runSql(node: Node & { type: 'SQL' }, sql: string, stamp: string, signal: AbortSignal): Promise<string>;
  /**
   * Records a node's status; may be batched (composite nodes' results can be
   * recomputed on replay). A SQL step's completion is its checkpoint, not this.
   */
  record(node: Node, status: 'running' | 'completed' | 'failed', stamp: string, raw: string | null, broke?: boolean): void;
  /** Durably records a LOOP's current iteration before the iteration runs. */
  setIteration(node: Node, stamp: string, iteration: number): Promise<void>;
  /** Durably records (or reads back) a SLEEP's deadline. */
  sleepDeadline(node: Node, stamp: string, seconds: number): Promise<Date>;
  /**
   * Durably records that a wait (signal, schedule) runs in this iteration,
   * with its deadline `at` unless one is recorded for it already; returns the
   * deadline in force (null: none).
   */
  waitDeadline(node: Node, stamp: string, at: Date | null): Promise<Date | null>;
  /** Takes the oldest kept signal `name` of the instance and completes the node with it, in one write; its result JSON, or null if none is kept. */
  takeSignal(node: Node, stamp: string, name: string): Promise<string | null>;
  /** Durably completes a node with `raw` (a wait that timed out, a schedule's tick). */
  complete(node: Node, stamp: string, raw: string): Promise<void>;
  /** Runs an HTTP step and checkpoints its result (at-least-once); returns the response envelope JSON; StepError when it failed. */
  runHttp(node: Node & { type: 'HTTP' | 'HTTP_MULTIPART' }, request: HttpStepRequest, stamp: string, signal: AbortSignal): Promise<string>;
  /** The clock schedules are computed on (ms since the epoch): injectable for tests. */
  now(): number;
}

/** An HTTP step after substitution: what goes out. */
export interface HttpStepRequest {
  url: string;
  method: string;
  headers: Record<string, string>;
  /** HTTP: the body text; multipart: the parts, substituted. */
  body: string | null;
  parts: unknown[] | null;
  timeoutSeconds: number;
}

export interface InstanceContext {
  instanceId: string;
  label: string;
  vars: Record<string, string>;
  effects: Effects;
  /** Lets the instance leave memory while all of it waits; without it, waits stay in memory. */
  parking?: Parking;
}

/** Awaited I/O of a branch, counted as work in flight for parking. */
const busy = <T>(ctx: InstanceContext, work: () => Promise<T>): Promise<T> => (ctx.parking ? ctx.parking.working(work) : work());

interface Scope {
  stamp: string;
  results: Map<string, string>;
  signal: AbortSignal;
}

export const MAX_LOOP_ITERATIONS = LIMITS.loopIterations;
const LOOP_FLOOR_MS = LIMITS.loopFloorMs;

export async function runInstance(root: Node, ctx: InstanceContext, signal: AbortSignal): Promise<Outcome> {
  const out = await exec(root, { stamp: '', results: new Map(), signal }, ctx, true);
  if (out.kind === 'break') {
    return { kind: 'failed', error: 'df.break() was called outside of a loop. df.break() may only be used inside df.loop().' };
  }
  return out;
}

function done(node: Node, stamp: string): Outcome | undefined {
  const s = node.state;
  if (s.stamp !== stamp || s.raw === null) return undefined;
  if (s.status === 'completed') return node.type === 'BREAK' || s.broke ? { kind: 'break', value: s.raw } : { kind: 'ok', value: s.raw };
  if (s.status === 'failed') return { kind: 'failed', error: parseError(s.raw) };
  return undefined;
}

function parseError(raw: string): string {
  try {
    const v: unknown = JSON.parse(raw);
    return typeof v === 'string' ? v : raw;
  } catch {
    return raw;
  }
}

async function exec(node: Node, scope: Scope, ctx: InstanceContext, isRoot = false): Promise<Outcome> {
  if (scope.signal.aborted) throw new Aborted();
  let out = done(node, scope.stamp);
  if (out === undefined) {
    ctx.effects.record(node, 'running', scope.stamp, null);
    out = await step(node, scope, ctx, isRoot);
    remember(node, scope.stamp, out);
    if (node.type !== 'SQL' || out.kind === 'failed') {
      const raw = out.kind === 'failed' ? JSON.stringify(out.error) : out.value;
      // A composite node a break passes through ends completed, marked as left by the break:
      // a replay meets the break again instead of taking the value for the node's result.
      const broke = out.kind === 'break' && node.type !== 'BREAK';
      ctx.effects.record(node, out.kind === 'failed' ? 'failed' : 'completed', scope.stamp, raw, broke);
    }
    if (out.kind === 'break' && node.type !== 'BREAK') return out;
  }
  // |=> on SLEEP, WAIT_SCHEDULE and BREAK stores nothing.
  if (out.kind === 'ok' && node.name !== undefined && node.type !== 'SLEEP' && node.type !== 'WAIT_SCHEDULE') {
    scope.results.set(node.name, out.value);
  }
  return out;
}

/** Keeps the in-memory state in step with what was recorded, for a later replay within this run. */
function remember(node: Node, stamp: string, out: Outcome): void {
  node.state.stamp = stamp;
  node.state.status = out.kind === 'failed' ? 'failed' : 'completed';
  node.state.raw = out.kind === 'failed' ? JSON.stringify(out.error) : out.value;
  node.state.broke = out.kind === 'break' && node.type !== 'BREAK';
}

async function step(node: Node, scope: Scope, ctx: InstanceContext, isRoot: boolean): Promise<Outcome> {
  switch (node.type) {
    case 'SQL':
      return runStep(
        () => substituteResults(substituteVars(node.query, ctx.vars, { instanceId: ctx.instanceId, label: ctx.label }), scope.results, 'sql'),
        (sql) => ctx.effects.runSql(node, sql, scope.stamp, scope.signal),
        scope,
        ctx,
      );
    case 'THEN': {
      const left = await exec(node.left, scope, ctx);
      if (left.kind !== 'ok') return left;
      return exec(node.right, scope, ctx);
    }
    case 'IF': {
      const cond = await exec(node.condition, scope, ctx);
      if (cond.kind !== 'ok') return cond;
      return exec(truthy(cond.value) ? node.then : node.else, scope, ctx);
    }
    case 'IF_ROWS': {
      const r = scope.results.get(node.resultName);
      if (r === undefined) return { kind: 'failed', error: `df.if_rows: result '${node.resultName}' not found` };
      let count: unknown;
      try {
        count = (JSON.parse(r) as { row_count?: unknown }).row_count;
      } catch {
        count = undefined;
      }
      if (typeof count !== 'number') {
        return { kind: 'failed', error: `df.if_rows: result '${node.resultName}' is not a SQL result (missing row_count)` };
      }
      return exec(count > 0 ? node.then : node.else, scope, ctx);
    }
    case 'JOIN': {
      const scopes = node.branches.map((): Scope => ({ ...scope, results: new Map(scope.results) }));
      const outs = await Promise.all(node.branches.map((b, i) => exec(b, scopes[i]!, ctx)));
      for (const s of scopes) for (const [k, v] of s.results) scope.results.set(k, v);
      const failed = outs.findIndex((o) => o.kind === 'failed');
      if (failed >= 0) return { kind: 'failed', error: `JOIN branch ${failed + 1} failed: ${(outs[failed] as { error: string }).error}` };
      const brk = outs.find((o) => o.kind === 'break');
      if (brk) return brk;
      return { kind: 'ok', value: '[' + outs.map((o) => (o as { value: string }).value).join(',') + ']' };
    }
    case 'RACE':
      return race(node, scope, ctx);
    case 'LOOP':
      return loop(node, scope, ctx, isRoot);
    case 'BREAK':
      return { kind: 'break', value: node.value }; // outside a loop, runInstance turns it into the failure
    case 'SLEEP': {
      const deadline = await busy(ctx, () => ctx.effects.sleepDeadline(node, scope.stamp, node.seconds));
      if (ctx.parking) await ctx.parking.wait(deadline.getTime(), scope.signal);
      else await delay(deadline.getTime() - Date.now(), scope.signal);
      return { kind: 'ok', value: `{"slept":true,"seconds":${node.seconds}}` };
    }
    case 'SIGNAL':
      return awaitSignal(node, scope, ctx);
    case 'WAIT_SCHEDULE': {
      let at: Date;
      try {
        const now = ctx.effects.now();
        // The tick is computed on the schedule's clock and waited for on this one.
        at = new Date(Date.now() + (nextTick(schedule(node.cron, node.timeZone), new Date(now)).getTime() - now));
      } catch (err) {
        if (err instanceof ScheduleError) return { kind: 'failed', error: err.message };
        throw err;
      }
      const deadline = (await busy(ctx, () => ctx.effects.waitDeadline(node, scope.stamp, at)))!;
      await waitUntil(ctx, deadline.getTime(), scope.signal);
      return { kind: 'ok', value: '{"scheduled":true}' };
    }
    case 'HTTP':
    case 'HTTP_MULTIPART':
      return runStep(
        () => httpRequest(node, scope, ctx),
        (request) => ctx.effects.runHttp(node, request, scope.stamp, scope.signal),
        scope,
        ctx,
      );
  }
}

/**
 * A step: what substitution makes of it, then its effect. A StepError from
 * either is the step's failure; an abort stops the branch; anything else is
 * the infrastructure's (the instance resumes later).
 */
async function runStep<T>(prepare: () => T, run: (prepared: T) => Promise<string>, scope: Scope, ctx: InstanceContext): Promise<Outcome> {
  let prepared: T;
  try {
    prepared = prepare();
  } catch (err) {
    if (err instanceof StepError) return { kind: 'failed', error: err.message };
    throw err;
  }
  try {
    return { kind: 'ok', value: await busy(ctx, () => run(prepared)) };
  } catch (err) {
    if (err instanceof Aborted || scope.signal.aborted) throw new Aborted();
    if (err instanceof StepError) return { kind: 'failed', error: err.message };
    throw err;
  }
}

/** Parsed schedules, by time zone and expression: a recurring job's loop parses its one expression once. */
const schedules = memoized((key: string) => {
  const at = key.indexOf('\0');
  return parseSchedule(key.slice(at + 1), at === 0 ? null : key.slice(0, at));
}, 1000);
function schedule(cron: string, timeZone: string | null): Schedule {
  return schedules(`${timeZone ?? ''}\0${cron}`);
}

function waitUntil(ctx: InstanceContext, until: number, signal: AbortSignal): Promise<void> {
  return ctx.parking ? ctx.parking.wait(until, signal) : delay(until - Date.now(), signal);
}

/**
 * A signal wait: takes a kept signal of its name as soon as there is one
 * (sent before the wait began, or while it waits), or ends timed out at its
 * deadline. Signals poke the wait; a parked instance is re-claimed for one.
 */
async function awaitSignal(node: Node & { type: 'SIGNAL' }, scope: Scope, ctx: InstanceContext): Promise<Outcome> {
  const name = node.signalName;
  const at = node.timeoutSeconds === null ? null : new Date(Date.now() + node.timeoutSeconds * 1000);
  const deadline = await busy(ctx, () => ctx.effects.waitDeadline(node, scope.stamp, at));
  for (;;) {
    const got = await busy(ctx, () => ctx.effects.takeSignal(node, scope.stamp, name));
    if (got !== null) return { kind: 'ok', value: got };
    if (deadline !== null && Date.now() >= deadline.getTime()) {
      const raw = `{"signal_name":${JSON.stringify(name)},"timed_out":true,"data":null}`;
      await busy(ctx, () => ctx.effects.complete(node, scope.stamp, raw));
      return { kind: 'ok', value: raw };
    }
    const until = deadline?.getTime() ?? Infinity;
    // Without parking (no worker around it) a poll stands in for the pokes.
    if (ctx.parking) await ctx.parking.wait(until, scope.signal, name);
    else await delay(Math.min(until - Date.now(), 1000), scope.signal);
  }
}

/** An HTTP node's request with variables and results substituted (raw: nothing is quoted). */
function httpRequest(node: Node & { type: 'HTTP' | 'HTTP_MULTIPART' }, scope: Scope, ctx: InstanceContext): HttpStepRequest {
  const sub = (text: string): string =>
    substituteResults(substituteVars(text, ctx.vars, { instanceId: ctx.instanceId, label: ctx.label }), scope.results, 'raw');
  const c = node.config;
  const headers: Record<string, string> = {};
  // Only string-valued headers are sent, as in pg_durable; keys are not substituted.
  for (const [k, v] of Object.entries(c.headers ?? {})) if (typeof v === 'string') headers[k] = sub(v);
  if (node.type === 'HTTP') {
    return { url: sub(c.url), method: c.method, headers, body: node.config.body == null ? null : sub(node.config.body), parts: null, timeoutSeconds: c.timeout_seconds };
  }
  const parts = node.config.parts.map((p, i) => {
    if (typeof p !== 'object' || p === null || Array.isArray(p)) return p;
    const part = { ...(p as Record<string, unknown>) };
    for (const k of ['name', 'filename']) if (typeof part[k] === 'string') part[k] = sub(part[k] as string);
    if (typeof part.data_b64 === 'string') {
      const d = part.data_b64;
      // Base64 data takes a value only whole: one reference and nothing else.
      if (/^(\$[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?\??|\{[A-Za-z_][A-Za-z0-9_]*\})$/.test(d.trim())) part.data_b64 = sub(d.trim());
      else if (/[$\{]/.test(d)) {
        throw new StepError(`df.http_multipart: part ${i + 1}'s data_b64 mixes a variable reference with other text; use exactly one reference ($name or {var}) or plain base64`);
      }
    }
    return part;
  });
  return { url: sub(c.url), method: c.method, headers, body: null, parts, timeoutSeconds: c.timeout_seconds };
}

/** Both branches run; the first to finish wins, success or failure; the loser is stopped. */
async function race(node: Node & { type: 'RACE' }, scope: Scope, ctx: InstanceContext): Promise<Outcome> {
  const controllers = [new AbortController(), new AbortController()];
  const stopAll = (): void => controllers.forEach((c) => c.abort());
  scope.signal.addEventListener('abort', stopAll, { once: true });
  const scopes = controllers.map((c): Scope => ({ ...scope, results: new Map(scope.results), signal: c.signal }));
  const branches = [node.left, node.right].map((b, i) =>
    exec(b, scopes[i]!, ctx).then(
      (out) => ({ i, out }),
      (err: unknown) => {
        if (err instanceof Aborted) return new Promise<never>(() => {}); // a stopped loser never wins
        throw err;
      },
    ),
  );
  try {
    const { i, out } = await Promise.race(branches);
    controllers[1 - i]!.abort();
    for (const [k, v] of scopes[i]!.results) scope.results.set(k, v);
    if (out.kind === 'failed') return { kind: 'failed', error: `RACE ${i === 0 ? 'left' : 'right'} branch failed: ${out.error}` };
    return out;
  } finally {
    scope.signal.removeEventListener('abort', stopAll);
    if (scope.signal.aborted) stopAll();
  }
}

async function loop(node: Node & { type: 'LOOP' }, scope: Scope, ctx: InstanceContext, isRoot: boolean): Promise<Outcome> {
  let iteration = node.state.stamp === scope.stamp && node.state.iteration !== null ? node.state.iteration : 0;
  if (iteration === 0) {
    iteration = 1;
    await busy(ctx, () => ctx.effects.setIteration(node, scope.stamp, iteration));
  }
  // A root loop starts each iteration with no named results; any other loop
  // carries its results forward and hands them back to its parent.
  let results = isRoot ? new Map<string, string>() : new Map(scope.results);
  for (;;) {
    if (iteration > MAX_LOOP_ITERATIONS) {
      return { kind: 'failed', error: `Loop exceeded maximum iteration count of ${MAX_LOOP_ITERATIONS}` };
    }
    const started = Date.now();
    const inner: Scope = { stamp: `${scope.stamp}/${iteration}`, results, signal: scope.signal };
    const body = await exec(node.body, inner, ctx);
    let exit: Outcome | undefined;
    if (body.kind === 'break') exit = { kind: 'ok', value: body.value };
    else if (body.kind === 'failed') exit = body;
    else if (node.condition) {
      const cond = await exec(node.condition, inner, ctx);
      if (cond.kind === 'break') exit = { kind: 'ok', value: cond.value };
      else if (cond.kind === 'failed') exit = cond;
      else if (!truthy(cond.value)) exit = { kind: 'ok', value: body.value };
    }
    if (exit) {
      if (!isRoot) for (const [k, v] of results) scope.results.set(k, v);
      return exit;
    }
    // Each iteration takes at least a second, as in pg_durable: a runaway loop cannot spin.
    if (ctx.parking) await ctx.parking.wait(started + LOOP_FLOOR_MS, scope.signal);
    else await delay(started + LOOP_FLOOR_MS - Date.now(), scope.signal);
    iteration++;
    await busy(ctx, () => ctx.effects.setIteration(node, scope.stamp, iteration));
    if (isRoot) results = new Map();
  }
}

export function delay(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.reject(new Aborted());
  if (ms <= 0) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, Math.min(ms, 2 ** 31 - 1));
    const onAbort = (): void => {
      clearTimeout(t);
      reject(new Aborted());
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}
