-- The rest of pg_durable's monitoring surface. pg_durable reads these from
-- its engine; here they are views of df.instances and df.nodes. An
-- "execution" is an engine generation: a workflow whose root is a LOOP starts
-- a new one with each iteration (pg_durable's continue-as-new), any other
-- workflow has exactly one.

-- 1 + the generations a root LOOP has moved on, as pg_durable counts them.
CREATE OR REPLACE FUNCTION df._executions(p_instance text) RETURNS bigint LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
  SELECT coalesce((SELECT greatest(n.iteration, 1) FROM df.instances i JOIN df.nodes n ON n.instance_id = i.id AND n.id = i.root_node
                    WHERE i.id = p_instance AND n.node_type = 'LOOP'), 1)::bigint
$$;

-- The engine's words for a df status.
CREATE OR REPLACE FUNCTION df._engine_status(status text) RETURNS text LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp AS $$
  SELECT CASE status WHEN 'completed' THEN 'Completed' WHEN 'failed' THEN 'Failed' WHEN 'cancelled' THEN 'Cancelled'
                     ELSE 'Running' END
$$;

CREATE OR REPLACE FUNCTION df.list_instances(status_filter text DEFAULT NULL, limit_count int DEFAULT 100)
RETURNS TABLE (instance_id text, label text, function_name text, status text, execution_count bigint, output text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  PERFORM df._check_limit(limit_count);
  RETURN QUERY
    SELECT i.id::text, i.label, 'pg_durable::orchestration::execute-function-graph'::text, i.status, df._executions(i.id), i.output
      FROM df.instances i
     WHERE status_filter IS NULL OR i.status = status_filter
     ORDER BY i.created_at DESC, i.id
     LIMIT limit_count;
END
$$;

CREATE OR REPLACE FUNCTION df.list_instances(status_filter text, limit_count int, label_filter text, after_cursor text DEFAULT NULL)
RETURNS TABLE (instance_id text, label text, function_name text, status text, execution_count bigint, output text,
               created_at timestamptz, completed_at timestamptz, next_cursor text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
  WITH c AS (SELECT d.ts, d.id FROM df._decode_cursor(after_cursor) d, df._check_limit(limit_count) x),
  page AS (
    SELECT i.id, i.label, i.status, i.output, i.created_at, i.completed_at,
           row_number() OVER (ORDER BY i.created_at DESC, i.id) AS rn
      FROM df.instances i, c
     WHERE (status_filter IS NULL OR i.status = status_filter)
       AND (label_filter IS NULL OR i.label = label_filter)
       AND (c.ts IS NULL OR i.created_at < c.ts OR (i.created_at = c.ts AND i.id > c.id))
     ORDER BY i.created_at DESC, i.id
     LIMIT limit_count + 1
  ),
  cursor AS (
    SELECT encode(convert_to('v1|' || to_char(l.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US') || '+00|' || l.id, 'UTF8'), 'hex') AS v
      FROM page l WHERE l.rn = limit_count AND EXISTS (SELECT FROM page m WHERE m.rn > limit_count)
  )
  SELECT p.id::text, p.label, 'pg_durable::orchestration::execute-function-graph'::text, p.status, df._executions(p.id), p.output,
         p.created_at, p.completed_at, (SELECT v FROM cursor)
    FROM page p
   WHERE p.rn <= limit_count
   ORDER BY p.rn
$$;

-- function_version is the pg-durable-proxy release serving the database (pg_durable: the orchestration's version).
CREATE OR REPLACE FUNCTION df.instance_info(instance_id_param text)
RETURNS TABLE (instance_id text, label text, function_name text, function_version text, current_execution_id bigint,
               status text, output text)
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp AS $$
  SELECT i.id::text, i.label, 'pg_durable::orchestration::execute-function-graph'::text, df._setting('proxy_version'),
         df._executions(i.id), i.status, i.output
    FROM df.instances i WHERE i.id = instance_id_param
$$;

-- Newest first. The current execution has the instance's status, the nodes
-- finished in it (event_count) and, once ended, its duration; the df schema
-- keeps no history of a root LOOP's earlier iterations, so they are listed as
-- ContinuedAsNew with no events, duration or output.
CREATE OR REPLACE FUNCTION df.instance_executions(instance_id text, limit_count int DEFAULT 5)
RETURNS TABLE (execution_id bigint, status text, event_count bigint, duration_ms bigint, output text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  i record;
  cur bigint;
  root_loop boolean;
BEGIN
  IF limit_count IS NULL OR limit_count < 1 THEN
    RAISE EXCEPTION 'df.instance_executions: limit_count must be at least 1' USING ERRCODE = '22023';
  END IF;
  SELECT x.id, x.status, x.output, x.created_at, x.completed_at, x.root_node INTO i
    FROM df.instances x WHERE x.id = instance_executions.instance_id;
  IF NOT FOUND THEN
    RETURN;
  END IF;
  cur := df._executions(i.id);
  root_loop := EXISTS (SELECT FROM df.nodes n WHERE n.instance_id = i.id AND n.id = i.root_node AND n.node_type = 'LOOP');
  RETURN QUERY
    SELECT g,
           CASE WHEN g = cur THEN df._engine_status(i.status) ELSE 'ContinuedAsNew' END,
           CASE WHEN g = cur THEN
             (SELECT count(*) FROM df.nodes n
               WHERE n.instance_id = i.id AND n.status IN ('completed', 'failed')
                 AND (NOT root_loop OR n.id = i.root_node OR n.stamp = '/' || g OR n.stamp LIKE '/' || g || '/%'))
           ELSE 0 END,
           CASE WHEN g = cur AND g = 1 AND i.completed_at IS NOT NULL
                THEN (extract(epoch FROM i.completed_at - i.created_at) * 1000)::bigint ELSE 0 END,
           CASE WHEN g = cur THEN i.output END
      FROM generate_series(cur, greatest(cur - least(limit_count, 10000) + 1, 1), -1) AS g;
END
$$;

-- Engine-wide counts: every role's instances (not filtered by row-level security).
CREATE OR REPLACE FUNCTION df.metrics()
RETURNS TABLE (total_instances bigint, running_instances bigint, completed_instances bigint, failed_instances bigint,
               total_executions bigint, total_events bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
  SELECT count(*), count(*) FILTER (WHERE i.status IN ('pending', 'running')),
         count(*) FILTER (WHERE i.status = 'completed'), count(*) FILTER (WHERE i.status = 'failed'),
         coalesce(sum(CASE WHEN r.node_type = 'LOOP' THEN greatest(r.iteration, 1) ELSE 1 END), 0)::bigint,
         (SELECT count(*) FROM df.nodes n WHERE n.status IN ('completed', 'failed'))
    FROM df.instances i LEFT JOIN df.nodes r ON r.instance_id = i.id AND r.id = i.root_node
$$;
REVOKE EXECUTE ON FUNCTION df.metrics() FROM PUBLIC;

-- The 0.1 form of df.instance_nodes: 10 columns, every node in execution 1, no inferred status.
CREATE OR REPLACE FUNCTION df.instance_nodes(instance_id_param text, execution_id_param int)
RETURNS TABLE (node_id text, node_type text, query text, result_name text, left_node text, right_node text,
               status text, result text, execution_id int, updated_at timestamptz)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
  SELECT n.id::text, n.node_type, n.query, n.result_name, n.left_node::text, n.right_node::text, n.status, n.result::text, 1, n.updated_at
    FROM df.nodes n WHERE n.instance_id = instance_id_param
$$;

CREATE OR REPLACE FUNCTION df.version() RETURNS text LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
  SELECT '0.2.6 (pg-durable-proxy ' || coalesce(df._setting('proxy_version'), 'unknown') || ')'
$$;

-- Every database the proxy serves runs its own workflows.
CREATE OR REPLACE FUNCTION df.target_database() RETURNS text LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
  SELECT current_database()::text
$$;

-- pg_durable's engine keeps its history in a schema of its own; here everything is in df.
CREATE OR REPLACE FUNCTION df.duroxide_schema() RETURNS text LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp AS $$
  SELECT 'df'::text
$$;

-- A stub in pg_durable too: the executor picks work up by itself.
CREATE OR REPLACE FUNCTION df.run(instance_id text DEFAULT NULL) RETURNS void LANGUAGE sql
SET search_path = pg_catalog, pg_temp AS $$
$$;

-- ---- grants

-- What a role needs to start and watch its own workflows. Additive; the
-- caller needs each privilege with grant option (the df owner has them all).
-- Stricter than pg_durable: no INSERT or UPDATE on df.instances or df.nodes
-- (df.start and df.cancel write them), INSERT on df.callers instead.
CREATE OR REPLACE FUNCTION df.grant_usage(p_role text, include_http boolean DEFAULT false, with_grant boolean DEFAULT false)
RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  g text := CASE WHEN with_grant THEN ' WITH GRANT OPTION' ELSE '' END;
  r text := CASE WHEN lower(p_role) = 'public' THEN 'PUBLIC' ELSE quote_ident(p_role) END;
BEGIN
  EXECUTE format('GRANT USAGE ON SCHEMA df TO %s%s', r, g);
  EXECUTE format('GRANT SELECT ON df.instances, df.nodes TO %s%s', r, g);
  EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON df.vars TO %s%s', r, g);
  EXECUTE format('GRANT INSERT ON df.callers TO %s%s', r, g);
  EXECUTE format('GRANT EXECUTE ON FUNCTION df._checkpoint(text, text, uuid, text, text) TO %s%s', r, g);
  IF include_http THEN
    EXECUTE format('GRANT EXECUTE ON FUNCTION df.http(text, text, text, jsonb, integer), df.http_multipart(text, text, jsonb, jsonb, integer) TO %s%s', r, g);
  END IF;
  IF with_grant THEN
    EXECUTE format('GRANT EXECUTE ON FUNCTION df.grant_usage(text, boolean, boolean), df.revoke_usage(text), df.metrics() TO %s%s', r, g);
  END IF;
  RAISE NOTICE 'pg_durable: granted df usage privileges to "%"', p_role;
END
$$;

CREATE OR REPLACE FUNCTION df.revoke_usage(p_role text) RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  r text := CASE WHEN lower(p_role) = 'public' THEN 'PUBLIC' ELSE quote_ident(p_role) END;
BEGIN
  EXECUTE format('REVOKE ALL ON df.instances, df.nodes, df.vars, df.callers FROM %s CASCADE', r);
  EXECUTE format('REVOKE EXECUTE ON FUNCTION df._checkpoint(text, text, uuid, text, text) FROM %s CASCADE', r);
  BEGIN
    EXECUTE format('REVOKE EXECUTE ON FUNCTION df.http(text, text, text, jsonb, integer), df.http_multipart(text, text, jsonb, jsonb, integer) FROM %s CASCADE', r);
  EXCEPTION WHEN insufficient_privilege THEN
    NULL;
  END;
  BEGIN
    EXECUTE format('REVOKE EXECUTE ON FUNCTION df.grant_usage(text, boolean, boolean), df.revoke_usage(text), df.metrics() FROM %s CASCADE', r);
  EXCEPTION WHEN insufficient_privilege THEN
    NULL;
  END;
  EXECUTE format('REVOKE USAGE ON SCHEMA df FROM %s CASCADE', r);
  RAISE NOTICE 'pg_durable: revoked df usage privileges from "%"', p_role;
END
$$;
REVOKE EXECUTE ON FUNCTION df.grant_usage(text, boolean, boolean), df.revoke_usage(text) FROM PUBLIC;
