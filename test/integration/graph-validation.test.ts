// A hand-written workflow graph is validated the same way however it reaches
// df.start: compiled by the proxy (a JSON literal in the statement) or built
// in plain SQL where the proxy cannot see it (a DO block). A property test
// over random graphs, valid and mutated: both paths accept, or both refuse
// with the same SQLSTATE and message.
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadDslParser } from '../../src/dsl/interceptor.js';
import { startDurable, type Durable } from '../helpers/durable.js';
import { seededRandom } from '../helpers/wait.js';

let d: Durable;
let proxied: pg.Client;

beforeAll(async () => {
  await loadDslParser();
  d = await startDurable('pgdp_graph_validation');
  proxied = await d.connect();
});
afterAll(async () => {
  await d?.close();
});

type Node = Record<string, unknown>;

function randomGraph(rand: () => number, depth: number): Node {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
  const sub = (): Node => randomGraph(rand, depth + 1);
  const leaves = (): Node =>
    pick([
      () => ({ node_type: 'SQL', query: `SELECT ${Math.floor(rand() * 9)} AS v` }),
      () => ({ node_type: 'SLEEP', query: String(Math.floor(rand() * 3)) }),
      () => ({ node_type: 'BREAK', query: '{"break_value":null}' }),
      () => ({ node_type: 'BREAK', query: '{"break_value":"done"}' }),
    ])();
  if (depth > 3 || rand() < 0.3) return leaves();
  return pick([
    () => ({ node_type: 'THEN', left_node: sub(), right_node: sub() }),
    () => ({ node_type: 'JOIN', left_node: sub(), right_node: sub() }),
    () => ({ node_type: 'JOIN', left_node: sub(), right_node: sub(), extra_nodes: [sub()] }),
    () => ({ node_type: 'RACE', left_node: sub(), right_node: sub() }),
    () => ({ node_type: 'IF', left_node: sub(), right_node: sub(), condition_node: sub() }),
    () => ({ node_type: 'IF', left_node: sub(), right_node: sub(), query: '{"condition_type":"result_has_rows","result_name":"r"}' }),
    () => ({ node_type: 'LOOP', left_node: sub() }),
    () => ({ node_type: 'LOOP', left_node: sub(), condition_node: sub() }),
    () => ({ ...sub(), result_name: pick(['r', '_x1', 'R2']) }),
  ])();
}

/** Every node of a graph, the root first. */
function nodes(n: Node): Node[] {
  const out = [n];
  for (const k of ['left_node', 'right_node', 'condition_node']) if (n[k] && typeof n[k] === 'object' && !Array.isArray(n[k])) out.push(...nodes(n[k] as Node));
  if (Array.isArray(n.extra_nodes)) for (const e of n.extra_nodes) if (e && typeof e === 'object') out.push(...nodes(e as Node));
  return out;
}

/** Breaks one node of the graph in one of the ways a hand-written graph goes wrong. */
function mutate(graph: Node, rand: () => number): void {
  const all = nodes(graph);
  const n = all[Math.floor(rand() * all.length)]!;
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
  pick([
    () => (n.node_type = pick(['sql', 'NOPE', 7, null, ''])),
    () => delete n.node_type,
    () => (n.query = pick([42, { a: 1 }, ['x'], true])),
    () => delete n.query,
    // A SQL step keeps valid SQL: the proxy parses step SQL at df.start too, and reports a syntax
    // error before df.start can see the graph's shape (the one difference, on purpose).
    () => (n.query = n.node_type === 'SQL' ? pick(['SELECT 2', 'VALUES (1)']) : pick(['soon', '-1', '1.5', 'done', '{"other":1}', 'SELECT 1'])),
    () => (n.left_node = pick(['abc', 1, ['x'], null])),
    () => delete n.left_node,
    () => delete n.right_node,
    () => (n.right_node = { node_type: 'SQL', query: 'SELECT 9' }),
    () => (n.condition_node = { node_type: 'SQL', query: 'SELECT true' }),
    () => (n.condition_node = pick(['SELECT true', 3])),
    () => delete n.condition_node,
    () => (n.extra_nodes = pick([[], ['x'], 'x', [{ node_type: 'SQL', query: 'SELECT 8' }]])),
    () => (n.result_name = pick(['1x', 'not a name', 7, '', null])),
    () => (n.unknown_key = 'ignored?'),
  ])();
}

/** What df.start made of the graph: 'ok', or the error's SQLSTATE and message. */
async function outcome(sql: string): Promise<string> {
  await proxied.query('BEGIN');
  try {
    await proxied.query(sql);
    return 'ok';
  } catch (err) {
    const e = err as { code?: string; message: string };
    return `${e.code}: ${e.message}`;
  } finally {
    await proxied.query('ROLLBACK');
  }
}

describe('hand-written graphs: the same validation through the proxy and in plain SQL', () => {
  it('random valid and mutated graphs get the same answer on both paths', async () => {
    const seed = 1301;
    const rand = seededRandom(seed);
    let refused = 0;
    for (let i = 0; i < 300; i++) {
      const graph = randomGraph(rand, 1);
      const mutations = Math.floor(rand() * 3); // 0, 1 or 2
      for (let m = 0; m < mutations; m++) mutate(graph, rand);
      const json = JSON.stringify(graph);
      const viaProxy = await outcome(`SELECT df.start(${pg.escapeLiteral(json)})`);
      const inSql = await outcome(`DO $$ BEGIN PERFORM df.start(${pg.escapeLiteral(json)}); END $$`);
      // A root without a node_type is one SQL step (its JSON text), which the proxy parses at
      // df.start and plain SQL only when the step runs.
      if (!('node_type' in graph) && inSql === 'ok') {
        expect(viaProxy).toMatch(/^42601: syntax error at or near "\{" in the workflow step: /);
        continue;
      }
      expect(viaProxy, `seed ${seed}, graph ${i}: ${json}`).toBe(inSql);
      if (inSql !== 'ok') refused++;
    }
    // The generator reaches both sides of the validation.
    expect(refused).toBeGreaterThan(50);
    expect(refused).toBeLessThan(280);
  });
});
