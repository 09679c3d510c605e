// df._cron_error and df._tz_error (sql/functions/05_schedule.sql), the checks
// plain SQL makes when a workflow is built, against the TypeScript parser the
// executor schedules with (src/schedule/cron.ts): the same expressions pass,
// the same reasons for the others.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cronError, nextTick, parseSchedule, timeZoneError } from '../../src/schedule/cron.js';
import { dbUrl, freshDatabase } from '../helpers/durable.js';
import { env } from '../helpers/proxy.js';
import { seededRandom } from '../helpers/wait.js';

const SQL_FILE = path.resolve(import.meta.dirname, '../../sql/functions/05_schedule.sql');
const DATABASE = 'cron_sql';

let client: pg.Client;

beforeAll(async () => {
  await freshDatabase(DATABASE);
  client = new pg.Client(dbUrl(env().adminUrl, DATABASE));
  await client.connect();
  // Nothing else of the df schema: the file stands on its own. (In managed mode the
  // executor's set-up script has made the schema already, empty.)
  await client.query('CREATE SCHEMA IF NOT EXISTS df');
  await client.query(readFileSync(SQL_FILE, 'utf8'));
});

afterAll(async () => {
  await client?.end();
});

async function sqlCronErrors(exprs: string[]): Promise<(string | null)[]> {
  const { rows } = await client.query<{ r: string | null }>(
    'SELECT df._cron_error(e) AS r FROM unnest($1::text[]) WITH ORDINALITY AS x(e, i) ORDER BY i',
    [exprs],
  );
  return rows.map((row) => row.r);
}

interface FieldSpec {
  min: number;
  max: number;
  maxStep: number;
  names: readonly string[];
}

const MONTHS = ['JAN', 'FEB', 'MAR', 'APR', 'MAY', 'JUN', 'JUL', 'AUG', 'SEP', 'OCT', 'NOV', 'DEC'];
const DAYS = ['SUN', 'MON', 'TUE', 'WED', 'THU', 'FRI', 'SAT'];
const SPECS: readonly FieldSpec[] = [
  { min: 0, max: 59, maxStep: 60, names: [] },
  { min: 0, max: 23, maxStep: 24, names: [] },
  { min: 1, max: 31, maxStep: 31, names: [] },
  { min: 1, max: 12, maxStep: 12, names: MONTHS },
  { min: 0, max: 7, maxStep: 7, names: DAYS },
];
const JUNK = ['', '?', 'L', 'W', '15W', '5L', '5#2', 'MON#1', '+1', '1/5', '*-1', '1-', '-1', '-', '1.5', '*/', '*/*', '1-2-3',
  '1-5/', '/5', '**', 'x', 'FOO', 'MONDAY', 'jan', 'sun', '0x1', '1e2', '½', '٣', 'é', '*,', ',*', '$', "'"];

/** An expression that is mostly valid: each part goes wrong now and then, in every way the parser knows. */
function randomExpression(r: () => number): string {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
  const int = (lo: number, hi: number): number => lo + Math.floor(r() * (hi - lo + 1));
  const caseOf = (name: string): string => (r() < 0.5 ? name : r() < 0.5 ? name.toLowerCase() : name[0] + name.slice(1).toLowerCase());
  if (r() < 0.05) {
    return pick(['@daily', '@HOURLY', '@Weekly', '@monthly', '@yearly', '@annually', '@midnight', '@reboot', '@every 5m', ' @yearly ',
      '@', '@daily *', '@@daily', 'daily', '@hourly\t']);
  }
  const atom = (s: FieldSpec): string => {
    const x = r();
    if (x < 0.06) return pick([String(s.min - 1), String(s.max + 1), '99', '100', '007', '0' + String(s.max), '99999999999999999999']);
    if (x < 0.09) return caseOf(pick([...MONTHS, ...DAYS, 'FOO', 'L', 'W', 'MONDAY']));
    if (s.names.length > 0 && x < 0.35) return caseOf(pick(s.names));
    const v = int(s.min, s.max);
    return r() < 0.05 ? '0' + String(v) : String(v);
  };
  const step = (s: FieldSpec): string => {
    const x = r();
    if (x < 0.05) return pick(['0', String(s.maxStep + 1), '100', '00']);
    return String(int(1, x < 0.15 ? s.maxStep : Math.min(s.maxStep, 15)));
  };
  const element = (s: FieldSpec): string => {
    const x = r();
    if (x < 0.03) return pick(JUNK);
    if (x < 0.2) return '*';
    if (x < 0.35) return `*/${step(s)}`;
    if (x < 0.6) return atom(s);
    // Ranges are mostly in order: a start, then an end at or after it (names included).
    let a = atom(s);
    let b = atom(s);
    const value = (t: string): number => (/^[0-9]+$/.test(t) ? Number(t) : s.names.indexOf(t.toUpperCase()) + s.min);
    if (r() < 0.85 && value(a) > value(b)) [a, b] = [b, a];
    return x < 0.8 ? `${a}-${b}` : `${a}-${b}/${step(s)}`;
  };
  const field = (i: number): string => {
    const s = SPECS[i % 5]!;
    // Day of week `*` most of the time, so that day-of-month alone picks the days and may never occur.
    if (i === 4 && r() < 0.5) return '*';
    const n = r() < 0.7 ? 1 : int(2, 4);
    return Array.from({ length: n }, () => element(s)).join(',');
  };
  const count = r() < 0.92 ? 5 : pick([0, 1, 4, 6, 7, 8]);
  const fields = Array.from({ length: count }, (_, i) => field(i));
  // Late days in short months, for the never-fires rule.
  if (count === 5 && r() < 0.1) {
    fields[2] = pick(['29', '30', '31', '30-31', '30,31', '31,30', '29-31/2', '1,31']);
    fields[3] = pick(['2', 'FEB', '4', '2,4', 'apr,jun,sep,nov', '4-6/2', '2-3', '*/2', '2,11', '11', '9-11/2']);
    fields[4] = r() < 0.8 ? '*' : pick(['1', 'MON', '0-7']);
  }
  const sep = (): string => pick([' ', ' ', ' ', '  ', '\t', ' \t ']);
  const lead = r() < 0.1 ? pick([' ', '\t', '\n ']) : '';
  const trail = r() < 0.1 ? pick([' ', '\n', '\r\n']) : '';
  return lead + fields.map((f) => f).join(sep()) + trail;
}

const HAND_PICKED = [
  '* * * * *', '*/15 * * * *', '0 2 * * *', '0 9 * * 1-5', '0 0 1 * *', '0 0 * * 0', '0 0 * * 7', '0 0 * * SUN', '0 0 * * sun',
  '0 12 * JAN-MAR MON', '0 0 13 * 5', '1-30/5 * * * *', '0 0 29 2 *', '*/60 * * * *', '* */24 */31 */12 */7',
  '0-59 0-23 1-31 1-12 0-7', '*,5 * * * *', '0 0 30 2 MON', '0 0 31 2,3 *', '0 0 31 */2 *', '0 0 31 2-12/2 *', '0 0 31 1-11/2 *',
  '', '   ', '* * * *', '0 * * * * *', '0 0 * * * * 2030', '1 2 3 4 5 6 7 8', '@reboot', '@every 5m', '@daily *', '@DAILY', ' @Hourly ',
  '60 * * * *', '* 24 * * *', '* * 0 * *', '* * 32 * *', '* * * 0 *', '* * * 13 *', '* * * * 8', '* * * * 1-08',
  '99999999999999999999 * * * *', '30-10 * * * *', '* * * * FRI-MON', '* * * * 7-0', '* * * * SUN-7', '* * * * 7-SUN',
  '*/0 * * * *', '*/61 * * * *', '* 1-5/25 * * *', '* * * * */8', '* * * */13 *', '* * */32 * *', '5/15 * * * *', '*/ * * * *',
  '*/5/2 * * * *', '1-5-7 * * * *', '-1 * * * *', '1.5 * * * *', '* * L * *', '* * 15W * *', '* * ? * *', '* * * * 5#2',
  '* * * * +1', '* * * * 5L', '0\u00a00 * * * *', '1,,2 * * * *', '1, * * * *', ',1 * * * *', '* * * * MONDAY', '* * * * JAN',
  '* * * MON *', 'MON * * * *', '0 0 30 2 *', '0 0 31 apr,jun,sep,nov *', '0 0 30-31 FEB *', '0 0 29-31/2 2 *', '0 0 L * *',
  '0 0 1 1 * ', '\t0 0 1 1 *', '0 0 1 1 *\r\n', '0 0 1 1 *\u000b', 'jan * * * *', '* * * DEC-JAN *', '* * * dec *',
  // Bounded length: 256 characters is the most (here 255 and 257 characters, valid fields).
  `${'5,'.repeat(123)}5 * * * *`, `${'5,'.repeat(124)}5 * * * *`,
];

describe('df._cron_error against parseSchedule', () => {
  it('agrees on hand-picked and a few hundred random expressions', async () => {
    const r = seededRandom(20240331);
    const exprs = [...HAND_PICKED, ...Array.from({ length: 600 }, () => randomExpression(r))];
    const sql = await sqlCronErrors(exprs);
    const mismatches = exprs
      .map((e, i) => ({ e, ts: cronError(e), sql: sql[i] }))
      .filter((x) => x.ts !== x.sql);
    expect(mismatches).toEqual([]);
    // Both outcomes are well represented.
    const valid = exprs.filter((e) => cronError(e) === null);
    expect(valid.length).toBeGreaterThan(exprs.length * 0.3);
    expect(exprs.length - valid.length).toBeGreaterThan(exprs.length * 0.3);
    // Whatever passes the check, croner takes and finds a next tick for.
    const from = new Date('2024-06-01T00:00:00Z');
    for (const e of valid) expect(() => nextTick(parseSchedule(e, 'Europe/Paris'), from), JSON.stringify(e)).not.toThrow();
    for (const e of exprs.filter((x) => cronError(x) !== null)) {
      expect(() => parseSchedule(e), JSON.stringify(e)).toThrow(`Invalid cron expression '${e}': ${cronError(e)}`);
    }
  });

  it('NULL, and how the function is declared', async () => {
    expect((await client.query('SELECT df._cron_error(NULL) AS r')).rows[0].r).toBe('the expression is NULL');
    const { rows } = await client.query<{ proname: string; provolatile: string; proparallel: string; proconfig: string[] }>(
      `SELECT proname, provolatile, proparallel, proconfig FROM pg_proc WHERE pronamespace = 'df'::regnamespace ORDER BY proname`,
    );
    expect(rows).toEqual([
      { proname: '_cron_error', provolatile: 'i', proparallel: 's', proconfig: ['search_path=pg_catalog, pg_temp'] },
      { proname: '_tz_error', provolatile: 's', proparallel: 's', proconfig: ['search_path=pg_catalog, pg_temp'] },
    ]);
  });
});

describe('df._tz_error', () => {
  it('takes NULL and the names PostgreSQL knows, in any case; refuses the rest with the same message', async () => {
    const bad = ['Mars/Olympus', '', ' UTC', 'Europe/Paris ', '+02:00', '-05:00', 'UTC+2', '1', 'Europe//Paris', 'CEST', 'Europe/'];
    const good = ['UTC', 'utc', 'Europe/Paris', 'europe/paris', 'EUROPE/PARIS', 'America/New_York', 'Etc/GMT+5', 'Asia/Kolkata'];
    const { rows } = await client.query<{ tz: string | null; r: string | null }>(
      'SELECT tz, df._tz_error(tz) AS r FROM unnest($1::text[]) WITH ORDINALITY AS x(tz, i) ORDER BY i',
      [[null, ...good, ...bad]],
    );
    expect(rows.map((x) => x.r)).toEqual([null, ...good.map(() => null), ...bad.map((tz) => timeZoneError(tz))]);
    for (const tz of [null, ...good]) expect(timeZoneError(tz), String(tz)).toBeNull();
    for (const tz of bad) expect(timeZoneError(tz), tz).toBe(`Invalid time zone '${tz}': use an IANA name such as 'Europe/Paris' or 'UTC'`);
  });

  it('every zone df._tz_error accepts is one the executor can schedule in; the ones it cannot, SQL refuses too', async () => {
    const { rows } = await client.query<{ name: string; r: string | null }>('SELECT name, df._tz_error(name) AS r FROM pg_timezone_names ORDER BY name');
    expect(rows.filter((x) => x.r === null).length).toBeGreaterThan(300);
    // Factory, and on a system time-zone database (Debian's PostgreSQL) localtime, posixrules, posix/*, right/*.
    for (const { name, r } of rows) expect(r, name).toBe(timeZoneError(name));
  });
});
