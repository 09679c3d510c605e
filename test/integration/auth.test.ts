// Authentication passes through the proxy untouched: the server decides, the
// client proves, and SCRAM never advertises a channel binding that cannot
// survive the proxy.
import { readFileSync } from 'node:fs';
import pg from 'pg';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { env, startProxy, type RunningProxy } from '../helpers/proxy.js';
import { ROLES } from '../helpers/roles.js';
import { RawConnection } from '../helpers/wire.js';

const passwordRoles = [ROLES.cleartext, ROLES.md5, ROLES.scram] as const;

async function pgLogin(url: string, extra: pg.ClientConfig = {}): Promise<string> {
  const c = new pg.Client({ connectionString: url, ...extra });
  await c.connect();
  try {
    const r = await c.query<{ u: string }>('SELECT current_user AS u');
    return r.rows[0]!.u;
  } finally {
    await c.end();
  }
}

async function postgresJsLogin(url: string): Promise<string> {
  const sql = postgres(url, { max: 1, onnotice: () => undefined });
  try {
    const rows = await sql<{ u: string }[]>`SELECT current_user AS u`;
    return rows[0]!.u;
  } finally {
    await sql.end();
  }
}

async function errorOf(p: Promise<unknown>): Promise<{ code?: string; message: string }> {
  try {
    await p;
  } catch (err) {
    return err as { code?: string; message: string };
  }
  throw new Error('expected an error');
}

describe('authentication pass-through', () => {
  let p: RunningProxy;
  beforeAll(async () => {
    p = await startProxy();
  });
  afterAll(() => p.close());

  for (const role of passwordRoles) {
    it(`${role.method}: node-postgres logs in with the right password`, async () => {
      expect(await pgLogin(p.url(role.user, role.password))).toBe(role.user);
    });
    it(`${role.method}: node-postgres is refused with a wrong password (28P01)`, async () => {
      const err = await errorOf(pgLogin(p.url(role.user, 'wrong-' + role.password)));
      expect(err.code).toBe('28P01');
      expect(err.message).toContain(`password authentication failed for user "${role.user}"`);
    });
    it(`${role.method}: postgres.js logs in with the right password`, async () => {
      expect(await postgresJsLogin(p.url(role.user, role.password))).toBe(role.user);
    });
    it(`${role.method}: postgres.js is refused with a wrong password (28P01)`, async () => {
      const err = await errorOf(postgresJsLogin(p.url(role.user, 'wrong-' + role.password)));
      expect(err.code).toBe('28P01');
    });
  }

  it('trust: logs in without a password', async () => {
    expect(await pgLogin(p.url(ROLES.trust.user))).toBe(ROLES.trust.user);
    expect(await postgresJsLogin(p.url(ROLES.trust.user))).toBe(ROLES.trust.user);
  });

  it('an unknown database is the server’s error, relayed', async () => {
    const err = await errorOf(pgLogin(p.url(ROLES.scram.user, ROLES.scram.password, 'no_such_db')));
    expect(err.code).toBe('3D000');
  });

  it('many concurrent SCRAM logins all succeed', async () => {
    const users = await Promise.all(Array.from({ length: 20 }, () => pgLogin(p.url(ROLES.scram.user, ROLES.scram.password))));
    expect(new Set(users)).toEqual(new Set([ROLES.scram.user]));
  });
});

describe('SCRAM over a TLS upstream', () => {
  let p: RunningProxy;
  beforeAll(async () => {
    const e = env();
    const up = new URL(e.adminUrl);
    up.searchParams.set('sslmode', 'require');
    p = await startProxy({ upstreamUrl: up.toString(), withTls: true });
  });
  afterAll(() => p.close());

  it('the server offers SCRAM-SHA-256-PLUS, the client is offered only SCRAM-SHA-256', async () => {
    // Straight to the server over TLS, -PLUS is on offer...
    const direct = new pg.Client({
      host: env().pgHost,
      port: env().pgPort,
      user: ROLES.scram.user,
      password: ROLES.scram.password,
      database: 'postgres',
      ssl: { rejectUnauthorized: false },
      enableChannelBinding: true,
    });
    await direct.connect();
    const { rows } = await direct.query<{ ssl: boolean }>('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()');
    expect(rows[0]!.ssl).toBe(true);
    await direct.end();

    // ...through the proxy it is not.
    const raw = await RawConnection.connect(p.port);
    raw.startup({ user: ROLES.scram.user, database: 'postgres' });
    await raw.until(() => raw.messages.some((m) => m.name === 'authenticationSASL'));
    const sasl = raw.messages.find((m) => m.name === 'authenticationSASL') as unknown as { mechanisms: string[] };
    expect(sasl.mechanisms).toEqual(['SCRAM-SHA-256']);
    raw.close();
  });

  it('a client without channel binding logs in; the upstream leg is TLS', async () => {
    const c = new pg.Client({ connectionString: p.url(ROLES.scram.user, ROLES.scram.password) });
    await c.connect();
    const { rows } = await c.query<{ ssl: boolean }>('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()');
    expect(rows[0]!.ssl).toBe(true);
    await c.end();
  });

  it('a TLS client that insists on channel binding gets a clear FATAL 28000 with a hint', async () => {
    // With TLS on both legs, libpq (and node-postgres with enableChannelBinding) send the GS2 flag
    // "y", which the server would reject as a downgrade; the proxy says why and what to do.
    const err = (await errorOf(
      pgLogin(p.url(ROLES.scram.user, ROLES.scram.password), {
        ssl: { ca: readFileSync(env().caCertPath, 'utf8') },
        enableChannelBinding: true,
      }),
    )) as { code?: string; message: string; hint?: string };
    expect(err.code).toBe('28000');
    expect(err.message).toContain('channel binding');
    expect(err.hint).toContain('channel_binding=disable');
  });
});

describe('SCRAM with channel binding over a plain upstream', () => {
  let p: RunningProxy;
  beforeAll(async () => {
    p = await startProxy({ withTls: true });
  });
  afterAll(() => p.close());

  it('a TLS client offering channel binding logs in, since the server leg cannot bind', async () => {
    const user = await pgLogin(p.url(ROLES.scram.user, ROLES.scram.password), {
      ssl: { ca: readFileSync(env().caCertPath, 'utf8') },
      enableChannelBinding: true,
    });
    expect(user).toBe(ROLES.scram.user);
  });
});
