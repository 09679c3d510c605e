// Cron schedules for df.wait_for_schedule: standard 5-field cron in an IANA
// time zone (UTC by default). croner parses and matches and walks the
// calendar across DST; this file only narrows croner's extended dialect to
// standard cron (with messages a person understands, the same as
// df._cron_error in sql/functions/05_schedule.sql) and corrects one DST case.
//
// The dialect: minute hour day-of-month month day-of-week; `*`, n, a-b, */s,
// a-b/s and comma lists of these; JAN-DEC and SUN-SAT in any case; day of
// week 0-7 with Sunday 0 or 7; @yearly @annually @monthly @weekly @daily
// @midnight @hourly. When day-of-month and day-of-week are both restricted
// (anything but a bare `*`), a day matches if either matches (Vixie cron).
// No seconds or years fields, no L, W, #, ? or + (croner's extensions).
//
// DST, for every schedule:
// - A local time that does not exist (spring forward) is skipped that day.
//   croner skips it for interval schedules but runs fixed-time ones when the
//   clock has jumped; nextTick drops such a run (its local time does not
//   match the pattern) and looks further.
// - A local time that occurs twice (fall back): a fixed-time schedule, one
//   whose minute and hour fields have no `*` and no step (`30 2 * * *`,
//   `0 8,20 * * *`, `0 1-3 * * *`), fires once, at the first occurrence. Any
//   other schedule (`*/15 * * * *`, `0 * * * *`, `*/10 2 * * *`,
//   `0 */2 * * *`) follows real time and fires in both passes of the repeated
//   hour, so `*/15` keeps ticking every 15 real minutes. This is croner's
//   fixedTimeRule 'no-wildcard', close to Vixie cron.
import { Cron } from 'croner';

export const DEFAULT_TIME_ZONE = 'UTC';

/** A bad cron expression or time zone; the message is the one users see. */
export class ScheduleError extends Error {
  override name = 'ScheduleError';
}

/** A parsed schedule; make one with parseSchedule. */
export interface Schedule {
  /** The expression as given. */
  readonly expression: string;
  /** The IANA time zone as given, or UTC. */
  readonly timeZone: string;
  /** The 5 fields as handed to croner: macros expanded, names made numbers. */
  readonly pattern: string;
  /** Fires once in a repeated (fall-back) hour: minute and hour have no `*` and no step. */
  readonly fixedTime: boolean;
}

interface Field {
  name: string;
  min: number;
  max: number;
  /** The largest step allowed (croner's limit: the field's count of values, 7 for the week). */
  maxStep: number;
  names?: readonly string[];
  nameKind?: string;
}

const FIELDS: readonly Field[] = [
  { name: 'minute', min: 0, max: 59, maxStep: 60 },
  { name: 'hour', min: 0, max: 23, maxStep: 24 },
  { name: 'day-of-month', min: 1, max: 31, maxStep: 31 },
  { name: 'month', min: 1, max: 12, maxStep: 12, nameKind: 'a month name (JAN-DEC)',
    names: ['JAN', 'FEB', 'MAR', 'APR', 'MAY', 'JUN', 'JUL', 'AUG', 'SEP', 'OCT', 'NOV', 'DEC'] },
  { name: 'day-of-week', min: 0, max: 7, maxStep: 7, nameKind: 'a day name (SUN-SAT)',
    names: ['SUN', 'MON', 'TUE', 'WED', 'THU', 'FRI', 'SAT'] },
];

const MACROS: Readonly<Record<string, string>> = {
  '@yearly': '0 0 1 1 *',
  '@annually': '0 0 1 1 *',
  '@monthly': '0 0 1 * *',
  '@weekly': '0 0 * * 0',
  '@daily': '0 0 * * *',
  '@midnight': '0 0 * * *',
  '@hourly': '0 * * * *',
};

/** Longest length of each month (February 29: leap years). */
const MONTH_DAYS = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

const SPACE = /[ \t\r\n]+/;
const TRIM = /^[ \t\r\n]+|[ \t\r\n]+$/g;
// `*`, `*` with a step, a, a-b, a-b with a step; a and b digits or a name.
// Groups: the step of `*`, start, end, the step of a range.
const ELEMENT = /^(?:\*(?:\/([0-9]+))?|([0-9]+|[A-Za-z]+)(?:-([0-9]+|[A-Za-z]+)(?:\/([0-9]+))?)?)$/;

type Normalised = { pattern: string; fixedTime: boolean } | { error: string };

/** Longest expression taken: the executor evaluates it at every tick, on a loop it shares with everyone. */
export const MAX_EXPRESSION_LENGTH = 256;

function normalise(expr: string): Normalised {
  if (expr.length > MAX_EXPRESSION_LENGTH) return { error: `the expression is longer than ${MAX_EXPRESSION_LENGTH} characters` };
  let text = expr.replace(TRIM, '');
  if (text.startsWith('@')) {
    const macro = MACROS[text.toLowerCase()];
    if (macro === undefined) {
      return {
        error: text.toLowerCase() === '@reboot'
          ? '@reboot is not supported'
          : `unknown macro '${text}' (use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly)`,
      };
    }
    text = macro;
  }
  const fields = text === '' ? [] : text.split(SPACE);
  if (fields.length !== 5) {
    return {
      error: `expected 5 fields (minute hour day-of-month month day-of-week) but found ${fields.length}` +
        (fields.length === 6 || fields.length === 7 ? ': fields for seconds or years are not supported' : ''),
    };
  }
  const out: string[] = [];
  let minDom = 32; // the smallest day the day-of-month field names
  let longestMonth = 0; // the longest month the month field names
  for (const [i, f] of FIELDS.entries()) {
    const fieldText = fields[i]!;
    const elements: string[] = [];
    for (const el of fieldText.split(',')) {
      if (el === '') return { error: `${f.name} '${fieldText}' has an empty list element` };
      const m = ELEMENT.exec(el);
      if (!m) return { error: `${f.name} '${el}' is not valid (use *, n, a-b, */n or a-b/n, or a comma-separated list of these)` };
      let lo = f.min;
      let hi = f.max;
      for (const [k, tok] of [m[2], m[3]].entries()) {
        if (tok === undefined) continue;
        let v: number;
        if (/^[0-9]+$/.test(tok)) v = Number(tok);
        else {
          const index = f.names?.indexOf(tok.toUpperCase()) ?? -1;
          if (index < 0) return { error: `${f.name} '${tok}' is not ${f.nameKind ?? 'a number'}` };
          v = f.min + index;
        }
        if (v < f.min || v > f.max) return { error: `${f.name} ${tok} is out of range ${f.min}-${f.max}` };
        if (k === 0) lo = hi = v;
        else hi = v;
      }
      if (lo > hi) return { error: `${f.name} range ${m[2]}-${m[3]} starts after it ends` };
      const stepText = m[1] ?? m[4];
      const step = stepText === undefined ? 1 : Number(stepText);
      if (step < 1 || step > f.maxStep) return { error: `${f.name} step ${stepText} is out of range 1-${f.maxStep}` };
      if (i === 2) minDom = Math.min(minDom, lo);
      if (i === 3) for (let mo = lo; mo <= hi; mo += step) longestMonth = Math.max(longestMonth, MONTH_DAYS[mo - 1]!);
      const range = m[2] === undefined ? '*' : m[3] === undefined ? String(lo) : `${lo}-${hi}`;
      elements.push(stepText === undefined ? range : `${range}/${step}`);
    }
    out.push(elements.join(','));
  }
  // With day-of-week a bare `*`, only day-of-month picks days: it must name a day the months have.
  if (fields[4] === '*' && fields[2] !== '*' && minDom > longestMonth) {
    return { error: `it never fires: day-of-month '${fields[2]}' does not occur in month '${fields[3]}'` };
  }
  const fixedTime = !/[*/]/.test(out[0]!) && !/[*/]/.test(out[1]!);
  return { pattern: out.join(' '), fixedTime };
}

/** Why `expr` is not a valid cron expression (the reason df._cron_error gives), or null. */
export function cronError(expr: string): string | null {
  const n = normalise(expr);
  return 'error' in n ? n.error : null;
}

/** The message for a time zone that is not an IANA name the runtime knows, or null (NULL means UTC). */
export function timeZoneError(timeZone: string | null | undefined): string | null {
  if (timeZone === null || timeZone === undefined) return null;
  let ok = /^[A-Za-z]/.test(timeZone); // no offsets such as +02:00, which newer runtimes accept
  if (ok) {
    try {
      new Intl.DateTimeFormat('en-US', { timeZone });
    } catch {
      ok = false;
    }
  }
  return ok ? null : `Invalid time zone '${timeZone}': use an IANA name such as 'Europe/Paris' or 'UTC'`;
}

const crons = new WeakMap<Schedule, Cron>();

/** Parses a 5-field cron expression in a time zone (default UTC); throws ScheduleError. */
export function parseSchedule(expr: string, timeZone?: string | null): Schedule {
  const n = normalise(expr);
  if ('error' in n) throw new ScheduleError(`Invalid cron expression '${expr}': ${n.error}`);
  const tzError = timeZoneError(timeZone);
  if (tzError !== null) throw new ScheduleError(tzError);
  const zone = timeZone ?? DEFAULT_TIME_ZONE;
  let cron: Cron;
  try {
    cron = new Cron(n.pattern, {
      timezone: zone,
      mode: '5-part',
      domAndDow: false,
      fixedTimeRule: 'no-wildcard',
      paused: true,
    });
  } catch (err) {
    // The checks above are meant to leave nothing for croner to refuse.
    throw new ScheduleError(`Invalid cron expression '${expr}': ${(err as Error).message}`);
  }
  const schedule: Schedule = Object.freeze({ expression: expr, timeZone: zone, pattern: n.pattern, fixedTime: n.fixedTime });
  crons.set(schedule, cron);
  return schedule;
}

/** The first tick strictly after `after` (ticks are whole minutes). */
export function nextTick(schedule: Schedule, after: Date): Date {
  const cron = crons.get(schedule);
  if (cron === undefined) throw new TypeError('nextTick needs a schedule made by parseSchedule');
  if (!(after instanceof Date) || Number.isNaN(after.getTime())) throw new TypeError('nextTick needs a valid Date');
  let from = after;
  // A fixed-time schedule's run that croner moved out of a DST gap is not at
  // a local time of the pattern: skip it. Each skip passes one gap, so a
  // handful of rounds is plenty.
  for (let i = 0; i < 100; i++) {
    const next = cron.nextRun(from);
    if (next === null) break;
    if (cron.match(next)) return next;
    from = next;
  }
  throw new ScheduleError(`Cron expression '${schedule.expression}' has no tick after ${after.toISOString()}`);
}
