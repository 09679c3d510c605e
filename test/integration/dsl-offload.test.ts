// Large df.start statements are compiled on a worker thread, so that the
// compile of one never holds up the bytes of the other sessions: the same
// results and errors as in line, and a bystander's query is answered while
// such a statement compiles. Uses the built worker (npm test builds first).
import pg from 'pg';
import { pino } from 'pino';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { DslInterceptor, loadDslParser, OFFLOAD_BYTES, rewriteSql } from '../../src/dsl/interceptor.js';
import { CompileWorker } from '../../src/dsl/offload.js';
import { startProxy, type RunningProxy } from '../helpers/proxy.js';

const WORKER = new URL('../../dist/dsl/compile-worker.js', import.meta.url);
let worker: CompileWorker;
let proxy: RunningProxy;
let interceptor: DslInterceptor;

beforeAll(async () => {
  await loadDslParser();
  const w = CompileWorker.at(WORKER);
  if (!w) throw new Error(`no built compile worker at ${WORKER.pathname}: run npm run build`);
  worker = w;
  interceptor = new DslInterceptor(pino({ level: 'silent' }), { worker });
  proxy = await startProxy({ interceptor });
});
afterAll(async () => {
  await proxy?.close();
  await interceptor?.close();
});

const leaf = (q: string): string => JSON.stringify({ node_type: 'SQL', query: q });
/** A JOIN of `n` steps as a literal graph, the last step's SQL `last`: about 40 bytes a step. */
const wide = (n: number, last: string): string =>
  `SELECT df.start('{"node_type":"JOIN","left_node":${leaf('SELECT 1')},"right_node":${leaf('SELECT 2')},"extra_nodes":[${[
    ...Array.from({ length: n }, (_, i) => leaf(`SELECT ${i}`)),
    leaf(last),
  ].join(',')}]}')`;

it('compiles as in line: the same rewrite, the same error and position', async () => {
  const chain = `SELECT df.start(${Array.from({ length: 1500 }, (_, i) => `'SELECT ${i}'`).join(' ~> ')} ~> 'SELEC 1')`;
  const cases = [wide(2000, 'SELECT 3'), wide(2000, 'SELEC 3'), chain, `SELECT df.start(${Array.from({ length: 1500 }, (_, i) => `'SELECT ${i}'`).join(' ~> ')})`];
  for (const sql of cases) {
    expect(sql.length).toBeGreaterThanOrEqual(OFFLOAD_BYTES);
    const [there, here] = [await worker.rewrite(sql), rewriteSql(sql)];
    expect(there).toEqual(here);
  }
});

it('the proxy does not wait for the compile: the event loop turns, the session gets its error with position', async () => {
  const bad = wide(9000, 'SELEC 1');
  const body = Buffer.from(bad + '\0', 'utf8');
  const message = Buffer.alloc(5 + body.length);
  message[0] = 0x51; // Query
  message.writeInt32BE(4 + body.length, 1);
  body.copy(message, 5);
  const session = { user: 'u', database: 'd', transactionStatus: 'I' as const, currentRole: () => undefined };
  const pending = interceptor.rewrite(message, session);
  expect(pending).toBeInstanceOf(Promise); // compiled in line, the result would be here already
  let turned = false;
  setImmediate(() => (turned = true));
  const out = await pending;
  expect(turned).toBe(true);
  expect(out?.error?.fields).toMatchObject({ code: '42601', message: expect.stringMatching(/syntax error at or near "SELEC"/) });

  // And through the proxy, as a client sees it, while another session goes on.
  const a = new pg.Client(proxy.adminUrl);
  const b = new pg.Client(proxy.adminUrl);
  await a.connect();
  await b.connect();
  try {
    const [err, one] = await Promise.all([a.query(bad).then(() => undefined, (e: { code: string; position: string }) => e), b.query('SELECT 1 AS one')]);
    expect(err).toMatchObject({ code: '42601' });
    expect(bad.slice(Number(err!.position) - 1)).toMatch(/^'\{"node_type":"JOIN"/); // a graph literal's errors point at the literal
    expect(one.rows).toEqual([{ one: 1 }]);
  } finally {
    await a.end();
    await b.end();
  }
});
