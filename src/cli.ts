#!/usr/bin/env node
// pg-durable-proxy: starts the embedded PostgreSQL (unless --upstream is given),
// the wire proxy and the admin endpoint; stops them in that order's reverse.
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { pino, type Logger } from 'pino';
import { AdminServer } from './admin/server.js';
import { Console } from './admin/console/index.js';
import { ConfigError, describeSettings, httpPolicy, loadConfig, splitHostPort, type Config } from './config.js';
import { abandonStarts, CREDENTIALS_FILE, EmbeddedPostgres } from './embedded.js';
import { EXECUTOR_DEFAULTS, Executor } from './engine/executor.js';
import { engineMetrics } from './engine/metrics.js';
import { connectionTargets, stepLoginFor } from './engine/targets.js';
import { databaseOf, runCheck } from './check/command.js';
import { DslInterceptor, loadDslParser } from './dsl/interceptor.js';
import { startInOwnTransaction } from './engine/start.js';
import { ProxyServer } from './proxy/server.js';
import { upstreamFromUrl } from './proxy/upstream.js';
import { VERSION } from './version.js';

function usage(): string {
  const rows = describeSettings().map(
    (s) => `  ${s.flag.padEnd(22)} ${s.env.padEnd(26)} ${s.description}${s.default !== undefined ? ` (default ${String(s.default)})` : ''}`,
  );
  return [
    'usage: pg-durable-proxy [options]',
    '       pg-durable-proxy check --upstream URL [options]   verify a server is set up for the proxy (see check --help)',
    '       pg-durable-proxy --version',
    '',
    '  --help, -h                                        print this help and exit',
    '  --version, -V                                     print the version and exit',
    '  --config FILE          PGDP_CONFIG                JSON file of settings (flags > env > file > defaults)',
    ...rows,
  ].join('\n');
}

/** The URL to hand to clients: the proxy's address with the upstream's user and database. */
function clientUrl(listen: { host: string; port: number }, upstreamUrl: string, showPassword: boolean): string {
  const up = new URL(upstreamUrl);
  const out = new URL('postgres://localhost');
  out.hostname = listen.host.includes(':') ? `[${listen.host}]` : listen.host;
  out.port = String(listen.port);
  out.username = up.username;
  if (showPassword) out.password = up.password;
  out.pathname = up.pathname;
  return out.toString();
}


function readyLine(listen: { host: string; port: number }, upstreamUrl: string, embedded: EmbeddedPostgres | undefined): string {
  if (!embedded) return `pg-durable-proxy ready: psql '${clientUrl(listen, upstreamUrl, false)}'`;
  if (process.stderr.isTTY) return `pg-durable-proxy ready: psql '${clientUrl(listen, upstreamUrl, true)}'`;
  return `pg-durable-proxy ready: psql '${clientUrl(listen, upstreamUrl, false)}' (password: "password" in ${path.join(embedded.dataDir, CREDENTIALS_FILE)})`;
}


/** Set when a signal abandons the start: the start's own failures that follow are not reported. */
let abandoning = false;

async function run(cfg: Config, log: Logger): Promise<void> {
  // Until the proxy is ready, a signal abandons the start: what it started
  // (the embedded server, initdb) is stopped and waited for, then the process
  // exits 128 + signal number; a second signal exits at once. From then on a
  // signal shuts down gracefully. The listeners stay for the whole run, only
  // their action changes: Node drops a signal caught just before its last
  // listener is removed.
  let onSignal = (signal: NodeJS.Signals): void => {
    const status = 128 + os.constants.signals[signal];
    if (abandoning) {
      log.warn({ signal }, 'second signal: exiting now');
      process.exit(status);
    }
    abandoning = true;
    log.warn({ signal }, 'interrupted while starting');
    void abandonStarts().finally(() => {
      log.flush();
      process.exit(status);
    });
  };
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  process.on('SIGINT', () => onSignal('SIGINT'));

  let secureContext: tls.SecureContext | undefined;
  if (cfg.tlsCert && cfg.tlsKey) {
    try {
      secureContext = tls.createSecureContext({ cert: readFileSync(cfg.tlsCert), key: readFileSync(cfg.tlsKey) });
    } catch (err) {
      throw new ConfigError(`invalid setting tlsCert/tlsKey: ${(err as Error).message}`);
    }
  }

  // Checked before anything is started: a bad --http-allow leaves nothing running.
  const http = httpPolicy(cfg);

  let embedded: EmbeddedPostgres | undefined;
  if (!cfg.upstream) {
    // Its own process group: a terminal's Ctrl-C reaches only the proxy, which lets running statements finish before stopping it.
    embedded = await EmbeddedPostgres.start({ dataDir: cfg.dataDir, port: cfg.embeddedPort, log, ownProcessGroup: true });
    embedded.onUnexpectedExit = () => process.exit(1);
  }
  const upstreamUrl = cfg.upstream ?? embedded!.url;
  const executorUrl = cfg.executorUrl ?? upstreamUrl;
  let targets: ReturnType<typeof connectionTargets>;
  try {
    const stepLogin = stepLoginFor(cfg, executorUrl, embedded ? { socketDir: embedded.socketDir, port: embedded.port } : undefined);
    targets = connectionTargets(executorUrl, stepLogin, (message) => log.warn({ component: 'executor' }, message));
  } catch (err) {
    await embedded?.stop();
    throw err;
  }
  const executor = new Executor({
    ...EXECUTOR_DEFAULTS,
    ...targets,
    log: log.child({ component: 'executor' }),
    leaseSeconds: cfg.leaseTimeout,
    maxStepResult: cfg.maxStepResult,
    maxInstances: cfg.maxInstances,
    maxInstancesPerRole: cfg.maxInstancesPerRole,
    retentionDays: cfg.retentionDays,
    retentionMaxInstances: cfg.retentionMaxInstances,
    ...(cfg.databases ? { databases: cfg.databases.split(',').map((d) => d.trim()) } : {}),
    ...(cfg.dfOwner ? { dfOwner: cfg.dfOwner } : {}),
    allowSuperuserInstances: cfg.allowSuperuserInstances ? cfg.allowSuperuserInstances === 'true' : embedded !== undefined,
    http,
  });
  await loadDslParser();
  try {
    await executor.discover(databaseOf(executorUrl));
  } catch (err) {
    await executor.close();
    await embedded?.stop();
    throw new Error(`the executor cannot reach the database: ${(err as Error).message}`, { cause: err });
  }

  const proxy = new ProxyServer({
    upstream: upstreamFromUrl(upstreamUrl),
    ...splitHostPort(cfg.listen),
    log,
    tls: secureContext,
    maxMessageSize: cfg.maxMessageSize,
    startupTimeoutMs: cfg.startupTimeout * 1000,
    connectTimeoutMs: cfg.connectTimeout * 1000,
    interceptor: new DslInterceptor(log.child({ component: 'dsl' }), {
      startElsewhere: startInOwnTransaction(targets.start, { max: cfg.maxNewTransactionStarts, timeoutMs: cfg.newTransactionStartTimeout * 1000 }),
      releaseDatabases: (names) => executor.release(names),
      ensureSchema: (database) => executor.ensure(database),
      checkLogin: (database, role) => executor.checkLogin(database, role),
    }),
  });
  let admin: AdminServer | undefined;
  let webConsole: Console | undefined;
  let stopping = false;
  const stop = async (signal: string): Promise<void> => {
    if (stopping) {
      log.warn({ signal }, 'second signal: exiting now');
      process.exit(1);
    }
    stopping = true;
    log.info({ signal, timeoutSeconds: cfg.shutdownTimeout }, 'shutting down: letting running statements finish');
    await proxy.shutdown(cfg.shutdownTimeout * 1000);
    await executor.close();
    await admin?.close();
    await webConsole?.close();
    await embedded?.stop();
    log.info('stopped');
    log.flush();
    process.exit(0);
  };
  try {
    const at = await proxy.listen();
    if (cfg.admin !== 'off') {
      // The console: sign-ins log in to the upstream as clients do; the operator token reads as the executor.
      if (cfg.console === 'on' || cfg.adminToken !== undefined) {
        webConsole = new Console({
          roleSignIn: cfg.console === 'on',
          upstreamUrl,
          control: targets.control,
          defaultDatabase: databaseOf(executorUrl),
          ...(cfg.databases ? { databases: cfg.databases.split(',').map((d) => d.trim()) } : {}),
          events: executor.events,
          ...(cfg.adminToken !== undefined ? { adminToken: cfg.adminToken } : {}),
          log: log.child({ component: 'console' }),
        });
      }
      admin = new AdminServer({
        ...splitHostPort(cfg.admin),
        stats: proxy.stats,
        probeUrl: cfg.executorUrl ?? upstreamUrl,
        log,
        registries: [engineMetrics(executor, { log: log.child({ component: 'metrics' }) })],
        ...(webConsole ? { handlers: [webConsole.handler] } : {}),
      });
      const a = await admin.listen();
      log.info({ admin: `http://${a.host}:${a.port}`, console: webConsole ? `http://${a.host}:${a.port}/console/` : 'off' }, 'admin endpoint listening');
    }
    // The log never carries the password. The ready line carries the embedded server's
    // only when a person is reading stderr (a terminal); captured stderr (a service
    // manager, CI) gets where it is kept instead.
    log.info({ listen: `${at.host}:${at.port}`, embedded: embedded !== undefined, connectionString: clientUrl(at, upstreamUrl, false) }, 'proxy ready');
    embedded?.announce(clientUrl(at, upstreamUrl, false));
    // Before the ready line: whoever reads it may signal at once.
    onSignal = (signal) => void stop(signal);
    process.stderr.write(readyLine(at, upstreamUrl, embedded) + '\n');
  } catch (err) {
    await executor.close();
    await embedded?.stop();
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'EADDRINUSE' || e.code === 'EACCES' || e.code === 'EADDRNOTAVAIL') {
      throw new ConfigError(`cannot listen on ${(e as { address?: string }).address ?? ''}:${(e as { port?: number }).port ?? ''}: ${e.code}`);
    }
    throw err;
  }
}

/** Runs the proxy (the command without a subcommand). */
function serve(args: string[]): void {
  const options = args.includes('--') ? args.slice(0, args.indexOf('--')) : args;
  if (options.includes('--version') || options.includes('-V')) {
    process.stdout.write(`pg-durable-proxy ${VERSION}\n`);
    return;
  }
  let cfg: ReturnType<typeof loadConfig>;
  try {
    cfg = loadConfig(args, process.env);
  } catch (err) {
    process.stderr.write(`pg-durable-proxy: ${(err as Error).message}\n`);
    process.exit(2);
  }
  if (cfg.help) {
    process.stdout.write(usage() + '\n');
    return;
  }
  const log = pino({ level: cfg.logLevel, base: { service: 'pg-durable-proxy' } });
  run(cfg, log).catch((err: unknown) => {
    if (abandoning) return;
    const msg = err instanceof Error ? err.message : String(err);
    log.fatal({ err: msg }, 'start-up failed');
    process.stderr.write(`pg-durable-proxy: ${msg}\n`);
    process.exit(err instanceof ConfigError ? 2 : 1);
  });
}

/** A first word that is not an option names a subcommand; without one the proxy runs. */
function main(argv: string[]): void {
  const command = argv[0] !== undefined && !argv[0].startsWith('-') ? argv[0] : undefined;
  switch (command) {
    case undefined:
      return serve(argv);
    case 'check':
      void runCheck(argv.slice(1), process.env, (text) => process.stdout.write(text + '\n')).then(
        (status) => process.exit(status),
        (err: unknown) => {
          process.stderr.write(`pg-durable-proxy check: ${(err as Error).message}\n`);
          process.exit(1);
        },
      );
      return;
    default:
      process.stderr.write(`pg-durable-proxy: unknown command "${command}" (see --help)\n`);
      process.exit(2);
  }
}

main(process.argv.slice(2));
