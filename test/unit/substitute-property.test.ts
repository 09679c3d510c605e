// No value can change a step's statement: for random values (quotes,
// backslashes, dollar quotes, comment markers, unicode, numbers, JSON) in
// every place a $name can stand, the substituted statement parses to the
// same tree as with a harmless value of the same type, constants and
// names aside. The only refusal allowed is the one the contract names: a
// value holding the delimiter of the dollar quote it is placed in.
// Replay a failure with SUBST_SEED=<seed printed in the test name>.
import { loadModule, parseSync, scanSync } from 'libpg-query';
import { beforeAll, describe, expect, it } from 'vitest';
import { StepError, substituteResults } from '../../src/engine/substitute.js';
import { seededRandom } from '../helpers/wait.js';

const seed = process.env.SUBST_SEED !== undefined ? Number(process.env.SUBST_SEED) : Math.floor(Math.random() * 2 ** 32);
const CASES = 400;

beforeAll(async () => {
  await loadModule();
});

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

/** Where the reference stands; `X` marks it. `dollar`: the delimiter of the quote it is in, whose body is SQL. */
interface Template {
  text: string;
  dollar?: string;
  /** Left as written whatever the value. */
  kept?: boolean;
}

const TEMPLATES: Template[] = [
  { text: 'SELECT 10-X' },
  { text: 'SELECT 1 FROM t WHERE a = X' },
  { text: 'SELECT ARRAY[X]' },
  { text: 'SELECT X::text' },
  { text: 'SELECT -X' },
  { text: 'SELECT f(X, 2)' },
  { text: "SELECT X||'a'" },
  { text: 'INSERT INTO t VALUES (X)' },
  { text: 'UPDATE t SET a = X WHERE b IS NOT NULL' },
  { text: "SELECT 'pre X post'" },
  { text: "SELECT 'X'" },
  { text: "SELECT 'a'\n'X'" },
  { text: "SELECT E'pre X post'" },
  { text: "SELECT E'\\\\X'" },
  { text: "SELECT U&'pre X'" },
  { text: 'SELECT 1 AS "c X"' },
  { text: 'SELECT t."X y" FROM t' },
  { text: 'SELECT $$SELECT 10-X$$', dollar: '$$' },
  { text: 'SELECT $t$SELECT a FROM t WHERE b = X$t$', dollar: '$t$' },
  { text: 'CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $body$ SELECT X $body$', dollar: '$body$' },
  { text: "SELECT 'X' || X, $t$ SELECT X, 'X' $t$", dollar: '$t$' },
  { text: 'SELECT 1 -- X\n', kept: true },
  { text: 'SELECT /* X */ 1', kept: true },
  { text: 'SELECT 1 /* a /* X */ b */', kept: true },
  { text: 'SELECT fooX FROM t', kept: true },
];

const PIECES = [
  "'", "''", '\\', "\\'", '$$', '$t$', '$body$', '$', '$1', '--', '/*', '*/', '\n', '\r\n', '\t', '"', ';', ' DROP TABLE t; ',
  'é', '😀', '\u2028', "E'", "U&'", '$r', '{x}', ')', '(', ' OR 1=1', '::', '.', '-', '0',
];

function generator(rand: () => number) {
  const int = (n: number): number => Math.floor(rand() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;
  const char = (): string => {
    const r = rand();
    if (r < 0.5) return String.fromCharCode(0x20 + int(0x5f)); // printable ASCII
    if (r < 0.8) return String.fromCodePoint(0xa0 + int(0xd7ff - 0xa0)); // BMP below the surrogates
    return String.fromCodePoint(0x10000 + int(0x10ffff - 0x10000)); // astral
  };
  const string = (): string => Array.from({ length: int(8) }, () => (rand() < 0.6 ? pick(PIECES) : char())).join('');
  const number = (): number => {
    const r = rand();
    if (r < 0.4) return int(2001) - 1000;
    if (r < 0.7) return (rand() - 0.5) * 10 ** (int(40) - 20);
    return -int(100);
  };
  const value = (depth: number): Json => {
    const r = rand();
    if (r < 0.4) return string();
    if (r < 0.6) return number();
    if (r < 0.7) return rand() < 0.5;
    if (r < 0.8) return null;
    if (depth > 1) return string();
    if (r < 0.9) return Array.from({ length: int(4) }, () => value(depth + 1));
    return Object.fromEntries(Array.from({ length: int(4) }, () => [string(), value(depth + 1)]));
  };
  return { int, pick, value };
}

/** A harmless value of the same JSON type: what the statement's shape is compared with. */
function placeholder(v: Json): Json {
  if (v === null) return null;
  if (typeof v === 'string') return 'p';
  if (typeof v === 'number') return 7;
  if (typeof v === 'boolean') return true;
  return Array.isArray(v) ? [] : {};
}

const POSITIONS = new Set(['location', 'stmt_location', 'stmt_len', 'list_start', 'list_end']);

/** The tree without what a value may legitimately change: constants, names, positions. */
function shape(n: unknown): unknown {
  if (Array.isArray(n)) return n.map(shape);
  if (n === null || typeof n !== 'object') return n;
  const o: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(n)) {
    if (POSITIONS.has(k)) continue;
    if (k === 'A_Const') o[k] = {};
    else if ((k === 'sval' || k === 'name') && typeof v === 'string') o[k] = '';
    else o[k] = shape(v);
  }
  return o;
}

const tree = (sql: string): unknown => shape(parseSync(sql));

/** The body of the first dollar-quoted string delimited by `delim`, as the scanner ends it. */
function dollarBody(sql: string, delim: string): string {
  const tok = scanSync(sql).tokens.find((t) => t.text.startsWith(delim) && t.text.length >= 2 * delim.length);
  if (!tok) throw new Error(`no ${delim} string in ${sql}`);
  return tok.text.slice(delim.length, tok.text.length - delim.length);
}

/** The text a value shows in a dollar-quoted body, where the delimiter would matter. */
const textOf = (v: Json): string => (typeof v === 'string' ? v : JSON.stringify(v));

describe(`substitution keeps the statement's structure (SUBST_SEED=${seed})`, () => {
  it(`holds for ${CASES} random values in every place`, () => {
    const rand = seededRandom(seed);
    const g = generator(rand);
    for (let n = 0; n < CASES; n++) {
      const tpl = g.pick(TEMPLATES);
      const rowSet = tpl.dollar === undefined && !tpl.kept && n % 10 === 0; // now and then: $r.* in FROM
      const v = g.value(0);
      const form = g.pick(v === null ? ['$r?', '$r.v?', '$d.f?'] : ['$r', '$r?', '$r.v', '$r.v?', '$d.f']);
      const results = (x: Json): Map<string, string> =>
        new Map([
          ['r', JSON.stringify({ rows: [{ v: x }], row_count: 1 })],
          ['d', JSON.stringify({ f: x })],
        ]);
      let text = tpl.text.replaceAll('X', form);
      let res = results(v);
      let base = results(placeholder(v));
      if (rowSet) {
        const cells = Array.from({ length: 1 + g.int(3) }, () => [g.value(1), g.value(1)] as const);
        const cols = ['a', g.pick(['b', 'we"ird', 'x y'])] as const;
        const set = (f: (x: Json) => Json): string =>
          JSON.stringify({ rows: cells.map(([a, b]) => ({ [cols[0]]: f(a), [cols[1]]: f(b) })), row_count: cells.length });
        text = 'SELECT * FROM $r.*';
        res = new Map([['r', set((x) => x)]]);
        base = new Map([['r', set(placeholder)]]);
      }
      const label = `case ${n}: ${JSON.stringify(text)} with ${JSON.stringify(v)}`;

      let out: string;
      try {
        out = substituteResults(text, res, 'sql');
      } catch (err) {
        // The one refusal: the value holds the delimiter of its dollar quote.
        expect(err, label).toBeInstanceOf(StepError);
        expect(tpl.dollar !== undefined && textOf(v).includes(tpl.dollar), `${label}: ${(err as Error).message}`).toBe(true);
        expect((err as Error).message, label).toContain(tpl.dollar);
        continue;
      }
      if (tpl.dollar !== undefined) expect(textOf(v).includes(tpl.dollar), `${label}: should have been refused`).toBe(false);
      if (tpl.kept) {
        expect(out, label).toBe(text);
        continue;
      }
      const expected = substituteResults(text, base, 'sql');
      expect(() => parseSync(out), `${label} → ${out}`).not.toThrow();
      expect(tree(out), `${label} → ${out}`).toEqual(tree(expected));
      if (tpl.dollar !== undefined) {
        const body = dollarBody(out, tpl.dollar);
        expect(tree(body), `${label}: body ${body}`).toEqual(tree(dollarBody(expected, tpl.dollar)));
      }
    }
  });
});
