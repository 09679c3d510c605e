-- The user-facing functions (pg_durable's surface) and the hooks the
-- executor relies on. Every function pins search_path to pg_catalog, then
-- pg_temp (named last: otherwise PostgreSQL searches it first for tables and
-- types), so no object a user plants in public or pg_temp is ever used.
--
-- df.start runs in the caller's transaction: ROLLBACK discards the start,
-- and executors are woken by a NOTIFY that PostgreSQL delivers at COMMIT. The
-- rows are written by df._submit as the schema's owner (users have no write
-- privilege on df.instances or df.nodes); the submitter is the caller's
-- current_user, handed over through a df.callers token (df._token).

CREATE OR REPLACE FUNCTION df._in_workflow() RETURNS boolean LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
  SELECT coalesce(current_setting('df.in_workflow', true), '') = 'true'
$$;

CREATE OR REPLACE FUNCTION df._setting(p_name text) RETURNS text LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
  SELECT s.value FROM df.settings s WHERE s.name = p_name
$$;

CREATE OR REPLACE FUNCTION df._new_id() RETURNS text LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
  SELECT right(replace(gen_random_uuid()::text, '-', ''), 8)
$$;

-- Whether a role can act as a superuser: it is one, it may SET ROLE to one or
-- inherits one's rights, or it holds a role that reaches the server's files
-- or programs. Before PostgreSQL 16, CREATEROLE could grant itself those.
CREATE OR REPLACE FUNCTION df._escalates(p_role oid) RETURNS boolean LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
  SELECT EXISTS (
    SELECT FROM pg_catalog.pg_roles s
     WHERE (s.rolsuper OR s.rolname IN ('pg_execute_server_program', 'pg_read_server_files', 'pg_write_server_files'))
       AND (s.oid = p_role OR pg_catalog.pg_has_role(p_role, s.oid, 'USAGE')
            OR pg_catalog.pg_has_role(p_role, s.oid,
                 CASE WHEN current_setting('server_version_num')::int >= 160000 THEN 'SET' ELSE 'MEMBER' END)))
  OR (current_setting('server_version_num')::int < 160000
      AND EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.oid = p_role AND r.rolcreaterole))
$$;

-- Whether a role may act on every role's instances, as the df schema's owner
-- and superusers may (they are not bound by row-level security).
CREATE OR REPLACE FUNCTION df._is_admin(p_role oid) RETURNS boolean LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
  SELECT EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.oid = p_role AND r.rolsuper)
      OR pg_catalog.pg_has_role(p_role, (SELECT n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname = 'df'), 'USAGE')
$$;

-- Called as the caller (SECURITY INVOKER): leaves a token naming
-- current_user, which row-level security lets nobody forge.
CREATE OR REPLACE FUNCTION df._token() RETURNS uuid LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  t uuid := gen_random_uuid();
BEGIN
  INSERT INTO df.callers (token) VALUES (t);
  RETURN t;
EXCEPTION WHEN insufficient_privilege THEN
  RAISE EXCEPTION 'role "%" may not use durable workflows', current_user USING ERRCODE = '42501',
    HINT = 'An administrator grants it with SELECT df.grant_usage(''<role>'').';
END
$$;

-- In a SECURITY DEFINER function: the role that left the token (once).
CREATE OR REPLACE FUNCTION df._caller(p_token uuid) RETURNS regrole LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  r regrole;
BEGIN
  DELETE FROM df.callers c WHERE c.token = p_token RETURNING c.role INTO r;
  IF r IS NULL THEN
    RAISE EXCEPTION 'pg-durable-proxy: no caller token; call the df functions, not their internals' USING ERRCODE = '42501';
  END IF;
  RETURN r;
END
$$;
REVOKE EXECUTE ON FUNCTION df._caller(uuid) FROM PUBLIC;

-- Whether `config` is a JSON object with the key `key` (a node's configuration, as the builders write it).
CREATE OR REPLACE FUNCTION df._is_config(config text, key text) RETURNS boolean LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  RETURN jsonb_typeof(config::jsonb) = 'object' AND config::jsonb ? key;
EXCEPTION WHEN others THEN
  RETURN false;
END
$$;
-- Pure, and df.explain's dry run (as the caller) checks graphs with it: callable by everyone with df usage.
GRANT EXECUTE ON FUNCTION df._is_config(text, text) TO PUBLIC;

-- Flattens a graph into the rows df.nodes holds (pre-order; an IF's or
-- LOOP's condition and a JOIN's extra branches referenced from the
-- configuration), checking every node's shape and df.start's limits on the
-- way. Ids are fresh 8-hex ids, or N1, N2, ... for a dry run (df.explain).
-- The one walk of a graph: df.start stores what it gives, df.explain draws it.
CREATE OR REPLACE FUNCTION df._flat_id(p_dry boolean, p_n int) RETURNS text LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
  SELECT CASE WHEN p_dry THEN 'N' || p_n ELSE df._new_id() END
$$;

CREATE OR REPLACE FUNCTION df._flatten(p_graph jsonb, p_dry boolean,
  OUT o_id text[], OUT o_type text[], OUT o_query text[], OUT o_name text[], OUT o_left text[], OUT o_right text[])
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  stack jsonb[];
  stack_ids text[];
  stack_depth int[];
  top int;
  n jsonb;
  nid text;
  d int;
  t text;
  q text;
  lid text;
  rid text;
  cid text;
  extra text[];
  e jsonb;
  count int := 0;
  drawn int := 1;
BEGIN
  o_id := '{}'; o_type := '{}'; o_query := '{}'; o_name := '{}'; o_left := '{}'; o_right := '{}';
  stack := ARRAY[p_graph]; stack_ids := ARRAY[df._flat_id(p_dry, 1)]; stack_depth := ARRAY[1]; top := 1;
  WHILE top > 0 LOOP
    n := stack[top]; nid := stack_ids[top]; d := stack_depth[top]; top := top - 1;
    count := count + 1;
    IF count > 10000 THEN
      RAISE EXCEPTION 'Workflow exceeds maximum node count of 10000' USING ERRCODE = '54000';
    END IF;
    IF d > 256 THEN
      RAISE EXCEPTION 'Workflow exceeds maximum nesting depth of 256' USING ERRCODE = '54000';
    END IF;
    -- Hand-written graphs come here unchecked: every malformed shape gets the DSL builders' error.
    IF jsonb_typeof(n) IS DISTINCT FROM 'object' OR jsonb_typeof(n -> 'node_type') IS DISTINCT FROM 'string'
       OR NOT coalesce((n ->> 'node_type') = ANY (df._valid_types()), false) THEN
      RAISE EXCEPTION 'Invalid durable function: Unknown node_type ''%''. Valid types: %',
        coalesce(n ->> 'node_type', 'null'), array_to_string(df._valid_types(), ', ') USING ERRCODE = '22023';
    END IF;
    t := n ->> 'node_type';
    FOREACH q IN ARRAY ARRAY['left_node', 'right_node', 'condition_node'] LOOP
      IF n ? q AND jsonb_typeof(n -> q) NOT IN ('object', 'null') THEN
        RAISE EXCEPTION 'Malformed Durofut JSON: % must be an object, not %', q, jsonb_typeof(n -> q) USING ERRCODE = '22023';
      END IF;
    END LOOP;
    IF n ? 'query' AND jsonb_typeof(n -> 'query') NOT IN ('string', 'null') THEN
      RAISE EXCEPTION 'Malformed Durofut JSON: query must be a string, not %', jsonb_typeof(n -> 'query') USING ERRCODE = '22023';
    END IF;
    IF n ? 'result_name' AND jsonb_typeof(n -> 'result_name') <> 'null'
       AND (jsonb_typeof(n -> 'result_name') <> 'string' OR (n ->> 'result_name') !~ '^[A-Za-z_][A-Za-z0-9_]*$') THEN
      RAISE EXCEPTION 'invalid result name ''%'': a result name is a letter or underscore followed by letters, digits or underscores',
        n ->> 'result_name' USING ERRCODE = '22023';
    END IF;
    IF n ? 'condition_node' AND t NOT IN ('IF', 'LOOP') THEN
      RAISE EXCEPTION 'Malformed Durofut JSON: condition_node is only allowed on IF and LOOP, not %', t USING ERRCODE = '22023';
    END IF;
    IF n ? 'extra_nodes' AND t <> 'JOIN' THEN
      RAISE EXCEPTION 'Malformed Durofut JSON: extra_nodes is only allowed on JOIN, not %', t USING ERRCODE = '22023';
    END IF;
    lid := NULL; rid := NULL; cid := NULL; extra := NULL;
    q := n ->> 'query';
    IF jsonb_typeof(n -> 'left_node') = 'object' THEN
      drawn := drawn + 1; lid := df._flat_id(p_dry, drawn); top := top + 1; stack[top] := n -> 'left_node'; stack_ids[top] := lid; stack_depth[top] := d + 1;
    END IF;
    IF jsonb_typeof(n -> 'right_node') = 'object' THEN
      drawn := drawn + 1; rid := df._flat_id(p_dry, drawn); top := top + 1; stack[top] := n -> 'right_node'; stack_ids[top] := rid; stack_depth[top] := d + 1;
    END IF;
    IF jsonb_typeof(n -> 'condition_node') = 'object' THEN
      drawn := drawn + 1; cid := df._flat_id(p_dry, drawn); top := top + 1; stack[top] := n -> 'condition_node'; stack_ids[top] := cid; stack_depth[top] := d + 1;
      q := '{"condition_node":"' || cid || '"}';
    END IF;
    IF jsonb_typeof(n -> 'extra_nodes') = 'array' AND jsonb_array_length(n -> 'extra_nodes') > 0 THEN
      extra := '{}';
      FOR e IN SELECT x FROM jsonb_array_elements(n -> 'extra_nodes') AS x LOOP
        drawn := drawn + 1; cid := df._flat_id(p_dry, drawn); extra := extra || cid;
        top := top + 1; stack[top] := e; stack_ids[top] := cid; stack_depth[top] := d + 1;
      END LOOP;
      q := '{"extra_nodes":' || to_json(extra)::text || '}';
    END IF;
    IF t IN ('SQL', 'SLEEP', 'WAIT_SCHEDULE', 'BREAK', 'HTTP', 'HTTP_MULTIPART', 'SIGNAL') THEN
      IF lid IS NOT NULL OR rid IS NOT NULL OR q IS NULL THEN
        RAISE EXCEPTION 'Malformed Durofut JSON: a % node takes a query and no children', t USING ERRCODE = '22023';
      END IF;
    ELSIF t IN ('THEN', 'JOIN', 'RACE', 'IF') AND (lid IS NULL OR rid IS NULL) THEN
      RAISE EXCEPTION 'Malformed Durofut JSON: a % node needs left_node and right_node', t USING ERRCODE = '22023';
    ELSIF t = 'IF' AND q IS NULL THEN
      RAISE EXCEPTION 'Malformed Durofut JSON: an IF node needs a condition_node' USING ERRCODE = '22023';
    ELSIF t = 'LOOP' AND (lid IS NULL OR rid IS NOT NULL) THEN
      RAISE EXCEPTION 'Malformed Durofut JSON: a LOOP node takes a body (left_node) only' USING ERRCODE = '22023';
    END IF;
    -- The configurations the executor reads (src/engine/graph.ts), as the builders write them.
    IF t = 'SLEEP' AND q !~ '^\s*[0-9]+\s*$' THEN
      RAISE EXCEPTION 'Malformed Durofut JSON: a SLEEP node takes its duration in whole seconds, not %', q USING ERRCODE = '22023';
    ELSIF t = 'BREAK' AND NOT df._is_config(q, 'break_value') THEN
      RAISE EXCEPTION 'Malformed Durofut JSON: a BREAK node takes {"break_value": ...}, not %', q USING ERRCODE = '22023';
    ELSIF t = 'IF' AND jsonb_typeof(n -> 'condition_node') IS DISTINCT FROM 'object' AND NOT df._is_config(q, 'result_name') THEN
      RAISE EXCEPTION 'Malformed Durofut JSON: an IF node needs a condition_node (or a result_has_rows condition), not %', q USING ERRCODE = '22023';
    ELSIF t = 'LOOP' AND jsonb_typeof(n -> 'condition_node') IS DISTINCT FROM 'object' AND q IS NOT NULL THEN
      RAISE EXCEPTION 'Malformed Durofut JSON: a LOOP node takes its condition as a condition_node, not %', q USING ERRCODE = '22023';
    ELSIF t = 'JOIN' AND extra IS NULL AND q IS NOT NULL THEN
      RAISE EXCEPTION 'Malformed Durofut JSON: a JOIN node takes more branches as extra_nodes, not %', q USING ERRCODE = '22023';
    ELSIF t IN ('SIGNAL', 'WAIT_SCHEDULE', 'HTTP', 'HTTP_MULTIPART') AND df._config_error(t, q) IS NOT NULL THEN
      RAISE EXCEPTION '%', df._config_error(t, q) USING ERRCODE = '22023';
    END IF;
    IF t IN ('THEN', 'RACE') THEN
      q := NULL;
    END IF;
    o_id[count] := nid; o_type[count] := t; o_query[count] := q; o_name[count] := n ->> 'result_name';
    o_left[count] := lid; o_right[count] := rid;
  END LOOP;
END
$$;

-- Stores a graph as df.nodes rows for instance p_instance and returns the
-- root node's id.
CREATE OR REPLACE FUNCTION df._insert_nodes(p_instance text, p_graph jsonb, p_database text, p_submitter regrole) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  f record;
  tries int := 0;
BEGIN
  LOOP
    f := df._flatten(p_graph, false);
    -- Ids are 32 random bits: a graph of many nodes can draw one twice.
    EXIT WHEN (SELECT count(DISTINCT x) FROM unnest(f.o_id) x) = cardinality(f.o_id);
    tries := tries + 1;
    IF tries >= 10 THEN
      RAISE EXCEPTION 'df.start: could not draw unique node ids' USING ERRCODE = '23505';
    END IF;
  END LOOP;
  -- HTTP steps reach outside the database: the role needs df.grant_usage(role, include_http => true).
  IF ('HTTP' = ANY (f.o_type) AND NOT has_function_privilege(p_submitter::oid, 'df.http(text, text, text, jsonb, integer)'::regprocedure, 'EXECUTE'))
     OR ('HTTP_MULTIPART' = ANY (f.o_type)
         AND NOT has_function_privilege(p_submitter::oid, 'df.http_multipart(text, text, jsonb, jsonb, integer)'::regprocedure, 'EXECUTE')) THEN
    RAISE EXCEPTION 'permission denied: role % may not run HTTP steps', p_submitter USING ERRCODE = '42501',
      HINT = format('An administrator grants it with SELECT df.grant_usage(%L, include_http => true).', p_submitter::text);
  END IF;
  INSERT INTO df.nodes (id, instance_id, node_type, query, result_name, left_node, right_node, submitted_by, database)
  SELECT i, p_instance, ty, qu, na, le, ri, p_submitter, p_database
  FROM unnest(f.o_id, f.o_type, f.o_query, f.o_name, f.o_left, f.o_right) AS x(i, ty, qu, na, le, ri);
  RETURN f.o_id[1];
END
$$;

-- The submission itself: checks, instance row, node rows, vars snapshot, as
-- the schema's owner for the role that left p_token. The proxy's compiler
-- calls df.start with a graph it has already validated.
CREATE OR REPLACE FUNCTION df._submit(p_token uuid, fut text, label text, database text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  me regrole := df._caller(p_token);
  graph jsonb;
  snapshot jsonb;
  r record;
  served text;
  got text;
  root text;
  tries int := 0;
BEGIN
  -- Bounded, so that what the executor reads back always fits its messages.
  IF octet_length(fut) > 67108864 THEN
    RAISE EXCEPTION 'df.start: the workflow takes % bytes, more than the limit of 64 MiB', octet_length(fut) USING ERRCODE = '54000';
  END IF;
  graph := df._envelope(fut, true);
  IF graph IS NULL THEN
    graph := jsonb_build_object('node_type', 'SQL', 'query', fut);
  END IF;
  IF database IS NOT NULL THEN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_database d WHERE d.datname = database) THEN
      RAISE EXCEPTION 'database "%" does not exist', database USING ERRCODE = '3D000';
    END IF;
    IF NOT has_database_privilege(me::oid, database, 'CONNECT') THEN
      RAISE EXCEPTION 'permission denied for database "%"', database USING ERRCODE = '42501',
        DETAIL = format('Role "%s" does not have CONNECT privilege on it, and its steps would run there.', me);
    END IF;
    served := df._setting('databases');
    IF served IS NOT NULL AND NOT database = ANY (string_to_array(served, ',')) THEN
      RAISE EXCEPTION 'database "%" is not served by pg-durable-proxy', database USING ERRCODE = '42501',
        HINT = format('The proxy serves: %s (its --databases setting).', served);
    END IF;
  END IF;
  SELECT x.rolname, x.rolcanlogin, x.rolsuper INTO r FROM pg_catalog.pg_roles x WHERE x.oid = me;
  IF NOT r.rolcanlogin THEN
    RAISE EXCEPTION 'current_user "%" does not have LOGIN privilege. The executor must connect as this role to run its steps.', r.rolname
      USING ERRCODE = '42501';
  END IF;
  IF coalesce(df._setting('allow_superuser_instances'), 'false') <> 'true' AND df._escalates(me) THEN
    IF r.rolsuper THEN
      RAISE EXCEPTION 'pg-durable-proxy: superuser instances are disabled. current_user "%" is a superuser.', r.rolname
        USING ERRCODE = '42501',
        HINT = 'Start workflows as an ordinary role (see df.grant_usage), or run the proxy with --allow-superuser-instances.';
    END IF;
    RAISE EXCEPTION 'pg-durable-proxy: superuser instances are disabled. current_user "%" can act as a superuser.', r.rolname
      USING ERRCODE = '42501',
      DETAIL = 'It may SET ROLE to or inherits from a superuser, or holds pg_execute_server_program, pg_read_server_files '
               'or pg_write_server_files (or, before PostgreSQL 16, has CREATEROLE).',
      HINT = 'Start workflows as an ordinary role (see df.grant_usage), or run the proxy with --allow-superuser-instances.';
  END IF;
  SELECT coalesce(jsonb_object_agg(v.name, v.value), '{}') INTO snapshot FROM df.vars v WHERE v.owner = me;
  IF octet_length(snapshot::text) > 67108864 THEN
    RAISE EXCEPTION 'df.start: the variables (df.setvar) take % bytes, more than the limit of 64 MiB', octet_length(snapshot::text)
      USING ERRCODE = '54000',
      HINT = 'Remove large variables with df.unsetvar() or df.clearvars(), or keep large data in a table of your own.';
  END IF;
  -- Labels are indexed (df.list_instances filters on them): an index entry must fit a page.
  IF octet_length(label) > 2048 THEN
    RAISE EXCEPTION 'df.start: the label takes % bytes, more than the limit of 2048', octet_length(label) USING ERRCODE = '54000';
  END IF;
  LOOP
    INSERT INTO df.instances AS i (id, label, root_node, submitted_by, database, vars)
    VALUES (df._new_id(), label, '00000000', me, database, snapshot)
    ON CONFLICT (id) DO NOTHING
    RETURNING i.id INTO got;
    EXIT WHEN got IS NOT NULL;
    tries := tries + 1;
    IF tries >= 10 THEN
      RAISE EXCEPTION 'df.start: could not draw a unique instance id' USING ERRCODE = '23505';
    END IF;
  END LOOP;
  root := df._insert_nodes(got, graph, database, me);
  UPDATE df.instances i SET root_node = root WHERE i.id = got;
  RETURN got;
END
$$;
REVOKE EXECUTE ON FUNCTION df._insert_nodes(text, jsonb, text, regrole) FROM PUBLIC;

-- transaction_mode => 'new' is carried out by the proxy for the one form it
-- can start at once; df.start itself only explains that form.
CREATE OR REPLACE FUNCTION df.start(fut text, label text DEFAULT NULL, database text DEFAULT NULL,
                                    transaction_mode text DEFAULT 'caller') RETURNS text LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF fut IS NULL THEN
    RAISE EXCEPTION 'df.start: the workflow is NULL' USING ERRCODE = '22004';
  END IF;
  CASE lower(coalesce(transaction_mode, 'caller'))
    WHEN 'caller' THEN
      RETURN df._submit(df._token(), fut, label, database);
    WHEN 'new' THEN
      IF df._in_workflow() THEN
        RAISE EXCEPTION 'df.start(): transaction_mode => ''new'' cannot be used inside a workflow' USING ERRCODE = '0A000';
      END IF;
      RAISE EXCEPTION 'df.start(): transaction_mode => ''new'' needs its own connection, which only pg-durable-proxy can open'
        USING ERRCODE = '0A000',
        HINT = 'Through the proxy, send it as a statement of its own, as a simple query without bind parameters: '
               'SELECT df.start(''<workflow written out>'', ''<label>'', transaction_mode => ''new''). '
               'Or start the workflow in a transaction of its own.';
    ELSE
      RAISE EXCEPTION 'invalid transaction_mode "%" for df.start(): expected ''caller'' or ''new''', transaction_mode
        USING ERRCODE = '22023';
  END CASE;
END
$$;

-- New instances: a run row for the executors, and a wake-up delivered at commit.
CREATE OR REPLACE FUNCTION df._instance_inserted() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  INSERT INTO df.runs (instance_id, submitted_by) VALUES (NEW.id, NEW.submitted_by);
  PERFORM pg_notify('df_work', NEW.id);
  RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER instance_inserted AFTER INSERT ON df.instances
  FOR EACH ROW EXECUTE FUNCTION df._instance_inserted();

-- An instance that becomes terminal (df.cancel, or the executor finishing it)
-- leaves the run queue; a running executor is told to look (it re-reads the
-- status: any role can NOTIFY).
CREATE OR REPLACE FUNCTION df._instance_ended() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  DELETE FROM df.runs r WHERE r.instance_id = NEW.id;
  PERFORM pg_notify('df_cancel', NEW.id);
  RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER instance_ended AFTER UPDATE OF status ON df.instances
  FOR EACH ROW WHEN (NEW.status IN ('completed', 'failed', 'cancelled') AND OLD.status NOT IN ('completed', 'failed', 'cancelled'))
  EXECUTE FUNCTION df._instance_ended();
REVOKE EXECUTE ON FUNCTION df._instance_inserted(), df._instance_ended() FROM PUBLIC;

-- An instance's identity is fixed at start: no role that may update the rows
-- (BYPASSRLS with an UPDATE grant, a careless owner) can make its later steps
-- or loop iterations run as someone else.
CREATE OR REPLACE FUNCTION df._submitter_fixed() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  RAISE EXCEPTION 'df.%.submitted_by cannot change: a workflow runs as the role that started it', TG_TABLE_NAME
    USING ERRCODE = '42501';
END
$$;
REVOKE EXECUTE ON FUNCTION df._submitter_fixed() FROM PUBLIC;
CREATE OR REPLACE TRIGGER submitted_by_fixed BEFORE UPDATE OF submitted_by ON df.instances
  FOR EACH ROW WHEN (NEW.submitted_by IS DISTINCT FROM OLD.submitted_by) EXECUTE FUNCTION df._submitter_fixed();
CREATE OR REPLACE TRIGGER submitted_by_fixed BEFORE UPDATE OF submitted_by ON df.nodes
  FOR EACH ROW WHEN (NEW.submitted_by IS DISTINCT FROM OLD.submitted_by) EXECUTE FUNCTION df._submitter_fixed();
CREATE OR REPLACE TRIGGER submitted_by_fixed BEFORE UPDATE OF submitted_by ON df.runs
  FOR EACH ROW WHEN (NEW.submitted_by IS DISTINCT FROM OLD.submitted_by) EXECUTE FUNCTION df._submitter_fixed();

-- A SQL step's checkpoint, called in the step's own transaction on a
-- connection logged in as the submitter (or by the executor itself). It holds
-- the run row (so no other executor can take the instance over until this
-- transaction ends) and refuses if this executor no longer owns it, the
-- instance was cancelled, or the caller is neither its submitter nor an
-- administrator: then the step rolls back with it.
CREATE OR REPLACE FUNCTION df._checkpoint(p_instance text, p_node text, p_owner uuid, p_stamp text, p_result text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  PERFORM FROM df.runs r
   WHERE r.instance_id = p_instance AND r.owner = p_owner
     AND (r.submitted_by = to_regrole(quote_ident(session_user)) OR df._is_admin(to_regrole(quote_ident(session_user))))
     FOR SHARE OF r;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'pg-durable-proxy: instance % is no longer held by this executor (cancelled, finished or taken over)', p_instance
      USING ERRCODE = '40001';
  END IF;
  UPDATE df.nodes n SET status = 'completed', result = p_result::jsonb, raw_result = p_result, stamp = p_stamp,
         status_details = jsonb_build_object('execution_id', p_instance || '::' || coalesce(nullif(p_stamp, ''), '1')),
         updated_at = now()
   WHERE n.instance_id = p_instance AND n.id = p_node;
END
$$;
REVOKE EXECUTE ON FUNCTION df._checkpoint(text, text, uuid, text, text) FROM PUBLIC;

-- ---- monitoring and control: read through row-level security, as the caller

CREATE OR REPLACE FUNCTION df.status(instance_id text) RETURNS text LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp AS $$
  SELECT i.status FROM df.instances i WHERE i.id = instance_id
$$;

CREATE OR REPLACE FUNCTION df.result(instance_id text) RETURNS text LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp AS $$
  SELECT n.result::text FROM df.instances i JOIN df.nodes n ON n.instance_id = i.id AND n.id = i.root_node
   WHERE i.id = $1 AND n.status = 'completed'
$$;

CREATE OR REPLACE FUNCTION df.await_instance(instance_id text, timeout_seconds int DEFAULT 30) RETURNS text
LANGUAGE plpgsql STRICT
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  s text;
  deadline timestamptz;
BEGIN
  IF df._in_workflow() THEN
    RAISE EXCEPTION 'df.await_instance() cannot be called inside a workflow - it would block a step' USING ERRCODE = '0A000';
  END IF;
  IF timeout_seconds <= 0 THEN
    RAISE EXCEPTION 'Timeout must be positive' USING ERRCODE = '22023';
  END IF;
  deadline := clock_timestamp() + make_interval(secs => timeout_seconds);
  LOOP
    SELECT i.status INTO s FROM df.instances i WHERE i.id = await_instance.instance_id;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'Instance not found: %', instance_id USING ERRCODE = 'P0002';
    END IF;
    IF s IN ('completed', 'failed', 'cancelled') THEN
      RETURN s;
    END IF;
    IF clock_timestamp() >= deadline THEN
      RAISE EXCEPTION 'Timeout after %s waiting for instance % (status: %). Check that pg-durable-proxy is running.',
        timeout_seconds, instance_id, s USING ERRCODE = '57014';
    END IF;
    PERFORM pg_sleep(0.1);
  END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION df.wait_for_completion(instance_id text, timeout_seconds int DEFAULT 30) RETURNS text
LANGUAGE plpgsql STRICT
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  RAISE WARNING 'df.wait_for_completion() is deprecated; use df.await_instance()';
  RETURN df.await_instance(instance_id, timeout_seconds);
END
$$;

-- Cancels as the schema's owner for the caller, who must be the instance's
-- submitter or an administrator; anyone else learns only that no such
-- instance is theirs.
CREATE OR REPLACE FUNCTION df._cancel(p_token uuid, p_instance text, p_reason text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  me regrole := df._caller(p_token);
BEGIN
  PERFORM FROM df.instances i WHERE i.id = p_instance AND (i.submitted_by = me OR df._is_admin(me));
  IF NOT FOUND THEN
    RAISE EXCEPTION 'Instance not found or access denied: %', p_instance USING ERRCODE = 'P0002';
  END IF;
  -- The run row first, then the instance: the executor's claims and ends lock in that order too.
  PERFORM FROM df.runs r WHERE r.instance_id = p_instance FOR UPDATE;
  UPDATE df.instances i SET status = 'cancelled', updated_at = now(), output = p_reason
   WHERE i.id = p_instance AND i.status NOT IN ('completed', 'failed', 'cancelled');
  RETURN format('Instance %s cancelled: %s', p_instance, p_reason);
END
$$;

CREATE OR REPLACE FUNCTION df.cancel(instance_id text, reason text DEFAULT 'Cancelled by user') RETURNS text
LANGUAGE sql STRICT VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
  SELECT df._cancel(df._token(), instance_id, reason)
$$;

-- A signal is kept (df.signals) until a wait of the instance takes it, and
-- wakes the instance at once: a parked one waiting for this name becomes
-- claimable, a running one is told to look.
CREATE OR REPLACE FUNCTION df._signal(p_token uuid, p_instance text, p_name text, p_data text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  me regrole := df._caller(p_token);
  st text;
  payload text;
BEGIN
  IF p_instance = '' THEN
    RAISE EXCEPTION 'df.signal: instance_id must not be empty' USING ERRCODE = '22023';
  END IF;
  IF p_name = '' THEN
    RAISE EXCEPTION 'Signal name must not be empty' USING ERRCODE = '22023';
  END IF;
  PERFORM FROM df.instances i WHERE i.id = p_instance AND (i.submitted_by = me OR df._is_admin(me));
  IF NOT FOUND THEN
    RAISE EXCEPTION 'Instance not found or access denied: %', p_instance USING ERRCODE = 'P0002';
  END IF;
  -- The run row first, then the instance, as claims, ends and df.cancel lock them.
  PERFORM FROM df.runs r WHERE r.instance_id = p_instance FOR UPDATE;
  SELECT i.status INTO st FROM df.instances i WHERE i.id = p_instance;
  IF st IN ('completed', 'failed', 'cancelled') THEN
    RAISE EXCEPTION 'Instance % has already finished (%): signal ''%'' was not delivered', p_instance, st, p_name
      USING ERRCODE = '55000';
  END IF;
  -- Bounded: a payload becomes a step's result (the executor's limit on those holds), and an
  -- instance keeps at most 1000 signals no wait has taken.
  IF octet_length(p_data) > coalesce(df._setting('max_step_result')::bigint, 64 * 1024 * 1024) THEN
    RAISE EXCEPTION 'df.signal: the payload (% bytes) is larger than the limit of % bytes (--max-step-result)',
      octet_length(p_data), coalesce(df._setting('max_step_result')::bigint, 64 * 1024 * 1024) USING ERRCODE = '54000';
  END IF;
  IF (SELECT count(*) FROM (SELECT 1 FROM df.signals s WHERE s.instance_id = p_instance AND s.taken_at IS NULL LIMIT 1000) k) >= 1000 THEN
    RAISE EXCEPTION 'Instance % already keeps 1000 signals no wait has taken: signal ''%'' was not kept', p_instance, p_name
      USING ERRCODE = '54000';
  END IF;
  BEGIN
    PERFORM p_data::jsonb;
    payload := p_data;
  EXCEPTION WHEN others THEN
    payload := to_json(p_data)::text; -- not JSON: it arrives as a JSON string
  END;
  INSERT INTO df.signals (instance_id, name, data, sent_by) VALUES (p_instance, p_name, payload, me);
  UPDATE df.runs r SET lease_expires = now()
   WHERE r.instance_id = p_instance AND r.owner IS NULL AND p_name = ANY (r.awaits);
  PERFORM pg_notify('df_work', p_instance);
  RETURN 'OK';
END
$$;

CREATE OR REPLACE FUNCTION df.signal(instance_id text, signal_name text, signal_data text DEFAULT '{}') RETURNS text
LANGUAGE sql STRICT VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
  SELECT df._signal(df._token(), instance_id, signal_name, signal_data)
$$;

CREATE OR REPLACE FUNCTION df._check_limit(limit_count int) RETURNS void LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  cap int := coalesce(nullif(current_setting('df.list_instances_max_limit', true), '')::int, 1000);
BEGIN
  IF limit_count IS NULL OR limit_count < 1 THEN
    RAISE EXCEPTION 'df.list_instances: limit_count must be at least 1' USING ERRCODE = '22023';
  END IF;
  IF limit_count > cap THEN
    RAISE EXCEPTION 'df.list_instances: limit_count % exceeds the maximum of % (df.list_instances_max_limit)', limit_count, cap
      USING ERRCODE = '22023';
  END IF;
END
$$;

-- Keyset pages ordered (created_at DESC, id ASC); the cursor is the hex of
-- v1|<created_at>|<id> of the page's last row, the same on every row, NULL on
-- the last page. A cursor is accepted only in the exact form df.list_instances
-- makes ('yesterday' is a valid timestamptz, but no page ends there).
CREATE OR REPLACE FUNCTION df._decode_cursor(after_cursor text, OUT ts timestamptz, OUT id text) LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  parts text[];
BEGIN
  IF after_cursor IS NULL THEN
    RETURN;
  END IF;
  BEGIN
    IF length(after_cursor) > 512 OR after_cursor !~ '^([0-9a-f]{2})+$' THEN
      RAISE EXCEPTION 'bad';
    END IF;
    parts := string_to_array(convert_from(decode(after_cursor, 'hex'), 'UTF8'), '|');
    IF cardinality(parts) <> 3 OR parts[1] <> 'v1' OR parts[3] !~ '^[0-9a-f]{8}$'
       OR parts[2] !~ '^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}\+00$' THEN
      RAISE EXCEPTION 'bad';
    END IF;
    ts := parts[2]::timestamptz;
    id := parts[3];
  EXCEPTION WHEN others THEN
    RAISE EXCEPTION 'df.list_instances: invalid after_cursor' USING ERRCODE = '22023';
  END;
END
$$;

-- One row per node, with the status a reader should see: a node that did not
-- run because an ancestor already finished (the untaken IF arm, the right side
-- of a failed THEN, a RACE loser) is 'skipped'; a result from an earlier loop
-- iteration is superseded.
CREATE OR REPLACE FUNCTION df.instance_nodes(instance_id_param text)
RETURNS TABLE (node_id text, node_type text, query text, result_name text, left_node text, right_node text,
               status text, result text, status_details text, inferred_status text,
               inferred_status_from_ancestor_id text, updated_at timestamptz)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
  WITH RECURSIVE n AS (
    SELECT x.*, CASE WHEN x.node_type IN ('IF', 'LOOP', 'JOIN') AND left(x.query, 1) = '{' THEN x.query::jsonb END AS cfg
      FROM df.nodes x WHERE x.instance_id = instance_id_param
  ),
  walk AS (
    SELECT n.id::text, ''::text AS expected, NULL::text AS terminal_ancestor, 0 AS depth
      FROM df.instances i JOIN n ON n.id = i.root_node WHERE i.id = instance_id_param
    UNION ALL
    SELECT c.child::text,
           CASE WHEN p.node_type = 'LOOP' THEN w.expected || '/' || coalesce(p.iteration, 1) ELSE w.expected END,
           CASE WHEN p.status IN ('completed', 'failed') AND p.stamp = w.expected THEN p.id::text ELSE w.terminal_ancestor END,
           w.depth + 1
      FROM walk w JOIN n p ON p.id = w.id
      CROSS JOIN LATERAL (
        SELECT p.left_node UNION ALL SELECT p.right_node UNION ALL SELECT p.cfg ->> 'condition_node'
        UNION ALL SELECT jsonb_array_elements_text(CASE WHEN jsonb_typeof(p.cfg -> 'extra_nodes') = 'array' THEN p.cfg -> 'extra_nodes' ELSE '[]' END)
      ) AS c(child)
     WHERE c.child IS NOT NULL AND w.depth < 300
  )
  SELECT n.id::text, n.node_type, n.query, n.result_name, n.left_node::text, n.right_node::text, n.status, n.result::text,
         n.status_details::text,
         CASE
           WHEN n.status IN ('completed', 'failed') AND n.stamp = w.expected THEN n.status
           WHEN w.terminal_ancestor IS NOT NULL THEN 'skipped'
           WHEN n.status IN ('completed', 'failed') THEN 'pending'
           WHEN n.stamp IS DISTINCT FROM w.expected AND n.status = 'running' THEN 'pending'
           ELSE n.status
         END,
         CASE
           WHEN n.status IN ('completed', 'failed') AND n.stamp = w.expected THEN NULL
           ELSE w.terminal_ancestor
         END,
         n.updated_at
    FROM walk w JOIN n ON n.id = w.id
$$;

-- ---- variables: the caller's own, transactional, snapshotted by df.start

-- ---- variables: the caller's own, transactional, snapshotted by df.start

CREATE OR REPLACE FUNCTION df._no_workflow(fn text) RETURNS void LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF df._in_workflow() THEN
    RAISE EXCEPTION '%() cannot be called inside a workflow - variables are captured when df.start() is called', fn
      USING ERRCODE = '0A000';
  END IF;
END
$$;

CREATE OR REPLACE FUNCTION df.setvar(name text, value text) RETURNS text LANGUAGE plpgsql STRICT
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  PERFORM df._no_workflow('df.setvar');
  INSERT INTO df.vars (name, value) VALUES (setvar.name, setvar.value)
  ON CONFLICT ON CONSTRAINT vars_pkey DO UPDATE SET value = EXCLUDED.value;
  RETURN 'OK';
END
$$;

CREATE OR REPLACE FUNCTION df.getvar(name text) RETURNS text LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp AS $$
  SELECT v.value FROM df.vars v WHERE v.name = getvar.name AND v.owner = to_regrole(quote_ident(current_user))
$$;

CREATE OR REPLACE FUNCTION df.unsetvar(name text) RETURNS text LANGUAGE plpgsql STRICT
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  PERFORM df._no_workflow('df.unsetvar');
  DELETE FROM df.vars v WHERE v.name = unsetvar.name AND v.owner = to_regrole(quote_ident(current_user));
  RETURN 'OK';
END
$$;

CREATE OR REPLACE FUNCTION df.clearvars() RETURNS text LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  PERFORM df._no_workflow('df.clearvars');
  DELETE FROM df.vars v WHERE v.owner = to_regrole(quote_ident(current_user));
  RETURN 'OK';
END
$$;

-- ---- grants

