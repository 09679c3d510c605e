// What the durable benchmarks share: an embedded PostgreSQL with the proxy
// command in front of it, serving database postgres, steps over the private
// socket. Also the percentile and the proxy's CPU time they report.
import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { EmbeddedPostgres, freePort } from '../dist/embedded.js';

const CLI = new URL('../dist/cli.js', import.meta.url).pathname;

/** Starts the server and the proxy (`extra`: more flags); `cleanup` stops both and removes the data. */
export async function servedByProxy(name, extra = []) {
  const tmp = mkdtempSync(path.join(os.tmpdir(), `pgdp-bench-${name}-`));
  chmodSync(tmp, 0o755);
  const server = await EmbeddedPostgres.start({ dataDir: path.join(tmp, 'data'), port: 0, log: pino({ level: 'warn' }), settings: { max_connections: '200' } });
  const proxyPort = await freePort();
  const stepUrl = `postgres://steps@127.0.0.1:${server.port}/postgres?host=${encodeURIComponent(server.socketDir)}`;
  // BENCH_NODE_ARGS: extra node flags for the proxy (e.g. --cpu-prof --cpu-prof-dir=DIR to profile it).
  const nodeArgs = (process.env.BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean);
  const proxy = spawn(process.execPath, [...nodeArgs, CLI, '--upstream', server.url, '--listen', `127.0.0.1:${proxyPort}`, '--admin', 'off', '--log-level', 'warn',
    '--step-url', stepUrl, '--allow-superuser-instances', 'true', '--databases', 'postgres', ...extra], { stdio: ['ignore', 'inherit', 'pipe'] });
  await new Promise((resolve, reject) => {
    let err = '';
    proxy.stderr.on('data', (d) => {
      err += d;
      if (err.includes('ready:')) resolve();
    });
    proxy.once('exit', (c) => reject(new Error(`proxy exited ${c}: ${err}`)));
  });
  const cleanup = async () => {
    // A graceful stop when profiling (the profile is written at exit); otherwise no waiting.
    if (nodeArgs.length) {
      const exited = new Promise((r) => proxy.once('exit', r));
      proxy.kill('SIGTERM');
      await exited;
    } else proxy.kill('SIGKILL');
    await server.stop();
    rmSync(tmp, { recursive: true, force: true });
  };
  return { tmp, server, proxy, proxyPort, cleanup };
}

export const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};

/** CPU time (user + system) of a process so far, in ms, from /proc. */
export function cpuMs(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return ((Number(stat[11]) + Number(stat[12])) * 1000) / 100;
}
