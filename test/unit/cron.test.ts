// Cron schedules (src/schedule/cron.ts): the dialect, next ticks, DST rules
// and the messages for what is refused. Every instant is given, never waited for.
import { afterEach, describe, expect, it } from 'vitest';
import { ScheduleError, cronError, nextTick, parseSchedule, timeZoneError, type Schedule } from '../../src/schedule/cron.js';

/** The next n ticks after `from`, as ISO strings. */
function ticks(s: Schedule | string, from: string, n: number, tz?: string): string[] {
  const schedule = typeof s === 'string' ? parseSchedule(s, tz) : s;
  const out: string[] = [];
  let at = new Date(from);
  for (let i = 0; i < n; i++) {
    at = nextTick(schedule, at);
    out.push(at.toISOString().replace('.000Z', 'Z'));
  }
  return out;
}

const next = (expr: string, from: string, tz?: string): string => ticks(expr, from, 1, tz)[0]!;

describe('standard cron', () => {
  it('every minute, strictly after', () => {
    expect(ticks('* * * * *', '2024-01-01T10:20:30Z', 3)).toEqual(['2024-01-01T10:21:00Z', '2024-01-01T10:22:00Z', '2024-01-01T10:23:00Z']);
    expect(next('* * * * *', '2024-01-01T10:20:00Z')).toBe('2024-01-01T10:21:00Z');
    expect(next('* * * * *', '2024-01-01T10:20:59.999Z')).toBe('2024-01-01T10:21:00Z');
  });

  it('a tick exactly at `after` is not returned', () => {
    expect(next('0 2 * * *', '2024-01-01T02:00:00Z')).toBe('2024-01-02T02:00:00Z');
    expect(next('0 2 * * *', '2024-01-01T01:59:59.999Z')).toBe('2024-01-01T02:00:00Z');
    expect(next('0 2 * * *', '2024-01-01T02:00:00.001Z')).toBe('2024-01-02T02:00:00Z');
  });

  it('*/15 and 1-30/5', () => {
    expect(ticks('*/15 * * * *', '2024-01-01T10:20:00Z', 4)).toEqual([
      '2024-01-01T10:30:00Z', '2024-01-01T10:45:00Z', '2024-01-01T11:00:00Z', '2024-01-01T11:15:00Z',
    ]);
    expect(ticks('1-30/5 9 * * *', '2024-01-01T00:00:00Z', 7)).toEqual([
      '2024-01-01T09:01:00Z', '2024-01-01T09:06:00Z', '2024-01-01T09:11:00Z', '2024-01-01T09:16:00Z',
      '2024-01-01T09:21:00Z', '2024-01-01T09:26:00Z', '2024-01-02T09:01:00Z',
    ]);
  });

  it('0 2 * * * daily, 0 0 1 * * monthly', () => {
    expect(ticks('0 2 * * *', '2024-01-01T03:00:00Z', 2)).toEqual(['2024-01-02T02:00:00Z', '2024-01-03T02:00:00Z']);
    expect(ticks('0 0 1 * *', '2024-01-15T00:00:00Z', 3)).toEqual(['2024-02-01T00:00:00Z', '2024-03-01T00:00:00Z', '2024-04-01T00:00:00Z']);
  });

  it('0 9 * * 1-5 is Monday to Friday (not Sunday to Thursday as in pg_durable)', () => {
    // 2024-01-05 is a Friday.
    const got = ticks('0 9 * * 1-5', '2024-01-05T10:00:00Z', 10).map((t) => new Date(t));
    expect(got[0]!.toISOString()).toBe('2024-01-08T09:00:00.000Z');
    expect(got.map((d) => d.getUTCDay())).toEqual([1, 2, 3, 4, 5, 1, 2, 3, 4, 5]);
    expect(ticks('0 9 * * MON-FRI', '2024-01-05T10:00:00Z', 10)).toEqual(got.map((d) => d.toISOString().replace('.000Z', 'Z')));
  });

  it('Sunday is 0 or 7, names in any case', () => {
    const sundays = ticks('0 0 * * 0', '2024-01-01T00:00:00Z', 5);
    expect(sundays).toEqual(['2024-01-07T00:00:00Z', '2024-01-14T00:00:00Z', '2024-01-21T00:00:00Z', '2024-01-28T00:00:00Z', '2024-02-04T00:00:00Z']);
    for (const e of ['0 0 * * 7', '0 0 * * SUN', '0 0 * * sun', '0 0 * * Sun', '0 0 * * 0,7', '0 0 * * 7-7']) {
      expect(ticks(e, '2024-01-01T00:00:00Z', 5), e).toEqual(sundays);
    }
    // Friday to Sunday, with 7 at the end of a range.
    expect(ticks('0 0 * * 5-7', '2024-01-01T00:00:00Z', 4).map((t) => new Date(t).getUTCDay())).toEqual([5, 6, 0, 5]);
    expect(ticks('0 12 * jan-Mar mon', '2024-01-01T00:00:00Z', 30)).toEqual(ticks('0 12 * 1-3 1', '2024-01-01T00:00:00Z', 30));
    expect(ticks('0 12 1 JUN,dec *', '2024-01-01T00:00:00Z', 3)).toEqual(['2024-06-01T12:00:00Z', '2024-12-01T12:00:00Z', '2025-06-01T12:00:00Z']);
  });

  it('day-of-month and day-of-week both restricted: either matches', () => {
    // September 2024: the 1st is a Sunday, Fridays are the 6th, 13th, 20th and 27th; 13 October is a Sunday.
    expect(ticks('0 0 13 * 5', '2024-09-01T00:00:00Z', 8)).toEqual([
      '2024-09-06T00:00:00Z', '2024-09-13T00:00:00Z', '2024-09-20T00:00:00Z', '2024-09-27T00:00:00Z',
      '2024-10-04T00:00:00Z', '2024-10-11T00:00:00Z', '2024-10-13T00:00:00Z', '2024-10-18T00:00:00Z',
    ]);
    // Only one restricted: that one alone.
    expect(ticks('0 0 13 * *', '2024-09-01T00:00:00Z', 2)).toEqual(['2024-09-13T00:00:00Z', '2024-10-13T00:00:00Z']);
    expect(ticks('0 0 * * 5', '2024-09-01T00:00:00Z', 2)).toEqual(['2024-09-06T00:00:00Z', '2024-09-13T00:00:00Z']);
    // A step counts as restricted (only a bare * does not): the 1st, 11th, 21st, 31st or a Monday.
    expect(ticks('0 0 */10 * 1', '2024-07-01T00:00:00Z', 7).map((t) => t.slice(5, 10))).toEqual([
      '07-08', '07-11', '07-15', '07-21', '07-22', '07-29', '07-31',
    ]);
  });

  it('macros', () => {
    const from = '2024-05-15T10:30:00Z';
    for (const [macro, expansion] of [
      ['@yearly', '0 0 1 1 *'], ['@annually', '0 0 1 1 *'], ['@monthly', '0 0 1 * *'], ['@weekly', '0 0 * * 0'],
      ['@daily', '0 0 * * *'], ['@midnight', '0 0 * * *'], ['@hourly', '0 * * * *'], ['@DAILY', '0 0 * * *'], [' @Hourly ', '0 * * * *'],
    ] as const) {
      expect(ticks(macro, from, 3), macro).toEqual(ticks(expansion, from, 3));
      expect(parseSchedule(macro).pattern).toBe(expansion);
    }
    expect(next('@weekly', from)).toBe('2024-05-19T00:00:00Z');
  });

  it('leap day and far future', () => {
    expect(ticks('0 0 29 2 *', '2024-03-01T00:00:00Z', 2)).toEqual(['2028-02-29T00:00:00Z', '2032-02-29T00:00:00Z']);
    expect(next('0 0 29 2 *', '2024-02-28T23:59:00Z')).toBe('2024-02-29T00:00:00Z');
    // 2100 is not a leap year.
    expect(next('0 0 29 2 *', '2096-03-01T00:00:00Z')).toBe('2104-02-29T00:00:00Z');
    expect(next('0 0 31 * *', '2024-04-01T00:00:00Z')).toBe('2024-05-31T00:00:00Z');
    expect(next('30 4 1 1 *', '2990-06-01T00:00:00Z')).toBe('2991-01-01T04:30:00Z');
    // croner searches up to the year 3000.
    expect(() => nextTick(parseSchedule('0 0 1 1 *'), new Date('2999-06-01T00:00:00Z'))).toThrow(
      new ScheduleError("Cron expression '0 0 1 1 *' has no tick after 2999-06-01T00:00:00.000Z"),
    );
  });

  it('whitespace between fields, the normalised pattern, fixed-time or not', () => {
    expect(ticks(' 0\t9  * *   MON-FRI \n', '2024-01-05T10:00:00Z', 2)).toEqual(['2024-01-08T09:00:00Z', '2024-01-09T09:00:00Z']);
    const s = parseSchedule('05 8-18/2 1,15 jan-jun/2 Mon-fri', 'Europe/Paris');
    expect(s).toMatchObject({ expression: '05 8-18/2 1,15 jan-jun/2 Mon-fri', timeZone: 'Europe/Paris', pattern: '5 8-18/2 1,15 1-6/2 1-5', fixedTime: false });
    expect(parseSchedule('30 2 * * *').fixedTime).toBe(true);
    expect(parseSchedule('0,30 1-3 * * *').fixedTime).toBe(true);
    for (const e of ['* * * * *', '*/15 * * * *', '0 * * * *', '*/10 2 * * *', '0 */2 * * *', '0 0-23/2 * * *', '@hourly']) {
      expect(parseSchedule(e).fixedTime, e).toBe(false);
    }
    expect(parseSchedule('@daily').fixedTime).toBe(true);
  });

  it('nextTick refuses what is not a schedule or a date', () => {
    expect(() => nextTick({ expression: '* * * * *', timeZone: 'UTC', pattern: '* * * * *', fixedTime: false }, new Date())).toThrow(TypeError);
    expect(() => nextTick(parseSchedule('* * * * *'), new Date('nope'))).toThrow(TypeError);
  });
});

describe('time zones', () => {
  const savedTz = process.env.TZ;
  afterEach(() => {
    if (savedTz === undefined) delete process.env.TZ;
    else process.env.TZ = savedTz;
  });

  it('UTC by default; local times of the zone', () => {
    expect(parseSchedule('0 9 * * *').timeZone).toBe('UTC');
    expect(parseSchedule('0 9 * * *', null).timeZone).toBe('UTC');
    expect(next('0 9 * * *', '2024-01-01T00:00:00Z', 'Europe/Paris')).toBe('2024-01-01T08:00:00Z');
    expect(next('0 9 * * *', '2024-07-01T00:00:00Z', 'Europe/Paris')).toBe('2024-07-01T07:00:00Z');
    expect(next('0 9 * * *', '2024-01-01T00:00:00Z', 'Asia/Kolkata')).toBe('2024-01-01T03:30:00Z');
    expect(next('0 9 * * *', '2024-01-01T00:00:00Z', 'America/New_York')).toBe('2024-01-01T14:00:00Z');
    // A day-of-week is the zone's: 23:30 on Sunday 31 December in New York is Monday in UTC.
    expect(ticks('30 23 * * SUN', '2024-01-01T00:00:00Z', 2, 'America/New_York')).toEqual(['2024-01-01T04:30:00Z', '2024-01-08T04:30:00Z']);
    expect(parseSchedule('* * * * *', 'europe/paris').timeZone).toBe('europe/paris');
  });

  it("does not depend on the process's own time zone", () => {
    const cases: [string, string, string][] = [
      ['30 2 * * *', 'Europe/Paris', '2024-03-29T12:00:00Z'],
      ['*/30 * * * *', 'America/New_York', '2024-11-03T04:45:00Z'],
      ['0 0 * * 1', 'UTC', '2024-01-01T00:00:00Z'],
    ];
    const run = (): string[][] => cases.map(([e, tz, from]) => ticks(e, from, 6, tz));
    process.env.TZ = 'UTC';
    const utc = run();
    for (const tz of ['Asia/Tokyo', 'America/Los_Angeles', 'Europe/Paris']) {
      process.env.TZ = tz;
      expect(run(), tz).toEqual(utc);
    }
  });

  it('refuses what is not an IANA name', () => {
    for (const tz of ['Mars/Olympus', '', ' UTC', 'Europe/Paris ', '+02:00', '-05:00', 'UTC+2', '1', 'Europe//Paris']) {
      const msg = `Invalid time zone '${tz}': use an IANA name such as 'Europe/Paris' or 'UTC'`;
      expect(timeZoneError(tz), tz).toBe(msg);
      expect(() => parseSchedule('* * * * *', tz), tz).toThrow(new ScheduleError(msg));
    }
    for (const tz of [null, undefined, 'UTC', 'Europe/Paris', 'America/New_York', 'Etc/GMT+5', 'Asia/Kolkata']) expect(timeZoneError(tz), String(tz)).toBeNull();
  });

  it('the expression is checked before the zone', () => {
    expect(() => parseSchedule('* * * *', 'Nowhere')).toThrow("Invalid cron expression '* * * *'");
  });
});

// Europe/Paris 2024: clocks go 02:00 CET -> 03:00 CEST on 31 March (01:00Z) and
// 03:00 CEST -> 02:00 CET on 27 October (01:00Z). America/New_York 2024:
// 02:00 EST -> 03:00 EDT on 10 March (07:00Z), 02:00 EDT -> 01:00 EST on 3 November (06:00Z).
describe('DST', () => {
  it('Paris, spring forward: a fixed time in the gap is skipped that day', () => {
    expect(ticks('30 2 * * *', '2024-03-29T12:00:00Z', 3, 'Europe/Paris')).toEqual([
      '2024-03-30T01:30:00Z', // 02:30 CET
      // 31 March has no 02:30
      '2024-04-01T00:30:00Z', // 02:30 CEST
      '2024-04-02T00:30:00Z',
    ]);
    expect(ticks('0 2 * * *', '2024-03-30T12:00:00Z', 1, 'Europe/Paris')).toEqual(['2024-04-01T00:00:00Z']);
    // A list: the time in the gap is skipped, the others fire.
    expect(ticks('30 2,3 * * *', '2024-03-30T12:00:00Z', 3, 'Europe/Paris')).toEqual([
      '2024-03-31T01:30:00Z', '2024-04-01T00:30:00Z', '2024-04-01T01:30:00Z',
    ]);
    // 03:00 exists (it is when the clock lands): it fires once.
    expect(ticks('0 2,3 * * *', '2024-03-30T12:00:00Z', 2, 'Europe/Paris')).toEqual(['2024-03-31T01:00:00Z', '2024-04-01T00:00:00Z']);
    // A whole schedule inside the gap.
    expect(ticks('*/20 2 * * *', '2024-03-30T12:00:00Z', 4, 'Europe/Paris')).toEqual([
      '2024-04-01T00:00:00Z', '2024-04-01T00:20:00Z', '2024-04-01T00:40:00Z', '2024-04-02T00:00:00Z',
    ]);
  });

  it('Paris, fall back: a fixed time fires once, at the first occurrence', () => {
    expect(ticks('30 2 * * *', '2024-10-26T12:00:00Z', 2, 'Europe/Paris')).toEqual([
      '2024-10-27T00:30:00Z', // 02:30 CEST; not again at 02:30 CET (01:30Z)
      '2024-10-28T01:30:00Z', // 02:30 CET
    ]);
    // After the first occurrence, from inside either pass.
    expect(next('30 2 * * *', '2024-10-27T00:45:00Z', 'Europe/Paris')).toBe('2024-10-28T01:30:00Z');
    expect(next('30 2 * * *', '2024-10-27T01:15:00Z', 'Europe/Paris')).toBe('2024-10-28T01:30:00Z');
    // Interval schedules follow real time: both passes.
    expect(ticks('*/15 * * * *', '2024-10-26T23:50:00Z', 9, 'Europe/Paris')).toEqual([
      '2024-10-27T00:00:00Z', '2024-10-27T00:15:00Z', '2024-10-27T00:30:00Z', '2024-10-27T00:45:00Z', // 02:00-02:45 CEST
      '2024-10-27T01:00:00Z', '2024-10-27T01:15:00Z', '2024-10-27T01:30:00Z', '2024-10-27T01:45:00Z', // 02:00-02:45 CET
      '2024-10-27T02:00:00Z', // 03:00 CET
    ]);
    expect(ticks('0 */2 * * *', '2024-10-26T21:00:00Z', 4, 'Europe/Paris')).toEqual([
      '2024-10-26T22:00:00Z', '2024-10-27T00:00:00Z', '2024-10-27T01:00:00Z', '2024-10-27T03:00:00Z',
    ]);
    // A list of fixed times: each once.
    expect(ticks('0,30 2 * * *', '2024-10-27T00:10:00Z', 3, 'Europe/Paris')).toEqual([
      '2024-10-27T00:30:00Z', '2024-10-28T01:00:00Z', '2024-10-28T01:30:00Z',
    ]);
  });

  it('Paris, */30 ticks every 30 real minutes through both changes', () => {
    expect(ticks('*/30 * * * *', '2024-03-30T23:45:00Z', 4, 'Europe/Paris')).toEqual([
      '2024-03-31T00:00:00Z', // 01:00 CET
      '2024-03-31T00:30:00Z', // 01:30 CET
      '2024-03-31T01:00:00Z', // 03:00 CEST
      '2024-03-31T01:30:00Z', // 03:30 CEST
    ]);
    expect(ticks('*/30 * * * *', '2024-10-26T23:45:00Z', 5, 'Europe/Paris')).toEqual([
      '2024-10-27T00:00:00Z', // 02:00 CEST
      '2024-10-27T00:30:00Z', // 02:30 CEST
      '2024-10-27T01:00:00Z', // 02:00 CET, the repeated hour's second pass
      '2024-10-27T01:30:00Z', // 02:30 CET
      '2024-10-27T02:00:00Z', // 03:00 CET
    ]);
    // Local midnight to midnight: 23 hours (46 ticks) in March, 25 hours (50 ticks) in October, 30 minutes apart, no duplicates.
    for (const [from, count, end] of [
      ['2024-03-30T23:00:00Z', 46, '2024-03-31T22:00:00Z'],
      ['2024-10-26T22:00:00Z', 50, '2024-10-27T23:00:00Z'],
    ] as const) {
      const day = ticks('*/30 * * * *', from, count, 'Europe/Paris').map((t) => Date.parse(t));
      expect(day.slice(1).map((t, i) => t - day[i]!)).toEqual(Array(count - 1).fill(30 * 60_000));
      expect(new Date(day[count - 1]!).toISOString()).toBe(end.replace('Z', '.000Z'));
    }
  });

  it('New York, spring forward: a fixed time in the gap is skipped that day', () => {
    expect(ticks('30 2 * * *', '2024-03-08T12:00:00Z', 3, 'America/New_York')).toEqual([
      '2024-03-09T07:30:00Z', // 02:30 EST
      // 10 March has no 02:30
      '2024-03-11T06:30:00Z', // 02:30 EDT
      '2024-03-12T06:30:00Z',
    ]);
    expect(ticks('*/30 * * * *', '2024-03-10T05:45:00Z', 4, 'America/New_York')).toEqual([
      '2024-03-10T06:00:00Z', // 01:00 EST
      '2024-03-10T06:30:00Z', // 01:30 EST
      '2024-03-10T07:00:00Z', // 03:00 EDT
      '2024-03-10T07:30:00Z', // 03:30 EDT
    ]);
  });

  it('New York, fall back: fixed times once, interval schedules in both passes', () => {
    expect(ticks('30 1 * * *', '2024-11-01T12:00:00Z', 3, 'America/New_York')).toEqual([
      '2024-11-02T05:30:00Z', // 01:30 EDT
      '2024-11-03T05:30:00Z', // 01:30 EDT; not again at 01:30 EST (06:30Z)
      '2024-11-04T06:30:00Z', // 01:30 EST
    ]);
    expect(next('30 1 * * *', '2024-11-03T06:15:00Z', 'America/New_York')).toBe('2024-11-04T06:30:00Z');
    expect(ticks('*/30 * * * *', '2024-11-03T04:45:00Z', 5, 'America/New_York')).toEqual([
      '2024-11-03T05:00:00Z', // 01:00 EDT
      '2024-11-03T05:30:00Z', // 01:30 EDT
      '2024-11-03T06:00:00Z', // 01:00 EST
      '2024-11-03T06:30:00Z', // 01:30 EST
      '2024-11-03T07:00:00Z', // 02:00 EST
    ]);
    // Hourly: every real hour.
    expect(ticks('0 * * * *', '2024-11-03T03:30:00Z', 4, 'America/New_York')).toEqual([
      '2024-11-03T04:00:00Z', '2024-11-03T05:00:00Z', '2024-11-03T06:00:00Z', '2024-11-03T07:00:00Z',
    ]);
    // A step in the minute field with a fixed hour: both passes too (as Vixie cron).
    expect(ticks('*/15 1 * * *', '2024-11-03T04:30:00Z', 9, 'America/New_York')).toEqual([
      '2024-11-03T05:00:00Z', '2024-11-03T05:15:00Z', '2024-11-03T05:30:00Z', '2024-11-03T05:45:00Z',
      '2024-11-03T06:00:00Z', '2024-11-03T06:15:00Z', '2024-11-03T06:30:00Z', '2024-11-03T06:45:00Z',
      '2024-11-04T06:00:00Z',
    ]);
    // A range of hours is fixed: 01:00 once, then 02:00 and 03:00 EST.
    expect(ticks('0 1-3 * * *', '2024-11-03T04:30:00Z', 4, 'America/New_York')).toEqual([
      '2024-11-03T05:00:00Z', '2024-11-03T07:00:00Z', '2024-11-03T08:00:00Z', '2024-11-04T06:00:00Z',
    ]);
  });

  it('a gap of 30 minutes (Lord Howe Island) and a gap at midnight (Santiago)', () => {
    // Australia/Lord_Howe, 6 October 2024: 02:00 (+10:30) -> 02:30 (+11).
    expect(ticks('15 2 * * *', '2024-10-04T12:00:00Z', 2, 'Australia/Lord_Howe')).toEqual([
      '2024-10-04T15:45:00Z', // 5 October 02:15 +10:30
      '2024-10-06T15:15:00Z', // 7 October 02:15 +11; 6 October has none
    ]);
    // America/Santiago, 8 September 2024: 00:00 (-04) -> 01:00 (-03).
    expect(ticks('0 0 * * *', '2024-09-06T12:00:00Z', 2, 'America/Santiago')).toEqual([
      '2024-09-07T04:00:00Z', // 7 September 00:00 -04
      '2024-09-09T03:00:00Z', // 9 September 00:00 -03; 8 September has no midnight
    ]);
  });
});

describe('refused expressions', () => {
  const cases: [string, string][] = [
    ['', 'expected 5 fields (minute hour day-of-month month day-of-week) but found 0'],
    ['   ', 'expected 5 fields (minute hour day-of-month month day-of-week) but found 0'],
    ['* * * *', 'expected 5 fields (minute hour day-of-month month day-of-week) but found 4'],
    ['0 * * * * *', 'expected 5 fields (minute hour day-of-month month day-of-week) but found 6: fields for seconds or years are not supported'],
    ['0 0 * * * * 2030', 'expected 5 fields (minute hour day-of-month month day-of-week) but found 7: fields for seconds or years are not supported'],
    ['1 2 3 4 5 6 7 8', 'expected 5 fields (minute hour day-of-month month day-of-week) but found 8'],
    ['@reboot', '@reboot is not supported'],
    ['@every 5m', "unknown macro '@every 5m' (use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly)"],
    ['@daily *', "unknown macro '@daily *' (use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly)"],
    ['60 * * * *', 'minute 60 is out of range 0-59'],
    ['* 24 * * *', 'hour 24 is out of range 0-23'],
    ['* * 0 * *', 'day-of-month 0 is out of range 1-31'],
    ['* * 32 * *', 'day-of-month 32 is out of range 1-31'],
    ['* * * 0 *', 'month 0 is out of range 1-12'],
    ['* * * 13 *', 'month 13 is out of range 1-12'],
    ['* * * * 8', 'day-of-week 8 is out of range 0-7'],
    ['* * * * 1-08', 'day-of-week 08 is out of range 0-7'],
    ['99999999999999999999 * * * *', 'minute 99999999999999999999 is out of range 0-59'],
    ['30-10 * * * *', 'minute range 30-10 starts after it ends'],
    ['* * * * FRI-MON', 'day-of-week range FRI-MON starts after it ends'],
    ['* * * * 7-0', 'day-of-week range 7-0 starts after it ends'],
    ['*/0 * * * *', 'minute step 0 is out of range 1-60'],
    ['*/61 * * * *', 'minute step 61 is out of range 1-60'],
    ['* 1-5/25 * * *', 'hour step 25 is out of range 1-24'],
    ['* * * * */8', 'day-of-week step 8 is out of range 1-7'],
    ['5/15 * * * *', "minute '5/15' is not valid (use *, n, a-b, */n or a-b/n, or a comma-separated list of these)"],
    ['*/ * * * *', "minute '*/' is not valid (use *, n, a-b, */n or a-b/n, or a comma-separated list of these)"],
    ['*/5/2 * * * *', "minute '*/5/2' is not valid (use *, n, a-b, */n or a-b/n, or a comma-separated list of these)"],
    ['1-5-7 * * * *', "minute '1-5-7' is not valid (use *, n, a-b, */n or a-b/n, or a comma-separated list of these)"],
    ['-1 * * * *', "minute '-1' is not valid (use *, n, a-b, */n or a-b/n, or a comma-separated list of these)"],
    ['1.5 * * * *', "minute '1.5' is not valid (use *, n, a-b, */n or a-b/n, or a comma-separated list of these)"],
    ['* * L * *', "day-of-month 'L' is not a number"],
    ['* * 15W * *', "day-of-month '15W' is not valid (use *, n, a-b, */n or a-b/n, or a comma-separated list of these)"],
    ['* * ? * *', "day-of-month '?' is not valid (use *, n, a-b, */n or a-b/n, or a comma-separated list of these)"],
    ['* * * * 5#2', "day-of-week '5#2' is not valid (use *, n, a-b, */n or a-b/n, or a comma-separated list of these)"],
    ['* * * * +1', "day-of-week '+1' is not valid (use *, n, a-b, */n or a-b/n, or a comma-separated list of these)"],
    ['* * * * 5L', "day-of-week '5L' is not valid (use *, n, a-b, */n or a-b/n, or a comma-separated list of these)"],
    ['0\u00a00 * * * *', "minute '0\u00a00' is not valid (use *, n, a-b, */n or a-b/n, or a comma-separated list of these)"],
    ['1,,2 * * * *', "minute '1,,2' has an empty list element"],
    ['1, * * * *', "minute '1,' has an empty list element"],
    ['* * * * MONDAY', "day-of-week 'MONDAY' is not a day name (SUN-SAT)"],
    ['* * * * JAN', "day-of-week 'JAN' is not a day name (SUN-SAT)"],
    ['* * * MON *', "month 'MON' is not a month name (JAN-DEC)"],
    ['MON * * * *', "minute 'MON' is not a number"],
    ['0 0 30 2 *', "it never fires: day-of-month '30' does not occur in month '2'"],
    ['0 0 31 apr,jun,sep,nov *', "it never fires: day-of-month '31' does not occur in month 'apr,jun,sep,nov'"],
    ['0 0 30-31 FEB *', "it never fires: day-of-month '30-31' does not occur in month 'FEB'"],
  ];

  it.each(cases)('%j: %s', (expr, reason) => {
    expect(cronError(expr)).toBe(reason);
    expect(() => parseSchedule(expr)).toThrow(new ScheduleError(`Invalid cron expression '${expr}': ${reason}`));
    let err: unknown;
    try {
      parseSchedule(expr);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ScheduleError);
  });

  it('accepts what fires on some day', () => {
    for (const e of ['0 0 29 2 *', '0 0 31 1-3 *', '0 0 30 2 MON', '0 0 31 2,3 *', '0 0 31 */2 *', '0 0 30 * *', '*/60 * * * *', '* */24 */31 */12 */7', '0-59 0-23 1-31 1-12 0-7', '*,5 * * * *']) {
      expect(cronError(e), e).toBeNull();
      expect(() => parseSchedule(e)).not.toThrow();
    }
    // 30 February never happens, but with a day of week both are ORed: Mondays of February.
    expect(ticks('0 0 30 2 MON', '2024-01-01T00:00:00Z', 2)).toEqual(['2024-02-05T00:00:00Z', '2024-02-12T00:00:00Z']);
  });
});

describe('bounded expressions', () => {
  it('refuses an expression longer than 256 characters (the executor evaluates it at every tick)', () => {
    expect(() => parseSchedule(`${'5,'.repeat(123)}5 * * * *`)).not.toThrow();
    expect(() => parseSchedule(`${'5,'.repeat(124)}5 * * * *`)).toThrow(/^Invalid cron expression '.*': the expression is longer than 256 characters$/);
  });
});
