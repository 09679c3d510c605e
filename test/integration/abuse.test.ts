// Under abuse the logs stay readable and the numbers stay exact: bad cancel
// keys, failed logins and refused messages are counted in /metrics, and
// logged at most about once a second per client address, the next line
// saying how many were left out. A bug in one session closes that session.
import pg from 'pg';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminServer } from '../../src/admin/server.js';
import type { StatementInterceptor } from '../../src/proxy/intercept.js';
import { cancelRequest } from '../../src/proxy/protocol.js';
import { ProxyServer, type ProxyOptions } from '../../src/proxy/server.js';
import { upstreamFromUrl } from '../../src/proxy/upstream.js';
import { env } from '../helpers/proxy.js';
import { ROLES } from '../helpers/roles.js';
import { RawConnection, serialize } from '../helpers/wire.js';

interface LogLine {
  level: number;
  msg: string;
  suppressed?: number;
  [k: string]: unknown;
}

/** A proxy whose pino output is captured line by line. */
async function loggedProxy(extra: Partial<ProxyOptions> = {}): Promise<{ proxy: ProxyServer; port: number; lines: LogLine[] }> {
  const lines: LogLine[] = [];
  const log = pino({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s) as LogLine) });
  const proxy = new ProxyServer({ host: '127.0.0.1', port: 0, upstream: upstreamFromUrl(env().adminUrl), log, ...extra });
  const { port } = await proxy.listen();
  return { proxy, port, lines };
}

function metric(text: string, name: string): number {
  const line = text.split('\n').find((l) => l.startsWith(name + ' '));
  if (!line) throw new Error(`metric ${name} missing from:\n${text}`);
  return Number(line.slice(name.length + 1));
}

async function sendCancel(port: number, pid: number, secret: number): Promise<void> {
  const raw = await RawConnection.connect(port);
  raw.write(cancelRequest(pid, secret));
  await raw.waitClosed();
}

describe('abuse is counted, and logged sparingly', () => {
  let p: Awaited<ReturnType<typeof loggedProxy>>;
  let admin: AdminServer;
  let base: string;
  beforeAll(async () => {
    p = await loggedProxy();
    admin = new AdminServer({ host: '127.0.0.1', port: 0, stats: p.proxy.stats, probeUrl: env().adminUrl, log: pino({ level: 'silent' }) });
    const a = await admin.listen();
    base = `http://${a.host}:${a.port}`;
  });
  afterAll(async () => {
    await admin.close();
    await p.proxy.shutdown(2000);
  });
  const metrics = async (): Promise<string> => (await fetch(`${base}/metrics`)).text();
  const linesOf = (msg: string): LogLine[] => p.lines.filter((l) => l.msg === msg);

  it('50 cancel requests with unknown keys: counted 50, logged in a few lines, the next line says how many were left out', async () => {
    const started = Date.now();
    for (let i = 0; i < 50; i++) await sendCancel(p.port, 1_000_000 + i, 12345);
    const elapsedSeconds = Math.ceil((Date.now() - started) / 1000);
    expect(metric(await metrics(), 'pgdp_cancel_unknown_key_total')).toBe(50);
    expect(metric(await metrics(), 'pgdp_cancel_requests_total')).toBe(50);
    const logged = linesOf('cancel request with an unknown key');
    expect(logged.length).toBeGreaterThanOrEqual(1);
    expect(logged.length).toBeLessThanOrEqual(elapsedSeconds + 1);
    // A second later the address may log again, with the count of what was left out.
    await new Promise((r) => setTimeout(r, 1100));
    await sendCancel(p.port, 2_000_000, 1);
    const last = linesOf('cancel request with an unknown key').pop()!;
    const total = linesOf('cancel request with an unknown key').reduce((n, l) => n + 1 + (l.suppressed ?? 0), 0);
    expect(last.suppressed).toBeGreaterThan(0);
    expect(total).toBe(51);
    expect(metric(await metrics(), 'pgdp_log_lines_suppressed_total')).toBe(51 - linesOf('cancel request with an unknown key').length);
  });

  it('50 failed logins: counted 50 as auth failures, a few log lines, no per-connection lines', async () => {
    await new Promise((r) => setTimeout(r, 1100)); // the limit is per address, shared with the cancels above
    const before = p.lines.length;
    const started = Date.now();
    for (let i = 0; i < 50; i++) {
      const c = new pg.Client({
        host: '127.0.0.1',
        port: p.port,
        user: ROLES.cleartext.user,
        password: 'wrong',
        database: 'postgres',
      });
      await expect(c.connect()).rejects.toMatchObject({ code: '28P01' });
    }
    const elapsedSeconds = Math.ceil((Date.now() - started) / 1000);
    expect(metric(await metrics(), 'pgdp_auth_failures_total')).toBe(50);
    const during = p.lines.slice(before);
    const failed = during.filter((l) => l.msg === 'login failed');
    expect(failed.length).toBeGreaterThanOrEqual(1);
    expect(failed.length).toBeLessThanOrEqual(elapsedSeconds + 1);
    expect(failed[0]).toMatchObject({ user: ROLES.cleartext.user, code: '28P01' });
    // Sessions that never authenticated are not logged one by one.
    expect(during.filter((l) => l.msg === 'connection opened' || l.msg === 'connection closed')).toEqual([]);
    expect(during.length).toBeLessThanOrEqual(elapsedSeconds + 1);
  });

  it('50 messages refused before authentication: counted 50, logged in a few lines', async () => {
    await new Promise((r) => setTimeout(r, 1100)); // a fresh second for this address
    const before = p.lines.length;
    const refusedBefore = metric(await metrics(), 'pgdp_refused_messages_total');
    const started = Date.now();
    for (let i = 0; i < 50; i++) {
      const raw = await RawConnection.connect(p.port);
      raw.startup({ user: ROLES.scram.user, database: 'postgres' });
      await raw.until(() => raw.messages.some((m) => m.name === 'authenticationSASL'));
      raw.write(serialize.query('SELECT 1'));
      await raw.waitClosed();
      expect(raw.messages.find((m) => m.name === 'error')).toMatchObject({ code: '08P01' });
    }
    const elapsedSeconds = Math.ceil((Date.now() - started) / 1000);
    expect(metric(await metrics(), 'pgdp_refused_messages_total') - refusedBefore).toBe(50);
    const during = p.lines.slice(before);
    expect(during.length).toBeGreaterThanOrEqual(1);
    expect(during.length).toBeLessThanOrEqual(elapsedSeconds + 1);
    expect(during[0]).toMatchObject({ msg: 'protocol violation from client', authenticated: false });
  });

  it('an authenticated session is logged when it opens and closes', async () => {
    const before = p.lines.length;
    const c = new pg.Client({ host: '127.0.0.1', port: p.port, user: ROLES.scram.user, password: ROLES.scram.password, database: 'postgres' });
    await c.connect();
    await c.end();
    await new Promise((r) => setTimeout(r, 100));
    expect(p.lines.slice(before).map((l) => l.msg)).toEqual(['connection opened', 'connection closed']);
  });
});

describe('a bug while relaying one session', () => {
  it('closes that session with FATAL XX000, logs it at error, and the proxy and other sessions carry on', async () => {
    const buggy: StatementInterceptor = {
      rewrite: (message) => {
        if (message.includes('boom')) throw new TypeError('a bug in the interceptor');
        return undefined;
      },
    };
    const p = await loggedProxy({ interceptor: buggy });
    const url = `postgres://${ROLES.scram.user}:${ROLES.scram.password}@127.0.0.1:${p.port}/postgres`;
    const bystander = new pg.Client({ connectionString: url });
    await bystander.connect();
    const victim = new pg.Client({ connectionString: url });
    victim.on('error', () => undefined);
    await victim.connect();
    await expect(victim.query(`SELECT df.boom()`)).rejects.toMatchObject({ code: 'XX000', severity: 'FATAL' });
    expect(p.proxy.stats.internalErrors).toBe(1);
    const err = p.lines.find((l) => l.msg === 'internal error while relaying; closing the session');
    expect(err).toMatchObject({ level: 50, err: 'a bug in the interceptor' });
    expect((await bystander.query<{ n: number }>('SELECT 7 AS n')).rows).toEqual([{ n: 7 }]);
    const again = new pg.Client({ connectionString: url });
    await again.connect();
    expect((await again.query<{ n: number }>('SELECT 8 AS n')).rows).toEqual([{ n: 8 }]);
    await again.end();
    await bystander.end();
    await p.proxy.shutdown(2000);
  });
});
