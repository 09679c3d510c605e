// The command as users run it: configuration errors, graceful shutdown, the
// embedded PostgreSQL across restarts and after a crash, and its logs.
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { env, runCli, type CliProcess } from '../helpers/proxy.js';
import { ROLES } from '../helpers/roles.js';
import { eventually, untilActivity } from '../helpers/wait.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'pgdp-cli-'));
chmodSync(tmp, 0o755); // the embedded PostgreSQL runs as another OS user when we are root
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** The connection string the command prints when it is ready. */
function readyUrl(cli: CliProcess): string {
  const m = /pg-durable-proxy ready: psql '([^']+)'/.exec(cli.stderr());
  if (!m) throw new Error(`no ready line in:\n${cli.stderr()}`);
  return m[1]!;
}

/**
 * The embedded server's connection string: stderr is not a terminal here, so
 * the ready line names the file that holds the password instead of showing it.
 */
function embeddedUrl(cli: CliProcess): string {
  const m = /pg-durable-proxy ready: psql '([^']+)' \(password: "password" in ([^)]+)\)/.exec(cli.stderr());
  if (!m) throw new Error(`no ready line naming the password file in:\n${cli.stderr()}`);
  const url = new URL(m[1]!);
  expect(url.password).toBe('');
  const creds = JSON.parse(readFileSync(m[2]!, 'utf8')) as { user: string; password: string };
  expect(creds.user).toBe(decodeURIComponent(url.username));
  url.password = encodeURIComponent(creds.password);
  return url.toString();
}

/** pino lines printed so far. */
function logLines(cli: CliProcess): { msg: string; [k: string]: unknown }[] {
  return cli
    .stdout()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { msg: string });
}

/** Waits until a statement of the session named `app` is running on the server. */
async function running(app: string): Promise<void> {
  const admin = new pg.Client({ connectionString: env().adminUrl });
  await admin.connect();
  try {
    await untilActivity(admin, `application_name = $1 AND state = 'active'`, app);
  } finally {
    await admin.end();
  }
}

const upstreamArgs = (): string[] => ['--upstream', env().adminUrl, '--listen', '127.0.0.1:0', '--admin', 'off'];

describe('configuration errors', () => {
  const cases: [string, string[], Record<string, string>, RegExp][] = [
    ['a malformed --listen', ['--listen', 'nowhere'], {}, /^pg-durable-proxy: invalid setting listen \(from --listen\): "nowhere": expected HOST:PORT/],
    ['a negative --shutdown-timeout', ['--shutdown-timeout=-1'], {}, /^pg-durable-proxy: invalid setting shutdownTimeout \(from --shutdown-timeout\): "-1": /],
    ['a bad PGDP_LOG_LEVEL', [], { PGDP_LOG_LEVEL: 'loud' }, /^pg-durable-proxy: invalid setting logLevel \(from PGDP_LOG_LEVEL\): "loud": .*"info"/],
    ['an upstream that is not a URL', ['--upstream', 'mysql://x'], {}, /^pg-durable-proxy: invalid setting upstream .*expected a postgres:\/\/ URL/],
    ['an unknown flag', ['--listne', '1'], {}, /^pg-durable-proxy: Unknown option '--listne'/],
    ['a missing config file', ['--config', '/nonexistent/pgdp.json'], {}, /^pg-durable-proxy: config file \/nonexistent\/pgdp.json: ENOENT/],
    ['a TLS certificate without a key', ['--tls-cert', '/x.pem'], {}, /^pg-durable-proxy: invalid setting tlsKey: tlsCert and tlsKey must be given together/],
  ];
  for (const [what, args, extraEnv, expected] of cases) {
    it(`${what}: exit 2, one line naming it, nothing started`, async () => {
      const dataDir = path.join(tmp, 'never-' + Math.random().toString(36).slice(2));
      const cli = runCli([...args, '--data-dir', dataDir], extraEnv);
      cli.ready.catch(() => undefined);
      const { code } = await cli.exited;
      expect(code).toBe(2);
      expect(cli.stderr()).toMatch(expected);
      expect(cli.stderr().trimEnd().split('\n')).toHaveLength(1);
      expect(existsSync(dataDir)).toBe(false);
    });
  }

  it('--help lists every setting with its flag and variable', async () => {
    const cli = runCli(['--help']);
    cli.ready.catch(() => undefined);
    expect((await cli.exited).code).toBe(0);
    for (const s of ['--upstream', 'PGDP_UPSTREAM', '--listen', '--admin', '--tls-cert', '--shutdown-timeout', 'PGDP_MAX_MESSAGE_SIZE']) {
      expect(cli.stdout()).toContain(s);
    }
  });
});

describe('graceful shutdown (SIGTERM / SIGINT)', () => {
  it('stops accepting, lets a running statement finish, closes idle sessions, exits 0', async () => {
    const cli = runCli([...upstreamArgs(), '--shutdown-timeout', '20', '--log-level', 'info']);
    await cli.ready;
    const url = new URL(readyUrl(cli));
    const userUrl = `postgres://${ROLES.scram.user}:${ROLES.scram.password}@${url.host}/postgres`;
    const busy = new pg.Client({ connectionString: userUrl, application_name: 'pgdp-test-busy' });
    const idle = new pg.Client({ connectionString: userUrl });
    const idleError = new Promise<Error & { code?: string }>((resolve) => idle.on('error', resolve));
    busy.on('error', () => undefined);
    await busy.connect();
    await idle.connect();
    const result = busy.query<{ done: string }>(`SELECT 'finished' AS done FROM pg_sleep(1.5)`);
    await running('pgdp-test-busy');
    cli.child.kill('SIGTERM');

    expect(await idleError).toMatchObject({ code: '57P01' });
    // New connections are refused while the running statement finishes.
    const late = new pg.Client({ connectionString: userUrl });
    await expect(late.connect()).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    expect((await result).rows).toEqual([{ done: 'finished' }]);
    expect(await cli.exited).toEqual({ code: 0, signal: null });
    expect(logLines(cli).map((l) => l.msg)).toContain('stopped');
  });

  it('after --shutdown-timeout a running statement is cancelled and the client told why', async () => {
    const cli = runCli([...upstreamArgs(), '--shutdown-timeout', '1']);
    await cli.ready;
    const url = new URL(readyUrl(cli));
    const c = new pg.Client({
      connectionString: `postgres://${ROLES.scram.user}:${ROLES.scram.password}@${url.host}/postgres`,
      application_name: 'pgdp-test-slow',
    });
    c.on('error', () => undefined);
    await c.connect();
    const q = c.query('SELECT pg_sleep(30)').then(
      () => undefined,
      (e: unknown) => e,
    );
    await running('pgdp-test-slow');
    cli.child.kill('SIGINT');
    expect(await q).toMatchObject({ code: '57P01', message: 'terminating connection due to administrator command' });
    expect(await cli.exited).toEqual({ code: 0, signal: null });
  });
});

describe('embedded PostgreSQL', () => {
  const dataDir = path.join(tmp, 'embedded');
  const start = async (): Promise<{ cli: CliProcess; url: string }> => {
    const cli = runCli(['--data-dir', dataDir, '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--log-level', 'info']);
    await cli.ready;
    return { cli, url: embeddedUrl(cli) };
  };
  const postmasterPid = (): number => Number(readFileSync(path.join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  const alive = (pid: number): boolean => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };

  it('starts with no upstream, keeps data across a clean restart, takes over after a crash', async () => {
    // First start: initialises the data directory and prints a working connection string.
    let { cli, url } = await start();
    const password = new URL(url).password;
    expect(password.length).toBeGreaterThan(10);
    let c = new pg.Client({ connectionString: url });
    await c.connect();
    await c.query('CREATE TABLE kept (v text)');
    await c.query(`INSERT INTO kept VALUES ('survives restarts')`);
    expect((await c.query<{ v: string }>('SELECT version() AS v')).rows[0]!.v).toMatch(/^PostgreSQL 17\./);
    await c.end();

    // Logs: one line per connection open and close, with who and how much, never the password.
    await eventually(() => logLines(cli).some((l) => l.msg === 'connection closed'), 'the connection closed log line');
    const lines = logLines(cli);
    const opened = lines.find((l) => l.msg === 'connection opened');
    const closed = lines.find((l) => l.msg === 'connection closed');
    expect(opened).toMatchObject({ user: 'postgres', database: 'postgres' });
    expect(opened!.client).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(closed).toMatchObject({ user: 'postgres', database: 'postgres', reason: 'client disconnected' });
    expect(closed!.bytesIn).toBeGreaterThan(0);
    expect(closed!.bytesOut).toBeGreaterThan(0);
    expect(typeof closed!.durationMs).toBe('number');
    expect(cli.stdout()).not.toContain(password);
    expect(cli.stderr()).not.toContain(password);

    // Clean stop: PostgreSQL stops with it.
    const pm = postmasterPid();
    cli.child.kill('SIGTERM');
    expect(await cli.exited).toEqual({ code: 0, signal: null });
    expect(alive(pm)).toBe(false);
    expect(existsSync(path.join(dataDir, 'postmaster.pid'))).toBe(false);

    // Restart: same data, same credentials.
    ({ cli, url } = await start());
    expect(new URL(url).password).toBe(password);
    c = new pg.Client({ connectionString: url });
    await c.connect();
    expect((await c.query('SELECT v FROM kept')).rows).toEqual([{ v: 'survives restarts' }]);
    await c.end();

    // A crash of the proxy leaves PostgreSQL running; the next start stops it and carries on.
    const orphan = postmasterPid();
    cli.child.kill('SIGKILL');
    await cli.exited;
    expect(alive(orphan)).toBe(true);
    ({ cli, url } = await start());
    expect(alive(orphan)).toBe(false);
    expect(logLines(cli).some((l) => l.msg === 'stopping a PostgreSQL left running on this data directory')).toBe(true);
    c = new pg.Client({ connectionString: url });
    await c.connect();
    expect((await c.query('SELECT v FROM kept')).rows).toEqual([{ v: 'survives restarts' }]);
    await c.end();
    cli.child.kill('SIGTERM');
    expect((await cli.exited).code).toBe(0);
  });
});
