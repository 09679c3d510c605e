// The text a step runs after substitution, and the truthiness of IF and
// LOOP conditions: pg_durable's rules, one case per rule users meet.
import { loadModule } from 'libpg-query';
import { beforeAll, describe, expect, it } from 'vitest';
import { StepError, substituteResults, substituteVars, truthy } from '../../src/engine/substitute.js';

const sys = { instanceId: 'abcd1234', label: 'nightly' };
const sql = (text: string, results: Record<string, string>): string => substituteResults(text, new Map(Object.entries(results)), 'sql');
const raw = (text: string, results: Record<string, string>): string => substituteResults(text, new Map(Object.entries(results)), 'raw');
const rows = (...r: unknown[]): string => JSON.stringify({ rows: r, row_count: r.length });

beforeAll(async () => {
  await loadModule(); // SQL mode places references with PostgreSQL's scanner
});

describe('{name} variables', () => {
  it('replaces system names and captured variables, raw and unquoted', () => {
    expect(substituteVars(`SELECT '{sys_instance_id}', '{sys_label}', {tbl}`, { tbl: 'orders' }, sys)).toBe(`SELECT 'abcd1234', 'nightly', orders`);
  });

  it('a system name wins over a variable of the same name; unknown names stay as written', () => {
    expect(substituteVars('{sys_label} {nope} {not a name} {}', { sys_label: 'mine' }, sys)).toBe('nightly {nope} {not a name} {}');
  });

  it('pairs each { with the first } after it: a variable inside an unclosed brace stays literal', () => {
    expect(substituteVars('{"auth": "{k}"}', { k: 'secret' }, sys)).toBe('{"auth": "{k}"}');
    expect(substituteVars('Bearer {k}', { k: 'secret' }, sys)).toBe('Bearer secret');
    expect(substituteVars('{"a":{}, "b":"{k}"}', { k: 'secret' }, sys)).toBe('{"a":{}, "b":"secret"}');
    expect(substituteVars('tail {k', { k: 'secret' }, sys)).toBe('tail {k');
  });

  it('does not rescan a value for braces', () => {
    expect(substituteVars('{a}', { a: '{b}', b: 'no' }, sys)).toBe('{b}');
  });
});

describe('$name result references, SQL mode', () => {
  const r = { x: rows({ n: 41, s: "a'b", z: null }), empty: rows(), nul: rows({ v: null }), doc: '{"status":200,"body":"ok"}', arr: '[1,2]', txt: 'plain' };

  it('$n is the first column of the first row, as a literal', () => {
    expect(sql('SELECT $x + 1', r)).toBe('SELECT 41 + 1');
    expect(sql('SELECT $x.s', r)).toBe(`SELECT 'a''b'`);
  });

  it('no rows or a NULL fails the step unless the reference ends in ?', () => {
    expect(() => sql('SELECT $empty', r)).toThrow(new StepError('$empty has no rows — query returned zero results'));
    expect(() => sql('SELECT $nul', r)).toThrow(new StepError('$nul is NULL — first column of first row is NULL'));
    expect(() => sql('SELECT $x.z', r)).toThrow(new StepError('$x.z is NULL'));
    expect(sql('SELECT $empty?, $nul?, $x.z?, $empty.v?', r)).toBe('SELECT NULL, NULL, NULL, NULL');
  });

  it('a missing column is left as written, for PostgreSQL to report', () => {
    expect(sql('SELECT $x.nope, $x.nope?', r)).toBe('SELECT $x.nope, $x.nope?');
  });

  it('$n.* expands the rows to a VALUES list named after the result', () => {
    const set = { s: rows({ id: 1, name: 'a', j: { k: 1 }, b: true }, { id: 2, name: null }) };
    expect(sql('SELECT * FROM $s.*', set)).toBe(
      `SELECT * FROM (VALUES (1, 'a'::text, '{"k":1}'::text, true), (2, NULL, NULL, NULL)) AS "s"("id", "name", "j", "b")`,
    );
    expect(sql('SELECT * FROM $empty.*', r)).toBe('SELECT * FROM (SELECT NULL WHERE false) AS "empty"');
    expect(() => sql('SELECT * FROM $doc.*', r)).toThrow(/invalid result format/);
  });

  it('a result that is other JSON: the whole text, or a top-level field', () => {
    expect(sql('SELECT $doc', r)).toBe(`SELECT '{"status":200,"body":"ok"}'`);
    expect(sql('SELECT $doc.status, $doc.body', r)).toBe(`SELECT 200, 'ok'`);
    expect(() => sql('SELECT $arr.x', r)).toThrow(/neither a row set nor a JSON object/);
    expect(sql('SELECT $txt', r)).toBe('SELECT plain');
  });

  it('longest name first; a longer identifier, $1 and $$ are not references', () => {
    const names = { a: rows({ v: 1 }), ab: rows({ v: 2 }) };
    // The space in `1 .` departs from pg_durable: `1.` would scan as one number.
    expect(sql('SELECT $ab, $a, $abc, $1, $$x$$, $a.', names)).toBe('SELECT 2, 1, $abc, $1, $$x$$, 1 .');
  });

  it('variables first, then results over their output', () => {
    const text = substituteVars('SELECT {ref}', { ref: '$x' }, sys);
    expect(sql(text, r)).toBe('SELECT 41');
  });
});

describe('$name result references, placed where the scanner puts them', () => {
  const v = (value: unknown): string => rows({ v: value });
  const r = { s: v("it's"), b: v('a\\b'), n: v(-5), f: v(2.5), t: v(true), j: v({ k: "o'k", a: [1, null] }), e: rows(), z: v(null) };

  it('between tokens: the literal, a negative number in parentheses, apart from what would fuse with it', () => {
    expect(sql('SELECT 10-$n, $n::text, -$n', r)).toBe('SELECT 10-(-5), (-5)::text, -(-5)');
    expect(sql(`SELECT 1$f, x.$f, $f.5, 'a'$s, U&$s, E$s`, r)).toBe(`SELECT 1 2.5, x. 2.5, 2.5 .5, 'a' 'it''s', U& 'it''s', E$s`);
    expect(sql('SELECT $t AND $e?, $j', r)).toBe(`SELECT true AND NULL, '{"k":"o''k","a":[1,null]}'`);
    expect(sql('SELECT * FROM $x.*', { x: rows({ a: -1, b: 'q' }) })).toBe(`SELECT * FROM (VALUES ((-1), 'q'::text)) AS "x"("a", "b")`);
  });

  it("inside '...': the plain text with ' doubled, no quotes of its own (pg_durable broke such SQL)", () => {
    expect(sql(`SELECT 'say $s', '$n|$f|$t|$e?|$z?', 'j=$j', '$b'`, r)).toBe(`SELECT 'say it''s', '-5|2.5|true||', 'j={"k":"o''k","a":[1,null]}', 'a\\b'`);
    expect(sql(`SELECT 'a'\n'b $s'`, r)).toBe(`SELECT 'a'\n'b it''s'`); // a continued literal
    expect(sql(`SELECT N'$s', U&'$s $b'`, r)).toBe(`SELECT N'it''s', U&'it''s a\\\\b'`);
    expect(sql(`SELECT U&'$b' UESCAPE '!'`, { b: v('x!y\\') })).toBe(`SELECT U&'x!!y\\' UESCAPE '!'`);
  });

  it("inside E'...': backslashes doubled too; an escaped \\$ is a character, not a reference", () => {
    expect(sql(`SELECT E'$b $s', e'\\$s', E'\\\\$s'`, r)).toBe(`SELECT E'a\\\\b it''s', e'\\$s', E'\\\\it''s'`);
  });

  it('inside "...": the plain text with " doubled', () => {
    expect(sql(`SELECT 1 AS "col $s", 2 AS "$x"`, { s: v('a"b'), x: v(7) })).toBe(`SELECT 1 AS "col a""b", 2 AS "7"`);
  });

  it('inside a dollar quote: the literal, as in SQL; a value that would end the quote fails the step', () => {
    expect(sql('DO $$BEGIN PERFORM 10-$n, $s; END$$', r)).toBe(`DO $$BEGIN PERFORM 10-(-5), 'it''s'; END$$`);
    expect(sql('SELECT $t$ $s $t$', r)).toBe(`SELECT $t$ 'it''s' $t$`);
    // A body that scans as SQL or PL/pgSQL is placed by its own tokens: a string inside it gets plain text.
    expect(sql(`DO $$BEGIN RAISE NOTICE 'v=$x'; -- $x
END$$`, { x: v("'; DROP TABLE t; --") })).toBe(
      `DO $$BEGIN RAISE NOTICE 'v=''; DROP TABLE t; --'; -- $x
END$$`,
    );
    expect(() => sql('DO $$ SELECT $x $$', { x: v('$$; DROP TABLE t; --') })).toThrow(
      new StepError('$x: its value would end the dollar-quoted string $$ early (it contains $$); use another dollar-quote tag'),
    );
    expect(() => sql('SELECT $t$ $x $t$', { x: v('$t$') })).toThrow(/^\$x: .* \$t\$ early/);
    expect(sql('SELECT $true$ $$x$ $true$', { x: v(true) })).toBe('SELECT $true$ $ true $ $true$'); // kept apart: no $true$
    expect(sql('SELECT $t$ $x $t$', { x: v('$u$ $$') })).toBe(`SELECT $t$ '$u$ $$' $t$`);
  });

  it('in a comment, an identifier or a dollar-quote delimiter: left as written, not even looked up', () => {
    const text = 'SELECT foo$e, $body$ $e? $body$ -- $e\n/* $e */';
    expect(sql(text, { ...r, body: v(1) })).toBe(text.replace('$e?', 'NULL'));
  });

  it('a text that cannot be scanned, or a NUL in a value, fails the step', () => {
    expect(() => sql(`SELECT '$s`, r)).toThrow(new StepError(`the step's SQL could not be scanned to place its $name references (an unterminated quote, dollar quote or comment?)`));
    expect(() => sql('SELECT $s /* open', r)).toThrow(/could not be scanned/);
    expect(() => sql('SELECT $x', { x: v('a\u0000b') })).toThrow(/NUL character/);
    expect(() => sql(`SELECT B'1$x'`, { x: v("0'") })).toThrow(/bit-string literal/);
  });

  it('offsets hold across non-ASCII text, astral characters and control characters', () => {
    expect(sql(`SELECT 'é😀$s', "ü$s", $s\u0001 -- 😀 $s`, r)).toBe(`SELECT 'é😀it''s', "üit's", 'it''s'\u0001 -- 😀 $s`);
    expect(sql(`SELECT '\ud800', $s`, r)).toBe(`SELECT '\ud800', 'it''s'`);
  });

  it('a value with quotes, backslashes and comment markers stays one literal', () => {
    const evil = v("\\'; DROP TABLE t; -- /* $$");
    expect(sql('SELECT $x', { x: evil })).toBe(`SELECT '\\''; DROP TABLE t; -- /* $$'`);
    expect(sql(`SELECT E'$x'`, { x: evil })).toBe(`SELECT E'\\\\''; DROP TABLE t; -- /* $$'`);
  });
});

describe('$name result references, raw mode (HTTP text)', () => {
  it('strings unquoted, JSON as text, rows as a JSON array; a missing field fails unless ?', () => {
    const r = { x: rows({ n: 1, s: 'hi' }, { n: 2, s: 'yo' }) };
    expect(raw('n=$x s=$x.s all=$x.*', r)).toBe('n=1 s=hi all=[{"n":1,"s":"hi"},{"n":2,"s":"yo"}]');
    expect(() => raw('$x.nope', r)).toThrow(`$x.nope: result 'x' has no field 'nope' (available: n, s)`);
    expect(raw('$x.nope?', r)).toBe('$x.nope?');
  });
});

describe('truthiness of a condition result', () => {
  it('a row set: no rows is false, else the first column of the first row', () => {
    expect(truthy(rows())).toBe(false);
    expect(truthy(rows({ ok: true, other: false }))).toBe(true);
    expect(truthy(rows({ ok: false, other: true }))).toBe(false);
    expect(truthy(rows({ n: 0 }))).toBe(false);
    expect(truthy(rows({ n: null }))).toBe(false);
    expect(truthy(rows({}))).toBe(true); // no columns: the whole (non-empty) result decides
  });

  it('strings: trimmed; true/t/yes and false/f/no in any case; numbers by value; anything else non-empty is true', () => {
    const cases: [unknown, boolean][] = [
      ['', false], ['  ', false], [' TRUE ', true], ['t', true], ['Yes', true], ['false', false], ['F', false], ['NO', false],
      ['0', false], ['0.00', false], ['-0', false], ['1.5', true], ['NaN', true], ['off', true], ['n', true], ['null', true],
    ];
    for (const [v, want] of cases) expect(truthy(rows({ v })), JSON.stringify(v)).toBe(want);
  });

  it('other JSON by its whole value; text that is not JSON by the string rule', () => {
    expect(truthy('[]')).toBe(false);
    expect(truthy('[0]')).toBe(true);
    expect(truthy('{"slept":true,"seconds":0}')).toBe(true);
    expect(truthy('0')).toBe(false);
    expect(truthy('"no"')).toBe(false);
    expect(truthy('yes please')).toBe(true);
  });
});
