// The text a step runs after substitution, and the truthiness of IF and
// LOOP conditions: pg_durable's rules, one case per rule users meet.
import { describe, expect, it } from 'vitest';
import { StepError, substituteResults, substituteVars, truthy } from '../../src/engine/substitute.js';

const sys = { instanceId: 'abcd1234', label: 'nightly' };
const sql = (text: string, results: Record<string, string>): string => substituteResults(text, new Map(Object.entries(results)), 'sql');
const raw = (text: string, results: Record<string, string>): string => substituteResults(text, new Map(Object.entries(results)), 'raw');
const rows = (...r: unknown[]): string => JSON.stringify({ rows: r, row_count: r.length });

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
    expect(sql('SELECT $ab, $a, $abc, $1, $$x$$, $a.', names)).toBe('SELECT 2, 1, $abc, $1, $$x$$, 1.');
  });

  it('variables first, then results over their output', () => {
    const text = substituteVars('SELECT {ref}', { ref: '$x' }, sys);
    expect(sql(text, r)).toBe('SELECT 41');
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
