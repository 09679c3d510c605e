// The README's "Running against a managed PostgreSQL", command by command, on
// a server where no role the proxy uses is a superuser and every login is a
// SCRAM password over TCP: the executor role script, `pg-durable-proxy check`
// (what it reports missing, and that its fixes fix it), the proxy started
// with the documented flags, and a password role's workflow end to end.
import { execFile } from 'node:child_process';
import { appendFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dbUrl } from '../helpers/durable.js';
import { CLI, env, runCli, type CliProcess } from '../helpers/proxy.js';

const DATABASE = 'pgdp_guide';
const EXECUTOR = { user: 'pgdp_guide_executor', password: 'guide executor secret' };
const APP = { user: 'pgdp_guide_app', password: 'guide-app-secret' };
/** A login role and nothing else, checked against a database of its own. */
const BARE = { user: 'pgdp_guide_bare', password: 'bare-secret' };
const BARE_DATABASE = 'pgdp_guide_bare';
const SCRIPT = path.resolve(import.meta.dirname, '../../sql/executor-role.sql');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'pgdp-guide-'));
const passfile = path.join(tmp, 'pgpass');

/** A URL of the test server for `who` (host and port as the README's db.example.com:5432). */
function serverUrl(who: { user: string; password: string } | undefined, database = DATABASE): string {
  const u = new URL(dbUrl(env().adminUrl, database));
  u.username = who ? encodeURIComponent(who.user) : '';
  u.password = who ? encodeURIComponent(who.password) : '';
  return u.toString();
}

function run(file: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    // PGDP_DATABASES is set for the other suites' commands; the README's commands name their database.
    const { PGDP_DATABASES: _ignored, ...rest } = process.env;
    execFile(file, args, { env: rest }, (err, stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

const psql = (url: string, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> =>
  run(path.join(env().pgBin!, 'psql'), [url, '-X', '-q', ...args]);

const check = (executor: { user: string; password: string }, database = DATABASE): Promise<{ code: number; stdout: string; stderr: string }> =>
  run(process.execPath, [CLI, 'check', '--upstream', serverUrl(undefined, database), '--executor-url', serverUrl(executor, database), '--step-passfile', passfile]);

async function asAdmin(sql: string): Promise<void> {
  const c = new pg.Client(env().adminUrl);
  await c.connect();
  try {
    await c.query(sql);
  } finally {
    await c.end();
  }
}

let proxy: CliProcess | undefined;

beforeAll(async () => {
  for (const db of [DATABASE, BARE_DATABASE]) await asAdmin(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
  for (const r of [EXECUTOR, APP, BARE]) await asAdmin(`DROP ROLE IF EXISTS ${r.user}`);
  // What a managed service hands you: an application role that owns its database.
  await asAdmin(`CREATE ROLE ${APP.user} LOGIN PASSWORD '${APP.password}'`);
  for (const db of [DATABASE, BARE_DATABASE]) await asAdmin(`CREATE DATABASE ${db} OWNER ${APP.user}`);
  writeFileSync(passfile, '# hostname:port:database:username:password\n', { mode: 0o600 });
});
afterAll(async () => {
  if (proxy) {
    proxy.child.kill('SIGTERM');
    await proxy.exited;
  }
  rmSync(tmp, { recursive: true, force: true });
});

describe('running against a managed PostgreSQL, as the README says', () => {
  it('1. sql/executor-role.sql makes the executor role: LOGIN, pg_signal_backend, schema df, CREATE on public, nothing else', async () => {
    const r = await psql(env().adminUrl.replace('/postgres?', `/${DATABASE}?`), '-v', `executor=${EXECUTOR.user}`, '-v', `password=${EXECUTOR.password}`, '-f', SCRIPT);
    expect(r).toMatchObject({ code: 0, stderr: '' });
    const c = new pg.Client(env().adminUrl.replace('/postgres?', `/${DATABASE}?`));
    await c.connect();
    try {
      const { rows } = await c.query(
        `SELECT r.rolsuper, r.rolcreatedb, r.rolcreaterole, r.rolbypassrls, r.rolcanlogin,
                ARRAY(SELECT g.rolname::text FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid) AS member_of,
                (SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'df') AS df_owner,
                has_schema_privilege(r.oid, 'public', 'CREATE') AS public_create
           FROM pg_roles r WHERE r.rolname = $1`,
        [EXECUTOR.user],
      );
      expect(rows[0]).toEqual({
        rolsuper: false, rolcreatedb: false, rolcreaterole: false, rolbypassrls: false, rolcanlogin: true,
        member_of: ['pg_signal_backend'], df_owner: EXECUTOR.user, public_create: true,
      });
    } finally {
      await c.end();
    }
    // Run again (a second database, or a password change), it changes nothing else and fails nowhere.
    expect(await psql(env().adminUrl.replace('/postgres?', `/${DATABASE}?`), '-v', `executor=${EXECUTOR.user}`, '-v', `password=${EXECUTOR.password}`, '-f', SCRIPT)).toMatchObject({ code: 0, stderr: '' });
  });

  it('2. check reports what a bare login role lacks, each with the statement that fixes it; after them it passes', async () => {
    const bare = BARE;
    await asAdmin(`CREATE ROLE ${bare.user} LOGIN PASSWORD '${bare.password}'`);
    const before = await check(bare, BARE_DATABASE);
    expect(before.code).toBe(1);
    expect(before.stdout).toContain(`MISSING "${bare.user}" may cancel running steps (pg_signal_backend)`);
    expect(before.stdout).toContain(`fix: GRANT pg_signal_backend TO "${bare.user}";`);
    expect(before.stdout).toContain(`MISSING schema df: absent, and "${bare.user}" may not make it`);
    expect(before.stdout).toContain(`fix: CREATE SCHEMA df AUTHORIZATION "${bare.user}";`);
    expect(before.stdout).toContain(`fix: GRANT CREATE ON SCHEMA public TO "${bare.user}";`);
    expect(before.stdout).toMatch(/thing\(s\) missing/);
    // The fixes, as printed, run by the administrator.
    const fixes = [...before.stdout.matchAll(/fix: ((?:GRANT|ALTER|CREATE)[^\n]*?;)/g)].map((m) => m[1]!);
    expect(fixes.length).toBeGreaterThanOrEqual(2);
    const c = new pg.Client(env().adminUrl.replace('/postgres?', `/${BARE_DATABASE}?`));
    await c.connect();
    try {
      for (const f of fixes) await c.query(f);
    } finally {
      await c.end();
    }
    const after = await check(bare, BARE_DATABASE);
    expect(after.stdout).not.toContain('MISSING');
    expect(after).toMatchObject({ code: 0 });
    expect(after.stdout).toContain('everything is in place');
  });

  it('3. the proxy with the documented flags; df usage granted through it; check names the role steps cannot log in as; the passfile line fixes it', async () => {
    proxy = runCli([
      '--upstream', `${serverUrl(undefined)}`,
      '--executor-url', serverUrl(EXECUTOR),
      '--step-passfile', passfile,
      '--databases', DATABASE,
      '--listen', '127.0.0.1:0', '--admin', 'off',
    ]);
    await proxy.ready;
    const port = /127\.0\.0\.1:(\d+)/.exec(proxy.stderr().split('ready:')[1]!)![1]!;
    const through = (who: { user: string; password: string }): string =>
      `postgres://${encodeURIComponent(who.user)}:${encodeURIComponent(who.password)}@127.0.0.1:${port}/${DATABASE}`;
    // The df owner grants the application role df usage.
    expect(await psql(through(EXECUTOR), '-c', `SELECT df.grant_usage('${APP.user}')`)).toMatchObject({ code: 0 });
    const missing = await check(EXECUTOR);
    expect(missing.code).toBe(1);
    expect(missing.stdout).toContain(`MISSING steps log in as "${APP.user}"`);
    expect(missing.stdout).toContain(`fix: add a line "${env().pgHost}:${env().pgPort}:*:${APP.user}:<password>" to the step password file ${passfile}`);
    // df.start is refused until the proxy can log in as the submitter.
    const refused = await psql(through(APP), '-c', `SELECT df.start('SELECT 1')`);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toContain(`pg-durable-proxy cannot log in as role "${APP.user}" to run its workflow steps`);
    appendFileSync(passfile, `${env().pgHost}:${env().pgPort}:*:${APP.user}:${APP.password}\n`);
    const ok = await check(EXECUTOR);
    expect(ok.stdout).not.toContain('MISSING');
    expect(ok.code).toBe(0);
  });

  it('4. a password role starts a workflow through the proxy; its steps run as that role and it completes', async () => {
    const port = /127\.0\.0\.1:(\d+)/.exec(proxy!.stderr().split('ready:')[1]!)![1]!;
    const c = new pg.Client(`postgres://${APP.user}:${APP.password}@127.0.0.1:${port}/${DATABASE}`);
    await c.connect();
    try {
      // The refusal of the previous test is remembered for at most 5 seconds.
      let id: string | undefined;
      for (let i = 0; i < 100 && id === undefined; i++) {
        try {
          id = (await c.query<{ id: string }>(`SELECT df.start('SELECT current_user AS u, session_user AS s') AS id`)).rows[0]!.id;
        } catch (err) {
          if ((err as { code?: string }).code !== '28P01') throw err;
          await new Promise((r) => setTimeout(r, 100));
        }
      }
      expect((await c.query('SELECT df.await_instance($1, 30) AS s', [id])).rows[0].s).toBe('completed');
      const result = (await c.query<{ r: string }>('SELECT df.result($1) AS r', [id])).rows[0]!.r;
      expect(JSON.parse(result)).toEqual({ rows: [{ u: APP.user, s: APP.user }], row_count: 1 });
    } finally {
      await c.end();
    }
  });
});
