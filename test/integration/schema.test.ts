// The df schema as installed, compared with the committed snapshot
// sql/schema.snapshot: a change to sql/ shows up as a reviewable diff of
// what a database ends up with (columns, constraints, indexes, policies,
// grants, function signatures and attributes, a hash of each body).
// After changing sql/ on purpose: UPDATE_SCHEMA_SNAPSHOT=1 npx vitest run test/integration/schema.test.ts
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Executor } from '../../src/engine/executor.js';
import { SQL_DIR, shipped } from '../../src/schema/files.js';
import { dbUrl, executorOptions, freshDatabase } from '../helpers/durable.js';
import { env } from '../helpers/proxy.js';
import { INSTANCE_STATUSES, LEAF_TYPES, NODE_STATUSES, NODE_TYPES } from '../../src/workflow/model.js';

const DB = 'pgdp_schema_snapshot';
const SNAPSHOT = path.join(SQL_DIR, 'schema.snapshot');

const DESCRIBE = `
WITH ns AS (SELECT oid, nspowner FROM pg_namespace WHERE nspname = 'df'),
rel AS (SELECT c.* FROM pg_class c, ns WHERE c.relnamespace = ns.oid AND c.relkind IN ('r', 'p', 'v', 'm', 'S')),
lines AS (
  SELECT 'schema df acl=' || coalesce(n.nspacl::text, '') AS l FROM pg_namespace n WHERE n.nspname = 'df'
  UNION ALL SELECT format('table %s rls=%s acl=%s', r.relname, r.relrowsecurity, coalesce(r.relacl::text, '')) FROM rel r
  UNION ALL SELECT format('column %s.%s %s%s%s', r.relname, a.attname, format_type(a.atttypid, a.atttypmod),
                          CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END, coalesce(' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), ''))
    FROM rel r JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN pg_attrdef d ON d.adrelid = r.oid AND d.adnum = a.attnum
  UNION ALL SELECT format('constraint %s %s %s', r.relname, c.conname, pg_get_constraintdef(c.oid)) FROM pg_constraint c JOIN rel r ON r.oid = c.conrelid
  UNION ALL SELECT format('index %s', pg_get_indexdef(i.indexrelid)) FROM pg_index i JOIN rel r ON r.oid = i.indrelid
  UNION ALL SELECT format('policy %s.%s %s roles=%s using=%s check=%s', r.relname, p.polname, p.polcmd, p.polroles::regrole[]::text,
                          coalesce(pg_get_expr(p.polqual, p.polrelid), ''), coalesce(pg_get_expr(p.polwithcheck, p.polrelid), ''))
    FROM pg_policy p JOIN rel r ON r.oid = p.polrelid
  UNION ALL SELECT format('trigger %s', pg_get_triggerdef(t.oid)) FROM pg_trigger t JOIN rel r ON r.oid = t.tgrelid WHERE NOT t.tgisinternal
  UNION ALL SELECT format('function %s returns %s language=%s volatile=%s strict=%s definer=%s config=%s acl=%s body=%s',
                          p.oid::regprocedure, pg_get_function_result(p.oid), l.lanname, p.provolatile, p.proisstrict, p.prosecdef,
                          coalesce(p.proconfig::text, ''), coalesce(p.proacl::text, ''), md5(p.prosrc))
    FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang, ns WHERE p.pronamespace = ns.oid
  UNION ALL SELECT format('operator %s runs %s', o.oid::regoperator, o.oprcode::regprocedure)
    FROM pg_operator o JOIN pg_proc p ON p.oid = o.oprcode, ns WHERE p.pronamespace = ns.oid
)
-- The owner's name varies (a superuser, a managed mode's executor); PostgreSQL 17 added MAINTAIN (m) to a table owner's privileges.
SELECT regexp_replace(replace(l, (SELECT nspowner::regrole::text FROM ns), '<owner>'), '=arwdDxtm?/', '=arwdDxt(m)/', 'g') AS l
  FROM lines ORDER BY 1`;

let admin: pg.Client;
let executor: Executor;

beforeAll(async () => {
  await freshDatabase(DB);
  executor = new Executor(executorOptions(DB));
  await executor.serve(DB);
  admin = new pg.Client(dbUrl(env().adminUrl, DB));
  await admin.connect();
});
afterAll(async () => {
  await admin?.end();
  await executor?.close();
});

it('the installed df schema matches sql/schema.snapshot', async () => {
  const { rows } = await admin.query<{ l: string }>(DESCRIBE);
  const actual = rows.map((r) => r.l).join('\n') + '\n';
  if (process.env.UPDATE_SCHEMA_SNAPSHOT) writeFileSync(SNAPSHOT, actual);
  expect(actual).toBe(readFileSync(SNAPSHOT, 'utf8'));
});

it('the SQL copies of the workflow model (node types, statuses, leaf nodes) are the ones of src/workflow/model.ts', async () => {
  const quoted = (def: string): string[] => [...def.matchAll(/'([A-Z_a-z]+)'::text/g)].map((m) => m[1]!);
  const check = async (table: string, column: string): Promise<string[]> => {
    const { rows } = await admin.query<{ def: string }>(
      `SELECT pg_get_constraintdef(c.oid) AS def FROM pg_constraint c
        WHERE c.conrelid = $1::regclass AND c.contype = 'c' AND pg_get_constraintdef(c.oid) ~ ('^CHECK \\(\\(' || $2 || ' = ANY')`,
      [table, column],
    );
    expect(rows, `${table}.${column}`).toHaveLength(1);
    return quoted(rows[0]!.def);
  };
  expect(await check('df.nodes', 'node_type')).toEqual([...NODE_TYPES]);
  expect(await check('df.nodes', 'status')).toEqual([...NODE_STATUSES]);
  expect(await check('df.instances', 'status')).toEqual([...INSTANCE_STATUSES]);
  expect((await admin.query<{ t: string[] }>('SELECT df._valid_types() AS t')).rows[0]!.t).toEqual([...NODE_TYPES]);
  // The shape check: leaves take a query and no children.
  const { rows } = await admin.query<{ def: string }>(
    `SELECT pg_get_constraintdef(c.oid) AS def FROM pg_constraint c WHERE c.conrelid = 'df.nodes'::regclass AND pg_get_constraintdef(c.oid) LIKE '%CASE%'`,
  );
  const leaves = /WHEN \(node_type = ANY \(ARRAY\[([^\]]+)\]\)\) THEN \(\(left_node IS NULL\)/.exec(rows[0]!.def)?.[1] ?? '';
  expect(quoted(leaves)).toEqual([...LEAF_TYPES]);
});

it('records every shipped migration and function file with its checksum', async () => {
  const { migrations, functions } = shipped();
  const m = await admin.query<{ version: number; checksum: string }>('SELECT version, checksum FROM df.migrations ORDER BY version');
  expect(m.rows).toEqual(migrations.map((x) => ({ version: x.version, checksum: x.checksum })));
  const f = await admin.query<{ name: string; checksum: string }>('SELECT name, checksum FROM df.function_files ORDER BY name');
  expect(f.rows).toEqual(functions.map((x) => ({ name: x.name, checksum: x.checksum })));
});

it('a second start changes nothing, and a changed function file is re-applied in place', async () => {
  const before = (await admin.query<{ l: string }>(DESCRIBE)).rows;
  const again = new Executor(executorOptions(DB));
  await again.serve(DB);
  await again.close();
  expect((await admin.query<{ l: string }>(DESCRIBE)).rows).toEqual(before);
  // An older release's functions: the recorded checksum differs, so this one applies its own.
  await admin.query(`UPDATE df.function_files SET checksum = 'old' WHERE name = '02_api'`);
  await admin.query(`CREATE OR REPLACE FUNCTION df.version() RETURNS text LANGUAGE sql AS $$ SELECT 'old' $$`);
  const upgrade = new Executor(executorOptions(DB));
  await upgrade.serve(DB);
  await upgrade.close();
  expect((await admin.query<{ l: string }>(DESCRIBE)).rows).toEqual(before);
  expect((await admin.query<{ v: string }>('SELECT df.version() AS v')).rows[0]!.v).toMatch(/^0\.2\.6 \(pg-durable-proxy /);
});
