// Starting proxies against the test PostgreSQL, in this process or as the real command.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { pino } from 'pino';
import { inject } from 'vitest';
import { ProxyServer, type ProxyOptions } from '../../src/proxy/server.js';
import { upstreamFromUrl } from '../../src/proxy/upstream.js';
import type { TestEnv } from './roles.js';

export const env = (): TestEnv => inject('env');

export interface RunningProxy {
  proxy: ProxyServer;
  host: string;
  port: number;
  /** URL through the proxy for a user (and password), database postgres unless given. */
  url(user: string, password?: string, database?: string): string;
  /** The test superuser, through the proxy. */
  adminUrl: string;
  close(): Promise<void>;
}

export interface StartOptions extends Partial<Omit<ProxyOptions, 'upstream' | 'log'>> {
  /** Upstream URL; default: the test PostgreSQL with sslmode=disable. */
  upstreamUrl?: string;
  /** Terminate TLS with the test certificate. */
  withTls?: boolean;
}

export async function startProxy(opts: StartOptions = {}): Promise<RunningProxy> {
  const e = env();
  const upstreamUrl = opts.upstreamUrl ?? e.adminUrl;
  const secure = opts.withTls
    ? tls.createSecureContext({ cert: readFileSync(e.certPath), key: readFileSync(e.keyPath) })
    : undefined;
  const proxy = new ProxyServer({
    host: '127.0.0.1',
    port: 0,
    ...opts,
    tls: opts.tls ?? secure,
    upstream: upstreamFromUrl(upstreamUrl),
    log: pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' }),
  });
  const { host, port } = await proxy.listen();
  const url = (user: string, password?: string, database = 'postgres'): string =>
    `postgres://${encodeURIComponent(user)}${password !== undefined ? ':' + encodeURIComponent(password) : ''}@${host}:${port}/${database}`;
  const admin = new URL(e.adminUrl);
  return {
    proxy,
    host,
    port,
    url,
    adminUrl: url(decodeURIComponent(admin.username), decodeURIComponent(admin.password)),
    close: () => proxy.shutdown(2000),
  };
}

export const CLI = path.resolve(import.meta.dirname, '../../dist/cli.js');

export interface CliProcess {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  /** Resolves with the exit code (or signal). */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Resolves when the proxy prints its ready line. */
  ready: Promise<void>;
}

/** Runs the built command (`npm test` builds first); `ownProcessGroup`: as a terminal runs it, in a process group of its own. */
export function runCli(args: string[], extraEnv: Record<string, string> = {}, { ownProcessGroup = false } = {}): CliProcess {
  const child = spawn(process.execPath, [CLI, ...args], {
    env: { ...process.env, ...extraEnv },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: ownProcessGroup,
  });
  let out = '';
  let err = '';
  let onReady: () => void;
  let onNotReady: (e: Error) => void;
  const ready = new Promise<void>((res, rej) => {
    onReady = res;
    onNotReady = rej;
  });
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => {
    err += d.toString();
    if (err.includes('pg-durable-proxy ready:')) onReady();
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => {
      onNotReady(new Error(`proxy exited (${code ?? signal}) before it was ready:\n${err}\n${out}`));
      resolve({ code, signal });
    }),
  );
  return { child, stdout: () => out, stderr: () => err, exited, ready };
}
