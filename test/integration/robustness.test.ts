// Bad input and broken peers: each gets a clear FATAL, only its own connection
// closes, and nothing is left behind on the server.
import net from 'node:net';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../../src/embedded.js';
import { env, startProxy, type RunningProxy } from '../helpers/proxy.js';
import { ROLES } from '../helpers/roles.js';
import { seededRandom, untilActivity } from '../helpers/wait.js';
import { RawConnection, serialize } from '../helpers/wire.js';

type ErrorMsg = { name: string; code: string; severity: string; message: string };

async function backendOf(c: pg.Client): Promise<number> {
  return (await c.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
}

/** Waits until the backend `pid` has left pg_stat_activity. */
const backendGone = (admin: pg.Client, pid: number): Promise<void> => untilActivity(admin, 'pid = $1', pid, false);

describe('bad input from clients', () => {
  let p: RunningProxy;
  let bystander: pg.Client;
  beforeAll(async () => {
    p = await startProxy({ maxMessageSize: 1024 * 1024 });
    bystander = new pg.Client({ connectionString: p.url(ROLES.scram.user, ROLES.scram.password) });
    await bystander.connect();
  });
  afterAll(async () => {
    // Every case above left this session alone.
    expect((await bystander.query<{ n: number }>('SELECT 42 AS n')).rows).toEqual([{ n: 42 }]);
    await bystander.end();
    await p.close();
  });

  it('an HTTP request sent to the listener gets FATAL 08P01', async () => {
    const raw = await RawConnection.connect(p.port);
    raw.write(Buffer.from('GET / HTTP/1.1\r\nHost: localhost\r\n\r\n'));
    await raw.waitClosed();
    expect(raw.messages[0]).toMatchObject({ name: 'error', code: '08P01', severity: 'FATAL' });
    expect((raw.messages[0] as unknown as ErrorMsg).message).toContain('invalid length of startup packet');
  });

  it('random garbage sent to the listener closes only that connection', async () => {
    const rnd = seededRandom(20261122);
    for (let i = 0; i < 20; i++) {
      const bytes = Buffer.from(Array.from({ length: 1 + Math.floor(rnd() * 300) }, () => Math.floor(rnd() * 256)));
      const raw = await RawConnection.connect(p.port);
      raw.write(bytes);
      raw.socket.end();
      await raw.waitClosed();
      // Whatever it was, the answer is at most one FATAL error, never a session.
      expect(raw.messages.every((m) => m.name === 'error' || m.name === 'authenticationSASL' || m.name === 'authenticationMD5Password')).toBe(
        true,
      );
    }
    expect((await bystander.query<{ n: number }>('SELECT 1 AS n')).rows).toEqual([{ n: 1 }]);
  });

  it('an unknown message type after startup gets FATAL 08P01 and the open transaction is rolled back', async () => {
    const admin = new pg.Client({ connectionString: env().adminUrl });
    await admin.connect();
    const raw = await RawConnection.connect(p.port);
    await raw.login({ user: ROLES.scram.user, database: 'postgres' }, ROLES.scram.password);
    raw.write(serialize.query('BEGIN; CREATE TABLE pgdp_never_committed (n int); SELECT pg_backend_pid()'));
    await raw.readyCount(2);
    const pid = Number((raw.messages.find((m) => m.name === 'dataRow') as unknown as { fields: string[] }).fields[0]);
    raw.write(Buffer.from([0x01, 0, 0, 0, 4]));
    await raw.waitClosed();
    const err = raw.messages.find((m) => m.name === 'error') as unknown as ErrorMsg;
    expect(err).toMatchObject({ code: '08P01', severity: 'FATAL', message: 'invalid frontend message type 1' });
    await backendGone(admin, pid);
    const { rows } = await admin.query(`SELECT to_regclass('pgdp_never_committed') AS t`);
    expect(rows[0].t).toBeNull();
    await admin.end();
  });

  it('a message longer than --max-message-size gets FATAL 08P01 before its body is read', async () => {
    const raw = await RawConnection.connect(p.port);
    await raw.login({ user: ROLES.scram.user, database: 'postgres' }, ROLES.scram.password);
    const header = Buffer.from([0x51, 0, 0, 0, 0]);
    header.writeInt32BE(2 * 1024 * 1024, 1);
    raw.write(header);
    await raw.waitClosed();
    const err = raw.messages.find((m) => m.name === 'error') as unknown as ErrorMsg;
    expect(err).toMatchObject({ code: '08P01', severity: 'FATAL' });
    expect(err.message).toBe(`message of ${2 * 1024 * 1024} bytes exceeds the limit of ${1024 * 1024}`);
  });

  it('a message length below 4 gets FATAL 08P01', async () => {
    const raw = await RawConnection.connect(p.port);
    await raw.login({ user: ROLES.scram.user, database: 'postgres' }, ROLES.scram.password);
    raw.write(Buffer.from([0x51, 0, 0, 0, 2]));
    await raw.waitClosed();
    expect(raw.messages.find((m) => m.name === 'error')).toMatchObject({ code: '08P01', severity: 'FATAL' });
  });

  it('a client that never finishes its startup is closed after --startup-timeout', async () => {
    const quick = await startProxy({ startupTimeoutMs: 300 });
    const raw = await RawConnection.connect(quick.port);
    raw.write(Buffer.from([0, 0, 0])); // the start of a length, then nothing
    await raw.waitClosed();
    expect(raw.messages[0]).toMatchObject({ name: 'error', code: '08P01', severity: 'FATAL' });
    expect((raw.messages[0] as unknown as ErrorMsg).message).toContain('timeout');
    await quick.close();
  });
});

describe('vanishing clients and dying backends', () => {
  let p: RunningProxy;
  let admin: pg.Client;
  let url: string;
  beforeAll(async () => {
    p = await startProxy();
    url = p.url(ROLES.scram.user, ROLES.scram.password);
    admin = new pg.Client({ connectionString: env().adminUrl });
    await admin.connect();
  });
  afterAll(async () => {
    await admin.end();
    await p.close();
  });

  const kill = (c: pg.Client): void => {
    (c as unknown as { connection: { stream: net.Socket } }).connection.stream.destroy();
  };

  it('a client killed mid-transaction leaves no backend idle in transaction, and its writes roll back', async () => {
    const c = new pg.Client({ connectionString: url });
    c.on('error', () => undefined);
    await c.connect();
    const pid = await backendOf(c);
    await c.query('BEGIN');
    await c.query('CREATE TABLE pgdp_killed_tx (n int)');
    const { rows: during } = await admin.query<{ state: string }>('SELECT state FROM pg_stat_activity WHERE pid = $1', [pid]);
    expect(during[0]!.state).toBe('idle in transaction');
    kill(c);
    await backendGone(admin, pid);
    const { rows } = await admin.query(`SELECT to_regclass('pgdp_killed_tx') AS t`);
    expect(rows[0].t).toBeNull();
  });

  it('a client killed during pg_sleep(30) has its statement cancelled and its backend closed', async () => {
    const c = new pg.Client({ connectionString: url });
    c.on('error', () => undefined);
    await c.connect();
    const pid = await backendOf(c);
    const q = c.query('SELECT pg_sleep(30)').catch(() => undefined);
    await untilActivity(admin, `pid = $1 AND state = 'active'`, pid);
    kill(c);
    await backendGone(admin, pid);
    await q;
  });

  it('a client killed during an Execute sent with Flush and no Sync has its statement cancelled', async () => {
    const raw = await RawConnection.connect(p.port);
    await raw.login({ user: ROLES.scram.user, database: 'postgres', application_name: 'pgdp-flush-only' }, ROLES.scram.password);
    raw.write(
      Buffer.concat([
        serialize.parse({ text: 'SELECT pg_sleep(30)', types: [] }),
        serialize.bind({}),
        serialize.execute({}),
        serialize.flush(),
      ]),
    );
    await untilActivity(admin, `application_name = $1 AND state = 'active'`, 'pgdp-flush-only');
    raw.close();
    await untilActivity(admin, 'application_name = $1', 'pgdp-flush-only', false);
  });

  it('a client killed in the middle of a message closes its backend too', async () => {
    const raw = await RawConnection.connect(p.port);
    await raw.login({ user: ROLES.scram.user, database: 'postgres' }, ROLES.scram.password);
    raw.write(serialize.query('SELECT pg_backend_pid()'));
    await raw.readyCount(2);
    const pid = Number((raw.messages.find((m) => m.name === 'dataRow') as unknown as { fields: string[] }).fields[0]);
    raw.write(serialize.query('SELECT 1').subarray(0, 7));
    raw.close();
    await backendGone(admin, pid);
  });

  it('a backend ended with pg_terminate_backend gives its client FATAL 57P01', async () => {
    const c = new pg.Client({ connectionString: url });
    const gotError = new Promise<{ code?: string; message: string }>((resolve) => c.on('error', resolve));
    await c.connect();
    const pid = await backendOf(c);
    await admin.query('SELECT pg_terminate_backend($1)', [pid]);
    const err = await gotError;
    expect(err.code).toBe('57P01');
    expect(err.message).toContain('terminating connection due to administrator command');
    // The proxy itself carries on.
    const d = new pg.Client({ connectionString: url });
    await d.connect();
    expect((await d.query('SELECT 1 AS n')).rows).toEqual([{ n: 1 }]);
    await d.end();
  });
});

describe('broken upstream', () => {
  it('an unreachable upstream gives the client FATAL 08006 naming the problem', async () => {
    const port = await freePort();
    const p = await startProxy({ upstreamUrl: `postgres://x@127.0.0.1:${port}/postgres?sslmode=disable`, connectTimeoutMs: 2000 });
    const c = new pg.Client({ connectionString: p.url(ROLES.scram.user, ROLES.scram.password) });
    await expect(c.connect()).rejects.toMatchObject({
      code: '08006',
      severity: 'FATAL',
      message: expect.stringContaining('could not connect to the upstream server') as unknown,
    });
    expect(p.proxy.stats.upstreamConnectFailures).toBe(1);
    await p.close();
  });

  it('a backend connection lost without a word gives the client FATAL 08006', async () => {
    // A TCP relay between proxy and server stands in for the network, so the loss can be made real.
    const e = env();
    const links = new Set<net.Socket>();
    const relay = net.createServer((inbound) => {
      const outbound = net.connect(e.pgPort, e.pgHost);
      links.add(inbound).add(outbound);
      inbound.pipe(outbound).pipe(inbound);
      inbound.on('error', () => outbound.destroy());
      outbound.on('error', () => inbound.destroy());
    });
    await new Promise<void>((r) => relay.listen(0, '127.0.0.1', r));
    const relayPort = (relay.address() as net.AddressInfo).port;
    const up = new URL(e.adminUrl);
    up.port = String(relayPort);
    const p = await startProxy({ upstreamUrl: up.toString() });
    const c = new pg.Client({ connectionString: p.url(ROLES.scram.user, ROLES.scram.password) });
    const gotError = new Promise<{ code?: string; severity?: string; message: string }>((resolve) => c.on('error', resolve));
    await c.connect();
    const q = c.query('SELECT pg_sleep(5)').catch((err: unknown) => err);
    await new Promise((r) => setTimeout(r, 100));
    for (const s of links) s.destroy();
    const err = (await q) as { code?: string; severity?: string; message: string };
    expect(err).toMatchObject({ code: '08006', severity: 'FATAL', message: 'server closed the connection unexpectedly' });
    await Promise.race([gotError, new Promise((r) => setTimeout(r, 1000))]);
    await p.close();
    relay.close();
  });
});
