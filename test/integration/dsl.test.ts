// The DSL compiled by the proxy: the same graphs as the SQL builders (a
// property test over random expressions), and errors at df.start with their
// SQLSTATE and position, in both query protocols.
import { parseSync } from 'libpg-query';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DslError } from '../../src/dsl/builders.js';
import { compile, NotCompilable } from '../../src/dsl/compile.js';
import { loadDslParser } from '../../src/dsl/interceptor.js';
import { runWorkflow, startDurable, type Durable } from '../helpers/durable.js';
import { seededRandom } from '../helpers/wait.js';

let d: Durable;
let proxied: pg.Client;
let direct: pg.Client;

beforeAll(async () => {
  await loadDslParser();
  d = await startDurable('pgdp_dsl');
  proxied = await d.connect();
  direct = await d.direct();
});
afterAll(async () => {
  await d?.close();
});

/** A random DSL expression over the operators and constructors (seeded: a failure names its seed). */
function randomExpr(rand: () => number, depth: number): string {
  const pick = <T>(xs: T[]): T => xs[Math.floor(rand() * xs.length)]!;
  const leaf = (): string =>
    pick([
      `'SELECT ${Math.floor(rand() * 100)} AS v'`,
      `'INSERT INTO t VALUES (''{x}'')'`,
      `'SELECT $r AS again'`,
      `df.sleep(${Math.floor(rand() * 5)})`,
      `df.break()`,
      `df.break('done')`,
      `df.break('{"k": 1}')`,
      `df.sql('SELECT ''é'' AS "q""uote"')`,
      `'{"node_type":"SQL","query":"SELECT 7"}'`,
      `df.wait_for_signal('approve')`,
      `df.wait_for_signal('go', ${pick([1, 3600, 0, -5])})`,
      `df.wait_for_signal('')`,
      `df.wait_for_schedule('${pick(['0 2 * * *', '*/15 * * * 1-5', '@daily', '0 0 * * MON', '61 * * * *', '* * * *', '0 9 * * 8'])}')`,
      `df.wait_for_schedule('0 2 * * *', '${pick(['Europe/Paris', 'UTC', 'America/New_York', 'Mars/Olympus'])}')`,
    ]);
  if (depth <= 0 || rand() < 0.25) return leaf();
  const sub = (): string => randomExpr(rand, depth - 1);
  const paren = (s: string): string => (rand() < 0.5 ? `(${s})` : s);
  switch (Math.floor(rand() * 12)) {
    case 0: return `${paren(sub())} ~> ${paren(sub())}`;
    case 1: return `${paren(sub())} |=> '${pick(['r', 'x', '_n1'])}'`;
    case 2: return `${paren(sub())} & ${paren(sub())}`;
    case 3: return `${paren(sub())} | ${paren(sub())}`;
    case 4: return `${paren(sub())} ?> ${paren(sub())} !> ${paren(sub())}`;
    case 5: return `@> (${sub()})`;
    case 6: return `df.join3(${sub()}, ${sub()}, ${sub()})`;
    case 7: return `df.if(${sub()}, ${sub()}, ${sub()})`;
    case 8: return `df.if_rows('r', ${sub()}, ${sub()})`;
    case 9: return rand() < 0.5 ? `df.loop(${sub()})` : `df.loop(${sub()}, ${sub()})`;
    case 10: return `df.as(${sub()}, 'r')`;
    default: return `df.seq(${sub()}, df.race(${sub()}, ${sub()}))`;
  }
}

function compileTs(expr: string): { ok: string | null } | { error: string } {
  const tree = parseSync(`SELECT ${expr}`) as { stmts: { stmt: { SelectStmt: { targetList: { ResTarget: { val: unknown } }[] } } }[] };
  try {
    return { ok: compile(tree.stmts[0]!.stmt.SelectStmt.targetList[0]!.ResTarget.val as Record<string, unknown>, new Map()) };
  } catch (err) {
    if (err instanceof NotCompilable) throw new Error(`not compilable: ${expr}`);
    if (err instanceof DslError) return { error: err.message };
    throw err;
  }
}

async function compileSql(expr: string): Promise<{ ok: string | null } | { error: string }> {
  try {
    const { rows } = await direct.query<{ g: string | null }>(`SELECT (${expr})::text AS g`);
    return { ok: rows[0]!.g };
  } catch (err) {
    return { error: (err as Error).message };
  }
}

describe('one graph format, two builders', () => {
  it('the proxy compiler and the SQL functions build identical graph text for random expressions', async () => {
    const seed = Number(process.env.DSL_SEED ?? 20261123);
    const rand = seededRandom(seed);
    let errors = 0;
    for (let i = 0; i < 300; i++) {
      const expr = randomExpr(rand, 4);
      const [ts, sql] = [compileTs(expr), await compileSql(expr)];
      if ('error' in sql) errors++;
      expect(ts, `seed ${seed}, case ${i}: ${expr}`).toEqual(sql);
    }
    // The generator reaches the error paths too (a ?> / !> grouped the wrong way round).
    expect(errors).toBeGreaterThan(0);
    expect(errors).toBeLessThan(300);
  });

  it('agrees on the edge cases pg_durable documents', async () => {
    for (const expr of [
      `'c' ?> 't' ~> 'u' !> 'e'`,
      `('a' |=> 'x') |=> 'y'`,
      `'{"node_type":"SQL","query":"SELECT 1","result_name":"old"}' |=> 'new'`,
      `'{"node_type":"NOPE"}' ~> 'a'`,
      `' {"node_type": "SQL", "query": "SELECT 2"} ' ~> 'a'`,
      `df.sleep(0)`,
      `df.loop('a', NULL)`,
      `df.seq('a', NULL)`,
      `df.break(NULL)`,
      `df.wait_for_schedule(NULL)`,
      `df.wait_for_signal('a', NULL)`,
      `df.wait_for_signal(name => 'n', timeout_seconds => 5)`,
      `df.wait_for_schedule('0 2 * * *', NULL)`,
      // A built node knows whether it has a name without being parsed: only its own, not a child's or a query's text.
      `(('SELECT 1' |=> 'a') ~> 'SELECT 2') |=> 'b'`,
      `('SELECT ''","result_name":"z"}''' |=> 'a') |=> 'b'`,
      `'SELECT ''","result_name":"z"}''' |=> 'b'`,
      `(df.if_rows('r', 'SELECT 1' |=> 'a', 'SELECT 2') |=> 'x') |=> 'y'`,
    ]) {
      expect(compileTs(expr), expr).toEqual(await compileSql(expr));
    }
  });

  it('agrees on a chain of 1000 steps (built in one pass, not re-read at every level)', async () => {
    const expr = Array.from({ length: 1000 }, (_, i) => `'SELECT ${i}'${i % 7 === 0 ? ` |=> 'r${i}'` : ''}`).join(' ~> ');
    const ts = compileTs(expr);
    expect(ts).toEqual(await compileSql(expr));
    expect('ok' in ts && ts.ok!.length).toBeGreaterThan(30_000);
  });
});

describe('errors at df.start, with SQLSTATE and position', () => {
  const cases: [string, string, RegExp, string][] = [
    // statement, SQLSTATE, message, the text the position points at
    [`SELECT df.start('SELECT 1' ~> 'SELECT 2' ~> 'SELEC 3')`, '42601', /syntax error at or near "SELEC" in step 3 of the workflow/, 'SELEC 3'],
    [`SELECT df.start('SELECT 1' |=> 'not a name')`, '22023', /result name 'not a name' is not a valid identifier/, "|=> 'not"],
    [`SELECT df.start('a' !> 'b')`, '42601', /left side of !> must be a \?> expression/, "!> 'b'"],
    [`SELECT df.start(df.sleep(-5))`, '22023', /Sleep duration must be non-negative/, 'df.sleep(-5)'],
    [`SELECT df.start(df.sequence('a', 'b'))`, '42883', /function df.sequence does not exist/, 'df.sequence'],
    [`SELECT df.start(df.seq('SELECT 1'))`, '42883', /df.seq: wrong arguments; expected df.seq\(a, b\)/, 'df.seq('],
    [`SELECT df.start('SELECT 1; SELECT 2')`, '42601', /holds 2 statements; a step runs exactly one/, "'SELECT 1;"],
    [`SELECT df.start('SELECT 1' ?> 'SELECT 2')`, '42601', /unfinished if: \?> needs its !> else branch/, "'SELECT 1' ?>"],
    [`SELECT df.start('SELECT 1' ~> df.setvar('k', 'v'))`, '42601', /^df\.setvar\(\) cannot be used as a workflow step\. Call df\.setvar\(\) before df\.start\(\)\.$/, 'df.setvar('],
    [`SELECT df.start(df.await_instance('0badf00d'))`, '42601', /^df\.await_instance\(\) cannot be used as a workflow step/, 'df.await_instance('],
  ];

  for (const [stmt, code, message, at] of cases) {
    it(`${code}: ${stmt}`, async () => {
      for (const mode of ['simple', 'extended'] as const) {
        const err = await proxied.query({ text: stmt, queryMode: mode } as pg.QueryConfig).then(
          () => undefined,
          (e: unknown) => e as { code: string; message: string; position: string },
        );
        expect(err, mode).toBeDefined();
        expect(err!.code).toBe(code);
        expect(err!.message).toMatch(message);
        const pos = Number(err!.position);
        expect(stmt.slice(pos - 1), `position ${pos}`).toMatch(new RegExp('^' + at.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
      }
      // Nothing was started.
      expect((await direct.query('SELECT count(*)::int AS n FROM df.instances')).rows[0].n).toBe(0);
    });
  }

  it('an error inside a transaction aborts it, as any statement error would', async () => {
    await proxied.query('BEGIN');
    await expect(proxied.query(`SELECT df.start('SELEC 1')`)).rejects.toMatchObject({ code: '42601' });
    await expect(proxied.query('SELECT 1')).rejects.toMatchObject({ code: '25P02' });
    await proxied.query('ROLLBACK');
    expect((await proxied.query('SELECT 1 AS ok')).rows).toEqual([{ ok: 1 }]);
  });
});

describe('hand-written workflow JSON, where the proxy cannot see it (a DO block)', () => {
  // Each malformed graph gets an error of the builders' kind, nothing is stored, and no internal error shows.
  const cases: [string, RegExp][] = [
    [`{"node_type": "IF", "left_node": {"node_type": "SQL", "query": "SELECT 1"}, "right_node": {"node_type": "SQL", "query": "SELECT 2"}, "condition_node": {"query": "SELECT true"}}`,
      /^Invalid durable function: Unknown node_type 'null'/],
    [`{"node_type": 7, "query": "SELECT 1"}`, /^Invalid durable function: Unknown node_type '7'/],
    [`{"node_type": "SQL", "query": "SELECT 1", "left_node": "abc"}`, /^Malformed Durofut JSON: left_node must be an object, not string/],
    [`{"node_type": "SQL", "query": 42}`, /^Malformed Durofut JSON: query must be a string, not number/],
    [`{"node_type": "SQL", "query": "SELECT 1", "result_name": "not a name"}`, /^invalid result name 'not a name'/],
    // Shapes the executor would only refuse when it runs them.
    [`{"node_type": "SLEEP", "query": "soon"}`, /^Malformed Durofut JSON: a SLEEP node takes its duration in whole seconds, not soon/],
    [`{"node_type": "BREAK", "query": "done"}`, /^Malformed Durofut JSON: a BREAK node takes \{"break_value": \.\.\.\}/],
    [`{"node_type": "IF", "query": "SELECT true", "left_node": {"node_type": "SQL", "query": "SELECT 1"}, "right_node": {"node_type": "SQL", "query": "SELECT 2"}}`,
      /^Malformed Durofut JSON: an IF node needs a condition_node/],
    [`{"node_type": "LOOP", "query": "SELECT true", "left_node": {"node_type": "SQL", "query": "SELECT 1"}}`, /^Malformed Durofut JSON: a LOOP node takes its condition as a condition_node/],
  ];
  for (const [graph, message] of cases) {
    it(`refuses ${graph.slice(0, 70)}…`, async () => {
      const before = (await direct.query('SELECT count(*)::int AS n FROM df.instances')).rows[0].n;
      const err = await proxied.query(`DO $$ BEGIN PERFORM df.start(${pg.escapeLiteral(graph)}); END $$`).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: '22023' });
      expect((err as Error).message).toMatch(message);
      expect((await direct.query('SELECT count(*)::int AS n FROM df.instances')).rows[0].n).toBe(before);
    });
  }
});

describe('statements the compiler leaves to the SQL builders', () => {
  it('bind parameters pass through, prepared statements work as without the proxy', async () => {
    const r = await runWorkflow(proxied, 'df.start($1 ~> $2, $3)', ['SELECT 1', 'SELECT 2 AS two', 'params']);
    expect(r.result).toEqual({ rows: [{ two: 2 }], row_count: 1 });
    const named = { name: 'start_it', text: 'SELECT df.start($1) AS id', values: ['SELECT 3 AS three'] };
    const first = await proxied.query<{ id: string }>(named);
    const second = await proxied.query<{ id: string }>({ ...named, values: ['SELECT 4'] });
    expect(first.rows[0]!.id).not.toBe(second.rows[0]!.id);
  });

  it('a compiled start runs the workflow it was given, label and named arguments kept', async () => {
    const r = await runWorkflow(proxied, `df.start(label => 'named', fut => 'SELECT 1 AS a' |=> 'a' ~> 'SELECT $a + 1 AS b')`);
    expect(r.result).toEqual({ rows: [{ b: 2 }], row_count: 1 });
    expect((await proxied.query('SELECT label FROM df.instances WHERE id = $1', [r.id])).rows[0].label).toBe('named');
  });

  it('a statement over 512 KiB is not compiled by the proxy (it would hold up the others); the SQL functions start the same workflow', async () => {
    const big = 'x'.repeat(600 * 1024);
    const r = await runWorkflow(proxied, `df.start('SELECT 1 AS a' |=> 'a' ~> 'SELECT $a + length(''${big}'') AS b')`);
    expect(r.result).toEqual({ rows: [{ b: 1 + big.length }], row_count: 1 });
    // Its mistakes are found when the step runs, not at df.start.
    const bad = await runWorkflow(proxied, `df.start('SELECT 1' ~> 'SELEC length(''${big}'')')`);
    expect(bad.status).toBe('failed');
    expect(bad.output).toMatch(/syntax error at or near "SELEC"/);
  });

  it('df.start inside a DO block and a function is built by the SQL functions', async () => {
    await proxied.query(`CREATE TABLE jobs (id int)`);
    await proxied.query(`CREATE FUNCTION start_job() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN PERFORM df.start('SELECT ' || NEW.id || ' AS job' ~> 'SELECT 1 AS done', 'job ' || NEW.id); RETURN NEW; END $$`);
    await proxied.query(`CREATE TRIGGER start_job AFTER INSERT ON jobs FOR EACH ROW EXECUTE FUNCTION start_job()`);
    await proxied.query(`INSERT INTO jobs VALUES (1), (2)`);
    const { rows } = await proxied.query<{ id: string }>(`SELECT id FROM df.instances WHERE label LIKE 'job %'`);
    expect(rows).toHaveLength(2);
    for (const r of rows) expect((await proxied.query('SELECT df.await_instance($1) AS s', [r.id])).rows[0].s).toBe('completed');
  });
});
