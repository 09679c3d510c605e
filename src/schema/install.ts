// Installs, upgrades and checks the df schema of one database, under an
// advisory lock so that several proxies starting at once do it once:
//  1. a df schema that exists must be the executor's own (verify.ts);
//  2. each applied migration must be one this release ships, byte for byte
//     (checksums in df.migrations); one it does not know means a newer proxy
//     installed it, and this one refuses the database;
//  3. missing migrations are applied in order, and the function files are
//     re-applied when any of them differs from what is recorded in
//     df.function_files (unless a newer release recorded them), all in one
//     transaction: a database has the whole schema of one release or none;
//  4. a df schema that a restore is still writing is left alone (verify.ts);
//  5. the DSL operators, which need CREATE on schema public, are created once
//     the installer may (they are optional: the proxy compiles the DSL itself).
// The connection must pin search_path (the executor's control connections do).
import pg from 'pg';
import { VERSION } from '../version.js';
import { shipped } from './files.js';
import { DSL_OPERATORS, foreignObjects, incompleteReason, POST_DATA_OBJECTS, SchemaIncomplete, SchemaRefused } from './verify.js';

/** pg_advisory_lock key: "PGDF" plus a migration marker. */
const LOCK_KEY = 0x50474446_01n;

export interface Installed {
  /** Migration versions applied now. */
  migrations: number[];
  /** Whether the function files were (re)applied now. */
  functions: boolean;
  /** Why the DSL operators are not in schema public; undefined when they are. */
  operatorsMissing?: string;
}

/** Compares dotted release numbers; pre-release suffixes are ignored. */
export function compareVersions(a: string, b: string): number {
  const parts = (v: string): number[] => v.split(/[-+]/)[0]!.split('.').map((x) => Number(x) || 0);
  const [x, y] = [parts(a), parts(b)];
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    const d = (x[i] ?? 0) - (y[i] ?? 0);
    if (d !== 0) return Math.sign(d);
  }
  return 0;
}

async function inTransaction(client: pg.ClientBase, work: () => Promise<void>): Promise<void> {
  await client.query('BEGIN');
  try {
    await work();
    await client.query('COMMIT');
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {});
    throw err;
  }
}

async function refuseForeign(client: pg.ClientBase): Promise<void> {
  const foreign = await foreignObjects(client);
  if (foreign.length > 0) {
    throw new SchemaRefused(`its df schema is not this executor's own: ${foreign.join('; ')}`);
  }
}

/**
 * `owner`: the role the schema belongs to, when it is not the connection's
 * login; everything is checked and made as that role (SET ROLE), so what the
 * installer creates is the owner's.
 */
export async function install(client: pg.ClientBase, owner?: string): Promise<Installed> {
  const { migrations, functions } = shipped();
  const out: Installed = { migrations: [], functions: false };
  const { rows: db } = await client.query<{ template: boolean }>(
    'SELECT datistemplate AS template FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()',
  );
  if (db[0]?.template) {
    // CREATE DATABASE copies a template only while nobody is connected to it; new databases would also get a df schema.
    throw new SchemaRefused('it is a template database: the proxy installs nothing there and keeps no connection to it');
  }
  await client.query('SELECT pg_catalog.pg_advisory_lock($1)', [LOCK_KEY.toString()]);
  try {
    if (owner !== undefined) {
      try {
        await client.query(`SET ROLE ${pg.escapeIdentifier(owner)}`);
      } catch (err) {
        throw new SchemaRefused(`the executor cannot act as the df owner "${owner}" (--df-owner): ${(err as Error).message}`);
      }
    }
    const { rows: ns } = await client.query<{ exists: boolean }>(
      `SELECT EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = 'df') AS exists`,
    );
    if (ns[0]!.exists) {
      await refuseForeign(client);
      const incomplete = await incompleteReason(client);
      if (incomplete !== undefined) throw new SchemaIncomplete(`its df schema is incomplete (${incomplete}): is a restore writing it?`);
    }
    await inTransaction(client, async () => {
      // CREATE SCHEMA without IF NOT EXISTS: a schema someone made since the check makes this fail, not succeed.
      if (!ns[0]!.exists) await client.query('CREATE SCHEMA df');
      await client.query(`CREATE TABLE IF NOT EXISTS df.migrations (
        version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now())`);
      await client.query(`CREATE TABLE IF NOT EXISTS df.function_files (
        name text PRIMARY KEY, checksum text NOT NULL, release text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now())`);
      await client.query('REVOKE ALL ON df.migrations, df.function_files FROM PUBLIC');

      const { rows: legacy } = await client.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM pg_catalog.pg_attribute
          WHERE attrelid = 'df.migrations'::pg_catalog.regclass AND attname = 'checksum' AND NOT attisdropped`,
      );
      if (legacy[0]!.n === 0) {
        throw new SchemaRefused(
          'its df schema was installed by a development version of pg-durable-proxy before the schema was squashed (df.migrations has no checksums); ' +
            'move its data elsewhere and DROP SCHEMA df CASCADE, then the proxy installs the current one',
        );
      }
      const { rows: applied } = await client.query<{ version: number; name: string; checksum: string }>(
        'SELECT version, name, checksum FROM df.migrations ORDER BY version',
      );
      for (const a of applied) {
        const m = migrations.find((x) => x.version === a.version);
        if (!m) {
          throw new SchemaRefused(
            `its df schema has migration ${a.version} (${a.name}), which pg-durable-proxy ${VERSION} does not ship: a newer release installed it`,
          );
        }
        if (m.checksum !== a.checksum) {
          throw new SchemaRefused(
            `its df schema migration ${a.version} (${a.name}) differs from the one pg-durable-proxy ${VERSION} ships ` +
              `(recorded checksum ${a.checksum.slice(0, 12)}…, shipped ${m.checksum.slice(0, 12)}…)`,
          );
        }
      }
      const done = new Set(applied.map((a) => a.version));
      for (const m of migrations) {
        if (done.has(m.version)) continue;
        await step(`df schema migration ${m.version} (${m.name}) failed`, async () => {
          await client.query(m.sql);
          await client.query('INSERT INTO df.migrations (version, name, checksum) VALUES ($1, $2, $3)', [m.version, m.name, m.checksum]);
        });
        out.migrations.push(m.version);
      }

      const { rows: recorded } = await client.query<{ name: string; checksum: string; release: string }>(
        'SELECT name, checksum, release FROM df.function_files',
      );
      const newer = recorded.find((r) => compareVersions(r.release, VERSION) > 0);
      if (newer) {
        throw new SchemaRefused(`its df functions were installed by pg-durable-proxy ${newer.release}, newer than this release (${VERSION})`);
      }
      const current =
        recorded.length === functions.length && functions.every((f) => recorded.some((r) => r.name === f.name && r.checksum === f.checksum));
      if (!current) {
        const names = functions.map((f) => f.name);
        await step('df schema functions failed to install', async () => {
          for (const f of functions) await client.query(f.sql);
          await client.query('DELETE FROM df.function_files WHERE NOT name = ANY ($1::text[])', [names]);
          await client.query(
            `INSERT INTO df.function_files (name, checksum, release)
             SELECT * FROM unnest($1::text[], $2::text[]) AS f(name, checksum), LATERAL (SELECT $3::text) v
             ON CONFLICT (name) DO UPDATE SET checksum = EXCLUDED.checksum, release = EXCLUDED.release, applied_at = now()`,
            [names, functions.map((f) => f.checksum), VERSION],
          );
        });
        out.functions = true;
      }
      out.operatorsMissing = await operators(client);
      // A restore of this database is whole once this many of them exist again (verify.ts).
      await client.query(
        `INSERT INTO df.settings (name, value) SELECT 'post_data_objects', (${POST_DATA_OBJECTS})::text
         ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value`,
      );
      // What was just made is ours; what was there before (an operator of the DSL's name) may not be.
      await refuseForeign(client);
    });
  } finally {
    if (owner !== undefined) await client.query('RESET ROLE').catch(() => {});
    await client.query('SELECT pg_catalog.pg_advisory_unlock($1)', [LOCK_KEY.toString()]).catch(() => {});
  }
  return out;
}

async function step(what: string, work: () => Promise<void>): Promise<void> {
  try {
    await work();
  } catch (err) {
    if (err instanceof SchemaRefused) throw err;
    throw new Error(`${what}: ${(err as Error).message}`, { cause: err });
  }
}

const OPERATORS_PRESENT = `
SELECT pg_catalog.count(*)::int AS n,
       pg_catalog.to_regnamespace('public') IS NOT NULL AS public,
       pg_catalog.to_regnamespace('public') IS NOT NULL AND pg_catalog.has_schema_privilege('public', 'CREATE') AS may
  FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode
 WHERE o.oprnamespace = pg_catalog.to_regnamespace('public') AND o.oprname = ANY ($1::text[])
   AND p.pronamespace = 'df'::pg_catalog.regnamespace`;

/** Creates the DSL operators in public where some are missing and the installer may; says why they are missing otherwise. */
async function operators(client: pg.ClientBase): Promise<string | undefined> {
  const count = async (): Promise<{ n: number; public: boolean; may: boolean }> =>
    (await client.query<{ n: number; public: boolean; may: boolean }>(OPERATORS_PRESENT, [DSL_OPERATORS])).rows[0]!;
  let c = await count();
  if (c.n >= DSL_OPERATORS.length) return undefined;
  if (c.may) {
    const file = shipped().functions.find((f) => f.name === OPERATORS_FILE);
    if (file) await step('the DSL operators failed to install', async () => void (await client.query(file.sql)));
    c = await count();
    if (c.n >= DSL_OPERATORS.length) return undefined;
  }
  if (!c.public) return 'there is no schema public';
  const { rows } = await client.query<{ me: string }>('SELECT current_user AS me');
  return `role "${rows[0]!.me}" has no CREATE privilege on schema public`;
}

/** The function file that creates the DSL operators (re-run on its own when they are missing). */
export const OPERATORS_FILE = '04_operators';
