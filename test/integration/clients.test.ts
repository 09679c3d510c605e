// The proxy as each family of client drivers sees it: a DSL error in a
// statement with bind parameters (the 42601 and position a simple query gets,
// the transaction aborted as a syntax error aborts it), df.start with
// parameters, and query cancel by BackendKeyData (whose pid is the backend's),
// by pg_cancel_backend and by knex's timeout. node-postgres, postgres.js and
// knex run here; psycopg 2 and 3 and asyncpg (Debian's /usr/bin/python3) and JDBC
// (Debian's jar, java 17) run as child processes.
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import knexFactory from 'knex';
import pg from 'pg';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cancelRequest } from '../../src/proxy/protocol.js';
import { startDurable, type Durable } from '../helpers/durable.js';
import { startProxy } from '../helpers/proxy.js';
import { ROLES } from '../helpers/roles.js';
import { eventually, untilActivity } from '../helpers/wait.js';
import { RawConnection, serialize } from '../helpers/wire.js';

const DB = 'pgdp_clients';
/** The mistake every client makes: a misspelt step, in a statement with a bind parameter. */
const BAD_STEP = 'SELEC 1';
/** Where PostgreSQL-style positions (1-based) point for BAD_STEP in a statement. */
const badStepPosition = (stmt: string): number => stmt.indexOf(BAD_STEP) + 1;

let d: Durable;
let admin: pg.Client;
const scramUrl = (): string => d.url(ROLES.scram.user, ROLES.scram.password, DB);

beforeAll(async () => {
  d = await startDurable(DB);
  await d.connect(); // the first session readies the database's df schema
  admin = await d.direct();
  await admin.query(`SELECT df.grant_usage($1)`, [ROLES.scram.user]);
});
afterAll(async () => {
  await d?.close();
});

/** Resolves once the backend `pid` is running pg_sleep. */
const sleeping = (pid: number): Promise<void> => untilActivity(admin, `pid = $1 AND state = 'active' AND query LIKE '%pg_sleep%'`, pid);

type PgErr = { code: string; position?: string; message: string };
const failure = (p: Promise<unknown>): Promise<PgErr> =>
  p.then(
    () => {
      throw new Error('the statement succeeded');
    },
    (e: unknown) => e as PgErr,
  );

describe('node-postgres', () => {
  it('a DSL error with a bind parameter: 42601 at the position the simple query gets, and the session goes on', async () => {
    const c = await d.connect();
    const simple = `SELECT df.start('${BAD_STEP}', 'node'::text)`;
    const extended = `SELECT df.start('${BAD_STEP}', $1::text)`;
    const s = await failure(c.query(simple));
    const e = await failure(c.query(extended, ['node']));
    expect(s).toMatchObject({ code: '42601', message: expect.stringMatching(/syntax error at or near "SELEC"/) });
    expect(e).toMatchObject({ code: '42601', message: s.message, position: s.position });
    expect(Number(e.position)).toBe(badStepPosition(extended));
    // Several parameters, one used only after the call.
    const more = `SELECT df.start('${BAD_STEP}', $1::text) WHERE $2::int > 0`;
    expect(await failure(c.query(more, ['node', 1]))).toMatchObject({ code: '42601', position: String(badStepPosition(more)) });
    expect((await c.query<{ n: number }>('SELECT $1::int + 1 AS n', [41])).rows).toEqual([{ n: 42 }]);
  });

  it('inside a transaction the DSL error aborts it (25P02 next), as a real syntax error with a parameter does', async () => {
    const c = await d.connect();
    for (const [stmt, code] of [
      [`SELEC $1::text`, '42601'],
      [`SELECT df.start('${BAD_STEP}', $1::text)`, '42601'],
    ] as const) {
      await c.query('BEGIN');
      expect(await failure(c.query(stmt, ['node'])), stmt).toMatchObject({ code });
      expect(await failure(c.query('SELECT 1')), stmt).toMatchObject({ code: '25P02' });
      await c.query('ROLLBACK');
    }
    expect((await c.query('SELECT 1 AS ok')).rows).toEqual([{ ok: 1 }]);
  });

  it('a parameterised df.start starts its workflow, label from the parameter', async () => {
    const c = await d.connect();
    const id = (await c.query<{ id: string }>(`SELECT df.start('SELECT 1 AS one', $1::text) AS id`, ['node-label'])).rows[0]!.id;
    expect((await c.query('SELECT df.await_instance($1, 30) AS s', [id])).rows[0].s).toBe('completed');
    expect((await c.query('SELECT label FROM df.instances WHERE id = $1', [id])).rows[0].label).toBe('node-label');
  });

  it('BackendKeyData carries pg_backend_pid(), and pg_cancel_backend of it from another session cancels pg_sleep (57014)', async () => {
    const c = await d.connect();
    const other = await d.connect();
    const pid = (await c.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
    expect((c as unknown as { processID: number }).processID).toBe(pid);
    const q = failure(c.query('SELECT pg_sleep(30)'));
    await sleeping(pid);
    expect((await other.query('SELECT pg_cancel_backend($1) AS ok', [pid])).rows).toEqual([{ ok: true }]);
    expect(await q).toMatchObject({ code: '57014', message: 'canceling statement due to user request' });
    expect((await c.query('SELECT 1 AS n')).rows).toEqual([{ n: 1 }]);
  });

  it('node-postgres’s own cancel (a CancelRequest with its key, through the proxy) still works', async () => {
    const c = await d.connect();
    const pid = (await c.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
    const q = failure(c.query('SELECT pg_sleep(30)'));
    await sleeping(pid);
    const canceller = new pg.Client({ connectionString: d.adminUrl }) as unknown as { cancel(c: pg.Client, q: unknown): void };
    canceller.cancel(c, (c as unknown as { activeQuery: unknown }).activeQuery);
    expect(await q).toMatchObject({ code: '57014' });
  });
});

describe('a pipelined extended-protocol batch (raw wire)', () => {
  it('the DSL error fails at Parse, whatever types Parse declares; the server skips to the Sync and the next batch runs', async () => {
    const raw = await RawConnection.connect(d.port);
    await raw.login({ user: ROLES.scram.user, database: DB }, ROLES.scram.password);
    const stmt = `SELECT df.start('${BAD_STEP}', $1::text)`;
    raw.write(
      Buffer.concat([
        // Three declared types (text, int4, unspecified) for a statement that uses $1 only.
        serialize.parse({ text: stmt, types: [25, 23, 0] }),
        serialize.bind({ values: ['raw', '1', 'x'] }),
        serialize.describe({ type: 'P' }),
        serialize.execute({}),
        serialize.sync(),
        serialize.parse({ text: 'SELECT $1::int * 2 AS n', types: [] }),
        serialize.bind({ values: ['21'] }),
        serialize.execute({}),
        serialize.sync(),
      ]),
    );
    await raw.readyCount(3);
    const names = raw.messages.slice(raw.messages.findIndex((m) => m.name === 'readyForQuery') + 1).map((m) => m.name);
    // Like a syntax error: no ParseComplete, nothing until the Sync.
    expect(names).toEqual(['error', 'readyForQuery', 'parseComplete', 'bindComplete', 'dataRow', 'commandComplete', 'readyForQuery']);
    const err = raw.messages.find((m) => m.name === 'error') as unknown as { code: string; position: string; message: string };
    expect(err).toMatchObject({ code: '42601', position: String(badStepPosition(stmt)) });
    expect((raw.messages.find((m) => m.name === 'dataRow') as unknown as { fields: string[] }).fields).toEqual(['42']);
    raw.close();
  });
});

describe('postgres.js', () => {
  it('a DSL error with a parameter: 42601 and its position, twice (nothing half-prepared is left); a transaction is aborted by it', async () => {
    const sql = postgres(scramUrl(), { max: 1, onnotice: () => {} });
    try {
      const label = 'postgres.js';
      const stmt = `SELECT df.start('${BAD_STEP}', $1::text)`;
      for (let i = 0; i < 2; i++) {
        expect(await failure(sql.unsafe(stmt, [label]))).toMatchObject({ code: '42601', position: String(badStepPosition(stmt)) });
        expect(await failure(sql`SELECT df.start('SELEC 1', ${label}::text)`)).toMatchObject({ code: '42601' });
      }
      // In a transaction, as with a real syntax error: the next statement gets 25P02, and sql.begin
      // rolls back and rejects with the first error.
      const mistakes = [
        (tx: postgres.TransactionSql) => tx`SELEC ${label}::text`,
        (tx: postgres.TransactionSql) => tx`SELECT df.start('SELEC 1', ${label}::text)`,
      ];
      for (const bad of mistakes) {
        const codes: string[] = [];
        const inTx = await failure(
          sql.begin(async (tx) => {
            codes.push((await failure(bad(tx))).code);
            codes.push((await failure(tx`SELECT 1`)).code);
          }),
        );
        expect([...codes, inTx.code]).toEqual(['42601', '25P02', '42601']);
      }
      const [row] = await sql<{ id: string }[]>`SELECT df.start('SELECT 1 AS one', ${label}::text) AS id`;
      expect((await sql`SELECT df.await_instance(${row!.id}, 30) AS s`)[0]!.s).toBe('completed');
    } finally {
      await sql.end();
    }
  });

  it('query.cancel() (a CancelRequest through the proxy) stops pg_sleep (57014)', async () => {
    const sql = postgres(scramUrl(), { max: 1 });
    try {
      const pid = (await sql<{ pid: number }[]>`SELECT pg_backend_pid() AS pid`)[0]!.pid;
      const q = sql`SELECT pg_sleep(30)`;
      const result = failure(q);
      await sleeping(pid);
      await q.cancel();
      expect(await result).toMatchObject({ code: '57014' });
      expect(await sql`SELECT 2 AS n`).toEqual([{ n: 2 }]);
    } finally {
      await sql.end();
    }
  });
});

describe('knex', () => {
  it('.timeout(…, { cancel: true }) cancels the backend (pg_cancel_backend of the connection’s processID)', async () => {
    const knex = knexFactory({ client: 'pg', connection: scramUrl(), pool: { min: 1, max: 1 } });
    try {
      const pid = (await knex.raw<{ rows: { pid: number }[] }>('select pg_backend_pid() as pid')).rows[0]!.pid;
      const err = await failure(knex.raw('select pg_sleep(30)').timeout(200, { cancel: true }));
      expect(err).toMatchObject({ name: 'KnexTimeoutError', message: expect.stringMatching(/Defined query timeout of 200ms exceeded/) });
      // Cancelled, not left sleeping: the backend goes idle well before its 30 seconds.
      await untilActivity(admin, `pid = $1 AND state = 'idle'`, pid);
      // The pool's connection (the same backend) serves the next query.
      expect((await knex.raw<{ rows: { pid: number }[] }>('select pg_backend_pid() as pid')).rows[0]!.pid).toBe(pid);
    } finally {
      await knex.destroy();
    }
  });
});

describe('cancel keys when two sessions report the same backend pid', () => {
  it('each key cancels its own backend; the ended session’s key cancels nothing and is counted', async () => {
    // A stand-in upstream whose every backend says pid 4242 (as a reused pid would), each with its own secret.
    const PID = 4242;
    const received: [number, number][] = [];
    let nextSecret = 1000;
    const upstream = net.createServer((sock) => {
      sock.once('data', (b: Buffer) => {
        if (b.readInt32BE(0) === 16 && b.readInt32BE(4) === 80877102) {
          received.push([b.readInt32BE(8), b.readInt32BE(12)]);
          sock.end();
          return;
        }
        const reply = Buffer.alloc(9 + 13 + 6);
        reply.write('R', 0);
        reply.writeInt32BE(8, 1); // AuthenticationOk: int32 0 follows
        reply.write('K', 9);
        reply.writeInt32BE(12, 10);
        reply.writeInt32BE(PID, 14);
        reply.writeInt32BE(++nextSecret, 18);
        reply.write('Z', 22);
        reply.writeInt32BE(5, 23);
        reply.write('I', 27);
        sock.write(reply);
        sock.on('data', () => undefined);
      });
      sock.on('error', () => undefined);
    });
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
    const port = (upstream.address() as net.AddressInfo).port;
    const p = await startProxy({ upstreamUrl: `postgres://fake@127.0.0.1:${port}/db?sslmode=disable` });
    const session = async (): Promise<{ raw: RawConnection; pid: number; secret: number }> => {
      const raw = await RawConnection.connect(p.port);
      raw.startup({ user: 'fake', database: 'db' });
      await raw.readyCount(1);
      const k = raw.messages.find((m) => m.name === 'backendKeyData') as unknown as { processID: number; secretKey: number };
      return { raw, pid: k.processID, secret: k.secretKey };
    };
    const cancel = async (pid: number, secret: number): Promise<void> => {
      const raw = await RawConnection.connect(p.port);
      raw.write(cancelRequest(pid, secret));
      await raw.waitClosed();
    };
    try {
      const old = await session(); // backend secret 1001
      const young = await session(); // backend secret 1002
      expect([old.pid, young.pid]).toEqual([PID, PID]);
      expect(old.secret).not.toBe(young.secret);
      expect([old.secret, young.secret]).not.toContain(1001);
      await cancel(old.pid, old.secret);
      await eventually(() => received.length === 1, 'the first cancel to reach the upstream');
      expect(received[0]).toEqual([PID, 1001]);
      // The old session ends after the young one registered: its unregister must leave the young key.
      old.raw.close();
      await eventually(() => p.proxy.stats.connectionsActive === 1, 'the old session to close');
      const unknownBefore = p.proxy.stats.cancelUnknownKey;
      await cancel(old.pid, old.secret);
      await eventually(() => p.proxy.stats.cancelUnknownKey === unknownBefore + 1, 'the stale key to be counted as unknown');
      await cancel(young.pid, young.secret);
      await eventually(() => received.length === 2, 'the young session’s cancel to reach the upstream');
      // The stale key was refused before anything was sent: only the young backend's key arrived.
      expect(received[1]).toEqual([PID, 1002]);
      young.raw.close();
    } finally {
      await p.close();
      await new Promise<void>((r) => upstream.close(() => r()));
    }
  });
});

// ---- drivers in other languages, run as child processes

const PYTHON = '/usr/bin/python3'; // Debian's python, which sees the Debian psycopg packages (a pyenv python3 on PATH may not)
const JDBC_JAR = '/usr/share/java/postgresql.jar';

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

const run = (file: string, args: string[], timeout = 60_000): Promise<Run> =>
  new Promise((resolve) => {
    execFile(file, args, { timeout, maxBuffer: 1 << 20 }, (err, stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? -1) : 0, stdout, stderr }),
    );
  });

/** Fails (never skips) when a Python module is missing, naming the Debian package that provides it. */
async function requirePython(module: string, debianPackage: string): Promise<void> {
  const missing = `${module} is not available to ${PYTHON}: install the Debian package ${debianPackage} (apt-get install -y ${debianPackage})`;
  if (!existsSync(PYTHON)) throw new Error(missing);
  const r = await run(PYTHON, ['-c', `import ${module}`]);
  if (r.code !== 0) throw new Error(`${missing}\n${r.stderr}`);
}

/** One script for both psycopg versions: their module, error and position attributes differ little. */
const PSYCOPG_SCRIPT = `
import json, sys
version, dsn = sys.argv[1], sys.argv[2]
if version == '3':
    import psycopg as driver
    connect = driver.connect
    code = lambda e: e.sqlstate
else:
    import psycopg2 as driver
    connect = driver.connect
    code = lambda e: e.pgcode
out = {}
c = connect(dsn)
cur = c.cursor()
cur.execute('SELECT %s::int + %s AS n', (40, 2))
out['sum'] = cur.fetchone()[0]
stmt = "SELECT df.start('${BAD_STEP}', %s::text) WHERE %s > 0"
try:
    cur.execute(stmt, ('psycopg', 1))
    out['error'] = None
except driver.Error as e:
    out['error'] = code(e)
    out['position'] = e.diag.statement_position
    out['message'] = e.diag.message_primary
# Not autocommit: the error aborted the driver's transaction, as a syntax error would.
try:
    cur.execute('SELECT 1')
    out['after'] = None
except driver.Error as e:
    out['after'] = code(e)
c.rollback()
cur = c.cursor()
cur.execute("SELECT df.start('SELECT 1 AS one', %s::text)", ('psycopg' + version,))
instance = cur.fetchone()[0]
c.commit()
cur.execute('SELECT df.await_instance(%s, 30)', (instance,))
out['status'] = cur.fetchone()[0]
c.close()
print(json.dumps(out))
`;

describe('psycopg (Debian python3-psycopg2, python3-psycopg)', () => {
  const dsn = (): string => `host=127.0.0.1 port=${d.port} dbname=${DB} user=${ROLES.scram.user} password=${ROLES.scram.password} sslmode=disable`;
  // psycopg2 interpolates parameters into the text (a simple Query); psycopg 3 sends them with Parse/Bind.
  for (const [version, module, pkg] of [
    ['2', 'psycopg2', 'python3-psycopg2'],
    ['3', 'psycopg', 'python3-psycopg'],
  ] as const) {
    it(`psycopg ${version}: parameters, the DSL error (42601 at its position, the transaction aborted), df.start`, async () => {
      await requirePython(module, pkg);
      const r = await run(PYTHON, ['-c', PSYCOPG_SCRIPT, version, dsn()]);
      expect(r.code, r.stderr).toBe(0);
      const out = JSON.parse(r.stdout) as Record<string, unknown>;
      // psycopg 3 turns %s into $1, $2: the text before the step is the same either way.
      const position = String(badStepPosition(`SELECT df.start('${BAD_STEP}', %s::text)`));
      expect(out).toEqual({
        sum: 42,
        error: '42601',
        position,
        message: expect.stringMatching(/syntax error at or near "SELEC"/),
        after: '25P02',
        status: 'completed',
      });
    });
  }
});

/** asyncpg speaks the protocol itself (no libpq): prepared statements, binary parameters, its own cancel. */
const ASYNCPG_SCRIPT = `
import asyncio, json, sys
import asyncpg
async def main(dsn):
    out = {}
    c = await asyncpg.connect(dsn, ssl=False)
    out['sum'] = await c.fetchval('SELECT $1::int + $2', 40, 2)
    out['pid_matches'] = (await c.fetchval('SELECT pg_backend_pid()')) == c.get_server_pid()
    try:
        await c.fetchval("SELECT df.start('${BAD_STEP}', $1::text)", 'asyncpg')
        out['error'] = None
    except asyncpg.PostgresError as e:
        out['error'] = e.sqlstate
        out['position'] = e.position
    instance = await c.fetchval("SELECT df.start('SELECT 1 AS one', $1::text)", 'asyncpg')
    out['status'] = await c.fetchval('SELECT df.await_instance($1, 30)', instance)
    # A query timeout makes asyncpg send its CancelRequest (through the proxy).
    try:
        await c.fetchval('SELECT pg_sleep(30)', timeout=0.3)
        out['cancelled'] = False
    except asyncio.TimeoutError:
        out['cancelled'] = True
    out['after'] = await c.fetchval('SELECT 1')
    await c.close()
    print(json.dumps(out))
asyncio.run(main(sys.argv[1]))
`;

describe('asyncpg (Debian python3-asyncpg)', () => {
  it('parameters, the backend pid, the DSL error with a parameter (42601 at its position), df.start, cancel on timeout', async () => {
    await requirePython('asyncpg', 'python3-asyncpg');
    const dsn = `postgresql://${ROLES.scram.user}:${ROLES.scram.password}@127.0.0.1:${d.port}/${DB}`;
    const r = await run(PYTHON, ['-c', ASYNCPG_SCRIPT, dsn]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({
      sum: 42,
      pid_matches: true,
      error: '42601',
      position: String(badStepPosition(`SELECT df.start('${BAD_STEP}', $1::text)`)),
      status: 'completed',
      cancelled: true,
      after: 1,
    });
  });
});

const JDBC_SOURCE = `
import java.sql.*;
import java.util.concurrent.*;
import org.postgresql.PGConnection;
import org.postgresql.util.PSQLException;

public class ClientsJdbc {
  static void out(String k, Object v) { System.out.println(k + "=" + v); }

  public static void main(String[] a) throws Exception {
    try (Connection c = DriverManager.getConnection(a[0], a[1], a[2]);
         Connection watcher = DriverManager.getConnection(a[0], a[1], a[2])) {
      try (PreparedStatement ps = c.prepareStatement("SELECT ?::int + 1")) {
        ps.setInt(1, 41);
        try (ResultSet rs = ps.executeQuery()) { rs.next(); out("sum", rs.getInt(1)); }
      }
      try (PreparedStatement ps = c.prepareStatement("SELECT df.start('${BAD_STEP}', ?::text)")) {
        ps.setString(1, "jdbc");
        ps.executeQuery();
        out("error", "none");
      } catch (PSQLException e) {
        out("error", e.getSQLState());
        out("position", e.getServerErrorMessage().getPosition());
      }
      String id;
      try (PreparedStatement ps = c.prepareStatement("SELECT df.start('SELECT 1 AS one', ?::text)")) {
        ps.setString(1, "jdbc");
        try (ResultSet rs = ps.executeQuery()) { rs.next(); id = rs.getString(1); }
      }
      try (PreparedStatement ps = c.prepareStatement("SELECT df.await_instance(?, 30)")) {
        ps.setString(1, id);
        try (ResultSet rs = ps.executeQuery()) { rs.next(); out("status", rs.getString(1)); }
      }
      int pid;
      try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT pg_backend_pid()")) { rs.next(); pid = rs.getInt(1); }
      out("keyPidIsBackendPid", pid == c.unwrap(PGConnection.class).getBackendPID());
      Statement sleeper = c.createStatement();
      ExecutorService pool = Executors.newSingleThreadExecutor();
      Future<String> sleep = pool.submit(() -> {
        try { sleeper.execute("SELECT pg_sleep(30)"); return "finished"; } catch (SQLException e) { return e.getSQLState(); }
      });
      // Cancel once the backend is seen sleeping (polled, bounded).
      try (PreparedStatement probe = watcher.prepareStatement(
          "SELECT 1 FROM pg_stat_activity WHERE pid = ? AND state = 'active' AND query LIKE '%pg_sleep%'")) {
        probe.setInt(1, pid);
        long deadline = System.currentTimeMillis() + 10000;
        while (true) {
          try (ResultSet rs = probe.executeQuery()) { if (rs.next()) break; }
          if (System.currentTimeMillis() > deadline) throw new IllegalStateException("pg_sleep never showed in pg_stat_activity");
          Thread.sleep(20);
        }
      }
      sleeper.cancel();
      out("cancel", sleep.get(20, TimeUnit.SECONDS));
      pool.shutdown();
      try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT 7")) { rs.next(); out("after", rs.getInt(1)); }
    }
  }
}
`;

describe('JDBC (Debian libpostgresql-jdbc-java)', () => {
  it('a prepared statement with a parameter, the DSL error (42601), df.start, and Statement.cancel() of pg_sleep', async () => {
    if (!existsSync(JDBC_JAR)) {
      throw new Error(`the PostgreSQL JDBC driver is missing (${JDBC_JAR}): install the Debian package libpostgresql-jdbc-java (apt-get install -y libpostgresql-jdbc-java)`);
    }
    const dir = mkdtempSync(path.join(os.tmpdir(), 'pgdp-jdbc-'));
    try {
      const source = path.join(dir, 'ClientsJdbc.java');
      writeFileSync(source, JDBC_SOURCE);
      const url = `jdbc:postgresql://127.0.0.1:${d.port}/${DB}?sslmode=disable`;
      const r = await run('java', ['-cp', JDBC_JAR, source, url, ROLES.scram.user, ROLES.scram.password]);
      expect(r.code, r.stderr + r.stdout).toBe(0);
      const out = Object.fromEntries(r.stdout.trim().split('\n').map((l) => l.split(/=(.*)/s).slice(0, 2)));
      expect(out).toEqual({
        sum: '42',
        error: '42601',
        // The driver sends ? as $1: the text before the step is the same.
        position: String(badStepPosition(`SELECT df.start('${BAD_STEP}', ?::text)`)),
        status: 'completed',
        keyPidIsBackendPid: 'true',
        cancel: '57014',
        after: '7',
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
