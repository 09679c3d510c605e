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
