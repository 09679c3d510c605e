// `pg-durable-proxy check`: connects as the executor and verifies, database
// by database, everything the proxy needs on a server where it is no
// superuser: its login, pg_signal_backend, the df schema (or the right to
// make it), the DSL operators' place, and a step login for every role that
// may start workflows. Each missing piece comes with the statement that fixes it.
import pg from 'pg';
import { shipped } from '../schema/files.js';
import { DSL_OPERATORS, foreignObjects, incompleteReason } from '../schema/verify.js';

export interface Finding {
  /** ok: in place; missing: the proxy cannot work until fixed; note: works, worth knowing. */
  status: 'ok' | 'missing' | 'note';
  what: string;
  detail?: string;
  /** SQL (or a setting) that fixes it. */
  fix?: string;
}

export interface CheckTarget {
  database: string;
  /** The executor's login to `database`. */
  control: pg.ClientConfig;
  /** A step's login as `role` to `database`. */
  step: (database: string, role: string) => pg.ClientConfig;
  /** --df-owner, when the schema belongs to a role the executor is a member of. */
  dfOwner?: string;
  /** How a step login failure is fixed (names the settings in use). */
  stepHint: (role: string) => string;
}

const ident = (name: string): string => pg.escapeIdentifier(name);
const CONNECT_TIMEOUT_MS = 10_000;

async function tryLogin(config: pg.ClientConfig): Promise<{ ok: true; user: string } | { ok: false; code?: string; message: string }> {
  const c = new pg.Client({ ...config, connectionTimeoutMillis: CONNECT_TIMEOUT_MS });
  c.on('error', () => {});
  try {
    await c.connect();
    const { rows } = await c.query<{ u: string }>('SELECT current_user AS u');
    return { ok: true, user: rows[0]!.u };
  } catch (err) {
    const e = err as { code?: string; message: string };
    return { ok: false, code: e.code, message: e.message };
  } finally {
    await c.end().catch(() => {});
  }
}

export async function checkDatabase(t: CheckTarget): Promise<Finding[]> {
  const out: Finding[] = [];
  const db = t.database;
  const c = new pg.Client({ ...t.control, connectionTimeoutMillis: CONNECT_TIMEOUT_MS });
  c.on('error', () => {});
  try {
    await c.connect();
  } catch (err) {
    out.push({
      status: 'missing',
      what: `the executor logs in to database "${db}"`,
      detail: (err as Error).message,
      fix: 'check --executor-url (or --upstream): host, port, role, password, TLS (sslmode)',
    });
    return out;
  }
  try {
    const { rows } = await c.query<{ me: string; superuser: boolean; signal: boolean; create_db: boolean; template: boolean }>(
      `SELECT current_user AS me, r.rolsuper AS superuser,
              pg_catalog.pg_has_role(current_user, 'pg_signal_backend', 'MEMBER') AS signal,
              pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE') AS create_db,
              d.datistemplate AS template
         FROM pg_catalog.pg_roles r, pg_catalog.pg_database d
        WHERE r.rolname = current_user AND d.datname = pg_catalog.current_database()`,
    );
    const me = rows[0]!;
    const owner = t.dfOwner ?? me.me;
    out.push({ status: 'ok', what: `the executor logs in to database "${db}" as "${me.me}"` });
    if (me.template) {
      out.push({ status: 'missing', what: `database "${db}" is a template database: the proxy serves none`, fix: 'serve another database' });
      return out;
    }
    if (me.superuser) {
      out.push({ status: 'note', what: `"${me.me}" is a superuser`, detail: 'it works; a managed service needs no superuser (see sql/executor-role.sql)' });
    }
    out.push(
      me.superuser || me.signal
        ? { status: 'ok', what: `"${me.me}" may cancel running steps (pg_signal_backend)` }
        : {
            status: 'missing',
            what: `"${me.me}" may cancel running steps (pg_signal_backend)`,
            detail: 'without it, df.cancel and the shutdown cannot stop a running step',
            fix: `GRANT pg_signal_backend TO ${ident(me.me)};`,
          },
    );
    if (t.dfOwner !== undefined) {
      const { rows: m } = await c.query<{ member: boolean | null }>(
        `SELECT CASE WHEN pg_catalog.to_regrole($1) IS NULL THEN NULL ELSE pg_catalog.pg_has_role(current_user, pg_catalog.to_regrole($1), 'USAGE') END AS member`,
        [t.dfOwner],
      );
      if (m[0]!.member !== true) {
        out.push({
          status: 'missing',
          what: `"${me.me}" acts as the df owner "${t.dfOwner}" (--df-owner)`,
          fix: m[0]!.member === null ? `CREATE ROLE ${ident(t.dfOwner)}; GRANT ${ident(t.dfOwner)} TO ${ident(me.me)};` : `GRANT ${ident(t.dfOwner)} TO ${ident(me.me)};`,
        });
        return out;
      }
      await c.query(`SET ROLE ${ident(t.dfOwner)}`);
    }

    // The df schema: the executor's own, or one it may make when df is first used.
    const { rows: ns } = await c.query<{ owner: string | null; public_create: boolean | null }>(
      `SELECT (SELECT n.nspowner::pg_catalog.regrole::text FROM pg_catalog.pg_namespace n WHERE n.nspname = 'df') AS owner,
              CASE WHEN pg_catalog.to_regnamespace('public') IS NULL THEN NULL
                   ELSE pg_catalog.has_schema_privilege('public', 'CREATE') END AS public_create`,
    );
    const dfOwner = ns[0]!.owner;
    let installed = false;
    if (dfOwner === null) {
      out.push(
        me.create_db
          ? { status: 'ok', what: `schema df: absent; "${owner}" makes it when df is first used (CREATE on database "${db}")` }
          : {
              status: 'missing',
              what: `schema df: absent, and "${owner}" may not make it`,
              fix: `CREATE SCHEMA df AUTHORIZATION ${ident(owner)};  -- or: GRANT CREATE ON DATABASE ${ident(db)} TO ${ident(owner)};`,
            },
      );
    } else {
      const foreign = await foreignObjects(c);
      if (foreign.length > 0) {
        out.push({
          status: 'missing',
          what: `schema df is "${owner}"'s own`,
          detail: foreign.join('; '),
          fix:
            dfOwner !== owner
              ? `ALTER SCHEMA df OWNER TO ${ident(owner)};  -- and each object listed, or run the proxy as "${dfOwner}" (--executor-url / --df-owner)`
              : 'drop or re-own each object listed (a df schema with objects of other roles is never served)',
        });
      } else {
        const incomplete = await incompleteReason(c);
        if (incomplete) {
          out.push({ status: 'note', what: 'schema df is incomplete', detail: `${incomplete}: is a restore writing it? The proxy serves it once it is whole` });
        } else {
          const state = await schemaState(c);
          installed = state.migrations > 0;
          out.push({ status: 'ok', what: `schema df is "${owner}"'s own`, detail: state.text });
        }
      }
    }

    // The DSL operators: in public, ours, or creatable.
    const ops = await c.query<{ n: number }>(
      `SELECT pg_catalog.count(*)::int AS n FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode
        WHERE o.oprnamespace = pg_catalog.to_regnamespace('public') AND o.oprname = ANY ($1::text[])
          AND p.pronamespace = pg_catalog.to_regnamespace('df')`,
      [DSL_OPERATORS],
    );
    const present = ops.rows[0]!.n;
    if (present >= DSL_OPERATORS.length) {
      out.push({ status: 'ok', what: 'the DSL operators (~> |=> & | ?> !> @>) are in schema public' });
    } else if (ns[0]!.public_create) {
      out.push({ status: 'ok', what: `the DSL operators: ${installed ? 'missing, ' : ''}made in schema public when df is ${installed ? 'next served' : 'installed'}` });
    } else {
      out.push({
        status: 'missing',
        what: 'the DSL operators (~> |=> & | ?> !> @>) can be made in schema public',
        detail:
          ns[0]!.public_create === null
            ? 'there is no schema public'
            : `"${owner}" has no CREATE on schema public; without them, DO blocks, triggers and direct clients must write df.seq(a, b) and the like`,
        fix: ns[0]!.public_create === null ? 'CREATE SCHEMA public;' : `GRANT CREATE ON SCHEMA public TO ${ident(owner)};`,
      });
    }

    // Every role that may start workflows here needs a step login.
    if (dfOwner !== null) {
      const { rows: roles } = await c.query<{ role: string }>(
        `SELECT r.rolname AS role FROM pg_catalog.pg_roles r
          WHERE r.rolcanlogin AND NOT r.rolsuper AND r.rolname !~ '^pg_' AND r.rolname <> current_user AND r.rolname <> session_user
            AND pg_catalog.has_schema_privilege(r.oid, 'df', 'USAGE')
          ORDER BY 1`,
      );
      if (roles.length === 0) {
        out.push({ status: 'note', what: 'no role has df usage yet', detail: "grant it with SELECT df.grant_usage('<role>') as the df owner" });
      }
      for (const { role } of roles) {
        const r = await tryLogin(t.step(db, role));
        out.push(
          r.ok
            ? { status: 'ok', what: `steps log in as "${role}"` }
            : { status: 'missing', what: `steps log in as "${role}"`, detail: `${r.code ? r.code + ' ' : ''}${r.message}`, fix: t.stepHint(role) },
        );
      }
    }
  } finally {
    await c.end().catch(() => {});
  }
  return out;
}

/** Which shipped migrations and function files the schema has. */
async function schemaState(c: pg.Client): Promise<{ migrations: number; text: string }> {
  const { migrations, functions } = shipped();
  const has = await c.query<{ m: boolean; f: boolean }>(
    `SELECT pg_catalog.to_regclass('df.migrations') IS NOT NULL AS m, pg_catalog.to_regclass('df.function_files') IS NOT NULL AS f`,
  );
  if (!has.rows[0]!.m || !has.rows[0]!.f) return { migrations: 0, text: 'empty: the proxy installs it when df is first used' };
  const applied = (await c.query<{ version: number; checksum: string }>('SELECT version, checksum FROM df.migrations')).rows;
  const files = (await c.query<{ name: string; checksum: string }>('SELECT name, checksum FROM df.function_files')).rows;
  const pending = migrations.filter((m) => !applied.some((a) => a.version === m.version)).length;
  const stale = functions.filter((f) => !files.some((x) => x.name === f.name && x.checksum === f.checksum)).length;
  const text =
    applied.length === 0
      ? 'empty: the proxy installs it when df is first used'
      : pending || stale
        ? `installed; the proxy upgrades it when it next serves the database (${pending} migration(s), ${stale} function file(s) to apply)`
        : 'installed and current';
  return { migrations: applied.length, text };
}

/** The report: one line per finding, its detail and fix indented below. */
export function formatFindings(database: string, findings: Finding[]): string {
  const mark = { ok: 'ok     ', missing: 'MISSING', note: 'note   ' } as const;
  const lines = [`database "${database}":`];
  for (const f of findings) {
    lines.push(`  ${mark[f.status]} ${f.what}`);
    if (f.detail) lines.push(`          ${f.detail}`);
    if (f.fix) lines.push(`          fix: ${f.fix}`);
  }
  return lines.join('\n');
}
