// df.explain through the proxy: dry runs of workflows that were not started
// (a DSL expression, its JSON, one SQL statement) and live instances with a
// marker per node, in pg_durable's text format; bad input answered, not raised.
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRoles, runWorkflow, startDurable, type Durable } from '../helpers/durable.js';
import { eventually } from '../helpers/wait.js';

const ALICE = 'pgdp_explain_alice';
const BOB = 'pgdp_explain_bob';

let d: Durable;
let c: pg.Client;

beforeAll(async () => {
  d = await startDurable('pgdp_explain');
  c = await d.connect();
  await createRoles([ALICE, BOB]);
  for (const r of [ALICE, BOB]) await c.query(`SELECT df.grant_usage('${r}')`);
});
afterAll(async () => {
  await d?.close();
});

/** df.explain(<sql>) as the test's client (or another). */
async function explain(sql: string, params: unknown[] = [], client: pg.Client = c): Promise<string> {
  return (await client.query<{ e: string }>(`SELECT df.explain(${sql}) AS e`, params)).rows[0]!.e;
}

const width = (line: string): number => [...line].length;

/** The tree's lines without their padding, after checking it: every line padded to the longest + 4. */
function tree(text: string): string[] {
  const lines = text.split('\n');
  const trimmed = lines.map((l) => l.trimEnd());
  const w = Math.max(...trimmed.map(width)) + 4;
  for (const l of lines) expect(width(l), JSON.stringify(l)).toBe(w);
  return trimmed;
}

/** An explained instance: its header lines, then the tree's (unpadded). */
function instance(text: string): { head: string[]; tree: string[] } {
  const at = text.indexOf('\n\n');
  expect(at).toBeGreaterThan(0);
  return { head: text.slice(0, at).split('\n'), tree: tree(text.slice(at + 2)) };
}

describe('dry runs of DSL expressions', () => {
  it('draws a sequence on one level, every line padded to the longest + 4', async () => {
    const expected = ['SQL: SELECT 1'.padEnd(19), '→ SQL: SELECT 2'.padEnd(19), '→ SQL: SELECT 3'.padEnd(19)].join('\n');
    expect(await explain(`'SELECT 1' ~> 'SELECT 2' ~> 'SELECT 3'`)).toBe(expected);
    // The same expression as text: df.explain evaluates it (as the caller, with the caller's search_path).
    expect(await explain(`$$'SELECT 1' ~> 'SELECT 2' ~> 'SELECT 3'$$`)).toBe(expected);
    expect(await explain('$1', [`df.seq(df.seq('SELECT 1', 'SELECT 2'), 'SELECT 3')`])).toBe(expected);
    expect(await explain('$1', [`'SELECT 1' ~> ('SELECT 2' ~> 'SELECT 3')`])).toBe(expected);
  });

  it('cuts a SQL text longer than 50 bytes to its first 47 and ...; names results', async () => {
    const long = 'SELECT a_rather_long_column_name, another_one FROM some_table';
    const fifty = 'SELECT ' + 'x'.repeat(43);
    expect(tree(await explain(`$1 ~> $2`, [long, fifty]))).toEqual([`SQL: ${long.slice(0, 47)}...`, `→ SQL: ${fifty}`]);
    // Cut at a character boundary: 46 bytes of ASCII and a two-byte é do not fit in 47.
    const accented = 'SELECT ' + 'y'.repeat(39) + 'éé' + 'z'.repeat(10);
    expect(tree(await explain('df.sql($1)', [accented]))).toEqual([`SQL: SELECT ${'y'.repeat(39)}...`]);
    expect(tree(await explain(`('SELECT 1 AS a' |=> 'a') ~> ('SELECT $a + 1 AS b' |=> 'b') ~> (df.join('SELECT 2', 'SELECT 3') |=> 'all')`))).toEqual([
      `SQL: SELECT 1 AS a |=> 'a'`,
      `→ SQL: SELECT $a + 1 AS b |=> 'b'`,
      `→ JOIN (2) |=> 'all'`,
      '    ║ branch 1:',
      '      ├─SQL: SELECT 2',
      '    ║ branch 2:',
      '      └─SQL: SELECT 3',
    ]);
  });

  it('draws IF with its condition, then and else; df.if_rows with the result it tests', async () => {
    expect(tree(await explain(`'SELECT true' ?> ('SELECT 1' ~> 'SELECT 2') !> 'SELECT 3'`))).toEqual([
      'IF',
      '    ? condition:',
      '      └─SQL: SELECT true',
      '    ✓ then:',
      '      └─SQL: SELECT 1',
      '      → SQL: SELECT 2',
      '    ✗ else:',
      '      └─SQL: SELECT 3',
    ]);
    expect(tree(await explain(`('SELECT 1 FROM t' |=> 'found') ~> df.if_rows('found', 'SELECT ''yes''', 'SELECT ''no''')`))).toEqual([
      `SQL: SELECT 1 FROM t |=> 'found'`,
      `→ IF rows('found')`,
      '    ✓ then:',
      `      └─SQL: SELECT 'yes'`,
      '    ✗ else:',
      `      └─SQL: SELECT 'no'`,
    ]);
  });

  it('draws JOIN of 2 and df.join3 (├─ but for the last branch, │ under a ├─), and RACE', async () => {
    expect(tree(await explain(`'SELECT 1' & ('SELECT 2' ~> 'SELECT 3')`))).toEqual([
      'JOIN (2)',
      '    ║ branch 1:',
      '      ├─SQL: SELECT 1',
      '    ║ branch 2:',
      '      └─SQL: SELECT 2',
      '      → SQL: SELECT 3',
    ]);
    expect(tree(await explain(`df.join3('SELECT 1', df.join('SELECT 2', 'SELECT 3'), df.sleep(5))`))).toEqual([
      'JOIN (3)',
      '    ║ branch 1:',
      '      ├─SQL: SELECT 1',
      '    ║ branch 2:',
      '      ├─JOIN (2)',
      '      │   ║ branch 1:',
      '      │     ├─SQL: SELECT 2',
      '      │   ║ branch 2:',
      '      │     └─SQL: SELECT 3',
      '    ║ branch 3:',
      '      └─SLEEP 5s',
    ]);
    expect(tree(await explain(`'SELECT pg_sleep(1)' | df.sleep(30)`))).toEqual([
      'RACE',
      '    ║ branch 1:',
      '      ├─SQL: SELECT pg_sleep(1)',
      '    ║ branch 2:',
      '      └─SLEEP 30s',
    ]);
  });

  it('draws LOOP infinite and while, BREAK with and without a value, SLEEP', async () => {
    expect(tree(await explain(`@> ('SELECT 1' ~> df.sleep(60) ~> df.break())`))).toEqual([
      'LOOP (infinite)',
      '    ↻ body:',
      '      └─SQL: SELECT 1',
      '      → SLEEP 60s',
      '      → BREAK',
    ]);
    expect(tree(await explain(`df.loop('UPDATE c SET n = n + 1' ~> df.break('done'), 'SELECT n < 3 FROM c') ~> df.break('a value longer than twenty')`))).toEqual([
      'LOOP (while)',
      '    ↻ body:',
      '      └─SQL: UPDATE c SET n = n + 1',
      `      → BREAK 'done'`,
      '    ? while:',
      '      └─SQL: SELECT n < 3 FROM c',
      `→ BREAK 'a value longer th...'`,
    ]);
  });
});

describe('dry runs of JSON, SQL and other input', () => {
  it('draws an envelope given as JSON text, and the node types whose constructors come later', async () => {
    const graph = (await c.query<{ g: string }>(`SELECT ('SELECT 1' |=> 'one') ~> ('SELECT 2' & 'SELECT 3') AS g`)).rows[0]!.g;
    expect(tree(await explain('$1', [graph]))).toEqual([`SQL: SELECT 1 |=> 'one'`, '→ JOIN (2)', '    ║ branch 1:', '      ├─SQL: SELECT 2', '    ║ branch 2:', '      └─SQL: SELECT 3']);
    const node = (type: string, config: unknown, name?: string): string =>
      JSON.stringify({ node_type: type, query: JSON.stringify(config), ...(name ? { result_name: name } : {}) });
    const cases: [string, string][] = [
      [node('SIGNAL', { signal_name: 'approve', timeout_seconds: 3600 }), `SIGNAL 'approve' (3600s)`],
      [node('SIGNAL', { signal_name: 'approve', timeout_seconds: null }, 'ok'), `SIGNAL 'approve' |=> 'ok'`],
      [node('WAIT_SCHEDULE', { cron_expr: '0 2 * * *', time_zone: 'Europe/Paris' }), `WAIT '0 2 * * *' (Europe/Paris)`],
      [node('WAIT_SCHEDULE', { cron_expr: '*/5 * * * *' }), `WAIT '*/5 * * * *'`],
      [node('HTTP', { url: 'https://api.example.com/v1/hooks', method: 'GET', body: null, headers: {}, timeout_seconds: 30 }, 'resp'), `HTTP GET https://api.example.com/v1/hooks |=> 'resp'`],
      // A dry run checks each node as df.start does: the configurations are complete ones.
      [node('HTTP', { url: `${'https://api.example.com/v1/'}${'p'.repeat(40)}`, method: 'POST', body: null, headers: null, timeout_seconds: 30 }), `HTTP POST https://api.example.com/v1/${'p'.repeat(10)}...`],
      [node('HTTP_MULTIPART', { url: 'https://up.example.com/files', method: 'POST', parts: [{ name: 'f', data_b64: '' }], headers: {}, timeout_seconds: 30 }), 'HTTP_MULTIPART POST https://up.example.com/files'],
    ];
    for (const [json, line] of cases) expect(tree(await explain('$1', [json])), json).toEqual([line]);
    // The dry run walks the graph as df.start does, with its checks: what df.start refuses, it does not draw.
    expect(await explain('$1', [node('WAIT_SCHEDULE', { cron_expr: '61 * * * *' })])).toMatch(/^Cannot explain input: Invalid cron expression '61 \* \* \* \*': /);
    const seq = JSON.stringify({ node_type: 'THEN', left_node: JSON.parse(cases[2]![0]), right_node: JSON.parse(cases[0]![0]) });
    expect(tree(await explain('$1', [seq]))).toEqual([`WAIT '0 2 * * *' (Europe/Paris)`, `→ SIGNAL 'approve' (3600s)`]);
    // The constructors build the same nodes.
    expect(tree(await explain(`df.wait_for_schedule('0 2 * * *', 'Europe/Paris') ~> df.wait_for_signal('approve', 3600)`))).toEqual([
      `WAIT '0 2 * * *' (Europe/Paris)`,
      `→ SIGNAL 'approve' (3600s)`,
    ]);
  });

  it('a live signal wait: ⏳ while it waits, ✓ once the signal came', async () => {
    const id = (await c.query<{ id: string }>(`SELECT df.start(df.wait_for_signal('approve', 3600) ~> 'SELECT 1') AS id`)).rows[0]!.id;
    await eventually(async () => (await explain('$1', [id])).includes(`SIGNAL 'approve' (3600s) ⏳`), 'the wait to show as running');
    expect(instance(await explain('$1', [id])).tree).toEqual([`SIGNAL 'approve' (3600s) ⏳`, '→ SQL: SELECT 1 ○']);
    await c.query(`SELECT df.signal($1, 'approve')`, [id]);
    await c.query('SELECT df.await_instance($1)', [id]);
    expect(instance(await explain('$1', [id])).tree).toEqual([`SIGNAL 'approve' (3600s) ✓`, '→ SQL: SELECT 1 ✓']);
  });

  it('draws one SQL statement as a SQL step (even one that uses @> or a df table)', async () => {
    expect(await explain(`'SELECT 1'`)).toBe('SQL: SELECT 1    ');
    expect(tree(await explain(`$1`, [`  SELECT * FROM df.instances WHERE vars @> '{}'  `]))).toEqual([`SQL: SELECT * FROM df.instances WHERE vars @> '{}'`]);
    // Line breaks would break the tree: a multi-line statement is drawn on one line.
    expect(tree(await explain(`$1`, ['WITH x AS (\n  SELECT 1\n)\nSELECT * FROM x']))).toEqual(['SQL: WITH x AS ( SELECT 1 ) SELECT * FROM x']);
  });

  it('answers bad input with a reason instead of an error', async () => {
    const reason = (s: string): string => `Cannot explain input: ${s}`;
    expect(await explain(`'hello world'`)).toBe(reason('expected a workflow expression, its JSON, or an 8-character instance id'));
    expect(await explain(`''`)).toBe(reason('expected a workflow expression, its JSON, or an 8-character instance id'));
    expect(await explain('$1', [`df.sequence('a', 'b')`])).toMatch(/^Cannot explain input: function df\.sequence\(unknown, unknown\) does not exist$/);
    expect(await explain('$1', [`'SELECT 1' ~> df.sleep(-1)`])).toBe(reason('Sleep duration must be non-negative'));
    expect(await explain('$1', [`'SELECT 1' ?> 'SELECT 2'`])).toBe(reason('unfinished if: ?> needs its !> else branch'));
    expect(await explain('$1', [`df.getvar('not_set') ~> NULL`])).toBe(reason('the expression returned NULL'));
    expect(await explain('$1', ['{"node_type":"NOPE"}'])).toMatch(/^Cannot explain input: Invalid durable function: Unknown node_type 'NOPE'\. Valid types: SQL, THEN/);
    expect(await explain('$1', ['{"node_type":"THEN","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":42}}'])).toMatch(
      /^Cannot explain input: Invalid durable function: Unknown node_type '42'/,
    );
    expect(await explain('$1', ['{"node_type":"SQL","query":7}'])).toBe(reason('Malformed Durofut JSON: query must be a string, not number'));
    // An expression is evaluated as one SELECT: no statements smuggled in after it.
    await c.query('CREATE TABLE IF NOT EXISTS explain_kept (n int)');
    expect(await explain('$1', [`'SELECT 1' ~> 'SELECT 2'); DROP TABLE explain_kept; SELECT ('x'`])).toMatch(/^Cannot explain input: /);
    expect(await explain('$1', [`'SELECT 1' ~> 'SELECT 2' -- a comment`])).toBe(await explain(`'SELECT 1' ~> 'SELECT 2'`));
    expect((await c.query(`SELECT to_regclass('explain_kept') IS NOT NULL AS kept`)).rows[0].kept).toBe(true);
    expect((await c.query('SELECT df.explain(NULL) AS e')).rows[0].e).toBeNull();
  });

  it('works from plain SQL, without the proxy’s compiler: in a DO block', async () => {
    const notices: string[] = [];
    const onNotice = (n: { message?: string }): void => void notices.push(n.message ?? '');
    c.on('notice', onNotice);
    try {
      await c.query(`DO $$ BEGIN
        RAISE NOTICE '%', df.explain('SELECT 1');
        RAISE NOTICE '%', df.explain(df.seq('SELECT 1', df.if_rows('r', 'SELECT 2', df.sleep(1))));
        RAISE NOTICE '%', df.explain($e$df.join('SELECT 1', 'SELECT 2')$e$);
      END $$`);
    } finally {
      c.off('notice', onNotice);
    }
    expect(notices[0]).toBe('SQL: SELECT 1    ');
    expect(tree(notices[1]!)).toEqual(['SQL: SELECT 1', `→ IF rows('r')`, '    ✓ then:', '      └─SQL: SELECT 2', '    ✗ else:', '      └─SLEEP 1s']);
    expect(tree(notices[2]!)).toEqual(['JOIN (2)', '    ║ branch 1:', '      ├─SQL: SELECT 1', '    ║ branch 2:', '      └─SQL: SELECT 2']);
  });

  it('draws a graph of thousands of nodes quickly (iterative: no recursion depth)', async () => {
    // 2047 JOINs over 2048 two-step sequences: 8191 nodes.
    const leaf = { node_type: 'THEN', left_node: { node_type: 'SQL', query: 'SELECT 1' }, right_node: { node_type: 'SLEEP', query: '1' } };
    const join = (depth: number): object => (depth === 0 ? leaf : { node_type: 'JOIN', left_node: join(depth - 1), right_node: join(depth - 1) });
    const started = Date.now();
    const text = await explain('$1', [JSON.stringify(join(11))]);
    const elapsed = Date.now() - started;
    expect(text.split('\n')).toHaveLength(2047 * 3 + 2048 * 2);
    expect(elapsed).toBeLessThan(5000); // about 0.3 s on a 2-core machine; generous for a loaded one
    // A chain as deep as df.start allows, and one level deeper.
    let chain: object = { node_type: 'SQL', query: 'SELECT 0' };
    for (let i = 1; i < 256; i++) chain = { node_type: 'THEN', left_node: chain, right_node: { node_type: 'SQL', query: `SELECT ${i}` } };
    expect(tree(await explain('$1', [JSON.stringify(chain)]))).toHaveLength(256);
    chain = { node_type: 'THEN', left_node: chain, right_node: { node_type: 'SQL', query: 'SELECT 256' } };
    expect(await explain('$1', [JSON.stringify(chain)])).toBe('Cannot explain input: Workflow exceeds maximum nesting depth of 256');
  });
});

describe('live instances', () => {
  it('a completed instance: header with label, status and output, then ✓ on every node that ran, ⊘ on the untaken arm', async () => {
    const wf = `('SELECT 1 AS a' |=> 'a') ~> ('SELECT true AS ok' ?> 'SELECT $a + 1 AS b' !> 'SELECT 0 AS b')`;
    const r = await runWorkflow(c, `df.start(${wf}, 'explained')`);
    expect(r.status).toBe('completed');
    const text = await explain('$1', [r.id]);
    const { head, tree: lines } = instance(text);
    expect(head).toEqual([`Instance: ${r.id} (explained)`, 'Status:   ✓ Completed', `Output:   ${r.output}`]);
    expect(r.output).toBe('{"rows":[{"b":2}],"row_count":1}');
    expect(lines).toEqual([
      `SQL: SELECT 1 AS a |=> 'a' ✓`,
      '→ IF ✓',
      '    ? condition:',
      '      └─SQL: SELECT true AS ok ✓',
      '    ✓ then:',
      '      └─SQL: SELECT $a + 1 AS b ✓',
      '    ✗ else:',
      '      └─SQL: SELECT 0 AS b ⊘',
    ]);
    // The dry run of the same workflow draws the same tree, without the markers.
    expect(tree(await explain(wf))).toEqual(lines.map((l) => l.replace(/ [✓✗⏳○⊘]$/, '')));
    // Surrounding whitespace and capitals are accepted.
    expect(await explain('$1', [` ${r.id.toUpperCase()}\n`])).toBe(text);
  });

  it('the same tree for a workflow of every composite kind, live and dry', async () => {
    const wf = `df.join3('SELECT 1', 'SELECT 2' ~> 'SELECT 3', 'SELECT 4' | df.sleep(30)) ~> df.loop('SELECT 5' ~> df.break('out'))`;
    const r = await runWorkflow(c, `df.start(${wf})`);
    expect(r.status).toBe('completed');
    const { head, tree: lines } = instance(await explain('$1', [r.id]));
    expect(head).toEqual([`Instance: ${r.id}`, 'Status:   ✓ Completed', 'Output:   "out"']); // the break value, as JSON
    expect(lines).toEqual([
      'JOIN (3) ✓',
      '    ║ branch 1:',
      '      ├─SQL: SELECT 1 ✓',
      '    ║ branch 2:',
      '      ├─SQL: SELECT 2 ✓',
      '      → SQL: SELECT 3 ✓',
      '    ║ branch 3:',
      '      └─RACE ✓',
      '          ║ branch 1:',
      '            ├─SQL: SELECT 4 ✓',
      '          ║ branch 2:',
      expect.stringMatching(/^ {12}└─SLEEP 30s [✗⊘]$/), // the loser: stopped (failed) or never started (skipped)
      '→ LOOP (infinite) ✓',
      '    ↻ body:',
      '      └─SQL: SELECT 5 ✓',
      `      → BREAK 'out' ✓`,
    ]);
    expect(tree(await explain(wf))).toEqual(lines.map((l) => l.replace(/ [✓✗⏳○⊘]$/, '')));
  });

  it('a failed instance: ✗ and its error as the output; the steps after it skipped', async () => {
    const r = await runWorkflow(c, `df.start('SELECT 1' ~> 'SELECT 1/0' ~> 'SELECT 3')`);
    expect(r.status).toBe('failed');
    const { head, tree: lines } = instance(await explain('$1', [r.id]));
    expect(head).toEqual([`Instance: ${r.id}`, 'Status:   ✗ Failed', 'Output:   division by zero (SQLSTATE 22012)']);
    expect(lines).toEqual(['SQL: SELECT 1 ✓', '→ SQL: SELECT 1/0 ✗', '→ SQL: SELECT 3 ⊘']);
  });

  it('a long output is cut to 57 characters and ...', async () => {
    const r = await runWorkflow(c, `df.start('SELECT repeat(''x'', 80) AS long')`);
    const { head } = instance(await explain('$1', [r.id]));
    expect(head[2]).toBe(`Output:   ${r.output!.slice(0, 57)}...`);
  });

  it('a running instance: ⏳, the step that waits ⏳ and the next ○; once cancelled ✗ with the reason', async () => {
    const { rows } = await c.query<{ id: string }>(`SELECT df.start(df.sleep(30) ~> 'SELECT 1', 'sleepy') AS id`);
    const id = rows[0]!.id;
    let text = '';
    await eventually(async () => (text = await explain('$1', [id])).includes('SLEEP 30s ⏳'), 'the sleep to start');
    const running = instance(text);
    expect(running.head).toEqual([`Instance: ${id} (sleepy)`, 'Status:   ⏳ Running']);
    expect(running.tree).toEqual(['SLEEP 30s ⏳', '→ SQL: SELECT 1 ○']);
    await c.query('SELECT df.cancel($1, $2)', [id, 'no longer needed']);
    const cancelled = instance(await explain('$1', [id]));
    expect(cancelled.head).toEqual([`Instance: ${id} (sleepy)`, 'Status:   ✗ Cancelled', 'Output:   no longer needed']);
  });

  it('an unknown instance, or another role’s, is not found', async () => {
    expect(await explain(`'00000000'`)).toBe(`Instance '00000000' not found`);
    const alice = await d.connect(ALICE, `${ALICE}-pw`);
    const bob = await d.connect(BOB, `${BOB}-pw`);
    const r = await runWorkflow(alice, `df.start('SELECT 42 AS answer', 'alice''s')`);
    expect(instance(await explain('$1', [r.id], alice)).head[0]).toBe(`Instance: ${r.id} (alice's)`);
    expect(await explain('$1', [r.id], bob)).toBe(`Instance '${r.id}' not found`);
    // Bob's expressions run as Bob.
    expect(tree(await explain('$1', [`df.sql(current_user)`], bob))).toEqual([`SQL: ${BOB}`]);
  });
});
