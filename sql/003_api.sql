-- The user-facing functions (pg_durable's surface) and the hooks the
-- executor relies on. df.start runs as the caller, in the caller's
-- transaction: ROLLBACK discards the start, RLS applies, and executors are
-- woken by a NOTIFY that PostgreSQL delivers at COMMIT.

CREATE FUNCTION df._in_workflow() RETURNS boolean LANGUAGE sql STABLE AS $$
  SELECT coalesce(current_setting('df.in_workflow', true), '') = 'true'
$$;

CREATE FUNCTION df._setting(p_name text) RETURNS text LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog AS $$
  SELECT value FROM df.settings WHERE name = p_name
$$;

CREATE FUNCTION df._new_id() RETURNS text LANGUAGE sql VOLATILE AS $$
  SELECT right(replace(gen_random_uuid()::text, '-', ''), 8)
$$;

-- Flattens a graph into df.nodes rows for instance p_instance (pre-order,
-- fresh 8-hex ids) and returns the root node's id.
CREATE FUNCTION df._insert_nodes(p_instance text, p_graph jsonb, p_database text) RETURNS text
LANGUAGE plpgsql AS $$
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
  o_id text[] := '{}';
  o_type text[] := '{}';
  o_query text[] := '{}';
  o_name text[] := '{}';
  o_left text[] := '{}';
  o_right text[] := '{}';
  root text := df._new_id();
  me regrole := to_regrole(quote_ident(current_user));
  tries int := 0;
BEGIN
  <<attempt>>
  LOOP
    stack := ARRAY[p_graph]; stack_ids := ARRAY[root]; stack_depth := ARRAY[1]; top := 1; count := 0;
    o_id := '{}'; o_type := '{}'; o_query := '{}'; o_name := '{}'; o_left := '{}'; o_right := '{}';
    WHILE top > 0 LOOP
      n := stack[top]; nid := stack_ids[top]; d := stack_depth[top]; top := top - 1;
      count := count + 1;
      IF count > 10000 THEN
        RAISE EXCEPTION 'Workflow exceeds maximum node count of 10000' USING ERRCODE = '54000';
      END IF;
      IF d > 256 THEN
        RAISE EXCEPTION 'Workflow exceeds maximum nesting depth of 256' USING ERRCODE = '54000';
      END IF;
      IF jsonb_typeof(n) <> 'object' OR NOT (n ->> 'node_type') = ANY (df._valid_types()) THEN
        RAISE EXCEPTION 'Invalid durable function: Unknown node_type ''%''. Valid types: %',
          coalesce(n ->> 'node_type', 'null'), array_to_string(df._valid_types(), ', ') USING ERRCODE = '22023';
      END IF;
      t := n ->> 'node_type';
      IF n ? 'condition_node' AND t NOT IN ('IF', 'LOOP') THEN
        RAISE EXCEPTION 'Malformed Durofut JSON: condition_node is only allowed on IF and LOOP, not %', t USING ERRCODE = '22023';
      END IF;
      IF n ? 'extra_nodes' AND t <> 'JOIN' THEN
        RAISE EXCEPTION 'Malformed Durofut JSON: extra_nodes is only allowed on JOIN, not %', t USING ERRCODE = '22023';
      END IF;
      lid := NULL; rid := NULL; cid := NULL; extra := NULL;
      q := n ->> 'query';
      IF jsonb_typeof(n -> 'left_node') = 'object' THEN
        lid := df._new_id(); top := top + 1; stack[top] := n -> 'left_node'; stack_ids[top] := lid; stack_depth[top] := d + 1;
      END IF;
      IF jsonb_typeof(n -> 'right_node') = 'object' THEN
        rid := df._new_id(); top := top + 1; stack[top] := n -> 'right_node'; stack_ids[top] := rid; stack_depth[top] := d + 1;
      END IF;
      IF jsonb_typeof(n -> 'condition_node') = 'object' THEN
        cid := df._new_id(); top := top + 1; stack[top] := n -> 'condition_node'; stack_ids[top] := cid; stack_depth[top] := d + 1;
        q := '{"condition_node":"' || cid || '"}';
      END IF;
      IF jsonb_typeof(n -> 'extra_nodes') = 'array' AND jsonb_array_length(n -> 'extra_nodes') > 0 THEN
        extra := '{}';
        FOR e IN SELECT x FROM jsonb_array_elements(n -> 'extra_nodes') AS x LOOP
          cid := df._new_id(); extra := extra || cid;
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
      IF t IN ('THEN', 'RACE') THEN
        q := NULL;
      END IF;
      o_id[count] := nid; o_type[count] := t; o_query[count] := q; o_name[count] := n ->> 'result_name';
      o_left[count] := lid; o_right[count] := rid;
    END LOOP;
    -- Ids are 32 random bits: a graph of many nodes can draw one twice.
    EXIT attempt WHEN (SELECT count(DISTINCT x) FROM unnest(o_id) x) = count;
    tries := tries + 1;
    IF tries >= 10 THEN
      RAISE EXCEPTION 'df.start: could not draw unique node ids' USING ERRCODE = '23505';
    END IF;
    root := df._new_id();
  END LOOP;

  INSERT INTO df.nodes (id, instance_id, node_type, query, result_name, left_node, right_node, submitted_by, database)
  SELECT i, p_instance, ty, qu, na, le, ri, me, p_database
  FROM unnest(o_id, o_type, o_query, o_name, o_left, o_right) AS x(i, ty, qu, na, le, ri);
  RETURN root;
END
$$;

-- The submission itself: checks, instance row, node rows, vars snapshot.
-- The proxy's compiler calls this with a graph it has already validated.
CREATE FUNCTION df._submit(fut text, label text, database text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  graph jsonb;
  me text := current_user;
  r record;
  new_id text;
  got text;
  root text;
  tries int := 0;
BEGIN
  graph := df._envelope(fut, true);
  IF graph IS NULL THEN
    graph := jsonb_build_object('node_type', 'SQL', 'query', fut);
  END IF;
  IF database IS NOT NULL AND NOT EXISTS (SELECT FROM pg_database WHERE datname = database) THEN
    RAISE EXCEPTION 'database "%" does not exist', database USING ERRCODE = '3D000';
  END IF;
  SELECT rolcanlogin, rolsuper INTO r FROM pg_roles WHERE rolname = me;
  IF NOT r.rolcanlogin THEN
    RAISE EXCEPTION 'current_user "%" does not have LOGIN privilege. The executor must connect as this role to run its steps.', me
      USING ERRCODE = '42501';
  END IF;
  IF r.rolsuper AND coalesce(df._setting('allow_superuser_instances'), 'false') <> 'true' THEN
    RAISE EXCEPTION 'pg-durable-proxy: superuser instances are disabled. current_user "%" is a superuser.', me
      USING ERRCODE = '42501',
      HINT = 'Start workflows as an ordinary role (see df.grant_usage), or run the proxy with --allow-superuser-instances.';
  END IF;
  LOOP
    new_id := df._new_id();
    INSERT INTO df.instances AS i (id, label, root_node, submitted_by, database, vars)
    VALUES (new_id, label, '00000000', to_regrole(quote_ident(me)), database,
            (SELECT coalesce(jsonb_object_agg(v.name, v.value), '{}') FROM df.vars v
             WHERE v.owner = to_regrole(quote_ident(me))))
    ON CONFLICT (id) DO NOTHING
    RETURNING i.id INTO got;
    EXIT WHEN got IS NOT NULL;
    tries := tries + 1;
    IF tries >= 10 THEN
      RAISE EXCEPTION 'df.start: could not draw a unique instance id' USING ERRCODE = '23505';
    END IF;
  END LOOP;
  root := df._insert_nodes(got, graph, database);
  UPDATE df.instances i SET root_node = root WHERE i.id = got;
  RETURN got;
END
$$;

CREATE FUNCTION df.start(fut text, label text DEFAULT NULL, database text DEFAULT NULL,
                         transaction_mode text DEFAULT 'caller') RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  IF fut IS NULL THEN
    RAISE EXCEPTION 'df.start: the workflow is NULL' USING ERRCODE = '22004';
  END IF;
  CASE lower(coalesce(transaction_mode, 'caller'))
    WHEN 'caller' THEN
      RETURN df._submit(fut, label, database);
    WHEN 'new' THEN
      IF df._in_workflow() THEN
        RAISE EXCEPTION 'df.start(): transaction_mode => ''new'' cannot be used inside a workflow' USING ERRCODE = '0A000';
      END IF;
      RAISE EXCEPTION 'df.start(): transaction_mode => ''new'' needs its own connection, which only pg-durable-proxy can open'
        USING ERRCODE = '0A000',
        HINT = 'Call df.start through the proxy with the workflow written out in the statement, or start it in a transaction of its own.';
    ELSE
      RAISE EXCEPTION 'invalid transaction_mode "%" for df.start(): expected ''caller'' or ''new''', transaction_mode
        USING ERRCODE = '22023';
  END CASE;
END
$$;

-- New instances: a row for the executors, and a wake-up delivered at commit.
CREATE FUNCTION df._instance_inserted() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog AS $$
BEGIN
  INSERT INTO df.runs (instance_id) VALUES (NEW.id);
  PERFORM pg_notify('df_work', NEW.id);
  RETURN NULL;
END
$$;
CREATE TRIGGER instance_inserted AFTER INSERT ON df.instances
  FOR EACH ROW EXECUTE FUNCTION df._instance_inserted();

-- An instance that becomes terminal (df.cancel, or the executor finishing it)
-- leaves the run queue; a running executor is told to stop.
CREATE FUNCTION df._instance_ended() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog AS $$
BEGIN
  DELETE FROM df.runs WHERE instance_id = NEW.id;
  PERFORM pg_notify('df_cancel', NEW.id);
  RETURN NULL;
END
$$;
CREATE TRIGGER instance_ended AFTER UPDATE OF status ON df.instances
  FOR EACH ROW WHEN (NEW.status IN ('completed', 'failed', 'cancelled') AND OLD.status NOT IN ('completed', 'failed', 'cancelled'))
  EXECUTE FUNCTION df._instance_ended();

-- A SQL step's checkpoint, called in the step's own transaction as the
-- submitter. It holds the run row (so no other executor can take the instance
-- over until this transaction ends) and refuses if this executor no longer
-- owns it, or the instance was cancelled: then the step rolls back with it.
CREATE FUNCTION df._checkpoint(p_instance text, p_node text, p_owner uuid, p_stamp text, p_result text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
  PERFORM FROM df.runs WHERE instance_id = p_instance AND owner = p_owner FOR SHARE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'pg-durable-proxy: instance % is no longer held by this executor (cancelled, finished or taken over)', p_instance
      USING ERRCODE = '40001';
  END IF;
  UPDATE df.nodes SET status = 'completed', result = p_result::jsonb, raw_result = p_result, stamp = p_stamp,
         status_details = jsonb_build_object('execution_id', p_instance || '::' || coalesce(nullif(p_stamp, ''), '1')),
         updated_at = now()
   WHERE instance_id = p_instance AND id = p_node;
END
$$;
REVOKE EXECUTE ON FUNCTION df._checkpoint(text, text, uuid, text, text) FROM PUBLIC;

-- ---- monitoring and control

CREATE FUNCTION df.status(instance_id text) RETURNS text LANGUAGE sql STABLE STRICT AS $$
  SELECT i.status FROM df.instances i WHERE i.id = instance_id
$$;

CREATE FUNCTION df.result(instance_id text) RETURNS text LANGUAGE sql STABLE STRICT AS $$
  SELECT n.result::text FROM df.instances i JOIN df.nodes n ON n.instance_id = i.id AND n.id = i.root_node
   WHERE i.id = $1 AND n.status = 'completed'
$$;

CREATE FUNCTION df.await_instance(instance_id text, timeout_seconds int DEFAULT 30) RETURNS text
LANGUAGE plpgsql STRICT AS $$
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

CREATE FUNCTION df.wait_for_completion(instance_id text, timeout_seconds int DEFAULT 30) RETURNS text
LANGUAGE plpgsql STRICT AS $$
BEGIN
  RAISE WARNING 'df.wait_for_completion() is deprecated; use df.await_instance()';
  RETURN df.await_instance(instance_id, timeout_seconds);
END
$$;

CREATE FUNCTION df.cancel(instance_id text, reason text DEFAULT 'Cancelled by user') RETURNS text
LANGUAGE plpgsql STRICT AS $$
BEGIN
  PERFORM FROM df.instances i WHERE i.id = cancel.instance_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'Instance not found or access denied: %', instance_id USING ERRCODE = 'P0002';
  END IF;
  UPDATE df.instances i SET status = 'cancelled', updated_at = now(), output = reason
   WHERE i.id = cancel.instance_id AND i.status NOT IN ('completed', 'failed', 'cancelled');
  RETURN format('Instance %s cancelled: %s', instance_id, reason);
END
$$;

CREATE FUNCTION df.list_instances(status_filter text DEFAULT NULL, limit_count int DEFAULT 100)
RETURNS TABLE (instance_id text, label text, function_name text, status text, execution_count bigint, output text)
LANGUAGE plpgsql STABLE AS $$
BEGIN
  PERFORM df._check_limit(limit_count);
  RETURN QUERY
    SELECT i.id::text, i.label, 'pg_durable::orchestration::execute-function-graph'::text, i.status, 1::bigint, i.output
      FROM df.instances i
     WHERE status_filter IS NULL OR i.status = status_filter
     ORDER BY i.created_at DESC, i.id
     LIMIT limit_count;
END
$$;

CREATE FUNCTION df._check_limit(limit_count int) RETURNS void LANGUAGE plpgsql STABLE AS $$
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
-- v1|<created_at>|<id> of the page's last row, the same on every row, NULL on the last page.
CREATE FUNCTION df._decode_cursor(after_cursor text, OUT ts timestamptz, OUT id text) LANGUAGE plpgsql IMMUTABLE AS $$
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
    IF cardinality(parts) <> 3 OR parts[1] <> 'v1' OR parts[3] !~ '^[0-9a-f]{8}$' THEN
      RAISE EXCEPTION 'bad';
    END IF;
    ts := parts[2]::timestamptz;
    id := parts[3];
  EXCEPTION WHEN others THEN
    RAISE EXCEPTION 'df.list_instances: invalid after_cursor' USING ERRCODE = '22023';
  END;
END
$$;

CREATE FUNCTION df.list_instances(status_filter text, limit_count int, label_filter text, after_cursor text DEFAULT NULL)
RETURNS TABLE (instance_id text, label text, function_name text, status text, execution_count bigint, output text,
               created_at timestamptz, completed_at timestamptz, next_cursor text)
LANGUAGE sql STABLE AS $$
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
  SELECT p.id::text, p.label, 'pg_durable::orchestration::execute-function-graph'::text, p.status, 1::bigint, p.output,
         p.created_at, p.completed_at, (SELECT v FROM cursor)
    FROM page p
   WHERE p.rn <= limit_count
   ORDER BY p.rn
$$;

-- One row per node, with the status a reader should see: a node that did not
-- run because an ancestor already finished (the untaken IF arm, the right side
-- of a failed THEN, a RACE loser) is 'skipped'; a result from an earlier loop
-- iteration is superseded.
CREATE FUNCTION df.instance_nodes(instance_id_param text)
RETURNS TABLE (node_id text, node_type text, query text, result_name text, left_node text, right_node text,
               status text, result text, status_details text, inferred_status text,
               inferred_status_from_ancestor_id text, updated_at timestamptz)
LANGUAGE sql STABLE AS $$
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

CREATE FUNCTION df._no_workflow(fn text) RETURNS void LANGUAGE plpgsql STABLE AS $$
BEGIN
  IF df._in_workflow() THEN
    RAISE EXCEPTION '%() cannot be called inside a workflow - variables are captured when df.start() is called', fn
      USING ERRCODE = '0A000';
  END IF;
END
$$;

CREATE FUNCTION df.setvar(name text, value text) RETURNS text LANGUAGE plpgsql STRICT AS $$
BEGIN
  PERFORM df._no_workflow('df.setvar');
  INSERT INTO df.vars (name, value) VALUES (setvar.name, setvar.value)
  ON CONFLICT ON CONSTRAINT vars_pkey DO UPDATE SET value = EXCLUDED.value;
  RETURN 'OK';
END
$$;

CREATE FUNCTION df.getvar(name text) RETURNS text LANGUAGE sql STABLE STRICT AS $$
  SELECT v.value FROM df.vars v WHERE v.name = getvar.name AND v.owner = to_regrole(quote_ident(current_user))
$$;

CREATE FUNCTION df.unsetvar(name text) RETURNS text LANGUAGE plpgsql STRICT AS $$
BEGIN
  PERFORM df._no_workflow('df.unsetvar');
  DELETE FROM df.vars v WHERE v.name = unsetvar.name AND v.owner = to_regrole(quote_ident(current_user));
  RETURN 'OK';
END
$$;

CREATE FUNCTION df.clearvars() RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  PERFORM df._no_workflow('df.clearvars');
  DELETE FROM df.vars v WHERE v.owner = to_regrole(quote_ident(current_user));
  RETURN 'OK';
END
$$;

-- ---- grants

CREATE FUNCTION df.grant_usage(p_role text, include_http boolean DEFAULT false, with_grant boolean DEFAULT false)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  g text := CASE WHEN with_grant THEN ' WITH GRANT OPTION' ELSE '' END;
  r text := CASE WHEN lower(p_role) = 'public' THEN 'PUBLIC' ELSE quote_ident(p_role) END;
BEGIN
  EXECUTE format('GRANT USAGE ON SCHEMA df TO %s%s', r, g);
  EXECUTE format('GRANT SELECT, UPDATE (status, updated_at, output) ON df.instances TO %s%s', r, g);
  EXECUTE format('GRANT INSERT (id, label, root_node, submitted_by, database, vars) ON df.instances TO %s%s', r, g);
  EXECUTE format('GRANT UPDATE (root_node) ON df.instances TO %s%s', r, g);
  EXECUTE format('GRANT SELECT ON df.nodes TO %s%s', r, g);
  EXECUTE format('GRANT INSERT (id, instance_id, node_type, query, result_name, left_node, right_node, submitted_by, database) ON df.nodes TO %s%s', r, g);
  EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON df.vars TO %s%s', r, g);
  EXECUTE format('GRANT EXECUTE ON FUNCTION df._checkpoint(text, text, uuid, text, text) TO %s%s', r, g);
  IF with_grant THEN
    EXECUTE format('GRANT EXECUTE ON FUNCTION df.grant_usage(text, boolean, boolean), df.revoke_usage(text) TO %s%s', r, g);
  END IF;
  RAISE NOTICE 'granted df usage to %', p_role;
END
$$;

CREATE FUNCTION df.revoke_usage(p_role text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  r text := CASE WHEN lower(p_role) = 'public' THEN 'PUBLIC' ELSE quote_ident(p_role) END;
BEGIN
  EXECUTE format('REVOKE ALL ON df.instances, df.nodes, df.vars FROM %s CASCADE', r);
  EXECUTE format('REVOKE EXECUTE ON FUNCTION df._checkpoint(text, text, uuid, text, text) FROM %s CASCADE', r);
  BEGIN
    EXECUTE format('REVOKE EXECUTE ON FUNCTION df.grant_usage(text, boolean, boolean), df.revoke_usage(text) FROM %s CASCADE', r);
  EXCEPTION WHEN insufficient_privilege THEN
    NULL;
  END;
  EXECUTE format('REVOKE USAGE ON SCHEMA df FROM %s CASCADE', r);
  RAISE NOTICE 'revoked df usage from %', p_role;
END
$$;
REVOKE EXECUTE ON FUNCTION df.grant_usage(text, boolean, boolean), df.revoke_usage(text) FROM PUBLIC;
