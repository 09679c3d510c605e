// Steps log in as their workflow's submitter. Against a server where roles
// log in with SCRAM passwords (or client certificates) over TCP, as on a
// managed service, the proxy takes the password from a libpq password file
// and the certificate from a directory; a df.start whose submitter it cannot
// log in as is refused, and a workflow started where the proxy cannot see it
// fails with the same message instead of staying running.
import { execFileSync } from 'node:child_process';
import { appendFileSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { connectionTargets } from '../../src/engine/targets.js';
import { createRoles, dbUrl, runWorkflow, startDurable, type Durable } from '../helpers/durable.js';
import { env } from '../helpers/proxy.js';
import { eventually } from '../helpers/wait.js';

const DATABASE = 'pgdp_step_login';
/** In the password file from the start. */
const KNOWN = 'pgdp_sl_known';
/** Added to the password file while the proxy runs. */
const LATE = 'pgdp_sl_late';
/** Never in it. */
const NEVER = 'pgdp_sl_never';
/** Logs its steps in with a client certificate (and its client sessions with its password). */
const CERT = 'pgdp_sl_cert';
const HBA_MARKER = '# pgdp step-login test';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'pgdp-step-login-'));
const passfile = path.join(tmp, 'pgpass');
const certDir = path.join(tmp, 'step-certs');
const pki = path.join(tmp, 'pki');

let d: Durable;
let admin: pg.Client;

/** Writes a file as the server's OS user (large-object export), as global-setup does. */
async function writeServerFile(c: pg.Client, file: string, content: string): Promise<void> {
  const { rows } = await c.query<{ o: number }>(`SELECT lo_from_bytea(0, $1) AS o`, [Buffer.from(content)]);
  await c.query(`SELECT lo_export($1::oid, $2)`, [rows[0]!.o, file]);
  await c.query(`SELECT lo_unlink($1::oid)`, [rows[0]!.o]);
}

const passLine = (role: string): string => `${env().pgHost}:${env().pgPort}:*:${role}:${role}-pw\n`;

/** A CA, and a client certificate signed by it with CN = CERT. */
function makeCertificates(): void {
  mkdirSync(pki, { recursive: true });
  const ssl = (...args: string[]): void => void execFileSync('openssl', args, { stdio: 'ignore' });
  ssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', path.join(pki, 'ca.key'), '-out', path.join(pki, 'ca.crt'), '-days', '2', '-subj', '/CN=pgdp step-login test CA');
  ssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', path.join(pki, `${CERT}.key`), '-out', path.join(pki, `${CERT}.csr`), '-subj', `/CN=${CERT}`);
  ssl('x509', '-req', '-in', path.join(pki, `${CERT}.csr`), '-CA', path.join(pki, 'ca.crt'), '-CAkey', path.join(pki, 'ca.key'), '-CAcreateserial', '-out', path.join(pki, `${CERT}.crt`), '-days', '2');
}

/** The server trusts the test CA, and CERT logs in over TLS with its certificate only. */
async function serverAcceptsCertificate(c: pg.Client): Promise<void> {
  const { rows } = await c.query<{ dir: string; hba: string; text: string }>(
    `SELECT current_setting('data_directory') AS dir, current_setting('hba_file') AS hba, pg_read_file(current_setting('hba_file')) AS text`,
  );
  const { dir, hba, text } = rows[0]!;
  await writeServerFile(c, path.join(dir, 'pgdp_step_login_ca.crt'), readFileSync(path.join(pki, 'ca.crt'), 'utf8'));
  await c.query(`ALTER SYSTEM SET ssl_ca_file = 'pgdp_step_login_ca.crt'`);
  const rules = `hostssl all ${CERT} 127.0.0.1/32 cert ${HBA_MARKER}\nhostssl all ${CERT} ::1/128 cert ${HBA_MARKER}\n`;
  await writeServerFile(c, hba, rules + text);
  await c.query('SELECT pg_reload_conf()');
  // The reload is asynchronous: wait until the certificate logs in.
  const e = env();
  await eventually(async () => {
    const probe = new pg.Client({
      host: e.pgHost,
      port: e.pgPort,
      user: CERT,
      database: DATABASE,
      ssl: { ca: readFileSync(e.caCertPath), cert: readFileSync(path.join(pki, `${CERT}.crt`)), key: readFileSync(path.join(pki, `${CERT}.key`)) },
    });
    probe.on('error', () => {});
    try {
      await probe.connect();
      return true;
    } catch {
      return false;
    } finally {
      await probe.end().catch(() => {});
    }
  }, 'the test server to accept the client certificate');
}

async function undoServerChanges(): Promise<void> {
  const c = new pg.Client(env().adminUrl);
  await c.connect();
  try {
    const { rows } = await c.query<{ hba: string; text: string }>(`SELECT current_setting('hba_file') AS hba, pg_read_file(current_setting('hba_file')) AS text`);
    const kept = rows[0]!.text.split('\n').filter((l) => !l.endsWith(HBA_MARKER));
    await writeServerFile(c, rows[0]!.hba, kept.join('\n'));
    await c.query('ALTER SYSTEM RESET ssl_ca_file');
    await c.query('SELECT pg_reload_conf()');
  } finally {
    await c.end();
  }
}

beforeAll(async () => {
  const e = env();
  writeFileSync(passfile, `# step logins of the step-login test\n${passLine(KNOWN)}`, { mode: 0o600 });
  mkdirSync(certDir);
  makeCertificates();
  // TCP and TLS to the server, the steps' passwords from the file, certificates from the directory: no socket.
  const stepUrl = `postgres://${e.pgHost}:${e.pgPort}/postgres?sslmode=verify-full&sslrootcert=${encodeURIComponent(e.caCertPath)}`;
  const targets = connectionTargets(dbUrl(e.executorUrl, DATABASE), { url: stepUrl, passfile, certDir });
  d = await startDurable(DATABASE, { step: targets.step, start: targets.start, checkLogin: true });
  admin = await d.direct();
  await createRoles([KNOWN, LATE, NEVER, CERT]);
  for (const r of [KNOWN, LATE, NEVER, CERT]) await admin.query(`SELECT df.grant_usage('${r}')`);
  await serverAcceptsCertificate(admin);
});
afterAll(async () => {
  await undoServerChanges();
  await d?.close();
  rmSync(tmp, { recursive: true, force: true });
});

const instances = async (): Promise<number> => (await admin.query<{ n: number }>('SELECT count(*)::int AS n FROM df.instances')).rows[0]!.n;
const WHO = `df.start('SELECT current_user::text AS cu, session_user::text AS su')`;

describe('a password role', () => {
  it('runs its workflow end to end with the password from the file: its steps are logged in as it', async () => {
    const c = await d.connect(KNOWN, `${KNOWN}-pw`);
    const run = await runWorkflow(c, WHO);
    expect(run).toMatchObject({ status: 'completed', result: { rows: [{ cu: KNOWN, su: KNOWN }], row_count: 1 } });
    // transaction_mode => 'new' logs in as it too, on a connection of its own.
    const { rows } = await c.query<{ start: string }>(`SELECT df.start('SELECT session_user::text AS su', transaction_mode => 'new')`);
    expect(await c.query('SELECT df.await_instance($1) AS s', [rows[0]!.start]).then((r) => r.rows[0].s)).toBe('completed');
  });

  it('without a line in the file, df.start is refused with 28P01 and the hint, in every form, and nothing is inserted', async () => {
    const c = await d.connect(LATE, `${LATE}-pw`);
    const before = await instances();
    const message =
      `pg-durable-proxy cannot log in as role "${LATE}" to run its workflow steps: the server asks for a password for role "${LATE}" ` +
      `(host ${env().pgHost}, port ${env().pgPort}, database "${DATABASE}") and the step password file ${passfile} has no line matching it`;
    const forms: [string, unknown[]][] = [
      [`SELECT df.start('SELECT 1')`, []],
      ['SELECT df.start($1)', ['SELECT 1']],
      [`SELECT 1 AS x, df.start('SELECT 1' ~> 'SELECT 2', 'lbl', database => '${DATABASE}')`, []],
      [`SELECT df.start('SELECT 1', transaction_mode => 'new')`, []],
    ];
    for (const [sql, params] of forms) {
      const err = await c.query(sql, params).then(
        () => undefined,
        (e: unknown) => e as { code: string; message: string; hint: string; position: string },
      );
      expect(err, sql).toMatchObject({ code: '28P01', message, hint: expect.stringContaining('--step-passfile / PGDP_STEP_PASSFILE') });
      expect(err!.hint).toContain('--step-cert-dir');
      expect(err!.hint).toContain('trust or peer');
      expect(sql.slice(Number(err!.position) - 1), sql).toMatch(/^df\.start\(/);
    }
    // The session goes on; a statement without df.start is not checked, nor one defining a function that calls it.
    expect((await c.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    await admin.query(`GRANT CREATE ON SCHEMA public TO ${LATE}`);
    await c.query(`CREATE OR REPLACE FUNCTION pgdp_sl_later() RETURNS text LANGUAGE sql BEGIN ATOMIC SELECT df.start('SELECT 1'); END`);
    expect(await instances()).toBe(before);
  });

  it('once its line is added to the file (no restart) and the cached refusal has expired, df.start works', async () => {
    const t0 = Date.now();
    const clock = vi.spyOn(Date, 'now').mockReturnValue(t0);
    try {
      // Known: the answer comes from the cache, without a promise.
      await d.executor.checkLogin(DATABASE, LATE);
      appendFileSync(passfile, passLine(LATE));
      expect(d.executor.checkLogin(DATABASE, LATE)).toMatchObject({ code: '28P01' });
      clock.mockReturnValue(t0 + 5001);
      const fresh = d.executor.checkLogin(DATABASE, LATE);
      expect(fresh).toBeInstanceOf(Promise);
      expect(await fresh).toBeUndefined();
      expect(d.executor.checkLogin(DATABASE, LATE)).toBeUndefined();
    } finally {
      clock.mockRestore();
    }
    const c = await d.connect(LATE, `${LATE}-pw`);
    expect(await runWorkflow(c, WHO)).toMatchObject({ status: 'completed', result: { rows: [{ cu: LATE, su: LATE }] } });
  });

  it('a workflow started where the proxy cannot see it (a DO block) with no password known fails with the same message, after a few attempts', async () => {
    const c = await d.connect(NEVER, `${NEVER}-pw`);
    const started = Date.now();
    await c.query(`DO $$ BEGIN PERFORM df.start('SELECT 1', 'pgdp-sl-do'); END $$`);
    const { rows } = await admin.query<{ id: string }>(`SELECT id FROM df.instances WHERE label = 'pgdp-sl-do'`);
    expect(rows).toHaveLength(1);
    expect((await admin.query('SELECT df.await_instance($1, 30) AS s', [rows[0]!.id])).rows[0].s).toBe('failed');
    const elapsed = Date.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(2500); // three attempts, a second and two apart: not at the first refusal
    expect(elapsed).toBeLessThan(20_000);
    const out = await admin.query<{ output: string }>('SELECT output FROM df.instances WHERE id = $1', [rows[0]!.id]);
    expect(out.rows[0]!.output).toBe(
      `pg-durable-proxy cannot log in as role "${NEVER}" to run its workflow steps: the server asks for a password for role "${NEVER}" ` +
        `(host ${env().pgHost}, port ${env().pgPort}, database "${DATABASE}") and the step password file ${passfile} has no line matching it`,
    );
  });
});

describe('a certificate role', () => {
  // Its client sessions go through the proxy over TLS too, where the certificate rule would ask the
  // proxy for a certificate: a member of it starts its workflows after SET ROLE instead.
  it("is refused with the server's 28000 while its certificate is missing, and runs over TLS with it once it is in the directory", async () => {
    await admin.query(`GRANT ${CERT} TO ${KNOWN}`);
    const c = await d.connect(KNOWN, `${KNOWN}-pw`);
    await c.query(`SET ROLE ${CERT}`);
    // transaction_mode => 'new' is checked for the current role, which its start connection logs in as.
    const before = await instances();
    await expect(c.query(`SELECT df.start('SELECT 1', transaction_mode => 'new')`)).rejects.toMatchObject({
      code: '28000',
      message: `pg-durable-proxy cannot log in as role "${CERT}" to run its workflow steps: connection requires a valid client certificate`,
      hint: expect.stringContaining('--step-cert-dir'),
    });
    expect(await instances()).toBe(before);
    copyFileSync(path.join(pki, `${CERT}.crt`), path.join(certDir, `${CERT}.crt`));
    copyFileSync(path.join(pki, `${CERT}.key`), path.join(certDir, `${CERT}.key`));
    const clock = vi.spyOn(Date, 'now').mockReturnValue(Date.now() + 5001);
    try {
      expect(await d.executor.checkLogin(DATABASE, CERT)).toBeUndefined();
    } finally {
      clock.mockRestore();
    }
    const { rows } = await c.query<{ start: string }>(
      `SELECT df.start('SELECT session_user::text AS su, ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()', transaction_mode => 'new')`,
    );
    expect((await admin.query('SELECT df.await_instance($1) AS s', [rows[0]!.start])).rows[0].s).toBe('completed');
    const { rows: out } = await admin.query<{ by: string; result: string }>('SELECT submitted_by::text AS by, df.result(id) AS result FROM df.instances WHERE id = $1', [rows[0]!.start]);
    expect(out[0]!.by).toBe(CERT);
    expect(JSON.parse(out[0]!.result)).toMatchObject({ rows: [{ su: CERT, ssl: true, client_dn: `/CN=${CERT}` }] });
  });
});
