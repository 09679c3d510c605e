// Installs, upgrades and checks the df schema of one database, under an
// advisory lock so that several proxies starting at once do it once:
//  1. a df schema that exists must be the executor's own (verify.ts);
//  2. each applied migration must be one this release ships, byte for byte
//     (checksums in df.migrations); one it does not know means a newer proxy
//     installed it, and this one refuses the database;
//  3. missing migrations are applied in order, each in its own transaction;
//  4. the function files are re-applied, in one transaction, when any of them
//     differs from what is recorded in df.function_files, unless a newer
//     release recorded them.
// The connection must pin search_path (the executor's control connections do).
import pg from 'pg';
import { VERSION } from '../version.js';
import { shipped } from './files.js';
import { foreignObjects, SchemaRefused } from './verify.js';

/** pg_advisory_lock key: "PGDF" plus a migration marker. */
const LOCK_KEY = 0x50474446_01n;

export interface Installed {
  /** Migration versions applied now. */
  migrations: number[];
  /** Whether the function files were (re)applied now. */
  functions: boolean;
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
    if (ns[0]!.exists) await refuseForeign(client);
    // CREATE SCHEMA without IF NOT EXISTS: a schema someone made since the check makes this fail, not succeed.
    await inTransaction(client, async () => {
      if (!ns[0]!.exists) await client.query('CREATE SCHEMA df');
      await client.query(`CREATE TABLE IF NOT EXISTS df.migrations (
        version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now())`);
      await client.query(`CREATE TABLE IF NOT EXISTS df.function_files (
        name text PRIMARY KEY, checksum text NOT NULL, release text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now())`);
      await client.query('REVOKE ALL ON df.migrations, df.function_files FROM PUBLIC');
    });

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
      try {
        await inTransaction(client, async () => {
          await client.query(m.sql);
          await client.query('INSERT INTO df.migrations (version, name, checksum) VALUES ($1, $2, $3)', [m.version, m.name, m.checksum]);
        });
      } catch (err) {
        throw new Error(`df schema migration ${m.version} (${m.name}) failed: ${(err as Error).message}`, { cause: err });
      }
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
      try {
        await inTransaction(client, async () => {
          for (const f of functions) await client.query(f.sql);
          await client.query('DELETE FROM df.function_files WHERE NOT name = ANY ($1::text[])', [names]);
          await client.query(
            `INSERT INTO df.function_files (name, checksum, release)
             SELECT * FROM unnest($1::text[], $2::text[]) AS f(name, checksum), LATERAL (SELECT $3::text) v
             ON CONFLICT (name) DO UPDATE SET checksum = EXCLUDED.checksum, release = EXCLUDED.release, applied_at = now()`,
            [names, functions.map((f) => f.checksum), VERSION],
          );
        });
      } catch (err) {
        throw new Error(`df schema functions failed to install: ${(err as Error).message}`, { cause: err });
      }
      out.functions = true;
    }
    // What was just made is ours; what was there before (an operator of the DSL's name) may not be.
    await refuseForeign(client);
  } finally {
    if (owner !== undefined) await client.query('RESET ROLE').catch(() => {});
    await client.query('SELECT pg_catalog.pg_advisory_unlock($1)', [LOCK_KEY.toString()]).catch(() => {});
  }
  return out;
}
