// The admin endpoint: /healthz follows the upstream, /metrics follows the traffic.
import net from 'node:net';
import pg from 'pg';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminServer } from '../../src/admin/server.js';
import { freePort } from '../../src/embedded.js';
import { env, startProxy, type RunningProxy } from '../helpers/proxy.js';
import { ROLES } from '../helpers/roles.js';

/** The value of one metric line, e.g. `pgdp_queries_total 12`. */
function metric(text: string, name: string): number {
  const line = text.split('\n').find((l) => l.startsWith(name + ' '));
  if (!line) throw new Error(`metric ${name} missing from:\n${text}`);
  return Number(line.slice(name.length + 1));
}

describe('admin HTTP endpoint', () => {
  let p: RunningProxy;
  let admin: AdminServer;
  let base: string;
  beforeAll(async () => {
    p = await startProxy();
    admin = new AdminServer({ host: '127.0.0.1', port: 0, stats: p.proxy.stats, probeUrl: env().adminUrl, log: pino({ level: 'silent' }) });
    const a = await admin.listen();
    base = `http://${a.host}:${a.port}`;
  });
  afterAll(async () => {
    await admin.close();
    await p.close();
  });

  it('/healthz is 200 while the upstream answers', async () => {
    const res = await fetch(`${base}/healthz`);
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('ok\n');
  });

  it('/healthz is 503 with the reason when the upstream does not answer', async () => {
    const down = new AdminServer({
      host: '127.0.0.1',
      port: 0,
      stats: p.proxy.stats,
      probeUrl: `postgres://nobody@127.0.0.1:${await freePort()}/postgres`,
      log: pino({ level: 'silent' }),
    });
    const a = await down.listen();
    const res = await fetch(`http://${a.host}:${a.port}/healthz`);
    expect(res.status).toBe(503);
    expect(await res.text()).toMatch(/^upstream unavailable: .*ECONNREFUSED/);
    await down.close();
  });

  it('/metrics counts connections, bytes, queries and errors as traffic flows', async () => {
    const before = await (await fetch(`${base}/metrics`)).text();
    const c = new pg.Client({ connectionString: p.url(ROLES.scram.user, ROLES.scram.password) });
    await c.connect();
    const during = await (await fetch(`${base}/metrics`)).text();
    await c.query('SELECT repeat($1, 1000)', ['x']);
    await c.query('SELECT 1; SELECT 2');
    await expect(c.query('SELECT 1/0')).rejects.toMatchObject({ code: '22012' });
    await c.end();
    const res = await fetch(`${base}/metrics`);
    expect(res.headers.get('content-type')).toContain('text/plain');
    const after = await res.text();

    expect(metric(during, 'pgdp_client_connections')).toBe(metric(before, 'pgdp_client_connections') + 1);
    expect(metric(after, 'pgdp_client_connections_total')).toBe(metric(before, 'pgdp_client_connections_total') + 1);
    expect(metric(after, 'pgdp_queries_total')).toBe(metric(before, 'pgdp_queries_total') + 3);
    expect(metric(after, 'pgdp_server_errors_total')).toBe(metric(before, 'pgdp_server_errors_total') + 1);
    expect(metric(after, 'pgdp_bytes_to_clients_total') - metric(before, 'pgdp_bytes_to_clients_total')).toBeGreaterThan(1000);
    expect(metric(after, 'pgdp_bytes_from_clients_total')).toBeGreaterThan(metric(before, 'pgdp_bytes_from_clients_total'));
    expect(after).toMatch(/^# TYPE pgdp_queries_total counter$/m);
    expect(after).toMatch(/^pgdp_process_resident_memory_bytes \d+/m);
  });

  it('cuts off a client that sends its request headers too slowly (slowloris)', async () => {
    const slow = new AdminServer({ host: '127.0.0.1', port: 0, stats: p.proxy.stats, probeUrl: env().adminUrl, log: pino({ level: 'silent' }), headersTimeoutMs: 300 });
    const a = await slow.listen();
    try {
      const sock = net.connect(a.port, a.host);
      await new Promise((r) => sock.once('connect', r));
      sock.write('GET /healthz HTTP/1.1\r\nHost: x\r\n'); // and never the blank line
      const reply = await new Promise<string>((resolve) => {
        let got = '';
        sock.on('data', (d) => (got += d));
        sock.on('close', () => resolve(got));
      });
      expect(reply).toMatch(/^HTTP\/1\.1 408/);
    } finally {
      await slow.close();
    }
  });

  it('answers unknown paths with 404 and other methods with 405', async () => {
    expect((await fetch(`${base}/nope`)).status).toBe(404);
    const post = await fetch(`${base}/healthz`, { method: 'POST' });
    expect(post.status).toBe(405);
    expect(post.headers.get('allow')).toBe('GET, HEAD');
  });
});
