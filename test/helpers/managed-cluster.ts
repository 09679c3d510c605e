// A PostgreSQL cluster that behaves like a managed service, for the managed
// test mode: Debian's server binaries (PostgreSQL 15 in CI), every role logs
// in with a SCRAM password over TCP, and there is no Unix socket at all.
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { chownSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { freePort } from '../../src/embedded.js';

export interface ManagedCluster {
  port: number;
  /** The superuser (the service's admin; tests use it only to set up and to look). */
  adminUrl: string;
  version: string;
  stop(): Promise<void>;
}

/** The OS account the server runs as when the tests run as root (PostgreSQL refuses root). */
function serverAccount(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const id = (flag: string): number => Number(execFileSync('id', [flag, 'postgres'], { encoding: 'utf8' }).trim());
  return { uid: id('-u'), gid: id('-g') };
}

function run(bin: string, args: string[], owner: { uid: number; gid: number } | undefined): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { ...owner, env: { ...process.env, LC_ALL: 'C' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.once('error', reject);
    child.once('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`${path.basename(bin)} failed (${code}):\n${out}`))));
  });
}

export async function startManagedCluster(binDir: string, dir: string, certPem: string, keyPem: string): Promise<ManagedCluster> {
  const owner = serverAccount();
  const data = path.join(dir, 'managed-data');
  mkdirSync(data, { mode: 0o700 });
  if (owner) chownSync(data, owner.uid, owner.gid);
  const password = 'managed-admin-secret';
  const pwfile = path.join(dir, 'managed-pw');
  writeFileSync(pwfile, password + '\n', { mode: 0o600 });
  if (owner) chownSync(pwfile, owner.uid, owner.gid);
  await run(path.join(binDir, 'initdb'), [`--pgdata=${data}`, '--auth=scram-sha-256', '--username=postgres', `--pwfile=${pwfile}`, '--encoding=UTF8', '--no-locale'], owner);
  // TLS with the tests' certificate, as a managed service offers it.
  for (const [file, pem] of [['server.crt', certPem], ['server.key', keyPem]] as const) {
    writeFileSync(path.join(data, file), pem, { mode: 0o600 });
    if (owner) chownSync(path.join(data, file), owner.uid, owner.gid);
  }
  const version = (await run(path.join(binDir, 'postgres'), ['--version'], owner)).trim();
  const port = await freePort();
  const settings = {
    listen_addresses: '127.0.0.1',
    // No socket: like a managed service, every login is over TCP with a password.
    unix_socket_directories: '',
    max_connections: '300',
    ssl: 'on',
    password_encryption: 'scram-sha-256',
  };
  const args = ['-D', data, '-p', String(port)];
  for (const [k, v] of Object.entries(settings)) args.push('-c', `${k}=${v}`);
  const child: ChildProcess = spawn(path.join(binDir, 'postgres'), args, {
    ...owner,
    env: { ...process.env, LC_ALL: 'C', LC_MESSAGES: 'C' },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true, // its own process group: a Ctrl-C of the test run reaches it only through stop()
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    let log = '';
    const timer = setTimeout(() => reject(new Error(`the managed-mode PostgreSQL did not start:\n${log}`)), 60_000);
    const onData = (d: Buffer): void => {
      log += d.toString();
      if (log.includes('database system is ready to accept connections')) {
        clearTimeout(timer);
        child.stdout!.off('data', onData);
        child.stderr!.off('data', onData);
        resolve();
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the managed-mode PostgreSQL exited (${code}):\n${log}`));
    });
  });
  child.stdout!.resume();
  child.stderr!.resume();
  return {
    port,
    version,
    adminUrl: `postgres://postgres:${password}@127.0.0.1:${port}/postgres?sslmode=disable`,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGINT');
      await exited;
    },
  };
}
