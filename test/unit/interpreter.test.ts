// The interpreter against fake effects: order, results, failures, JOIN and
// RACE, loops and breaks, replay from recorded state, and when an instance
// parks. No database: every effect is a function of this file.
import { loadModule } from 'libpg-query';
import { beforeAll, describe, expect, it } from 'vitest';
import type { Node, NodeState } from '../../src/engine/graph.js';
import { Aborted, Parking, runInstance, Suspended, type Effects } from '../../src/engine/interpreter.js';

let seq = 0;
const fresh = (): NodeState => ({ status: 'pending', stamp: null, iteration: null, raw: null, wakeAt: null });
const base = (name?: string) => ({ id: (++seq).toString(16).padStart(8, '0'), name, state: fresh() });
const sql = (query: string, name?: string): Node => ({ ...base(name), type: 'SQL', query });
const then = (left: Node, right: Node): Node => ({ ...base(), type: 'THEN', left, right });
const join = (...branches: Node[]): Node => ({ ...base(), type: 'JOIN', branches });
const race = (left: Node, right: Node): Node => ({ ...base(), type: 'RACE', left, right });
const loop = (body: Node, condition?: Node): Node => ({ ...base(), type: 'LOOP', body, condition });
const brk = (value: string): Node => ({ ...base(), type: 'BREAK', value });
const sleep = (seconds: number): Node => ({ ...base(), type: 'SLEEP', seconds });
const rows = (...r: object[]): string => JSON.stringify({ rows: r, row_count: r.length });

/** Effects whose SQL answers come from `answer`; what ran, and what was recorded, is kept. */
function fake(answer: (sql: string, signal: AbortSignal) => Promise<string> | string = () => rows({ ok: 1 })) {
  const ran: string[] = [];
  const recorded: { id: string; status: string; stamp: string }[] = [];
  const deadlines = new Map<string, Date>();
  const effects: Effects = {
    runSql: async (_node, text, _stamp, signal) => {
      ran.push(text);
      return answer(text, signal);
    },
    record: (node, status, stamp) => void recorded.push({ id: node.id, status, stamp }),
    setIteration: async () => {},
    sleepDeadline: async (node, stamp, seconds) => {
      const key = `${node.id}${stamp}`;
      if (!deadlines.has(key)) deadlines.set(key, new Date(Date.now() + seconds * 1000));
      return deadlines.get(key)!;
    },
  };
  return { effects, ran, recorded, deadlines };
}

const ctx = (effects: Effects, parking?: Parking) => ({ instanceId: 'abcd0123', label: 'lbl', vars: { v: 'x' }, effects, parking });
const never = new AbortController().signal;
/** One turn of the event loop (Parking decides on setImmediate). */
const turn = (): Promise<void> => new Promise((r) => setImmediate(r));

// Substitution places `$name`s with the PostgreSQL scanner.
beforeAll(() => loadModule());

describe('the interpreter', () => {
  it('runs a chain in order; a named result is substituted into later steps; the last result is the outcome', async () => {
    const f = fake((q) => (q.startsWith('SELECT 7') ? rows({ n: 7 }) : rows({ got: q })));
    const out = await runInstance(then(sql('SELECT 7 AS n', 'a'), sql('SELECT 1 + $a, {v}, {sys_instance_id}')), ctx(f.effects), never);
    expect(f.ran).toEqual(['SELECT 7 AS n', "SELECT 1 + 7, x, abcd0123"]);
    expect(out).toEqual({ kind: 'ok', value: rows({ got: "SELECT 1 + 7, x, abcd0123" }) });
  });

  it('a failing step ends the chain with its error; nothing after it runs', async () => {
    const { StepError } = await import('../../src/engine/substitute.js');
    const f = fake((q) => {
      if (q === 'boom') throw new StepError('division by zero (SQLSTATE 22012)');
      return rows({});
    });
    const out = await runInstance(then(sql('boom'), sql('after')), ctx(f.effects), never);
    expect(out).toEqual({ kind: 'failed', error: 'division by zero (SQLSTATE 22012)' });
    expect(f.ran).toEqual(['boom']);
  });

  it('JOIN starts every branch before any ends, and returns their results in order', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const started: string[] = [];
    const f = fake(async (q) => {
      started.push(q);
      if (started.length === 2) release();
      await gate;
      return rows({ q });
    });
    const out = await runInstance(join(sql('a'), sql('b')), ctx(f.effects), never);
    expect(out).toEqual({ kind: 'ok', value: `[${rows({ q: 'a' })},${rows({ q: 'b' })}]` });
  });

  it('RACE: the first branch to finish wins and the loser is stopped', async () => {
    let loserSignal: AbortSignal | undefined;
    const f = fake(async (q, signal) => {
      if (q === 'slow') {
        loserSignal = signal;
        await new Promise((_, reject) => signal.addEventListener('abort', () => reject(new Aborted())));
      }
      return rows({ w: q });
    });
    const out = await runInstance(race(sql('slow'), sql('fast')), ctx(f.effects), never);
    expect(out).toEqual({ kind: 'ok', value: rows({ w: 'fast' }) });
    expect(loserSignal?.aborted).toBe(true);
  });

  it('df.break leaves the loop with its value; outside a loop it fails the instance', async () => {
    const f = fake();
    expect(await runInstance(loop(then(sql('tick'), brk('{"done":true}'))), ctx(f.effects), never)).toEqual({ kind: 'ok', value: '{"done":true}' });
    expect(f.ran).toEqual(['tick']);
    expect((await runInstance(brk('1'), ctx(fake().effects), never)).kind).toBe('failed');
  });

  it('a loop whose condition is false after the body returns the body result', async () => {
    const f = fake((q) => (q === 'cond' ? rows({ c: false }) : rows({ body: 1 })));
    expect(await runInstance(loop(sql('body'), sql('cond')), ctx(f.effects), never)).toEqual({ kind: 'ok', value: rows({ body: 1 }) });
  });

  it('replay: a step recorded as completed for this stamp is not run again; its recorded result is used', async () => {
    const first = sql('SELECT 1 AS a', 'a');
    first.state = { status: 'completed', stamp: '', iteration: null, raw: rows({ a: 1 }), wakeAt: null };
    const f = fake((q) => rows({ q }));
    const out = await runInstance(then(first, sql('SELECT $a')), ctx(f.effects), never);
    expect(f.ran).toEqual(['SELECT 1']);
    expect(out.kind).toBe('ok');
  });
});

describe('parking', () => {
  it('a sleep past the threshold, with nothing else running, parks the instance at its deadline', async () => {
    const f = fake();
    const abort = new AbortController();
    let parkedAt: Date | undefined;
    const parking = new Parking(100, (at) => {
      parkedAt = at;
      abort.abort(new Suspended(at));
    });
    await expect(runInstance(then(sleep(60), sql('after')), ctx(f.effects, parking), abort.signal)).rejects.toBeInstanceOf(Aborted);
    const deadline = [...f.deadlines.values()][0]!;
    expect(parkedAt?.getTime()).toBe(deadline.getTime());
    expect(f.ran).toEqual([]);
  });

  it('a sleep under the threshold waits in memory and the instance goes on', async () => {
    const f = fake();
    const parking = new Parking(10_000, () => {
      throw new Error('must not park');
    });
    expect((await runInstance(then(sleep(0.05), sql('after')), ctx(f.effects, parking), never)).kind).toBe('ok');
    expect(f.ran).toEqual(['after']);
  });

  it('beside a step in flight, a sleeping branch does not park the instance; once the step is done, it does', async () => {
    let finish!: () => void;
    const stepDone = new Promise<void>((r) => (finish = r));
    const f = fake(async () => {
      await stepDone;
      return rows({ step: 1 });
    });
    const abort = new AbortController();
    const parks: Date[] = [];
    const parking = new Parking(100, (at) => {
      parks.push(at);
      abort.abort(new Suspended(at));
    });
    const running = runInstance(join(sleep(60), sql('long step')), ctx(f.effects, parking), abort.signal);
    // The sleep has begun (its deadline is drawn) and Parking's check, a macrotask later, has looked.
    while (f.deadlines.size === 0) await turn();
    for (let i = 0; i < 3; i++) await turn();
    expect(parks).toEqual([]);
    finish();
    await expect(running).rejects.toBeInstanceOf(Aborted);
    expect(parks).toHaveLength(1);
    expect(f.ran).toEqual(['long step']);
  });
});
