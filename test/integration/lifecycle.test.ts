// The command as users run it: configuration errors, --version, graceful
// shutdown (also by a terminal's Ctrl-C), the embedded PostgreSQL across
// restarts and after a crash, one proxy per data directory, and its logs.
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { CREDENTIALS_FILE, LOCK_FILE } from '../../src/embedded.js';
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
const embeddedArgs = (dataDir: string): string[] => ['--data-dir', dataDir, '--listen', '127.0.0.1:0', '--admin', 'off', '--log-level', 'info'];

const postmasterPid = (dataDir: string): number => Number(readFileSync(path.join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};
const escapeRegExp = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/**
 * The command as a terminal runs it: in a process group of its own (the
 * foreground group), so that `process.kill(-pid, sig)` is what Ctrl-C does.
 */
const runCliInOwnGroup = (args: string[]): CliProcess => runCli(args, {}, { ownProcessGroup: true });

describe('configuration errors', () => {
  const cases: [string, string[], Record<string, string>, RegExp][] = [
    ['a malformed --listen', ['--listen', 'nowhere'], {}, /^pg-durable-proxy: invalid setting listen \(from --listen\): "nowhere": expected HOST:PORT/],
    ['a negative --shutdown-timeout', ['--shutdown-timeout=-1'], {}, /^pg-durable-proxy: invalid setting shutdownTimeout \(from --shutdown-timeout\): "-1": /],
    ['a bad PGDP_LOG_LEVEL', [], { PGDP_LOG_LEVEL: 'loud' }, /^pg-durable-proxy: invalid setting logLevel \(from PGDP_LOG_LEVEL\): "loud": .*"info"/],
    ['an upstream that is not a URL', ['--upstream', 'mysql://x'], {}, /^pg-durable-proxy: invalid setting upstream .*expected a postgres:\/\/ URL/],
    ['an unknown flag', ['--listne', '1'], {}, /^pg-durable-proxy: Unknown option '--listne'/],
    ['a missing config file', ['--config', '/nonexistent/pgdp.json'], {}, /^pg-durable-proxy: config file \/nonexistent\/pgdp.json: ENOENT/],
    ['a TLS certificate without a key', ['--tls-cert', '/x.pem'], {}, /^pg-durable-proxy: invalid setting tlsKey: tlsCert and tlsKey must be given together/],
    ['an unknown command', ['frobnicate'], {}, /^pg-durable-proxy: unknown command "frobnicate" \(see --help\)$/m],
    ['a bad --http-allow entry', ['--http-allow', 'api.example.com,10.0.0.0/33'], {}, /^pg-durable-proxy: invalid setting httpAllow: .*10\.0\.0\.0\/33/],
    // A secret is not repeated.
    ['a short admin token', [], { PGDP_ADMIN_TOKEN: 'tiny-secret' }, /^pg-durable-proxy: invalid setting adminToken \(from PGDP_ADMIN_TOKEN\): \(value not shown\): expected at least 16 characters$/m],
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
    for (const s of ['--upstream', 'PGDP_UPSTREAM', '--listen', '--admin', '--tls-cert', '--shutdown-timeout', 'PGDP_MAX_MESSAGE_SIZE', '--version, -V']) {
      expect(cli.stdout()).toContain(s);
    }
  });

  it('--version and -V print the version of package.json, exit 0, start nothing', async () => {
    const { version } = JSON.parse(readFileSync(path.resolve(import.meta.dirname, '../../package.json'), 'utf8')) as { version: string };
    for (const flag of ['--version', '-V']) {
      const dataDir = path.join(tmp, 'never-' + Math.random().toString(36).slice(2));
      const cli = runCli([flag, '--data-dir', dataDir]);
      cli.ready.catch(() => undefined);
      expect(await cli.exited).toEqual({ code: 0, signal: null });
      expect(cli.stdout()).toBe(`pg-durable-proxy ${version}\n`);
      expect(cli.stderr()).toBe('');
      expect(existsSync(dataDir)).toBe(false);
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
  const lockFile = path.join(dataDir, LOCK_FILE);

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
    const pm = postmasterPid(dataDir);
    cli.child.kill('SIGTERM');
    expect(await cli.exited).toEqual({ code: 0, signal: null });
    expect(alive(pm)).toBe(false);
    expect(existsSync(path.join(dataDir, 'postmaster.pid'))).toBe(false);
    expect(existsSync(lockFile)).toBe(false);

    // Restart: same data, same credentials.
    ({ cli, url } = await start());
    expect(new URL(url).password).toBe(password);
    c = new pg.Client({ connectionString: url });
    await c.connect();
    expect((await c.query('SELECT v FROM kept')).rows).toEqual([{ v: 'survives restarts' }]);
    await c.end();

    // A crash of the proxy leaves PostgreSQL running; the next start stops it and carries on.
    // Its claim on the data directory stays behind too, naming a dead process: stale.
    const orphan = postmasterPid(dataDir);
    const killed = cli.child.pid;
    cli.child.kill('SIGKILL');
    await cli.exited;
    expect(alive(orphan)).toBe(true);
    expect(JSON.parse(readFileSync(lockFile, 'utf8'))).toMatchObject({ pid: killed });
    ({ cli, url } = await start());
    expect(alive(orphan)).toBe(false);
    expect(JSON.parse(readFileSync(lockFile, 'utf8'))).toMatchObject({ pid: cli.child.pid, url: readyUrl(cli) });
    expect(logLines(cli).some((l) => l.msg === 'stopping a PostgreSQL left running on this data directory')).toBe(true);
    c = new pg.Client({ connectionString: url });
    await c.connect();
    expect((await c.query('SELECT v FROM kept')).rows).toEqual([{ v: 'survives restarts' }]);
    await c.end();
    cli.child.kill('SIGTERM');
    expect((await cli.exited).code).toBe(0);
  });
});

describe('one proxy per data directory', () => {
  it('a second start refuses, naming the running proxy and its connection string; the first carries on', async () => {
    // An existing empty directory (a volume's mount point) is initialised like a new one.
    const dataDir = path.join(tmp, 'in-use');
    mkdirSync(dataDir);
    const first = runCli(embeddedArgs(dataDir));
    await first.ready;
    const url = embeddedUrl(first);
    const pm = postmasterPid(dataDir);

    const second = runCli(embeddedArgs(dataDir));
    second.ready.catch(() => undefined);
    expect(await second.exited).toEqual({ code: 1, signal: null });
    expect(second.stderr()).toBe(`pg-durable-proxy: already running (pid ${first.child.pid}): connect with psql '${readyUrl(first)}'\n`);

    expect(postmasterPid(dataDir)).toBe(pm);
    expect(alive(pm)).toBe(true);
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    expect((await c.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    await c.end();
    first.child.kill('SIGTERM');
    expect(await first.exited).toEqual({ code: 0, signal: null });
    expect(existsSync(path.join(dataDir, LOCK_FILE))).toBe(false);
  });

  it('two starts at the same moment, on a new directory and on one a killed proxy left: one runs, the other refuses', async () => {
    const dataDir = path.join(tmp, 'race');
    /** Starts two at once; returns the one that runs and the one that refused, having checked both. */
    const race = async (): Promise<{ winner: CliProcess; loser: CliProcess }> => {
      const clis = [runCli(embeddedArgs(dataDir)), runCli(embeddedArgs(dataDir))];
      const outcomes = await Promise.all(clis.map((c) => c.ready.then(() => 'ready', () => 'refused')));
      expect([...outcomes].sort()).toEqual(['ready', 'refused']);
      const winner = clis[outcomes.indexOf('ready')]!;
      const loser = clis[outcomes.indexOf('refused')]!;
      expect(await loser.exited).toEqual({ code: 1, signal: null });
      expect(loser.stderr()).toMatch(
        new RegExp(`^pg-durable-proxy: already running \\(pid ${winner.child.pid}\\)(, still starting|: connect with psql '${escapeRegExp(readyUrl(winner))}')\n$`),
      );
      const c = new pg.Client({ connectionString: embeddedUrl(winner) });
      await c.connect();
      expect((await c.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
      await c.end();
      return { winner, loser };
    };

    const { winner: first } = await race();
    // Killed: its claim (now stale) and its PostgreSQL stay behind; of the next two starts one takes both over.
    const orphan = postmasterPid(dataDir);
    first.child.kill('SIGKILL');
    await first.exited;
    const { winner: second, loser } = await race();
    expect(alive(orphan)).toBe(false);
    expect(logLines(second).map((l) => l.msg)).toContain('stopping a PostgreSQL left running on this data directory');
    // Either start may have been the one to set the stale claim aside.
    expect([...logLines(second), ...logLines(loser)].map((l) => l.msg)).toContain('taking over a data directory whose proxy is no longer running');
    second.child.kill('SIGTERM');
    expect(await second.exited).toEqual({ code: 0, signal: null });
  });

  it('a claim whose process is alive but not listening yet: "still starting", the directory left alone', async () => {
    const dataDir = path.join(tmp, 'starting');
    mkdirSync(dataDir, { mode: 0o700 });
    // This test's own process stands for a proxy that has claimed the directory and is still starting.
    writeFileSync(path.join(dataDir, LOCK_FILE), JSON.stringify({ pid: process.pid }));
    const cli = runCli(embeddedArgs(dataDir));
    cli.ready.catch(() => undefined);
    expect(await cli.exited).toEqual({ code: 1, signal: null });
    expect(cli.stderr()).toBe(`pg-durable-proxy: already running (pid ${process.pid}), still starting\n`);
    expect(readdirSync(dataDir)).toEqual([LOCK_FILE]);
    expect(JSON.parse(readFileSync(path.join(dataDir, LOCK_FILE), 'utf8'))).toEqual({ pid: process.pid });
  });

  it('a directory that is neither empty nor a data directory: exit 2, left as it was', async () => {
    const dataDir = path.join(tmp, 'foreign');
    mkdirSync(dataDir);
    writeFileSync(path.join(dataDir, 'notes.txt'), 'mine\n');
    const cli = runCli(embeddedArgs(dataDir));
    cli.ready.catch(() => undefined);
    expect(await cli.exited).toEqual({ code: 2, signal: null });
    expect(cli.stderr()).toBe(
      `pg-durable-proxy: data directory ${dataDir} is neither empty nor a PostgreSQL data directory (no PG_VERSION): choose a new or empty directory\n`,
    );
    expect(readdirSync(dataDir)).toEqual(['notes.txt']);
  });
});

describe('Ctrl-C in a terminal', () => {
  it('SIGINT to the whole process group: the running statement finishes, the proxy exits 0, the embedded PostgreSQL stops', async () => {
    const dataDir = path.join(tmp, 'ctrl-c');
    const cli = runCliInOwnGroup([...embeddedArgs(dataDir), '--shutdown-timeout', '20']);
    let pm: number | undefined;
    try {
      await cli.ready;
      const url = embeddedUrl(cli);
      pm = postmasterPid(dataDir);
      const busy = new pg.Client({ connectionString: url, application_name: 'pgdp-test-ctrl-c' });
      busy.on('error', () => undefined); // the proxy closes the session once its statement is done
      await busy.connect();
      const result = busy.query<{ done: string }>(`SELECT 'finished' AS done FROM pg_sleep(2)`);
      const watcher = new pg.Client({ connectionString: url });
      await watcher.connect();
      await untilActivity(watcher, `application_name = $1 AND state = 'active'`, 'pgdp-test-ctrl-c');
      await watcher.end();

      process.kill(-cli.child.pid!, 'SIGINT');
      expect((await result).rows).toEqual([{ done: 'finished' }]);
      expect(await cli.exited).toEqual({ code: 0, signal: null });
      expect(logLines(cli).find((l) => l.msg.startsWith('shutting down'))).toMatchObject({ signal: 'SIGINT' });
      const stoppedPm = pm;
      await eventually(
        () => !existsSync(path.join(dataDir, 'postmaster.pid')) || !alive(stoppedPm),
        'the embedded PostgreSQL to stop',
      );
      expect(existsSync(path.join(dataDir, LOCK_FILE))).toBe(false);
    } finally {
      // Nothing may outlive a failed run: the command's group, and its server (outside that group).
      if (cli.child.exitCode === null && cli.child.signalCode === null) process.kill(-cli.child.pid!, 'SIGKILL');
      if (pm !== undefined && alive(pm)) process.kill(pm, 'SIGQUIT');
    }
  });

  it('Ctrl-C while the first start runs initdb: exit 130, no claim or half-made cluster left, the next start runs', async () => {
    const dataDir = path.join(tmp, 'ctrl-c-initdb');
    const cli = runCliInOwnGroup(embeddedArgs(dataDir));
    cli.ready.catch(() => undefined);
    // initdb is at work once a PG_VERSION exists below the data directory (not yet in it).
    const initdbWriting = (): boolean =>
      existsSync(dataDir) &&
      readdirSync(dataDir, { withFileTypes: true }).some((e) => e.isDirectory() && existsSync(path.join(dataDir, e.name, 'PG_VERSION')));
    try {
      await eventually(initdbWriting, 'initdb to start writing the cluster');
      process.kill(-cli.child.pid!, 'SIGINT');
      expect(await cli.exited).toEqual({ code: 130, signal: null });
    } finally {
      if (cli.child.exitCode === null && cli.child.signalCode === null) process.kill(-cli.child.pid!, 'SIGKILL');
    }
    expect(logLines(cli).map((l) => l.msg)).toContain('interrupted while starting');
    expect(existsSync(path.join(dataDir, LOCK_FILE))).toBe(false);
    // initdb may have finished just as the signal came: then the cluster is there whole, credentials included.
    if (existsSync(path.join(dataDir, 'PG_VERSION'))) expect(existsSync(path.join(dataDir, CREDENTIALS_FILE))).toBe(true);

    const next = runCli(embeddedArgs(dataDir));
    await next.ready;
    const c = new pg.Client({ connectionString: embeddedUrl(next) });
    await c.connect();
    expect((await c.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    await c.end();
    next.child.kill('SIGTERM');
    expect(await next.exited).toEqual({ code: 0, signal: null });
  });
});
