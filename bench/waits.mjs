// npm run bench:waits: what waiting costs, one run against an embedded PostgreSQL.
//
// 1. Idle wake-up: start -> first step of one-step workflows, one at a time,
//    on an executor with nothing else to do.
// 2. BENCH_SLEEPERS workflows of one role in df.sleep(600): the proxy's
//    resident memory before and after they park, and its CPU while they wait.
// 3. Contended wake-up: with those sleepers parked, another role's one-step
//    workflows, start -> first step.
// 4. Wake precision: BENCH_NAPS workflows in df.sleep(3), step time minus deadline.
// Prints figures next to the goals; asserts nothing.
//
//   BENCH_SLEEPERS  parked workflows (default 10000)
//   BENCH_NAPS      short sleeps for the precision figure (default 50)
import { readFileSync } from 'node:fs';
import pg from 'pg';
import { cpuMs, pct, servedByProxy } from './served.mjs';

const SLEEPERS = Number(process.env.BENCH_SLEEPERS ?? 10_000);
const NAPS = Number(process.env.BENCH_NAPS ?? 50);
const log = (msg) => process.stderr.write(`[bench] ${msg}\n`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
/** Resident memory (MiB) and CPU time (ms) of a process, from /proc. */
function usage(pid) {
  const rss = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) / 1024;
  return { rss, cpuMs: cpuMs(pid) };
}

async function main() {
  const { server, proxy, proxyPort, cleanup } = await servedByProxy('waits', ['--max-instances', '100000']);
  try {
    const direct = new pg.Client(server.url);
    direct.on('error', () => {});
    await direct.connect();
    await direct.query('CREATE TABLE marks (instance text, at timestamptz DEFAULT clock_timestamp())');
    await direct.query(`CREATE ROLE sleeper LOGIN PASSWORD 'sleeper'; CREATE ROLE waker LOGIN PASSWORD 'waker'; GRANT ALL ON marks TO sleeper, waker`);
    await direct.query(`SELECT df.grant_usage('sleeper'), df.grant_usage('waker')`);
    const through = (user) => {
      const u = new URL(server.url);
      u.port = String(proxyPort);
      u.username = user;
      u.password = user;
      return u.toString();
    };
    const waker = new pg.Client(through('waker'));
    await waker.connect();
    const firstStep = async (n) => {
      const lat = [];
      for (let i = 0; i < n; i++) {
        const { rows } = await waker.query(`SELECT df.start('INSERT INTO marks VALUES (''{sys_instance_id}'')') AS id`);
        await waker.query('SELECT df.await_instance($1)', [rows[0].id]);
        const r = await direct.query(`SELECT extract(epoch FROM (SELECT min(at) FROM marks WHERE instance = i.id) - i.created_at) * 1000 AS ms FROM df.instances i WHERE id = $1`, [rows[0].id]);
        lat.push(Number(r.rows[0].ms));
      }
      return lat;
    };
    log('idle wake-up');
    await firstStep(20); // warm-up: connections, prepared statements
    const idle = await firstStep(100);

    log(`${SLEEPERS} sleepers`);
    await sleep(1000);
    const before = usage(proxy.pid);
    const sleeper = new pg.Client(through('sleeper'));
    await sleeper.connect();
    const t0 = Date.now();
    for (let done = 0; done < SLEEPERS; done += 500) {
      await sleeper.query(`SELECT df.start(df.sleep(600)) FROM generate_series(1, ${Math.min(500, SLEEPERS - done)})`);
    }
    const parked = async () => Number((await direct.query(`SELECT count(*) AS n FROM df.runs WHERE owner IS NULL AND lease_expires > now() + interval '60 seconds'`)).rows[0].n);
    while ((await parked()) < SLEEPERS) {
      if (Date.now() - t0 > 300_000) throw new Error('the sleepers did not all park within 5 minutes');
      await sleep(200);
    }
    const parkSeconds = (Date.now() - t0) / 1000;
    await sleep(2000);
    const parkedAt = usage(proxy.pid);
    await sleep(10_000);
    const after = usage(proxy.pid);
    const cpuPerSec = (after.cpuMs - parkedAt.cpuMs) / 10;

    log('contended wake-up');
    const contended = await firstStep(100);

    log(`${NAPS} naps of 3 s`);
    const naps = [];
    for (let i = 0; i < NAPS; i++) naps.push((await waker.query(`SELECT df.start(df.sleep(3) ~> 'INSERT INTO marks VALUES (''{sys_instance_id}'')') AS id`)).rows[0].id);
    for (const id of naps) await waker.query('SELECT df.await_instance($1, 60)', [id]);
    const late = (await direct.query(
      `SELECT extract(epoch FROM m.at - n.wake_at) * 1000 AS ms FROM marks m JOIN df.nodes n ON n.instance_id = m.instance AND n.node_type = 'SLEEP' WHERE m.instance = ANY ($1)`,
      [naps],
    )).rows.map((r) => Number(r.ms));
    await sleeper.end();
    await waker.end();
    await direct.end();

    const f = (x, d = 1) => x.toFixed(d);
    process.stdout.write([
      'waiting workflows:',
      `  idle start-to-first-step:        p50 ${f(pct(idle, 50), 2)} ms   p99 ${f(pct(idle, 99), 2)} ms   (goal p50 <= 2 ms, p99 <= 10 ms)`,
      `  ${SLEEPERS} sleepers started and parked in ${f(parkSeconds)} s; proxy memory ${f(before.rss)} -> ${f(parkedAt.rss)} MiB (+${f(parkedAt.rss - before.rss)}; goal < 64 MB for 10 000), CPU while they wait ${f(cpuPerSec)} ms/s`,
      `  start-to-first-step beside them: p50 ${f(pct(contended, 50), 2)} ms   p99 ${f(pct(contended, 99), 2)} ms   (goal p50 <= 50 ms)`,
      `  wake-up after a 3 s sleep:       p50 ${f(pct(late, 50))} ms   max ${f(Math.max(...late))} ms after the deadline   (goal within 1 s)`,
    ].join('\n') + '\n');
  } finally {
    await cleanup();
  }
}

main().catch((err) => {
  process.stderr.write(`bench:waits failed: ${err.stack ?? err}\n`);
  process.exit(1);
});
