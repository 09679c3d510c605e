// Starts the PostgreSQL every integration test talks to (the embedded one, or
// TEST_DATABASE_URL's) and prepares it: roles for each authentication method,
// their pg_hba rules, and TLS. Everything is done over SQL, so the same set-up
// works on an embedded server and on a local server given by URL.
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { pino } from 'pino';
import type { TestProject } from 'vitest/node';
import { EmbeddedPostgres } from '../../src/embedded.js';
import { startManagedCluster, type ManagedCluster } from './managed-cluster.js';
import { APP, EXECUTOR, ROLES, type TestEnv } from './roles.js';

/** Writes a file as the server's OS user (large-object export). */
async function writeServerFile(admin: pg.Client, file: string, content: string): Promise<void> {
  const { rows } = await admin.query<{ o: number }>(`SELECT lo_from_bytea(0, $1) AS o`, [Buffer.from(content)]);
  await admin.query(`SELECT lo_export($1::oid, $2)`, [rows[0]!.o, file]);
  await admin.query(`SELECT lo_unlink($1::oid)`, [rows[0]!.o]);
}

declare module 'vitest' {
  export interface ProvidedContext {
    env: TestEnv;
  }
}

const EXECUTOR_SCRIPT = path.resolve(import.meta.dirname, '../../sql/executor-role.sql');

let embedded: EmbeddedPostgres | undefined;
let managed: ManagedCluster | undefined;
let tmp: string | undefined;

/**
 * TEST_MODE=managed: a cluster that behaves like a managed service (Debian's
 * server binaries from TEST_PG_BIN, PostgreSQL 15 in CI): SCRAM passwords
 * over TCP for every role, no Unix socket, an executor that is no superuser
 * (made by sql/executor-role.sql) and workflows started by an ordinary role.
 */
const MODE = process.env.TEST_MODE === 'managed' ? 'managed' : 'embedded';
const PG_BIN = process.env.TEST_PG_BIN ?? '/usr/lib/postgresql/15/bin';

export async function setup(project: TestProject): Promise<void> {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'pgdp-test-'));
  chmodSync(tmp, 0o755); // run as root, PostgreSQL runs as another OS user and must reach its data directory
  const certDir = path.join(tmp, 'certs');
  const cert = makeCertificate(certDir);
  let adminUrl = process.env.TEST_DATABASE_URL;
  if (MODE === 'managed') {
    managed = await startManagedCluster(PG_BIN, tmp, cert.certPem, cert.keyPem);
    adminUrl = managed.adminUrl;
  } else if (!adminUrl) {
    embedded = await EmbeddedPostgres.start({
      dataDir: path.join(tmp, 'data'),
      port: 0,
      log: pino({ level: 'warn' }),
      settings: { max_connections: '300' },
    });
    adminUrl = embedded.url;
  }
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    // TLS: write the certificate as the server's own OS user and switch ssl on (a reload suffices).
    for (const [file, pem] of [
      ['pgdp_test_server.crt', cert.certPem],
      ['pgdp_test_server.key', cert.keyPem],
    ] as const) {
      const { rows } = await admin.query<{ dir: string }>(`SELECT current_setting('data_directory') AS dir`);
      const target = path.join(rows[0]!.dir, file);
      await writeServerFile(admin, target, pem);
      // PostgreSQL refuses a key readable by others; the file is the server user's, we may be root beside it.
      if (existsSync(target)) chmodSync(target, 0o600);
    }
    await admin.query(`ALTER SYSTEM SET ssl_cert_file = 'pgdp_test_server.crt'`);
    await admin.query(`ALTER SYSTEM SET ssl_key_file = 'pgdp_test_server.key'`);
    await admin.query(`ALTER SYSTEM SET ssl = on`);

    // One role per authentication method, each with its own pg_hba line ahead of the existing rules
    // (in managed mode only the SCRAM one: no other method is offered there).
    const methods = Object.values(ROLES).filter((r) => MODE === 'embedded' || r.method === 'scram-sha-256');
    for (const r of Object.values(ROLES)) {
      await admin.query(`DROP ROLE IF EXISTS ${r.user}`);
      await admin.query(`SET password_encryption = '${r.method === 'md5' ? 'md5' : 'scram-sha-256'}'`);
      await admin.query(`CREATE ROLE ${r.user} LOGIN PASSWORD '${r.password}'`);
      await admin.query(`GRANT CREATE ON SCHEMA public TO ${r.user}`);
    }
    await admin.query(`RESET password_encryption`);
    const { rows: hba } = await admin.query<{ path: string; text: string }>(
      `SELECT current_setting('hba_file') AS path, pg_read_file(current_setting('hba_file')) AS text`,
    );
    const marker = '# pg-durable-proxy tests';
    const existing = hba[0]!.text.split(marker).pop()!;
    const rules = methods
      .map((r) => `host all ${r.user} 127.0.0.1/32 ${r.method}\nhost all ${r.user} ::1/128 ${r.method}`)
      .join('\n');
    await writeServerFile(admin, hba[0]!.path, `${rules}\n${marker}${existing}`);
    await admin.query(`SELECT pg_reload_conf()`);
    // The reload is asynchronous: wait until a TLS connection works.
    const tlsUrl = new URL(adminUrl);
    tlsUrl.searchParams.set('sslmode', 'no-verify');
    for (let i = 0; ; i++) {
      const probe = new pg.Client({ connectionString: tlsUrl.toString() });
      try {
        await probe.connect();
        await probe.end();
        break;
      } catch (err) {
        if (i >= 50) throw new Error(`the test PostgreSQL did not enable TLS: ${(err as Error).message}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  } finally {
    await admin.end();
  }

  const u = new URL(adminUrl);
  const admin2 = new pg.Client({ connectionString: adminUrl });
  await admin2.connect();
  let serverVersion: number;
  try {
    serverVersion = Number((await admin2.query<{ v: string }>(`SELECT current_setting('server_version_num') AS v`)).rows[0]!.v);
    if (MODE === 'managed') {
      await admin2.query(`DROP ROLE IF EXISTS ${APP.user}`);
      await admin2.query(`CREATE ROLE ${APP.user} LOGIN PASSWORD '${APP.password}'`);
    }
  } finally {
    await admin2.end();
  }
  if (MODE === 'managed') {
    // The executor role exactly as the README makes it, with the script users run.
    execFileSync(path.join(PG_BIN, 'psql'), [adminUrl, '-q', '-v', `executor=${EXECUTOR.user}`, '-v', `password=${EXECUTOR.password}`, '-f', EXECUTOR_SCRIPT], {
      stdio: 'pipe',
    });
  }
  // Every test role's password, for the executor's step logins (roles made later add theirs).
  const passfile = path.join(tmp, 'pgpass');
  const superuser = { user: decodeURIComponent(u.username), password: decodeURIComponent(u.password) };
  const logins = [...Object.values(ROLES), APP, superuser];
  writeFileSync(passfile, logins.map((r) => `${u.hostname}:${u.port || 5432}:*:${r.user}:${r.password}\n`).join(''), { mode: 0o600 });
  const executorUrl = new URL(adminUrl);
  if (MODE === 'managed') {
    executorUrl.username = EXECUTOR.user;
    executorUrl.password = EXECUTOR.password;
  }
  const env: TestEnv = {
    mode: MODE,
    adminUrl,
    executorUrl: executorUrl.toString(),
    app: MODE === 'managed' ? APP : superuser,
    passfile,
    serverVersion,
    pgBin: MODE === 'managed' ? PG_BIN : undefined,
    pgHost: u.hostname,
    pgPort: Number(u.port || 5432),
    caCertPath: cert.certPath,
    certPath: cert.certPath,
    keyPath: cert.keyPath,
    socketDir: MODE === 'managed' ? undefined : (embedded?.socketDir ?? process.env.TEST_SOCKET_DIR ?? '/var/run/postgresql'),
  };
  project.provide('env', env);
  // Proxies started as commands serve only the database they front: test files
  // each run workflows in a database of their own, out of one another's way.
  process.env.PGDP_DATABASES ??= 'postgres';
}

export async function teardown(): Promise<void> {
  await embedded?.stop();
  await managed?.stop();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
}

/** A self-signed certificate for localhost / 127.0.0.1, used both by the test server and the proxy. */
function makeCertificate(dir: string): { certPath: string; keyPath: string; certPem: string; keyPem: string } {
  execFileSync('mkdir', ['-p', dir]);
  const certPath = path.join(dir, 'server.crt');
  const keyPath = path.join(dir, 'server.key');
  execFileSync(
    'openssl',
    ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyPath, '-out', certPath, '-days', '2', '-subj', '/CN=localhost',
      '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'],
    { stdio: 'ignore' },
  );
  return { certPath, keyPath, certPem: readFileSync(certPath, 'utf8'), keyPem: readFileSync(keyPath, 'utf8') };
}
