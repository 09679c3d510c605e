// The DSL builders of sql/functions/01_dsl.sql, in TypeScript, text for text: the
// proxy compiles a literal DSL expression into exactly the graph JSON the SQL
// functions would build (a property test holds the two together). Values are
// strings or null, as in SQL: every builder but loop and break is STRICT.
import { NODE_TYPES } from '../workflow/model.js';
import { cronError, timeZoneError } from '../schedule/cron.js';

/** A DSL error: SQLSTATE, message, and the byte offset in the statement it points at. */
export class DslError extends Error {
  constructor(
    message: string,
    readonly code: string,
    readonly at: number | undefined,
    readonly hint?: string,
  ) {
    super(message);
  }
}


type T = string | null;
const str = (s: string): string => JSON.stringify(s);

/**
 * Envelopes node() made during the current compilation, by length. ensure()
 * must know whether a text is an envelope; parsing it to find out would
 * re-read each subtree at every level above it (quadratic: a chain of a few
 * thousand steps held the event loop for seconds). A text node() made is one
 * by construction, and is recognised by identity (=== compares references
 * first), without reading it.
 */
const built = new Map<number, string[]>();
let builtCount = 0;

/** Forgets the envelopes of the last compilation (call before each one). */
export function beginCompile(): void {
  built.clear();
  builtCount = 0;
}

function remember(t: string): string {
  if (++builtCount > 100_000) beginCompile();
  const same = built.get(t.length);
  if (same) same.push(t);
  else built.set(t.length, [t]);
  return t;
}

const isBuilt = (t: string): boolean => built.get(t.length)?.some((b) => b === t) ?? false;

export function node(type: string, left: T, right: T, cond: T, extra: string[] | null, query: T, name: T): string {
  return remember(
    '{"node_type":' + str(type) +
    (left !== null ? ',"left_node":' + left : '') +
    (right !== null ? ',"right_node":' + right : '') +
    (cond !== null ? ',"condition_node":' + cond : '') +
    (extra !== null ? ',"extra_nodes":[' + extra.join(',') + ']' : '') +
    (query !== null ? ',"query":' + str(query) : '') +
    (name !== null ? ',"result_name":' + str(name) : '') +
    '}',
  );
}

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type Obj = { [k: string]: Json };
const typeOf = (v: Json | undefined): string =>
  v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v === 'object' ? 'object' : typeof v === 'boolean' ? 'boolean' : typeof v;

/** df._envelope: the parsed envelope, or null when `t` is plain SQL or other JSON. */
export function envelope(t: T, strict: boolean, at?: number): Obj | null {
  if (t === null || !/^[ \t\r\n]*\{/.test(t)) return null;
  let j: Json;
  try {
    if (t.includes('\\u0000')) return null; // jsonb refuses it
    j = JSON.parse(t) as Json;
  } catch {
    return null;
  }
  if (typeOf(j) !== 'object') return null;
  const o = j as Obj;
  if (!Object.hasOwn(o, 'node_type')) return null;
  if (typeof o.node_type !== 'string' || !(NODE_TYPES as readonly string[]).includes(o.node_type)) {
    if (strict) {
      const shown = typeof o.node_type === 'string' ? o.node_type : o.node_type === null ? 'null' : JSON.stringify(o.node_type);
      throw new DslError(`Invalid durable function: Unknown node_type '${shown}'. Valid types: ${NODE_TYPES.join(', ')}`, '22023', at);
    }
    return null;
  }
  const bad = strict ? 'Malformed' : 'Invalid';
  for (const k of ['left_node', 'right_node', 'condition_node']) {
    if (Object.hasOwn(o, k) && !['object', 'null'].includes(typeOf(o[k]))) {
      throw new DslError(`${bad} Durofut JSON: ${k} must be an object, not ${typeOf(o[k])}`, '22023', at);
    }
  }
  if (Object.hasOwn(o, 'extra_nodes') && (!Array.isArray(o.extra_nodes) || o.extra_nodes.some((e) => typeOf(e) !== 'object'))) {
    throw new DslError(`${bad} Durofut JSON: extra_nodes must be an array of objects`, '22023', at);
  }
  for (const k of ['query', 'result_name']) {
    if (Object.hasOwn(o, k) && !['string', 'null'].includes(typeOf(o[k]))) {
      throw new DslError(`${bad} Durofut JSON: ${k} must be a string, not ${typeOf(o[k])}`, '22023', at);
    }
  }
  return o;
}

export function ensure(t: T, at?: number): T {
  if (t === null) return null;
  if (isBuilt(t)) return t;
  return envelope(t, false, at) === null ? node('SQL', null, null, null, null, t, null) : t;
}

function render(j: Obj): string {
  const child = (v: Json | undefined): T => (typeOf(v) === 'object' ? render(v as Obj) : null);
  const text = (v: Json | undefined): T => (v === undefined || v === null ? null : typeof v === 'string' ? v : JSON.stringify(v));
  return node(
    text(j.node_type) ?? '',
    child(j.left_node),
    child(j.right_node),
    child(j.condition_node),
    Object.hasOwn(j, 'extra_nodes') ? (j.extra_nodes as Obj[]).map(render) : null,
    text(j.query),
    text(j.result_name),
  );
}

const strict =
  <A extends T[]>(f: (...a: { [K in keyof A]: string }) => string) =>
  (...a: A): T =>
    a.some((x) => x === null) ? null : f(...(a as { [K in keyof A]: string }));

export const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;

export const sql = strict((q: string) => node('SQL', null, null, null, null, q, null));
export const seq = strict((a: string, b: string) => node('THEN', ensure(a), ensure(b), null, null, null, null));
export const join = strict((a: string, b: string) => node('JOIN', ensure(a), ensure(b), null, null, null, null));
export const join3 = strict((a: string, b: string, c: string) => node('JOIN', ensure(a), ensure(b), null, [ensure(c)!], null, null));
export const race = strict((a: string, b: string) => node('RACE', ensure(a), ensure(b), null, null, null, null));

export function as(fut: T, name: T, at?: number): T {
  if (fut === null || name === null) return null;
  if (!IDENTIFIER.test(name)) {
    throw new DslError(`df.as: result name '${name}' is not a valid identifier`, '22023', at,
      'A result name is a letter or underscore followed by letters, digits or underscores.');
  }
  const n = ensure(fut, at)!;
  // Only the top level matters: a text node() made ends with its result_name, if it has one.
  const named = isBuilt(n) ? /,"result_name":"(?:[^"\\]|\\.)*"}$/.test(n) : Object.hasOwn(JSON.parse(n) as Obj, 'result_name');
  if (named) return render({ ...(JSON.parse(n) as Obj), result_name: name });
  return remember(n.slice(0, -1) + ',"result_name":' + str(name) + '}');
}

export const ifElse = strict((c: string, t: string, e: string) => node('IF', ensure(t), ensure(e), ensure(c), null, null, null));
export const ifRows = strict((name: string, t: string, e: string) =>
  node('IF', ensure(t), ensure(e), null, null, '{"condition_type":"result_has_rows","result_name":' + str(name) + '}', null));

export function loop(body: T, cond: T, at?: number): string {
  if (body === null) throw new DslError('df.loop: body must not be NULL', '22004', at);
  return node('LOOP', ensure(body), null, ensure(cond), null, null, null);
}

export const brk = (value: T): string => node('BREAK', null, null, null, null, '{"break_value":' + (value === null ? 'null' : str(value)) + '}', null);

export function sleep(seconds: bigint | null, at?: number): T {
  if (seconds === null) return null;
  if (seconds < 0n) throw new DslError('Sleep duration must be non-negative', '22023', at);
  return node('SLEEP', null, null, null, null, seconds.toString(), null);
}

/** df.wait_for_signal: df._config_error's checks, with df.start's position. */
export function waitForSignal(name: T, timeoutSeconds: bigint | null, at?: number): string {
  if (name === null || name === '') throw new DslError('Signal name must not be empty', '22023', at);
  if (timeoutSeconds !== null && timeoutSeconds <= 0n) throw new DslError('Timeout must be positive', '22023', at);
  return node('SIGNAL', null, null, null, null, '{"signal_name":' + str(name) + ',"timeout_seconds":' + (timeoutSeconds?.toString() ?? 'null') + '}', null);
}

/** df.wait_for_schedule: STRICT on the expression; the time zone may be NULL (UTC). */
export function waitForSchedule(expr: T, timeZone: T, at?: number): T {
  if (expr === null) return null;
  const bad = cronError(expr);
  if (bad !== null) throw new DslError(`Invalid cron expression '${expr}': ${bad}`, '22023', at);
  const tz = timeZoneError(timeZone);
  if (tz !== null) throw new DslError(tz, '22023', at);
  return node('WAIT_SCHEDULE', null, null, null, null, '{"cron_expr":' + str(expr) + (timeZone === null ? '' : ',"time_zone":' + str(timeZone)) + '}', null);
}

/** `c ?> t`: jsonb_build_object(...)::text, keys in jsonb's order. */
export const ifThen = strict((c: string, t: string) => `{"condition": ${str(c)}, "_partial_if": true, "then_branch": ${str(t)}}`);

export function partialIf(t: string): { condition: T; then: T } | null {
  if (!t.startsWith('{')) return null;
  try {
    const p = JSON.parse(t) as Json;
    if (typeOf(p) === 'object' && (p as Obj)._partial_if !== undefined && (p as Obj)._partial_if !== null) {
      const o = p as Obj;
      const text = (v: Json | undefined): T => (v === undefined || v === null ? null : typeof v === 'string' ? v : JSON.stringify(v));
      return { condition: text(o.condition), then: text(o.then_branch) };
    }
  } catch {
    // not JSON: not a partial if
  }
  return null;
}

export function ifElseOp(partial: T, e: T, at?: number): T {
  if (partial === null || e === null) return null;
  const p = partialIf(partial);
  if (!p) {
    throw new DslError('Invalid if-then-else: left side of !> must be a ?> expression', '42601', at,
      'The df operators all have the same precedence and group left to right: write c ?> (a ~> b) !> e.');
  }
  return ifElse(p.condition, p.then, e);
}
