// npm run bench:proxy: pgbench through four targets (directly, through
// pg-durable-proxy, through PgBouncer in session mode, and through a bare
// Node.js socket pipe as the floor of any Node relay), interleaved in one run
// so that drift of the machine affects all alike. Prints median TPS per mode
// and target and the ratios proxy/direct, proxy/PgBouncer and proxy/pipe.
//
//   BENCH_SECONDS   seconds per pgbench run (default 10)
//   BENCH_ROUNDS    rounds of every mode x target (default 3)
//   BENCH_CLIENTS   pgbench clients (default 8)
//   BENCH_DATABASE_URL  a superuser URL to use instead of an embedded PostgreSQL
import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { EmbeddedPostgres, freePort } from '../dist/embedded.js';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const CLIENTS = Number(process.env.BENCH_CLIENTS ?? 8);
const THREADS = Math.min(CLIENTS, os.cpus().length);
const CLI = new URL('../dist/cli.js', import.meta.url).pathname;

const log = (msg) => process.stderr.write(`[bench] ${msg}\n`);
const which = (cmd, extra = []) => {
  for (const p of [...(process.env.PATH ?? '').split(':').map((d) => path.join(d, cmd)), ...extra]) if (existsSync(p)) return p;
  return undefined;
};
const findPgbench = () => which('pgbench', execFileSync('sh', ['-c', 'ls -d /usr/lib/postgresql/*/bin/pgbench 2>/dev/null || true']).toString().split('\n').filter(Boolean));
const findPgbouncer = () => which('pgbouncer', ['/usr/sbin/pgbouncer']);

/** pgbench (package postgresql-client / postgresql) and pgbouncer from Debian if missing. */
function ensureTools() {
  if (findPgbench() && findPgbouncer()) return;
  const root = process.getuid?.() === 0;
  const sudo = root ? [] : which('sudo') ? ['sudo'] : undefined;
  if (!sudo) throw new Error('pgbench and pgbouncer are needed: install the Debian packages postgresql and pgbouncer');
  log('installing pgbouncer and postgresql (pgbench) from Debian packages');
  const run = (args) => execFileSync(sudo[0] ?? args[0], sudo.length ? args : args.slice(1), { stdio: ['ignore', 'ignore', 'inherit'] });
  run(['apt-get', 'update', '-qq']);
  run(['apt-get', 'install', '-y', '-qq', '--no-install-recommends', 'pgbouncer', 'postgresql', 'postgresql-client']);
  if (!findPgbench() || !findPgbouncer()) throw new Error('pgbench or pgbouncer still missing after apt-get install');
}

function waitForPort(port, ms = 15_000) {
  const deadline = Date.now() + ms;
  return new Promise((resolve, reject) => {
    const attempt = () => {
      const s = net.connect(port, '127.0.0.1', () => {
        s.destroy();
        resolve();
      });
      s.on('error', () => {
        s.destroy();
        if (Date.now() > deadline) reject(new Error(`nothing listens on ${port}`));
        else setTimeout(attempt, 100);
      });
    };
    attempt();
  });
}

const children = [];
let embedded;
let tmp;
async function cleanup() {
  for (const c of children) if (c.exitCode === null) c.kill('SIGTERM');
  await embedded?.stop().catch(() => undefined);
  if (tmp) rmSync(tmp, { recursive: true, force: true });
}
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    void cleanup().then(() => process.exit(130));
  });
}

async function main() {
  ensureTools();
  const pgbench = findPgbench();
  const pgbouncer = findPgbouncer();
  tmp = mkdtempSync(path.join(os.tmpdir(), 'pgdp-bench-'));
  chmodSync(tmp, 0o755); // PostgreSQL and PgBouncer run as the postgres OS user when we are root

  let url = process.env.BENCH_DATABASE_URL;
  if (!url) {
    log('starting an embedded PostgreSQL 17');
    embedded = await EmbeddedPostgres.start({
      dataDir: path.join(tmp, 'data'),
      port: 0,
      log: pino({ level: 'warn' }),
      settings: { max_connections: '100', shared_buffers: '256MB', synchronous_commit: 'on' },
    });
    url = embedded.url;
  }
  const u = new URL(url);
  const user = decodeURIComponent(u.username);
  const password = decodeURIComponent(u.password);
  const db = u.pathname.slice(1) || 'postgres';
  const direct = { host: u.hostname, port: Number(u.port || 5432) };
  const pgEnv = { ...process.env, PGPASSWORD: password, PGSSLMODE: 'disable' };

  log('pgbench -i -s 10');
  execFileSync(pgbench, ['-i', '-s', '10', '-q', '-h', direct.host, '-p', String(direct.port), '-U', user, db], { env: pgEnv, stdio: ['ignore', 'ignore', 'inherit'] });

  // The proxy, as users run it.
  const proxyPort = await freePort();
  const upstream = new URL(url);
  upstream.searchParams.set('sslmode', 'disable');
  const proxy = spawn(process.execPath, [CLI, '--upstream', upstream.toString(), '--listen', `127.0.0.1:${proxyPort}`, '--admin', 'off', '--log-level', 'warn'], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  children.push(proxy);
  await new Promise((resolve, reject) => {
    let err = '';
    proxy.stderr.on('data', (d) => {
      err += d;
      if (err.includes('pg-durable-proxy ready:')) resolve();
    });
    proxy.once('exit', (code) => reject(new Error(`proxy exited (${code}): ${err}`)));
  });

  // PgBouncer in session mode: the same semantics as the proxy (one server connection per client).
  const bouncerPort = await freePort();
  const bdir = path.join(tmp, 'pgbouncer');
  execFileSync('mkdir', ['-p', bdir]);
  writeFileSync(path.join(bdir, 'users.txt'), `"${user}" "${password}"\n`);
  writeFileSync(
    path.join(bdir, 'pgbouncer.ini'),
    [
      '[databases]',
      `${db} = host=${direct.host} port=${direct.port} dbname=${db}`,
      '[pgbouncer]',
      `listen_addr = 127.0.0.1`,
      `listen_port = ${bouncerPort}`,
      'unix_socket_dir =',
      'auth_type = plain',
      `auth_file = ${path.join(bdir, 'users.txt')}`,
      'pool_mode = session',
      `default_pool_size = ${CLIENTS + 2}`,
      'max_client_conn = 100',
      'ignore_startup_parameters = extra_float_digits',
      `logfile = ${path.join(bdir, 'pgbouncer.log')}`,
      `pidfile = ${path.join(bdir, 'pgbouncer.pid')}`,
      '',
    ].join('\n'),
  );
  const asRoot = process.getuid?.() === 0;
  if (asRoot) execFileSync('chown', ['-R', 'postgres', bdir]); // PgBouncer refuses to run as root
  const bouncer = asRoot
    ? spawn('runuser', ['-u', 'postgres', '--', pgbouncer, path.join(bdir, 'pgbouncer.ini')], { stdio: 'ignore' })
    : spawn(pgbouncer, [path.join(bdir, 'pgbouncer.ini')], { stdio: 'ignore' });
  children.push(bouncer);
  await waitForPort(bouncerPort).catch((e) => {
    const logf = path.join(bdir, 'pgbouncer.log');
    throw new Error(`${e.message}: PgBouncer did not start${existsSync(logf) ? ':\n' + readFileSync(logf, 'utf8') : ''}`);
  });

  // The bare Node pipe, on the same upstream.
  const pipePort = await freePort();
  const pipe = spawn(process.execPath, [new URL('./node-relay.mjs', import.meta.url).pathname, String(direct.port), String(pipePort)], {
    stdio: 'ignore',
  });
  children.push(pipe);
  await waitForPort(pipePort);

  const targets = [
    { name: 'direct', port: direct.port },
    { name: 'proxy', port: proxyPort },
    { name: 'PgBouncer', port: bouncerPort },
    { name: 'Node pipe', port: pipePort },
  ];
  const modes = [
    { name: '-S simple', args: ['-S', '-M', 'simple'] },
    { name: '-S prepared', args: ['-S', '-M', 'prepared'] },
    { name: 'TPC-B simple', args: ['-M', 'simple'] },
  ];
  const tps = new Map(); // "mode|target" -> number[]
  for (let round = 0; round < ROUNDS; round++) {
    for (const mode of modes) {
      // Rotate the order each round: no target always runs first or last.
      const order = targets.map((_, i) => targets[(i + round) % targets.length]);
      for (const t of order) {
        const out = execFileSync(
          pgbench,
          [...mode.args, '-n', '-c', String(CLIENTS), '-j', String(THREADS), '-T', String(SECONDS), '-h', '127.0.0.1', '-p', String(t.port), '-U', user, db],
          { env: pgEnv, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] },
        );
        const m = /tps = ([\d.]+) \((?:without initial connection time|excluding connections establishing)\)/.exec(out);
        if (!m) throw new Error(`no tps in pgbench output:\n${out}`);
        const v = Number(m[1]);
        const key = `${mode.name}|${t.name}`;
        tps.set(key, [...(tps.get(key) ?? []), v]);
        log(`round ${round + 1}/${ROUNDS} ${mode.name.padEnd(12)} ${t.name.padEnd(10)} ${v.toFixed(0)} tps`);
      }
    }
  }

  const median = (xs) => {
    const s = [...xs].sort((a, b) => a - b);
    const mid = s.length >> 1;
    return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
  };
  const version = (bin) => execFileSync(bin, ['--version'], { encoding: 'utf8' }).split('\n')[0].trim();
  const lines = [
    `| mode | direct TPS | proxy TPS | PgBouncer TPS | Node pipe TPS | proxy/direct | proxy/PgBouncer | proxy/Node pipe |`,
    `| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |`,
  ];
  for (const mode of modes) {
    const [d, p, b, n] = targets.map((t) => median(tps.get(`${mode.name}|${t.name}`)));
    lines.push(
      `| \`${mode.name}\` | ${d.toFixed(0)} | ${p.toFixed(0)} | ${b.toFixed(0)} | ${n.toFixed(0)} | ${(p / d).toFixed(2)} | ${(p / b).toFixed(2)} | ${(p / n).toFixed(2)} |`,
    );
  }
  lines.push('');
  lines.push(
    `${os.cpus().length} cores, Node ${process.version}, ${version(pgbench)}, ${version(pgbouncer)} (session mode); ` +
      `${CLIENTS} clients, ${THREADS} threads, scale 10, median of ${ROUNDS} interleaved runs of ${SECONDS} s each.`,
  );
  process.stdout.write(lines.join('\n') + '\n');
}

main()
  .then(cleanup)
  .catch(async (err) => {
    process.stderr.write(`bench:proxy failed: ${err.stack ?? err}\n`);
    await cleanup();
    process.exit(1);
  });
