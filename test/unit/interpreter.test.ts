// The interpreter against fake effects: order, results, failures, JOIN and
// RACE, loops and breaks, replay from recorded state, and when an instance
// parks. No database: every effect is a function of this file.
import { getEventListeners } from 'node:events';
import { loadModule } from 'libpg-query';
import { beforeAll, describe, expect, it } from 'vitest';
import type { Node, NodeState } from '../../src/engine/graph.js';
import { Aborted, Parking, runInstance, Suspended, type Effects, type HttpStepRequest } from '../../src/engine/interpreter.js';

let seq = 0;
const fresh = (): NodeState => ({ status: 'pending', stamp: null, iteration: null, raw: null, wakeAt: null, broke: false });
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
  /** Kept signals by name (their data JSON), taken oldest first. */
  const signals = new Map<string, string[]>();
  const completed: { id: string; stamp: string; raw: string }[] = [];
  const requests: HttpStepRequest[] = [];
  const clock = { now: Date.now() };
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
    waitDeadline: async (node, stamp, at) => {
      const key = `${node.id}${stamp}`;
      if (!deadlines.has(key) && at) deadlines.set(key, at);
      return deadlines.get(key) ?? null;
    },
    takeSignal: async (_node, _stamp, name) => {
      const d = signals.get(name)?.shift();
      return d === undefined ? null : `{"signal_name":${JSON.stringify(name)},"timed_out":false,"data":${d}}`;
    },
    complete: async (node, stamp, raw) => void completed.push({ id: node.id, stamp, raw }),
    runHttp: async (_node, request) => {
      requests.push(request);
      return '{"status":200,"body":"ok","encoding":"text","headers":{},"ok":true,"duration_ms":1}';
    },
    now: () => clock.now,
  };
  return { effects, ran, recorded, deadlines, signals, completed, requests, clock };
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

  it('a composite node a break passes through is recorded completed, marked as left by the break; a replay of it breaks again', async () => {
    const f = fake((q) => rows({ q }));
    const inner = then(sql('before'), brk('"done"'));
    const out = await runInstance(loop(then(inner, sql('never'))), ctx(f.effects), never);
    expect(out).toEqual({ kind: 'ok', value: '"done"' });
    expect(f.ran).toEqual(['before']);
    expect(inner.state).toMatchObject({ status: 'completed', raw: '"done"', broke: true, stamp: '/1' });
    // Replayed from that state (the loop's end not recorded yet): the body breaks again, nothing more runs.
    const again = fake((q) => rows({ q }));
    const body = then(inner, sql('never'));
    body.state = { ...inner.state };
    expect(await runInstance(loop(body), ctx(again.effects), never)).toEqual({ kind: 'ok', value: '"done"' });
    expect(again.ran).toEqual([]);
  });

  it('replay: a step recorded as completed for this stamp is not run again; its recorded result is used', async () => {
    const first = sql('SELECT 1 AS a', 'a');
    first.state = { status: 'completed', stamp: '', iteration: null, raw: rows({ a: 1 }), wakeAt: null, broke: false };
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
    let parkedAt: Date | null | undefined;
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
    const parks: (Date | null)[] = [];
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

const signalNode = (name: string, timeoutSeconds: number | null = null, resultName?: string): Node => ({
  ...base(resultName),
  type: 'SIGNAL',
  signalName: name,
  timeoutSeconds,
});
const schedule = (cron: string, timeZone: string | null = null): Node => ({ ...base(), type: 'WAIT_SCHEDULE', cron, timeZone });

describe('signal waits', () => {
  it('a signal kept before the wait is taken at once; its result is usable by name', async () => {
    const f = fake((q) => rows({ got: q }));
    f.signals.set('approve', ['{"by": "ann"}']);
    const out = await runInstance(then(signalNode('approve', null, 's'), sql('SELECT $s.data')), ctx(f.effects), never);
    expect(f.ran).toEqual([`SELECT '{"by":"ann"}'`]);
    expect(out.kind).toBe('ok');
  });

  it('a wait with nothing kept parks the instance with no deadline, awaiting its signal name', async () => {
    const f = fake();
    const abort = new AbortController();
    let parked: { at: Date | null; awaits: string[] } | undefined;
    const parking = new Parking(100, (at, awaits) => {
      parked = { at, awaits };
      abort.abort(new Suspended(at, awaits));
    });
    await expect(runInstance(signalNode('go'), ctx(f.effects, parking), abort.signal)).rejects.toBeInstanceOf(Aborted);
    expect(parked).toEqual({ at: null, awaits: ['go'] });
  });

  it('a signal arriving while the wait is in memory is taken when the wait is poked', async () => {
    const f = fake();
    // Parking only waits past 10 000 s: this 1000 s wait stays in memory.
    const parking = new Parking(10_000_000, () => {
      throw new Error('must not park');
    });
    const running = runInstance(signalNode('go', 1000), ctx(f.effects, parking), never);
    while (f.deadlines.size === 0) await turn();
    await turn();
    f.signals.set('go', ['42']);
    parking.poke();
    expect(await running).toEqual({ kind: 'ok', value: '{"signal_name":"go","timed_out":false,"data":42}' });
  });

  it('pokes with nothing to take leave no timers or abort listeners behind', async () => {
    const f = fake();
    // Parking only waits past 10 000 s: this 1000 s wait stays in memory.
    const parking = new Parking(10_000_000, () => {
      throw new Error('must not park');
    });
    const abort = new AbortController();
    const running = runInstance(signalNode('go', 1000), ctx(f.effects, parking), abort.signal);
    while (f.deadlines.size === 0) await turn();
    for (let i = 0; i < 50; i++) {
      parking.poke();
      await turn();
    }
    expect(getEventListeners(abort.signal, 'abort').length).toBeLessThanOrEqual(2);
    f.signals.set('go', ['1']);
    parking.poke();
    expect((await running).kind).toBe('ok');
  });

  it('a wait past its deadline ends timed out, durably, and parks until the deadline otherwise', async () => {
    const f = fake();
    const node = signalNode('late', 1);
    // Replayed after its deadline: the recorded deadline is in the past.
    f.deadlines.set(`${node.id}`, new Date(Date.now() - 10));
    const out = await runInstance(node, ctx(f.effects), never);
    const raw = '{"signal_name":"late","timed_out":true,"data":null}';
    expect(out).toEqual({ kind: 'ok', value: raw });
    expect(f.completed).toEqual([{ id: node.id, stamp: '', raw }]);
  });

  it('two same-named waits in a JOIN each take their own signal, oldest first', async () => {
    const f = fake();
    f.signals.set('go', ['1', '2']);
    const out = await runInstance(join(signalNode('go'), signalNode('go')), ctx(f.effects), never);
    expect(out).toEqual({
      kind: 'ok',
      value: '[{"signal_name":"go","timed_out":false,"data":1},{"signal_name":"go","timed_out":false,"data":2}]',
    });
  });
});

describe('schedule waits', () => {
  it('waits for the next tick of the schedule clock, measured on the wall clock', async () => {
    const f = fake();
    // The schedule's clock stands 30 s before 02:00 UTC.
    f.clock.now = Date.parse('2026-03-01T01:59:30Z');
    const node = schedule('0 2 * * *');
    const abort = new AbortController();
    let parkedAt: Date | null | undefined;
    const parking = new Parking(1000, (at) => {
      parkedAt = at;
      abort.abort(new Suspended(at));
    });
    const before = Date.now();
    await expect(runInstance(node, ctx(f.effects, parking), abort.signal)).rejects.toBeInstanceOf(Aborted);
    const wait = parkedAt!.getTime() - before;
    expect(wait).toBeGreaterThan(29_000);
    expect(wait).toBeLessThanOrEqual(30_000 + 50);
  });

  it('a tick already due completes with pg_durable\'s result', async () => {
    const f = fake();
    const node = schedule('* * * * *');
    f.deadlines.set(node.id, new Date(Date.now() - 1));
    expect(await runInstance(node, ctx(f.effects), never)).toEqual({ kind: 'ok', value: '{"scheduled":true}' });
  });

  it('a time zone the runtime does not know fails the node with the schedule error', async () => {
    const f = fake();
    const out = await runInstance(schedule('0 2 * * *', 'Mars/Olympus'), ctx(f.effects), never);
    expect(out.kind).toBe('failed');
    expect((out as { error: string }).error).toMatch(/^Invalid time zone 'Mars\/Olympus'/);
  });
});

describe('HTTP steps', () => {
  const http = (config: Record<string, unknown>): Node =>
    ({ ...base(), type: 'HTTP', config: { method: 'POST', body: null, headers: null, timeout_seconds: 30, ...config } }) as Node;

  it('substitutes variables and results raw into URL, body and string header values; keys and other values are left', async () => {
    const f = fake(() => rows({ id: 7, name: 'a"b' }));
    await runInstance(
      then(sql('SELECT 7 AS id', 'u'), http({ url: 'https://api.test/u/$u.id/q?x={v}', body: '{"n":"$u.name"}', headers: { 'X-{v}': 'k {v}', N: 5 } })),
      ctx(f.effects),
      never,
    );
    expect(f.requests).toEqual([
      { url: 'https://api.test/u/7/q?x=x', method: 'POST', headers: { 'X-{v}': 'k x' }, body: '{"n":"a"b"}', parts: null, timeoutSeconds: 30 },
    ]);
  });

  it('a multipart part takes a whole reference as its data; a reference mixed with text fails the node', async () => {
    const f = fake(() => rows({ b: 'aGk=' }));
    const mp = (data: string): Node =>
      ({ ...base(), type: 'HTTP_MULTIPART', config: { url: 'https://api.test', method: 'POST', parts: [{ name: 'f-{v}', data_b64: data }], headers: null, timeout_seconds: 5 } }) as Node;
    await runInstance(then(sql('SELECT 1', 'r'), mp('$r.b')), ctx(f.effects), never);
    expect(f.requests[0]!.parts).toEqual([{ name: 'f-x', data_b64: 'aGk=' }]);
    const out = await runInstance(then(sql('SELECT 1', 'r'), mp('xx$r.b')), ctx(f.effects), never);
    expect(out.kind).toBe('failed');
    expect((out as { error: string }).error).toMatch(/part 1's data_b64 mixes a variable reference with other text/);
  });
});
