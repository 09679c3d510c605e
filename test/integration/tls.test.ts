// TLS on both legs: the proxy terminates the client's TLS with its own
// certificate, and reaches the upstream as the upstream URL's sslmode asks.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GSSENC_REQUEST, SSL_REQUEST } from '../../src/proxy/protocol.js';
import { env, startProxy, type RunningProxy } from '../helpers/proxy.js';
import { ROLES } from '../helpers/roles.js';
import { RawConnection } from '../helpers/wire.js';

const scram = ROLES.scram;

async function upstreamSsl(url: string, ssl?: pg.ClientConfig['ssl']): Promise<boolean> {
  const c = new pg.Client({ connectionString: url, ...(ssl !== undefined ? { ssl } : {}) });
  await c.connect();
  try {
    const { rows } = await c.query<{ ssl: boolean }>('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()');
    return rows[0]!.ssl;
  } finally {
    await c.end();
  }
}

function upstreamUrl(params: Record<string, string>): string {
  const u = new URL(env().adminUrl);
  for (const [k, v] of Object.entries(params)) u.searchParams.set(k, v);
  return u.toString();
}

describe('TLS between client and proxy', () => {
  let p: RunningProxy;
  beforeAll(async () => {
    p = await startProxy({ withTls: true });
  });
  afterAll(() => p.close());

  it('answers SSLRequest with S and completes a handshake that verifies against the certificate', async () => {
    const raw = await RawConnection.connect(p.port);
    expect(String.fromCharCode(await raw.request(SSL_REQUEST))).toBe('S');
    raw.close();

    // verify-full: the generated certificate is for localhost / 127.0.0.1.
    const ca = readFileSync(env().caCertPath, 'utf8');
    const c = new pg.Client({ connectionString: p.url(scram.user, scram.password), ssl: { ca, servername: 'localhost' } });
    await c.connect();
    const socket = (c as unknown as { connection: { stream: { encrypted?: boolean; getProtocol?: () => string } } }).connection.stream;
    expect(socket.encrypted).toBe(true);
    expect(socket.getProtocol?.()).toMatch(/^TLSv1\.[23]$/);
    const { rows } = await c.query<{ u: string }>('SELECT current_user AS u');
    expect(rows[0]!.u).toBe(scram.user);
    await c.end();
  });

  it('postgres.js connects with ssl required', async () => {
    const sql = postgres(p.url(scram.user, scram.password), { max: 1, ssl: { ca: readFileSync(env().caCertPath, 'utf8') } });
    const rows = await sql<{ n: number }[]>`SELECT 1 + 1 AS n`;
    expect(rows[0]!.n).toBe(2);
    await sql.end();
  });

  it('a client that does not trust the certificate fails the handshake and the proxy serves others', async () => {
    const c = new pg.Client({ connectionString: p.url(scram.user, scram.password), ssl: { rejectUnauthorized: true } });
    await expect(c.connect()).rejects.toThrow(/self[- ]signed certificate/);
    expect(await upstreamSsl(p.url(scram.user, scram.password), { ca: readFileSync(env().caCertPath, 'utf8') })).toBe(false);
  });

  it('still accepts clients without TLS', async () => {
    expect(await upstreamSsl(p.url(scram.user, scram.password), false)).toBe(false);
  });

  it('rejects unencrypted bytes sent after SSLRequest (CVE-2021-23214) with FATAL 08P01', async () => {
    const raw = await RawConnection.connect(p.port);
    const req = Buffer.alloc(8);
    req.writeInt32BE(8, 0);
    req.writeInt32BE(SSL_REQUEST, 4);
    const startup = Buffer.from('\0\0\0\x0b\0\x03\0\0x\0\0', 'latin1');
    raw.write(Buffer.concat([req, startup]));
    await raw.waitClosed();
    const err = raw.messages.find((m) => m.name === 'error') as unknown as { code: string; message: string; severity: string };
    expect(err).toMatchObject({ code: '08P01', severity: 'FATAL' });
    expect(err.message).toContain('unencrypted data after SSL request');
  });
});

describe('proxy without a certificate', () => {
  let p: RunningProxy;
  beforeAll(async () => {
    p = await startProxy();
  });
  afterAll(() => p.close());

  it('answers SSLRequest with N; a client requiring TLS is told so, one preferring it goes on in the clear', async () => {
    const raw = await RawConnection.connect(p.port);
    expect(String.fromCharCode(await raw.request(SSL_REQUEST))).toBe('N');
    await raw.login({ user: ROLES.scram.user, database: 'postgres' }, ROLES.scram.password);
    raw.close();

    const strict = new pg.Client({ connectionString: p.url(scram.user, scram.password), ssl: { rejectUnauthorized: false } });
    await expect(strict.connect()).rejects.toThrow('The server does not support SSL connections');

    const sql = postgres(p.url(scram.user, scram.password), { max: 1, ssl: 'prefer' });
    expect((await sql<{ n: number }[]>`SELECT 3 AS n`)[0]!.n).toBe(3);
    await sql.end();
  });

  it('answers GSSENCRequest with N, then SSLRequest with N, then serves the startup', async () => {
    const raw = await RawConnection.connect(p.port);
    expect(String.fromCharCode(await raw.request(GSSENC_REQUEST))).toBe('N');
    expect(String.fromCharCode(await raw.request(SSL_REQUEST))).toBe('N');
    await raw.login({ user: ROLES.scram.user, database: 'postgres' }, ROLES.scram.password);
    expect(raw.messages.some((m) => m.name === 'authenticationOk')).toBe(true);
    raw.close();
  });
});

describe('TLS between proxy and upstream (sslmode)', () => {
  const started: RunningProxy[] = [];
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'pgdp-otherca-'));
  afterAll(async () => {
    await Promise.all(started.map((p) => p.close()));
    rmSync(tmp, { recursive: true, force: true });
  });
  const through = async (params: Record<string, string>): Promise<RunningProxy> => {
    const p = await startProxy({ upstreamUrl: upstreamUrl(params) });
    started.push(p);
    return p;
  };

  for (const mode of ['disable', 'allow'] as const) {
    it(`sslmode=${mode}: the upstream leg is plain`, async () => {
      const p = await through({ sslmode: mode });
      expect(await upstreamSsl(p.url(scram.user, scram.password))).toBe(false);
    });
  }

  for (const mode of ['prefer', 'require'] as const) {
    it(`sslmode=${mode}: the upstream leg is TLS`, async () => {
      const p = await through({ sslmode: mode });
      expect(await upstreamSsl(p.url(scram.user, scram.password))).toBe(true);
    });
  }

  it('sslmode=verify-full with the right CA: TLS, certificate and host checked', async () => {
    const p = await through({ sslmode: 'verify-full', sslrootcert: env().caCertPath });
    expect(await upstreamSsl(p.url(scram.user, scram.password))).toBe(true);
  });

  it('sslmode=verify-ca with another CA: the client gets FATAL 08006 naming the certificate problem', async () => {
    const otherCa = path.join(tmp, 'other.crt');
    execFileSync(
      'openssl',
      ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', path.join(tmp, 'other.key'), '-out', otherCa, '-days', '1', '-subj', '/CN=other'],
      { stdio: 'ignore' },
    );
    const p = await through({ sslmode: 'verify-ca', sslrootcert: otherCa });
    const c = new pg.Client({ connectionString: p.url(scram.user, scram.password) });
    const err = (await c.connect().then(
      () => undefined,
      (e: unknown) => e,
    )) as { code?: string; message: string; severity?: string };
    expect(err.code).toBe('08006');
    expect(err.severity).toBe('FATAL');
    expect(err.message).toMatch(/could not connect to the upstream server: .*certificate/);
  });
});
