// npm run bench:durable: durable steps against plain transactions, one run.
//
// Baseline: pgbench runs the step's INSERT as plain transactions with
// BENCH_CLIENTS clients. Durable: BENCH_CLIENTS clients, each keeping one
// workflow of BENCH_STEPS single-INSERT steps in flight through the proxy,
// BENCH_WAVES workflows one after the other. Also:
// start-to-first-step latency (one workflow at a time, df.instances.created_at
// to the first step's clock_timestamp()) and the rows the df schema writes
// per step (pg_stat_user_tables). Prints figures and ratios; asserts nothing.
//
//   BENCH_CLIENTS  concurrency of both sides (default 8)
//   BENCH_STEPS    steps per workflow (default 20)
//   BENCH_WAVES    workflows per client (default 40: long enough for a steady state)
//   BENCH_SECONDS  seconds of the pgbench baseline (default 10)
//   BENCH_HISTORY  finished instances (one node each) seeded into df first, as months of use leave them (default 0)
import { execFileSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { cpuMs, pct, servedByProxy } from './served.mjs';

const CLIENTS = Number(process.env.BENCH_CLIENTS ?? 8);
const STEPS = Number(process.env.BENCH_STEPS ?? 20);
const WAVES = Number(process.env.BENCH_WAVES ?? 40);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
const HISTORY = Number(process.env.BENCH_HISTORY ?? 0);
const log = (msg) => process.stderr.write(`[bench] ${msg}\n`);

function findPgbench() {
  const dirs = (process.env.PATH ?? '').split(':').map((d) => path.join(d, 'pgbench'));
  const extra = execFileSync('sh', ['-c', 'ls -d /usr/lib/postgresql/*/bin/pgbench 2>/dev/null || true']).toString().split('\n').filter(Boolean);
  const found = [...dirs, ...extra].find((p) => existsSync(p));
  if (found) return found;
  if (process.getuid?.() !== 0) throw new Error('pgbench is needed: install the Debian package postgresql-client');
  log('installing postgresql-client (pgbench) from Debian packages');
  execFileSync('apt-get', ['update', '-qq'], { stdio: 'ignore' });
  execFileSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', 'postgresql-client'], { stdio: 'ignore' });
  return findPgbench();
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function main() {
  const pgbench = findPgbench();
  const { tmp, server, proxy, proxyPort, cleanup } = await servedByProxy('durable');
  try {
    const direct = new pg.Client(server.url);
    direct.on('error', () => {}); // the server stops under it at the end; a failure shows as the query's error
    await direct.connect();
    await direct.query('CREATE TABLE bench_rows (id bigserial PRIMARY KEY, instance text, step int, at timestamptz DEFAULT clock_timestamp())');
    const through = new URL(server.url);
    through.port = String(proxyPort);

    // Baseline: the same INSERT as plain transactions.
    const script = path.join(tmp, 'insert.sql');
    writeFileSync(script, `INSERT INTO bench_rows (instance, step) VALUES ('pgbench', 1);\n`);
    const u = new URL(server.url);
    const runPgbench = (file, extra = []) => {
      const out = execFileSync(pgbench, ['-n', ...extra, '-c', String(CLIENTS), '-j', String(Math.min(CLIENTS, os.cpus().length)), '-T', String(SECONDS), '-f', file,
        '-h', '127.0.0.1', '-p', u.port, '-U', decodeURIComponent(u.username), 'postgres'], { env: { ...process.env, PGPASSWORD: decodeURIComponent(u.password) } }).toString();
      return Number(/tps = ([\d.]+)/.exec(out)[1]);
    };
    log(`baseline: pgbench -c ${CLIENTS} -T ${SECONDS}`);
    const baseTps = runPgbench(script);

    // Durable: N clients through the proxy (which installed the df schema at start: --databases).
    const clients = await Promise.all(Array.from({ length: CLIENTS }, async () => {
      const c = new pg.Client(through.toString());
      await c.connect();
      return c;
    }));

    // What a durable step costs PostgreSQL alone: the step's INSERT and its checkpoint
    // in one implicit transaction and one round trip, as the executor sends them, driven
    // by pgbench. The instances are leased to a made-up executor for an hour (set before
    // their start commits), so the proxy's executor leaves them alone.
    const fakeOwner = '00000000-0000-4000-8000-00000000be4c';
    await direct.query('CREATE TABLE bench_ceiling (n int PRIMARY KEY, instance text, node text)');
    for (let n = 0; n < CLIENTS; n++) {
      await direct.query('BEGIN');
      const { rows } = await direct.query(`SELECT df.start('SELECT 1') AS id`);
      await direct.query(`UPDATE df.runs SET owner = $2, lease_expires = now() + interval '1 hour' WHERE instance_id = $1`, [rows[0].id, fakeOwner]);
      await direct.query('INSERT INTO bench_ceiling SELECT $1, id, root_node FROM df.instances WHERE id = $2', [n, rows[0].id]);
      await direct.query('COMMIT');
    }
    const ceilingScript = path.join(tmp, 'step.sql');
    writeFileSync(ceilingScript, `\\startpipeline
INSERT INTO bench_rows (instance, step) VALUES ('ceiling', 1);
SELECT df._checkpoint(instance, node, '${fakeOwner}', '', '{"rows":[],"row_count":0}') FROM bench_ceiling WHERE n = :client_id;
\\endpipeline
`);
    log(`a step's SQL alone: pgbench -M prepared -c ${CLIENTS} -T ${SECONDS}`);
    const ceilingTps = runPgbench(ceilingScript, ['-M', 'prepared']);

    // The exactly-once floor: the step's INSERT and an UPDATE of a node-like row, one
    // pipelined implicit transaction per step (what no executor can beat by much).
    await direct.query(`CREATE TABLE bench_nodes (n int PRIMARY KEY, status text, result jsonb, updated_at timestamptz)`);
    await direct.query(`INSERT INTO bench_nodes SELECT g, 'running', NULL, now() FROM generate_series(0, ${CLIENTS - 1}) g`);
    const floorScript = path.join(tmp, 'floor.sql');
    writeFileSync(floorScript, `\\startpipeline
INSERT INTO bench_rows (instance, step) VALUES ('floor', 1);
UPDATE bench_nodes SET status = 'completed', result = '{"rows":[],"row_count":0}', updated_at = now() WHERE n = :client_id;
\\endpipeline
`);
    log(`the exactly-once floor: pgbench -M extended -c ${CLIENTS} -T ${SECONDS}`);
    const floorTps = runPgbench(floorScript, ['-M', 'extended']);
    await direct.query('DELETE FROM df.instances WHERE id IN (SELECT instance FROM bench_ceiling)');
    const chain = Array.from({ length: STEPS }, (_, i) => `'INSERT INTO bench_rows (instance, step) VALUES (''{sys_instance_id}'', ${i + 1})'`).join(' ~> ');
    if (HISTORY > 0) {
      log(`seeding ${HISTORY} finished instances`);
      await direct.query('BEGIN');
      await direct.query('SET LOCAL session_replication_role = replica');
      await direct.query(`INSERT INTO df.instances (id, label, root_node, status, submitted_by, created_at, updated_at, completed_at)
        SELECT lpad(to_hex(g), 8, '0'), 'history', lpad(to_hex(g), 8, '0'), 'completed', current_user::regrole, now() - make_interval(secs => g), now() - make_interval(secs => g), now() - make_interval(secs => g)
          FROM generate_series(1, ${HISTORY}) g`);
      await direct.query(`INSERT INTO df.nodes (id, instance_id, node_type, query, status, result, raw_result, submitted_by, stamp)
        SELECT lpad(to_hex(g), 8, '0'), lpad(to_hex(g), 8, '0'), 'SQL', 'SELECT 1', 'completed', '{"rows": []}', '{"rows": []}', current_user::regrole, ''
          FROM generate_series(1, ${HISTORY}) g`);
      await direct.query('COMMIT');
      await direct.query('ANALYZE df.instances, df.nodes');
    }
    const writes = async () => Number((await direct.query(`SELECT sum(n_tup_ins + n_tup_upd + n_tup_del)::bigint AS n FROM pg_stat_user_tables WHERE schemaname = 'df'`)).rows[0].n);
    await direct.query('SELECT pg_stat_force_next_flush()');
    const writesBefore = await writes();
    log(`durable: ${CLIENTS} clients x ${WAVES} workflows x ${STEPS} steps`);
    // Completion arrives as a notification (the df_cancel channel the executor listens on
    // also carries every instance that ends): no polling competes for the CPU.
    const waiting = new Map();
    const ended = new Set();
    const listener = new pg.Client(server.url);
    await listener.connect();
    listener.on('notification', (n) => {
      ended.add(n.payload);
      waiting.get(n.payload)?.();
    });
    await listener.query('LISTEN df_cancel');
    const finished = (id) => (ended.has(id) ? Promise.resolve() : new Promise((r) => waiting.set(id, r)));
    const proxyCpu = () => cpuMs(proxy.pid);
    const cpuBefore = proxyCpu();
    const started = performance.now();
    // Each client keeps one workflow in flight: start, wait for the end, start the next.
    await Promise.all(clients.map(async (c) => {
      for (let w = 0; w < WAVES; w++) {
        const { rows } = await c.query(`SELECT df.start(${chain}) AS id`);
        await finished(rows[0].id);
      }
    }));
    const busyMs = performance.now() - started;
    const proxyCpuMs = proxyCpu() - cpuBefore;
    await listener.end();
    const failed = (await direct.query(`SELECT count(*)::int AS n FROM df.instances WHERE status <> 'completed'`)).rows[0].n;
    if (failed) throw new Error(`${failed} workflows did not complete`);
    await sleep(600); // statistics reach pg_stat_user_tables within 500 ms (or on the flush below)
    await direct.query('SELECT pg_stat_force_next_flush()');
    const dfWrites = (await writes()) - writesBefore;
    const totalSteps = WAVES * CLIENTS * STEPS;
    const stepsPerSec = totalSteps / (busyMs / 1000);
    const workflowsPerSec = (WAVES * CLIENTS) / (busyMs / 1000);

    // Start-to-first-step latency, one workflow at a time.
    const lat = [];
    for (let i = 0; i < 100; i++) {
      const { rows } = await clients[0].query(`SELECT df.start('INSERT INTO bench_rows (instance, step) VALUES (''{sys_instance_id}'', 1)') AS id`);
      await clients[0].query('SELECT df.await_instance($1)', [rows[0].id]);
      const r = await direct.query(`SELECT extract(epoch FROM (SELECT min(at) FROM bench_rows WHERE instance = i.id) - i.created_at) * 1000 AS ms FROM df.instances i WHERE id = $1`, [rows[0].id]);
      lat.push(Number(r.rows[0].ms));
    }
    for (const c of clients) await c.end();
    await direct.end();

    const f = (x, d = 1) => x.toFixed(d);
    const lines = [
      `durable workflows: ${CLIENTS} concurrent x ${STEPS} single-INSERT steps, ${WAVES} per client (${totalSteps} steps)${HISTORY ? `, beside ${HISTORY} finished instances` : ''}`,
      `  baseline (pgbench, plain transactions, ${CLIENTS} clients): ${f(baseTps)} tps`,
      `  a step's SQL alone (pgbench: INSERT + checkpoint in one round trip): ${f(ceilingTps)} tps   (${f(ceilingTps / baseTps, 2)}x baseline: the most the proxy could reach)`,
      `  the exactly-once floor (pgbench -M extended: INSERT + UPDATE of a node-like row, pipelined): ${f(floorTps)} tps`,
      `  durable steps/s:            ${f(stepsPerSec)}   (${f(stepsPerSec / floorTps, 2)}x the floor; goal >= 0.5x; ${f(stepsPerSec / baseTps, 2)}x plain transactions)`,
      `  proxy CPU per step:         ${f((proxyCpuMs * 1000) / totalSteps, 0)} us`,
      `  durable workflows/s:        ${f(workflowsPerSec, 2)}`,
      `  start-to-first-step p50:    ${f(pct(lat, 50), 2)} ms   p99: ${f(pct(lat, 99), 2)} ms   (goal p50 <= 2 ms, p99 <= 10 ms)`,
      `  df rows written per step:   ${f(dfWrites / totalSteps, 2)}   (inserted, updated or deleted in df.*, besides the step's own row)`,
    ];
    process.stdout.write(lines.join('\n') + '\n');
  } finally {
    await cleanup();
  }
}

main().catch((err) => {
  process.stderr.write(`bench:durable failed: ${err.stack ?? err}\n`);
  process.exit(1);
});
