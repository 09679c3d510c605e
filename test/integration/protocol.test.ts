// The query protocols relayed unchanged: simple and extended, pipelined
// batches with errors inside, notices, ParameterStatus, LISTEN/NOTIFY, and
// protocol version negotiation.
import pg from 'pg';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startProxy, type RunningProxy } from '../helpers/proxy.js';
import { ROLES } from '../helpers/roles.js';
import { RawConnection, serialize } from '../helpers/wire.js';

type Msg = { name: string } & Record<string, unknown>;

describe('query protocols through the proxy', () => {
  let p: RunningProxy;
  let url: string;
  beforeAll(async () => {
    p = await startProxy();
    url = p.url(ROLES.scram.user, ROLES.scram.password);
  });
  afterAll(() => p.close());

  const rawSession = async (): Promise<RawConnection> => {
    const raw = await RawConnection.connect(p.port);
    await raw.login({ user: ROLES.scram.user, database: 'postgres' }, ROLES.scram.password);
    return raw;
  };

  it('simple query with several statements returns every result', async () => {
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    const res = (await c.query('SELECT 1 AS a; SELECT 2 AS b, 3 AS c; VALUES (4), (5)')) as unknown as pg.QueryResult[];
    expect(res.map((r) => r.rows)).toEqual([[{ a: 1 }], [{ b: 2, c: 3 }], [{ column1: 4 }, { column1: 5 }]]);
    await c.end();
  });

  it('an error in a multi-statement query stops it there, and the session goes on', async () => {
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    await c.query('CREATE TEMP TABLE t (n int)');
    await expect(c.query('INSERT INTO t VALUES (1); SELECT 1/0; INSERT INTO t VALUES (2)')).rejects.toMatchObject({ code: '22012' });
    // The implicit transaction of the failed query was rolled back as a whole.
    expect((await c.query('SELECT count(*)::int AS n FROM t')).rows[0]).toEqual({ n: 0 });
    await c.end();
  });

  it('a pipelined extended-protocol batch with an error in the middle: everything up to the error, then the Sync', async () => {
    const raw = await rawSession();
    const batch = Buffer.concat([
      serialize.parse({ name: 's1', text: 'SELECT $1::int * 2 AS n', types: [] }),
      serialize.bind({ statement: 's1', values: ['21'] }),
      serialize.execute({}),
      // fails at run time (in Execute), not while planning
      serialize.parse({ text: 'SELECT 1/n FROM generate_series(0, 0) AS n', types: [] }),
      serialize.bind({}),
      serialize.execute({}),
      // skipped by the server until Sync, because the previous message failed
      serialize.bind({ statement: 's1', values: ['5'] }),
      serialize.execute({}),
      serialize.sync(),
      serialize.bind({ statement: 's1', values: ['50'] }),
      serialize.execute({}),
      serialize.sync(),
    ]);
    raw.write(batch);
    await raw.readyCount(3);
    const names = raw.messages.slice(raw.messages.findIndex((m) => m.name === 'readyForQuery') + 1).map((m) => m.name);
    expect(names).toEqual([
      'parseComplete',
      'bindComplete',
      'dataRow',
      'commandComplete',
      'parseComplete',
      'bindComplete',
      'error',
      'readyForQuery',
      'bindComplete',
      'dataRow',
      'commandComplete',
      'readyForQuery',
    ]);
    const rows = raw.messages.filter((m) => m.name === 'dataRow') as unknown as { fields: string[] }[];
    expect(rows.map((r) => r.fields[0])).toEqual(['42', '100']);
    expect((raw.messages.find((m) => m.name === 'error') as unknown as { code: string }).code).toBe('22012');
    raw.close();
  });

  it('postgres.js pipelines many queries on one connection, one of them failing', async () => {
    const sql = postgres(url, { max: 1 });
    const results = await Promise.allSettled(
      Array.from({ length: 50 }, (_, i) => (i === 25 ? sql`SELECT 1/0` : sql<{ n: number }[]>`SELECT ${i}::int AS n`)),
    );
    results.forEach((r, i) => {
      if (i === 25) expect(r).toMatchObject({ status: 'rejected', reason: { code: '22012' } });
      else expect(r).toMatchObject({ status: 'fulfilled', value: [{ n: i }] });
    });
    await sql.end();
  });

  it('node-postgres prepared statements, binary results and NULLs', async () => {
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    for (const v of [1, 2, 3]) {
      const r = await c.query({ name: 'twice', text: 'SELECT $1::int * 2 AS n, NULL::text AS z', values: [v] });
      expect(r.rows).toEqual([{ n: v * 2, z: null }]);
    }
    const bin = await c.query({ text: 'SELECT 7::int4 AS n', binary: true } as pg.QueryConfig);
    expect(bin.rows[0]).toEqual({ n: 7 });
    await c.end();
  });

  it('a portal fetched in pieces (Execute with a row limit, PortalSuspended) inside a transaction', async () => {
    const raw = await rawSession();
    raw.write(
      Buffer.concat([
        serialize.query('BEGIN'),
        serialize.parse({ text: 'SELECT generate_series(1, 5)', types: [] }),
        serialize.bind({ portal: 'p' }),
        serialize.execute({ portal: 'p', rows: 2 }),
        serialize.execute({ portal: 'p', rows: 2 }),
        serialize.execute({ portal: 'p', rows: 2 }),
        serialize.sync(),
        serialize.query('COMMIT'),
      ]),
    );
    await raw.readyCount(4);
    expect(raw.messages.filter((m) => m.name === 'portalSuspended')).toHaveLength(2);
    expect(raw.messages.filter((m) => m.name === 'dataRow')).toHaveLength(5);
    raw.close();
  });

  it('relays notices and ParameterStatus changes', async () => {
    const c = new pg.Client({ connectionString: url });
    const notices: string[] = [];
    c.on('notice', (n) => notices.push(n.message ?? ''));
    await c.connect();
    await c.query(`DO $$ BEGIN RAISE NOTICE 'hello %', 42; RAISE WARNING 'careful'; END $$`);
    expect(notices).toEqual(['hello 42', 'careful']);
    await c.end();

    const raw = await rawSession();
    expect((raw.messages.find((m) => (m as unknown as Msg).parameterName === 'server_version') as unknown as Msg).parameterValue).toMatch(/^\d+/);
    raw.write(serialize.query(`SET application_name = 'through-the-proxy'`));
    await raw.readyCount(2);
    expect(raw.messages.filter((m) => m.name === 'parameterStatus').pop()).toMatchObject({
      parameterName: 'application_name',
      parameterValue: 'through-the-proxy',
    });
    raw.close();
  });

  it('LISTEN/NOTIFY between two proxied sessions (node-postgres and postgres.js)', async () => {
    const listener = new pg.Client({ connectionString: url });
    await listener.connect();
    const got = new Promise<pg.Notification>((resolve) => listener.on('notification', resolve));
    await listener.query('LISTEN pgdp_test_channel');

    const sql = postgres(url, { max: 2 });
    let viaJsResolve: (payload: string) => void;
    const viaJs = new Promise<string>((resolve) => (viaJsResolve = resolve));
    await sql.listen('pgdp_test_channel', (payload) => viaJsResolve(payload ?? ''));
    await sql`SELECT pg_notify('pgdp_test_channel', 'payload ü')`;
    const n = await got;
    expect(n).toMatchObject({ channel: 'pgdp_test_channel', payload: 'payload ü' });
    expect(await viaJs).toBe('payload ü');
    await listener.end();
    await sql.end();
  });

  it('a Query delivered one byte at a time', async () => {
    const raw = await rawSession();
    const q = serialize.query(`SELECT 'one byte at a time' AS s`);
    for (const b of q) {
      raw.write(Buffer.from([b]));
      await new Promise((r) => setImmediate(r));
    }
    await raw.readyCount(2);
    expect((raw.messages.find((m) => m.name === 'dataRow') as unknown as { fields: string[] }).fields).toEqual(['one byte at a time']);
    raw.close();
  });

  it('statements mentioning df pass through unchanged until the durable core intercepts them', async () => {
    const before = p.proxy.stats.dfStatements;
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    // The server answers: no df schema (3F000), or no usage granted to this role (42501).
    await expect(c.query('SELECT df.start($1)', ['x'])).rejects.toMatchObject({ code: expect.stringMatching(/^(3F000|42501)$/) });
    await c.end();
    expect(p.proxy.stats.dfStatements).toBe(before + 1);
  });
});

describe('protocol version negotiation', () => {
  let p: RunningProxy;
  beforeAll(async () => {
    p = await startProxy();
  });
  afterAll(() => p.close());

  it('answers 3.2 with _pq_ options by NegotiateProtocolVersion (3.0, options named), then serves the session', async () => {
    const raw = await RawConnection.connect(p.port);
    await raw.login({ user: ROLES.scram.user, database: 'postgres', '_pq_.test_option': 'on' }, ROLES.scram.password, (3 << 16) | 2);
    const bytes = raw.bytes();
    expect(String.fromCharCode(bytes[0]!)).toBe('v');
    const len = bytes.readInt32BE(1);
    expect(bytes.readInt32BE(5)).toBe(0); // newest minor version we support
    expect(bytes.readInt32BE(9)).toBe(1); // one option not recognised
    expect(bytes.toString('utf8', 13, 1 + len - 1)).toBe('_pq_.test_option');
    raw.write(serialize.query('SELECT 1'));
    await raw.readyCount(2);
    raw.close();
  });

  it('refuses protocol 4.0 with FATAL 08P01', async () => {
    const raw = await RawConnection.connect(p.port);
    raw.startup({ user: ROLES.trust.user }, 4 << 16);
    await raw.waitClosed();
    expect(raw.messages[0]).toMatchObject({ name: 'error', code: '08P01', severity: 'FATAL' });
    expect((raw.messages[0] as unknown as { message: string }).message).toContain('unsupported frontend protocol 4.0');
  });

  it('refuses a startup packet without a user with FATAL 28000', async () => {
    const raw = await RawConnection.connect(p.port);
    raw.startup({ database: 'postgres' });
    await raw.waitClosed();
    expect(raw.messages[0]).toMatchObject({ name: 'error', code: '28000', severity: 'FATAL' });
  });
});
