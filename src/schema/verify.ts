// Whether a database's df schema is the proxy's own. The executor runs the
// schema's functions and writes its tables with its own privileges, so a df
// schema, a table, a trigger, a rule or a DSL operator that some other role
// made or owns there would run that role's code as the executor. Such a
// database is refused, never served.
import type pg from 'pg';

/** The database's df schema cannot be served; the message says why. */
export class SchemaRefused extends Error {}

/** The DSL operators, created in schema public (sql/functions/04_operators.sql). */
export const DSL_OPERATORS = ['~>', '|=>', '&', '|', '?>', '!>', '@>'];

// Every object of the df schema not owned by the current user, every
// trigger or rule on its tables that is not the schema's own, and every DSL
// operator of the operator schema that is someone else's or calls a function
// outside df. Catalog names are qualified: the connection's search_path is
// pinned anyway, this keeps the query safe on any connection.
const FOREIGN = `
WITH me AS (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = current_user),
     ns AS (SELECT n.oid, n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname = 'df'),
     rel AS (SELECT c.oid, c.relname FROM pg_catalog.pg_class c, ns WHERE c.relnamespace = ns.oid)
SELECT pg_catalog.format('schema df is owned by %s', ns.nspowner::pg_catalog.regrole) AS what
  FROM ns, me WHERE ns.nspowner <> me.oid
UNION ALL
SELECT pg_catalog.format('relation df.%I is owned by %s', c.relname, c.relowner::pg_catalog.regrole)
  FROM pg_catalog.pg_class c, ns, me WHERE c.relnamespace = ns.oid AND c.relowner <> me.oid
UNION ALL
SELECT pg_catalog.format('function %s is owned by %s', p.oid::pg_catalog.regprocedure, p.proowner::pg_catalog.regrole)
  FROM pg_catalog.pg_proc p, ns, me WHERE p.pronamespace = ns.oid AND p.proowner <> me.oid
UNION ALL
SELECT pg_catalog.format('type %s is owned by %s', t.oid::pg_catalog.regtype, t.typowner::pg_catalog.regrole)
  FROM pg_catalog.pg_type t, ns, me WHERE t.typnamespace = ns.oid AND t.typowner <> me.oid
UNION ALL
SELECT pg_catalog.format('operator %s is owned by %s', o.oid::pg_catalog.regoperator, o.oprowner::pg_catalog.regrole)
  FROM pg_catalog.pg_operator o, ns, me WHERE o.oprnamespace = ns.oid AND o.oprowner <> me.oid
UNION ALL
SELECT pg_catalog.format('%s %s in schema df is owned by %s', x.kind, x.name, x.owner::pg_catalog.regrole)
  FROM (SELECT 'collation' AS kind, c.collname::text AS name, c.collowner AS owner, c.collnamespace AS nsp FROM pg_catalog.pg_collation c
        UNION ALL SELECT 'conversion', c.conname::text, c.conowner, c.connamespace FROM pg_catalog.pg_conversion c
        UNION ALL SELECT 'operator class', c.opcname::text, c.opcowner, c.opcnamespace FROM pg_catalog.pg_opclass c
        UNION ALL SELECT 'operator family', f.opfname::text, f.opfowner, f.opfnamespace FROM pg_catalog.pg_opfamily f
        UNION ALL SELECT 'text search configuration', c.cfgname::text, c.cfgowner, c.cfgnamespace FROM pg_catalog.pg_ts_config c
        UNION ALL SELECT 'text search dictionary', d.dictname::text, d.dictowner, d.dictnamespace FROM pg_catalog.pg_ts_dict d
        UNION ALL SELECT 'statistics object', s.stxname::text, s.stxowner, s.stxnamespace FROM pg_catalog.pg_statistic_ext s) x,
       ns, me
 WHERE x.nsp = ns.oid AND x.owner <> me.oid
UNION ALL
SELECT pg_catalog.format('trigger %I on df.%I runs %s', t.tgname, rel.relname, t.tgfoid::pg_catalog.regprocedure)
  FROM pg_catalog.pg_trigger t JOIN rel ON rel.oid = t.tgrelid JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid, ns, me
 WHERE NOT t.tgisinternal AND (p.pronamespace <> ns.oid OR p.proowner <> me.oid)
UNION ALL
SELECT pg_catalog.format('rule %I on df.%I', r.rulename, rel.relname)
  FROM pg_catalog.pg_rewrite r JOIN rel ON rel.oid = r.ev_class
UNION ALL
SELECT pg_catalog.format('operator %s is owned by %s and runs %s', o.oid::pg_catalog.regoperator, o.oprowner::pg_catalog.regrole,
                         o.oprcode::pg_catalog.regprocedure)
  FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace
       JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode, ns, me
 WHERE n.nspname = 'public'
   AND o.oprname = ANY ($1::text[])
   AND o.oprright = 'pg_catalog.text'::pg_catalog.regtype
   AND o.oprleft IN (0, 'pg_catalog.text'::pg_catalog.regtype)
   AND (o.oprowner <> me.oid OR p.pronamespace <> ns.oid)
LIMIT 20`;

/** What in the database's df schema is not the current user's own (empty: all of it is, or there is none). */
export async function foreignObjects(client: pg.ClientBase): Promise<string[]> {
  const { rows } = await client.query<{ what: string }>(FOREIGN, [DSL_OPERATORS]);
  return rows.map((r) => r.what);
}

/**
 * The df schema is there but not whole: a restore (pg_restore, psql) is
 * writing it, table by table, data before constraints. Serving it now could
 * claim a run whose instance, nodes or vars are not restored yet. The
 * installer leaves it alone until it is complete; undefined when it is.
 */
export class SchemaIncomplete extends Error {}

/**
 * What a restore creates last (after the data): keys, indexes, policies and
 * triggers of the df tables. The installer records their number in
 * df.settings; a restore brings that row with the data, before them.
 */
export const POST_DATA_OBJECTS = `
SELECT ((SELECT pg_catalog.count(*) FROM pg_catalog.pg_constraint k
          WHERE k.connamespace = 'df'::pg_catalog.regnamespace AND k.contype IN ('p', 'f', 'u', 'x'))
      + (SELECT pg_catalog.count(*) FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indrelid
          WHERE c.relnamespace = 'df'::pg_catalog.regnamespace)
      + (SELECT pg_catalog.count(*) FROM pg_catalog.pg_policy p JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
          WHERE c.relnamespace = 'df'::pg_catalog.regnamespace)
      + (SELECT pg_catalog.count(*) FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
          WHERE c.relnamespace = 'df'::pg_catalog.regnamespace AND NOT t.tgisinternal))::int AS n`;

/** Why the database's df schema is not whole yet (a restore is writing it), or undefined. */
export async function incompleteReason(client: pg.ClientBase): Promise<string | undefined> {
  const { rows } = await client.query<{ migrations: boolean | null; functions: boolean | null; settings: boolean; others: number }>(
    `SELECT pg_catalog.to_regclass('df.migrations') IS NOT NULL AS migrations,
            pg_catalog.to_regclass('df.function_files') IS NOT NULL AS functions,
            pg_catalog.to_regclass('df.settings') IS NOT NULL AS settings,
            (SELECT pg_catalog.count(*)::int FROM pg_catalog.pg_class c
              WHERE c.relnamespace = 'df'::pg_catalog.regnamespace AND c.relkind IN ('r', 'p')
                AND c.relname NOT IN ('migrations', 'function_files')) AS others`,
  );
  const t = rows[0]!;
  const tables = t.migrations && t.functions;
  // Nothing but (empty) bookkeeping, or nothing at all: a schema made for the executor by hand
  // (CREATE SCHEMA df AUTHORIZATION ...), which the installer fills.
  if (t.others === 0) return undefined;
  if (!tables) return 'it has tables but no df.migrations or df.function_files';
  const { rows: r } = await client.query<{ migrations: boolean; functions: boolean; recorded: string | null; present: number }>(
    `SELECT EXISTS (SELECT FROM df.migrations) AS migrations, EXISTS (SELECT FROM df.function_files) AS functions,
            ${t.settings ? `(SELECT s.value FROM df.settings s WHERE s.name = 'post_data_objects')` : 'NULL::text'} AS recorded,
            (${POST_DATA_OBJECTS}) AS present`,
  );
  const c = r[0]!;
  if (!c.migrations) return 'df.migrations is empty';
  if (!c.functions) return 'df.function_files is empty';
  if (c.recorded === null) {
    // Installed before the count was recorded (or the row is not restored yet): foreign keys come last.
    const { rows: fk } = await client.query<{ n: number }>(
      `SELECT pg_catalog.count(*)::int AS n FROM pg_catalog.pg_constraint k WHERE k.connamespace = 'df'::pg_catalog.regnamespace AND k.contype = 'f'`,
    );
    return fk[0]!.n > 0 ? undefined : 'its foreign keys are missing';
  }
  if (c.present < Number(c.recorded)) return `${c.present} of its ${c.recorded} keys, indexes, policies and triggers exist`;
  return undefined;
}
