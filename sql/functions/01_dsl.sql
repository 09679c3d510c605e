-- The workflow DSL as plain SQL: constructors and operators that build the
-- graph JSON (pg_durable's "Durofut" envelope) exactly as the proxy's
-- compiler does (src/dsl/), so df.* also works in DO blocks, functions,
-- triggers and on direct connections. Field order and compact form are part
-- of the format: node_type, left_node, right_node, condition_node,
-- extra_nodes, query, result_name; children are embedded verbatim.

CREATE OR REPLACE FUNCTION df._node(node_type text, left_node text, right_node text, condition_node text,
                         extra_nodes text[], query text, result_name text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
  SELECT '{"node_type":' || to_json(node_type)::text
    || coalesce(',"left_node":' || left_node, '')
    || coalesce(',"right_node":' || right_node, '')
    || coalesce(',"condition_node":' || condition_node, '')
    || coalesce(',"extra_nodes":[' || array_to_string(extra_nodes, ',') || ']', '')
    || coalesce(',"query":' || to_json(query)::text, '')
    || coalesce(',"result_name":' || to_json(result_name)::text, '')
    || '}'
$$;

CREATE OR REPLACE FUNCTION df._valid_types() RETURNS text[] LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
  SELECT ARRAY['SQL', 'THEN', 'IF', 'JOIN', 'LOOP', 'BREAK', 'RACE', 'SLEEP',
               'WAIT_SCHEDULE', 'HTTP', 'HTTP_MULTIPART', 'SIGNAL']
$$;

-- The envelope in t, or NULL when t is not one (plain SQL, other JSON, or an
-- unknown node_type unless strict). A JSON object with a valid node_type that
-- does not have the envelope's shape is an error.
CREATE OR REPLACE FUNCTION df._envelope(t text, strict boolean) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  j jsonb;
  k text;
BEGIN
  IF t IS NULL OR left(ltrim(t, E' \t\r\n'), 1) <> '{' THEN
    RETURN NULL;
  END IF;
  BEGIN
    j := t::jsonb;
  EXCEPTION WHEN others THEN
    RETURN NULL;
  END;
  IF jsonb_typeof(j) <> 'object' OR NOT j ? 'node_type' THEN
    RETURN NULL;
  END IF;
  IF jsonb_typeof(j -> 'node_type') <> 'string' OR NOT (j ->> 'node_type') = ANY (df._valid_types()) THEN
    IF strict THEN
      RAISE EXCEPTION 'Invalid durable function: Unknown node_type ''%''. Valid types: %',
        coalesce(j ->> 'node_type', 'null'), array_to_string(df._valid_types(), ', ')
        USING ERRCODE = '22023';
    END IF;
    RETURN NULL;
  END IF;
  FOREACH k IN ARRAY ARRAY['left_node', 'right_node', 'condition_node'] LOOP
    IF j ? k AND jsonb_typeof(j -> k) NOT IN ('object', 'null') THEN
      RAISE EXCEPTION '% Durofut JSON: % must be an object, not %',
        CASE WHEN strict THEN 'Malformed' ELSE 'Invalid' END, k, jsonb_typeof(j -> k) USING ERRCODE = '22023';
    END IF;
  END LOOP;
  IF j ? 'extra_nodes' AND (jsonb_typeof(j -> 'extra_nodes') <> 'array'
      OR EXISTS (SELECT FROM jsonb_array_elements(j -> 'extra_nodes') e WHERE jsonb_typeof(e) <> 'object')) THEN
    RAISE EXCEPTION '% Durofut JSON: extra_nodes must be an array of objects',
      CASE WHEN strict THEN 'Malformed' ELSE 'Invalid' END USING ERRCODE = '22023';
  END IF;
  FOREACH k IN ARRAY ARRAY['query', 'result_name'] LOOP
    IF j ? k AND jsonb_typeof(j -> k) NOT IN ('string', 'null') THEN
      RAISE EXCEPTION '% Durofut JSON: % must be a string, not %',
        CASE WHEN strict THEN 'Malformed' ELSE 'Invalid' END, k, jsonb_typeof(j -> k) USING ERRCODE = '22023';
    END IF;
  END LOOP;
  RETURN j;
END
$$;

-- Auto-wrap: an envelope is used as a node, anything else becomes a SQL step.
CREATE OR REPLACE FUNCTION df._ensure(t text) RETURNS text LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF t IS NULL THEN
    RETURN NULL;
  END IF;
  IF df._envelope(t, false) IS NULL THEN
    RETURN df._node('SQL', NULL, NULL, NULL, NULL, t, NULL);
  END IF;
  RETURN t;
END
$$;

-- Canonical compact text of a parsed envelope (used when df.as renames a node
-- that already has a name, the one case where an envelope is rebuilt).
CREATE OR REPLACE FUNCTION df._render(j jsonb) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
  SELECT df._node(j ->> 'node_type',
    CASE WHEN jsonb_typeof(j -> 'left_node') = 'object' THEN df._render(j -> 'left_node') END,
    CASE WHEN jsonb_typeof(j -> 'right_node') = 'object' THEN df._render(j -> 'right_node') END,
    CASE WHEN jsonb_typeof(j -> 'condition_node') = 'object' THEN df._render(j -> 'condition_node') END,
    CASE WHEN j ? 'extra_nodes' THEN ARRAY(SELECT df._render(e) FROM jsonb_array_elements(j -> 'extra_nodes') WITH ORDINALITY AS x(e, i) ORDER BY i) END,
    j ->> 'query', j ->> 'result_name')
$$;

CREATE OR REPLACE FUNCTION df.sql(query text) RETURNS text LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
  SELECT df._node('SQL', NULL, NULL, NULL, NULL, query, NULL)
$$;

CREATE OR REPLACE FUNCTION df.seq(a text, b text) RETURNS text LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
  SELECT df._node('THEN', df._ensure(a), df._ensure(b), NULL, NULL, NULL, NULL)
$$;

CREATE OR REPLACE FUNCTION df.join(a text, b text) RETURNS text LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
  SELECT df._node('JOIN', df._ensure(a), df._ensure(b), NULL, NULL, NULL, NULL)
$$;

CREATE OR REPLACE FUNCTION df.join3(a text, b text, c text) RETURNS text LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
  SELECT df._node('JOIN', df._ensure(a), df._ensure(b), NULL, ARRAY[df._ensure(c)], NULL, NULL)
$$;

CREATE OR REPLACE FUNCTION df.race(a text, b text) RETURNS text LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
  SELECT df._node('RACE', df._ensure(a), df._ensure(b), NULL, NULL, NULL, NULL)
$$;

CREATE OR REPLACE FUNCTION df.as(fut text, name text) RETURNS text LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  node text;
  j jsonb;
BEGIN
  IF name !~ '^[A-Za-z_][A-Za-z0-9_]*$' THEN
    RAISE EXCEPTION 'df.as: result name ''%'' is not a valid identifier', name
      USING ERRCODE = '22023', HINT = 'A result name is a letter or underscore followed by letters, digits or underscores.';
  END IF;
  node := df._ensure(fut);
  j := node::jsonb;
  IF j ? 'result_name' THEN
    RETURN df._render(jsonb_set(j, '{result_name}', to_jsonb(name)));
  END IF;
  RETURN left(node, length(node) - 1) || ',"result_name":' || to_json(name)::text || '}';
END
$$;

CREATE OR REPLACE FUNCTION df.if(condition text, then_branch text, else_branch text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
  SELECT df._node('IF', df._ensure(then_branch), df._ensure(else_branch), df._ensure(condition), NULL, NULL, NULL)
$$;

CREATE OR REPLACE FUNCTION df.if_rows(result_name text, then_branch text, else_branch text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
  SELECT df._node('IF', df._ensure(then_branch), df._ensure(else_branch), NULL, NULL,
    '{"condition_type":"result_has_rows","result_name":' || to_json(result_name)::text || '}', NULL)
$$;

CREATE OR REPLACE FUNCTION df.loop(body text, condition text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF body IS NULL THEN
    RAISE EXCEPTION 'df.loop: body must not be NULL' USING ERRCODE = '22004';
  END IF;
  RETURN df._node('LOOP', df._ensure(body), NULL, df._ensure(condition), NULL, NULL, NULL);
END
$$;

-- The value is literal: never wrapped as a step, never substituted.
CREATE OR REPLACE FUNCTION df.break(value text DEFAULT NULL) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
  SELECT df._node('BREAK', NULL, NULL, NULL, NULL,
    '{"break_value":' || coalesce(to_json(value)::text, 'null') || '}', NULL)
$$;

CREATE OR REPLACE FUNCTION df.sleep(seconds bigint) RETURNS text LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF seconds < 0 THEN
    RAISE EXCEPTION 'Sleep duration must be non-negative' USING ERRCODE = '22023';
  END IF;
  RETURN df._node('SLEEP', NULL, NULL, NULL, NULL, seconds::text, NULL);
END
$$;

-- Waits and HTTP steps: leaf nodes whose query is their configuration as
-- JSON text. df._config_error checks one (NULL when it is fine); the builders
-- below and df.start (for hand-written graphs) both use it, so a graph gets
-- the same errors however it was built. IMMUTABLE like every constructor (so
-- PostgreSQL folds them in the same order), though the time-zone check reads
-- PostgreSQL's time-zone list, which changes only with PostgreSQL itself.
CREATE OR REPLACE FUNCTION df._config_error(node_type text, config text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  c jsonb;
  v text;
  shape text := CASE node_type
    WHEN 'SIGNAL' THEN '{"signal_name": ..., "timeout_seconds": ...}'
    WHEN 'WAIT_SCHEDULE' THEN '{"cron_expr": ..., "time_zone": ...}'
    WHEN 'HTTP' THEN '{"url": ..., "method": ..., "body": ..., "headers": ..., "timeout_seconds": ...}'
    ELSE '{"url": ..., "method": ..., "parts": [...], "headers": ..., "timeout_seconds": ...}' END;
BEGIN
  IF node_type NOT IN ('SIGNAL', 'WAIT_SCHEDULE', 'HTTP', 'HTTP_MULTIPART') THEN
    RETURN NULL;
  END IF;
  BEGIN
    c := config::jsonb;
  EXCEPTION WHEN others THEN
    c := NULL;
  END;
  IF jsonb_typeof(c) IS DISTINCT FROM 'object' THEN
    RETURN format('Malformed Durofut JSON: a %s node takes %s, not %s', node_type, shape, config);
  END IF;
  IF node_type = 'SIGNAL' THEN
    IF jsonb_typeof(c -> 'signal_name') IS DISTINCT FROM 'string'
       OR coalesce(jsonb_typeof(c -> 'timeout_seconds'), 'null') NOT IN ('number', 'null') THEN
      RETURN format('Malformed Durofut JSON: a SIGNAL node takes %s, not %s', shape, config);
    ELSIF c ->> 'signal_name' = '' THEN
      RETURN 'Signal name must not be empty';
    ELSIF jsonb_typeof(c -> 'timeout_seconds') = 'number'
          AND ((c ->> 'timeout_seconds')::numeric <= 0 OR (c ->> 'timeout_seconds')::numeric <> trunc((c ->> 'timeout_seconds')::numeric)
               OR (c ->> 'timeout_seconds')::numeric > 2147483647) THEN
      RETURN 'Timeout must be positive';
    END IF;
  ELSIF node_type = 'WAIT_SCHEDULE' THEN
    IF jsonb_typeof(c -> 'cron_expr') IS DISTINCT FROM 'string'
       OR coalesce(jsonb_typeof(c -> 'time_zone'), 'null') NOT IN ('string', 'null') THEN
      RETURN format('Malformed Durofut JSON: a WAIT_SCHEDULE node takes %s, not %s', shape, config);
    END IF;
    v := df._cron_error(c ->> 'cron_expr');
    IF v IS NOT NULL THEN
      RETURN format('Invalid cron expression ''%s'': %s', c ->> 'cron_expr', v);
    END IF;
    RETURN df._tz_error(c ->> 'time_zone');
  ELSE
    IF jsonb_typeof(c -> 'url') IS DISTINCT FROM 'string' OR jsonb_typeof(c -> 'method') IS DISTINCT FROM 'string'
       OR jsonb_typeof(c -> 'timeout_seconds') IS DISTINCT FROM 'number'
       OR coalesce(jsonb_typeof(c -> 'headers'), 'null') NOT IN ('object', 'null')
       OR (node_type = 'HTTP' AND coalesce(jsonb_typeof(c -> 'body'), 'null') NOT IN ('string', 'null')) THEN
      RETURN format('Malformed Durofut JSON: a %s node takes %s, not %s', node_type, shape, config);
    END IF;
    -- A URL with a {variable} is checked when the step runs, once it is substituted.
    IF position('{' IN c ->> 'url') = 0 AND (c ->> 'url') !~* '^https?://' THEN
      RETURN format('Blocked: unsupported URL scheme ''%s''. Only http:// and https:// URLs are allowed.',
                    coalesce(substring(c ->> 'url' FROM '^([A-Za-z][A-Za-z0-9+.-]*):'), c ->> 'url'));
    END IF;
    IF node_type = 'HTTP' AND (c ->> 'method') NOT IN ('GET', 'POST', 'PUT', 'DELETE', 'PATCH') THEN
      RETURN format('Unsupported HTTP method ''%s''. Use GET, POST, PUT, DELETE or PATCH.', c ->> 'method');
    ELSIF node_type = 'HTTP_MULTIPART' AND (c ->> 'method') NOT IN ('POST', 'PUT', 'PATCH') THEN
      RETURN format('Unsupported HTTP method ''%s'' for a multipart request. Use POST, PUT or PATCH.', c ->> 'method');
    END IF;
    IF (c ->> 'timeout_seconds')::numeric <= 0 OR (c ->> 'timeout_seconds')::numeric <> trunc((c ->> 'timeout_seconds')::numeric)
       OR (c ->> 'timeout_seconds')::numeric > 2147483647 THEN
      RETURN 'Timeout must be positive';
    END IF;
    IF node_type = 'HTTP_MULTIPART' AND (jsonb_typeof(c -> 'parts') IS DISTINCT FROM 'array' OR jsonb_array_length(c -> 'parts') = 0) THEN
      RETURN 'parts must be a non-empty JSON array of {"name": ..., "data_b64": ...} objects';
    END IF;
  END IF;
  RETURN NULL;
END
$$;

-- Raises a configuration's error, if it has one, else returns the node.
CREATE OR REPLACE FUNCTION df._config_node(node_type text, config text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  e text := df._config_error(node_type, config);
BEGIN
  IF e IS NOT NULL THEN
    RAISE EXCEPTION '%', e USING ERRCODE = '22023';
  END IF;
  RETURN df._node(node_type, NULL, NULL, NULL, NULL, config, NULL);
END
$$;

CREATE OR REPLACE FUNCTION df.wait_for_signal(name text, timeout_seconds int DEFAULT NULL) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF name IS NULL THEN
    RAISE EXCEPTION 'Signal name must not be empty' USING ERRCODE = '22023';
  END IF;
  RETURN df._config_node('SIGNAL',
    '{"signal_name":' || to_json(name)::text || ',"timeout_seconds":' || coalesce(timeout_seconds::text, 'null') || '}');
END
$$;

-- STRICT on the expression, as in pg_durable; the time zone may be NULL (UTC).
CREATE OR REPLACE FUNCTION df.wait_for_schedule(cron_expr text, time_zone text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF cron_expr IS NULL THEN
    RETURN NULL;
  END IF;
  RETURN df._config_node('WAIT_SCHEDULE',
    '{"cron_expr":' || to_json(cron_expr)::text || coalesce(',"time_zone":' || to_json(time_zone)::text, '') || '}');
END
$$;

CREATE OR REPLACE FUNCTION df.http(url text, method text DEFAULT 'POST', body text DEFAULT NULL, headers jsonb DEFAULT NULL,
                                   timeout_seconds int DEFAULT 30) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF url IS NULL OR url = '' THEN
    RAISE EXCEPTION 'df.http: url is required' USING ERRCODE = '22023';
  END IF;
  RETURN df._config_node('HTTP',
    '{"url":' || to_json(url)::text || ',"method":' || to_json(upper(coalesce(method, 'POST')))::text
    || ',"body":' || coalesce(to_json(body)::text, 'null') || ',"headers":' || coalesce(headers::text, 'null')
    || ',"timeout_seconds":' || coalesce(timeout_seconds, 30)::text || '}');
END
$$;

CREATE OR REPLACE FUNCTION df.http_multipart(url text, method text DEFAULT 'POST', parts jsonb DEFAULT NULL, headers jsonb DEFAULT NULL,
                                             timeout_seconds int DEFAULT 30) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF url IS NULL OR url = '' THEN
    RAISE EXCEPTION 'df.http_multipart: url is required' USING ERRCODE = '22023';
  END IF;
  IF parts IS NULL THEN
    RAISE EXCEPTION 'parts is required and cannot be NULL' USING ERRCODE = '22023';
  END IF;
  RETURN df._config_node('HTTP_MULTIPART',
    '{"url":' || to_json(url)::text || ',"method":' || to_json(upper(coalesce(method, 'POST')))::text
    || ',"parts":' || parts::text || ',"headers":' || coalesce(headers::text, 'null')
    || ',"timeout_seconds":' || coalesce(timeout_seconds, 30)::text || '}');
END
$$;
-- HTTP steps reach outside the database: only roles granted df.grant_usage(role, include_http => true) build them.
REVOKE EXECUTE ON FUNCTION df.http(text, text, text, jsonb, integer), df.http_multipart(text, text, jsonb, jsonb, integer) FROM PUBLIC;

-- Operator bodies.
CREATE OR REPLACE FUNCTION df.as_op(fut text, name text) RETURNS text LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
  SELECT df.as(fut, name)
$$;

-- `c ?> t` is half an if: `!>` completes it.
CREATE OR REPLACE FUNCTION df.if_then_op(condition text, then_branch text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
  SELECT jsonb_build_object('_partial_if', true, 'condition', condition, 'then_branch', then_branch)::text
$$;

CREATE OR REPLACE FUNCTION df.if_else_op(partial text, else_branch text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  p jsonb;
BEGIN
  BEGIN
    p := partial::jsonb;
  EXCEPTION WHEN others THEN
    p := NULL;
  END;
  IF p IS NULL OR jsonb_typeof(p) <> 'object' OR p ->> '_partial_if' IS NULL THEN
    RAISE EXCEPTION 'Invalid if-then-else: left side of !> must be a ?> expression' USING ERRCODE = '42601',
      HINT = 'The df operators all have the same precedence and group left to right: write c ?> (a ~> b) !> e.';
  END IF;
  RETURN df.if(p ->> 'condition', p ->> 'then_branch', else_branch);
END
$$;

CREATE OR REPLACE FUNCTION df.loop_prefix_op(body text) RETURNS text LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
  SELECT df.loop(body)
$$;
