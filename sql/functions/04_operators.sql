-- The DSL operators (~> |=> & | ?> !> @>), in schema public: the default
-- search_path finds them, and pg_dump dumps them with the rest of the
-- database (pg_catalog, where pg_durable puts them, is neither dumped nor
-- writable by anyone but a superuser).
--
-- An operator has no CREATE OR REPLACE: each is created once; re-applying
-- the function files replaces the functions behind them, which the operators
-- follow. An installer without CREATE on public installs df without them:
-- the proxy compiles the DSL itself, the constructor forms (df.seq(a, b), ...)
-- work everywhere, and the installer creates them once it may
-- (`pg-durable-proxy check` prints the GRANT).
DO $do$
DECLARE
  op record;
BEGIN
  IF pg_catalog.to_regnamespace('public') IS NOT NULL AND pg_catalog.has_schema_privilege('public', 'CREATE') THEN
    FOR op IN SELECT * FROM (VALUES ('~>', 'text', 'df.seq'), ('|=>', 'text', 'df.as_op'), ('&', 'text', 'df.join'),
                                    ('|', 'text', 'df.race'), ('?>', 'text', 'df.if_then_op'), ('!>', 'text', 'df.if_else_op'),
                                    ('@>', NULL, 'df.loop_prefix_op')) AS v(name, leftarg, fn)
    LOOP
      CONTINUE WHEN EXISTS (
        SELECT FROM pg_catalog.pg_operator o
         WHERE o.oprnamespace = 'public'::pg_catalog.regnamespace AND o.oprname = op.name
           AND o.oprright = 'pg_catalog.text'::pg_catalog.regtype
           AND o.oprleft = coalesce(op.leftarg::pg_catalog.regtype::pg_catalog.oid, 0::pg_catalog.oid));
      EXECUTE pg_catalog.format('CREATE OPERATOR public.%s (%sRIGHTARG = text, FUNCTION = %s)',
        op.name, CASE WHEN op.leftarg IS NULL THEN '' ELSE 'LEFTARG = text, ' END, op.fn);
    END LOOP;
  END IF;
  -- Development releases put them in pg_catalog when a superuser installed df: drop those
  -- (the public ones take over), unless something depends on them.
  FOR op IN SELECT o.oid::pg_catalog.regoperator AS o
              FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode
             WHERE o.oprnamespace = 'pg_catalog'::pg_catalog.regnamespace
               AND o.oprname = ANY (ARRAY['~>', '|=>', '&', '|', '?>', '!>', '@>'])
               AND p.pronamespace = 'df'::pg_catalog.regnamespace
  LOOP
    BEGIN
      EXECUTE pg_catalog.format('DROP OPERATOR %s', op.o);
    EXCEPTION WHEN dependent_objects_still_exist OR insufficient_privilege THEN
      NULL;
    END;
  END LOOP;
END
$do$;
