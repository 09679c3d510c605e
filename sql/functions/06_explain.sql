-- df.explain: a workflow drawn as a text tree, in pg_durable's format. Of a
-- live instance (its status, output and a marker per node), or a dry run of
-- a workflow that was not started (its JSON, a DSL expression, or one SQL
-- statement). Both draw the same rows: a dry run first flattens the envelope
-- into df.nodes' shape (children by id, made-up ids N1, N2, ... in
-- pre-order), so the two cannot drift apart.
--
-- Everything runs as the caller (SECURITY INVOKER): an instance is read
-- through row-level security, and an expression is evaluated with the
-- caller's rights and search_path (which the default of the second argument
-- captures before the pinned one takes over: operators such as ~> live in
-- schema public).

-- t cut to keep bytes + '...' when longer than max bytes (at a character boundary).
CREATE OR REPLACE FUNCTION df._explain_cut(t text, max_bytes int, keep_bytes int) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  s text;
BEGIN
  IF octet_length(t) <= max_bytes THEN
    RETURN t;
  END IF;
  s := left(t, keep_bytes);
  WHILE octet_length(s) > keep_bytes LOOP
    s := left(s, -1);
  END LOOP;
  RETURN s || '...';
END
$$;

-- One line of text: line breaks (and the indentation around them) become one space.
CREATE OR REPLACE FUNCTION df._explain_flat(t text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
  SELECT CASE WHEN strpos(t, E'\n') > 0 OR strpos(t, E'\r') > 0
              THEN btrim(regexp_replace(t, '\s*[\r\n]\s*', ' ', 'g'), E' \t')
              ELSE t END
$$;

-- A node's configuration as a JSON object, NULL when it is not one.
CREATE OR REPLACE FUNCTION df._explain_config(q text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  j jsonb;
BEGIN
  IF q IS NULL OR left(ltrim(q, E' \t\r\n'), 1) <> '{' THEN
    RETURN NULL;
  END IF;
  BEGIN
    j := q::jsonb;
  EXCEPTION WHEN others THEN
    RETURN NULL;
  END;
  RETURN CASE WHEN jsonb_typeof(j) = 'object' THEN j END;
END
$$;

-- The tree of rows in df.nodes' shape (children by id: left_node, right_node,
-- and in the configuration condition_node and extra_nodes), from p_root.
-- p_status: a status per node for the markers, or NULL for none. Iterative
-- (no recursion depth), each node drawn once. Every line is padded to the
-- longest + 4 characters.
CREATE OR REPLACE FUNCTION df._explain_tree(p_id text[], p_type text[], p_query text[], p_name text[],
                                            p_left text[], p_right text[], p_status text[], p_root text)
RETURNS text LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp SET jit = off AS $$
DECLARE
  ty text[];
  disp text[];
  mark text[];
  kstart int[];
  kcount int[];
  kid int[];
  klabel text[];
  klast boolean[];
  seen boolean[];
  root int;
  n int;
  -- the work stack: 1 = a line to write, 2 = a node to draw, 3 = a node's children
  s_kind int[] := '{}';
  s_node int[] := '{}';
  s_prefix text[] := '{}';
  s_last boolean[] := '{}';
  s_text text[] := '{}';
  top int;
  kind int;
  v int;
  x int;
  p text;
  last boolean;
  conn text;
  seq int[];
  ns int;
  fs int[];
  ftop int;
  j int;
  f int;
  lines text[] := '{}';
  nl int := 0;
  out text;
BEGIN
  n := coalesce(cardinality(p_id), 0);
  IF n = 0 THEN
    RETURN '';
  END IF;
  WITH x AS (
    SELECT u.* FROM unnest(p_id, p_type, p_query, p_name, p_left, p_right) WITH ORDINALITY AS u(id, ty, q, nm, l, r, i)
  ),
  ids AS (SELECT DISTINCT ON (x.id) x.id, x.i FROM x ORDER BY x.id, x.i),
  c AS (SELECT x.*, CASE WHEN x.ty NOT IN ('SQL', 'SLEEP', 'THEN', 'RACE') THEN df._explain_config(x.q) END AS cfg FROM x),
  k AS (
    SELECT c.i AS parent, c.ty, 1 AS pos, c.cfg ->> 'condition_node' AS child, '? condition:' AS label FROM c WHERE c.ty = 'IF'
    UNION ALL SELECT c.i, c.ty, 2, c.l, '✓ then:' FROM c WHERE c.ty = 'IF'
    UNION ALL SELECT c.i, c.ty, 3, c.r, '✗ else:' FROM c WHERE c.ty = 'IF'
    UNION ALL SELECT c.i, c.ty, 1, c.l, '↻ body:' FROM c WHERE c.ty = 'LOOP'
    UNION ALL SELECT c.i, c.ty, 2, c.cfg ->> 'condition_node', '? while:' FROM c WHERE c.ty = 'LOOP'
    UNION ALL SELECT c.i, c.ty, 1, c.l, NULL FROM c WHERE c.ty IN ('JOIN', 'RACE', 'THEN')
    UNION ALL SELECT c.i, c.ty, 2, c.r, NULL FROM c WHERE c.ty IN ('JOIN', 'RACE', 'THEN')
    UNION ALL SELECT c.i, c.ty, 2 + e.n, e.v, NULL
      FROM c CROSS JOIN LATERAL jsonb_array_elements_text(
             CASE WHEN c.ty = 'JOIN' AND jsonb_typeof(c.cfg -> 'extra_nodes') = 'array' THEN c.cfg -> 'extra_nodes' ELSE '[]' END
           ) WITH ORDINALITY AS e(v, n)
  ),
  kk AS (
    SELECT k.parent, ids.i AS child,
           CASE WHEN k.ty IN ('JOIN', 'RACE') THEN '║ branch ' || row_number() OVER w || ':' ELSE k.label END AS label,
           k.ty NOT IN ('JOIN', 'RACE') OR row_number() OVER w = count(*) OVER (PARTITION BY k.parent) AS last,
           row_number() OVER (ORDER BY k.parent, k.pos) AS flat
      FROM k JOIN ids ON ids.id = k.child
    WINDOW w AS (PARTITION BY k.parent ORDER BY k.pos)
  ),
  per AS (SELECT kk.parent, min(kk.flat)::int AS start, count(*)::int AS cnt FROM kk GROUP BY kk.parent),
  -- Each node's line (without tree prefix or marker), as pg_durable words it.
  lab AS (
    SELECT c.i, c.ty, per.start, per.cnt,
      CASE
        WHEN c.ty = 'SQL' THEN
          'SQL: ' || CASE WHEN octet_length(c.q) <= 50 AND strpos(c.q, E'\n') = 0 AND strpos(c.q, E'\r') = 0 THEN c.q
                          ELSE df._explain_cut(df._explain_flat(coalesce(c.q, '?')), 50, 47) END
        WHEN c.ty = 'SLEEP' THEN 'SLEEP ' || coalesce(btrim(c.q, E' \t\r\n'), '?') || 's'
        WHEN c.ty = 'WAIT_SCHEDULE' THEN
          'WAIT ''' || CASE WHEN jsonb_typeof(c.cfg -> 'cron_expr') = 'string' THEN c.cfg ->> 'cron_expr' ELSE '?' END || ''''
          || coalesce(' (' || CASE WHEN jsonb_typeof(c.cfg -> 'time_zone') = 'string' THEN nullif(c.cfg ->> 'time_zone', '') END || ')', '')
        WHEN c.ty IN ('HTTP', 'HTTP_MULTIPART') THEN
          c.ty || ' ' || CASE WHEN jsonb_typeof(c.cfg -> 'method') = 'string' THEN c.cfg ->> 'method' ELSE 'POST' END
          || ' ' || CASE WHEN jsonb_typeof(c.cfg -> 'url') = 'string' THEN df._explain_cut(c.cfg ->> 'url', 40, 37) ELSE '?' END
        WHEN c.ty = 'SIGNAL' THEN
          'SIGNAL ''' || CASE WHEN jsonb_typeof(c.cfg -> 'signal_name') = 'string' THEN c.cfg ->> 'signal_name' ELSE '?' END || ''''
          || CASE WHEN jsonb_typeof(c.cfg -> 'timeout_seconds') = 'number' THEN
               CASE WHEN (c.cfg ->> 'timeout_seconds')::numeric = trunc((c.cfg ->> 'timeout_seconds')::numeric)
                    THEN ' (' || trunc((c.cfg ->> 'timeout_seconds')::numeric)::text || 's)' ELSE '' END
             ELSE '' END
        WHEN c.ty = 'LOOP' THEN
          CASE WHEN jsonb_typeof(c.cfg -> 'condition_node') = 'string' THEN 'LOOP (while)' ELSE 'LOOP (infinite)' END
        WHEN c.ty = 'BREAK' THEN
          CASE WHEN jsonb_typeof(c.cfg -> 'break_value') = 'string' THEN 'BREAK ''' || df._explain_cut(c.cfg ->> 'break_value', 20, 17) || ''''
               ELSE 'BREAK' END
        WHEN c.ty = 'IF' THEN
          CASE WHEN c.cfg ->> 'condition_type' = 'result_has_rows' THEN 'IF rows(''' || coalesce(c.cfg ->> 'result_name', '?') || ''')'
               ELSE 'IF' END
        WHEN c.ty = 'JOIN' THEN 'JOIN (' || coalesce(per.cnt, 0) || ')'
        WHEN c.ty = 'THEN' THEN 'SEQUENCE'
        ELSE coalesce(c.ty, '?')
      END || coalesce(' |=> ''' || c.nm || '''', '') AS line
      FROM c LEFT JOIN per ON per.parent = c.i
  )
  SELECT (SELECT array_agg(kk.child::int ORDER BY kk.flat) FROM kk),
         (SELECT array_agg(kk.label ORDER BY kk.flat) FROM kk),
         (SELECT array_agg(kk.last ORDER BY kk.flat) FROM kk),
         array_agg(lab.ty ORDER BY lab.i),
         array_agg(CASE WHEN strpos(lab.line, E'\n') = 0 AND strpos(lab.line, E'\r') = 0 THEN lab.line
                        ELSE df._explain_flat(lab.line) END ORDER BY lab.i),
         array_agg(coalesce(lab.start, 0) ORDER BY lab.i),
         array_agg(coalesce(lab.cnt, 0) ORDER BY lab.i),
         (SELECT ids.i::int FROM ids WHERE ids.id = p_root)
    INTO kid, klabel, klast, ty, disp, kstart, kcount, root
    FROM lab;
  IF root IS NULL THEN
    RETURN '';
  END IF;
  SELECT array_agg(CASE s WHEN 'completed' THEN ' ✓' WHEN 'failed' THEN ' ✗' WHEN 'running' THEN ' ⏳'
                          WHEN 'pending' THEN ' ○' WHEN 'skipped' THEN ' ⊘' ELSE '' END ORDER BY i)
    INTO mark
    FROM generate_series(1, n) AS g(i) LEFT JOIN unnest(p_status) WITH ORDINALITY AS u(s, o) ON u.o = g.i;
  seen := array_fill(false, ARRAY[n]);

  top := 1; s_kind[1] := 2; s_node[1] := root; s_prefix[1] := ''; s_last[1] := true;
  WHILE top > 0 LOOP
    kind := s_kind[top]; v := s_node[top]; p := s_prefix[top]; last := s_last[top];
    top := top - 1;
    IF kind = 1 THEN
      nl := nl + 1; lines[nl] := s_text[top + 1];
    ELSIF kind = 2 THEN
      CONTINUE WHEN seen[v];
      seen[v] := true;
      conn := CASE WHEN p = '' THEN '' WHEN last THEN '└─' ELSE '├─' END;
      IF ty[v] = 'THEN' THEN
        -- A sequence on one level: its steps (THENs flattened, left to right), the first with the connector, the others with →.
        seq := '{}'; ns := 0; fs := ARRAY[v]; ftop := 1;
        WHILE ftop > 0 LOOP
          x := fs[ftop]; ftop := ftop - 1;
          IF x <> v AND seen[x] THEN
            CONTINUE;
          END IF;
          seen[x] := true;
          IF ty[x] = 'THEN' THEN
            FOR j IN REVERSE kcount[x]..1 LOOP
              ftop := ftop + 1; fs[ftop] := kid[kstart[x] + j - 1];
            END LOOP;
          ELSE
            ns := ns + 1; seq[ns] := x;
          END IF;
        END LOOP;
        FOR j IN REVERSE ns..1 LOOP
          x := seq[j];
          top := top + 1; s_kind[top] := 3; s_node[top] := x; s_prefix[top] := p || '    '; s_last[top] := true;
          top := top + 1; s_kind[top] := 1; s_node[top] := x; s_prefix[top] := p; s_last[top] := true;
          s_text[top] := p || CASE WHEN j = 1 THEN conn ELSE '→ ' END || disp[x] || mark[x];
        END LOOP;
      ELSE
        nl := nl + 1; lines[nl] := p || conn || disp[v] || mark[v];
        top := top + 1; s_kind[top] := 3; s_node[top] := v; s_last[top] := true;
        s_prefix[top] := CASE WHEN p = '' THEN '    ' WHEN last THEN p || '    ' ELSE p || '│   ' END;
      END IF;
    ELSIF ty[v] IN ('IF', 'LOOP', 'JOIN', 'RACE') THEN
      -- kind 3: each child under its label, two spaces in.
      FOR j IN REVERSE kcount[v]..1 LOOP
        f := kstart[v] + j - 1;
        top := top + 1; s_kind[top] := 2; s_node[top] := kid[f]; s_prefix[top] := p || '  '; s_last[top] := klast[f];
        top := top + 1; s_kind[top] := 1; s_node[top] := v; s_prefix[top] := p; s_last[top] := true;
        s_text[top] := p || klabel[f];
      END LOOP;
    END IF;
  END LOOP;

  IF nl = 0 THEN
    RETURN '';
  END IF;
  lines[nl] := rtrim(lines[nl], E' \t');
  SELECT string_agg(rpad(u.l, m.w), E'\n' ORDER BY u.o) INTO out
    FROM unnest(lines) WITH ORDINALITY AS u(l, o),
         (SELECT max(char_length(y)) + 4 AS w FROM unnest(lines) AS y) AS m;
  RETURN out;
END
$$;

-- A dry run: the envelope flattened into rows by the walk df.start stores
-- them with (df._flatten: its checks and limits, ids N1, N2, ...), then drawn.
CREATE OR REPLACE FUNCTION df._explain_graph(p_graph jsonb) RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  f record;
BEGIN
  f := df._flatten(p_graph, true);
  RETURN df._explain_tree(f.o_id, f.o_type, f.o_query, f.o_name, f.o_left, f.o_right, NULL, f.o_id[1]);
END
$$;

-- A live instance, as the caller sees it.
CREATE OR REPLACE FUNCTION df._explain_instance(p_id text) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  r record;
  nodes record;
  o text;
  head text;
BEGIN
  SELECT i.id, i.label, i.status, i.output, i.root_node INTO r FROM df.instances i WHERE i.id = p_id;
  IF NOT FOUND THEN
    RETURN format('Instance ''%s'' not found', p_id);
  END IF;
  SELECT array_agg(x.node_id) AS id, array_agg(x.node_type) AS ty, array_agg(x.query) AS q, array_agg(x.result_name) AS nm,
         array_agg(x.left_node) AS l, array_agg(x.right_node) AS rt, array_agg(x.inferred_status) AS st
    INTO nodes
    FROM df.instance_nodes(p_id) AS x;
  IF nodes.id IS NULL THEN
    RETURN format('No nodes found for instance ''%s''', p_id);
  END IF;
  o := df._explain_flat(r.output);
  head := 'Instance: ' || r.id || coalesce(' (' || df._explain_flat(r.label) || ')', '') || E'\n'
       || 'Status:   ' || CASE r.status WHEN 'completed' THEN '✓' WHEN 'failed' THEN '✗' WHEN 'cancelled' THEN '✗'
                                        WHEN 'running' THEN '⏳' ELSE '○' END
       || ' ' || initcap(r.status) || E'\n'
       || coalesce('Output:   ' || CASE WHEN char_length(o) > 60 THEN left(o, 57) || '...' ELSE o END || E'\n', '');
  RETURN head || E'\n' || df._explain_tree(nodes.id, nodes.ty, nodes.q, nodes.nm, nodes.l, nodes.rt, nodes.st, r.root_node);
END
$$;

-- input: an instance id (8 hex characters), a workflow's JSON, a DSL
-- expression (evaluated as the caller, e.g. 'SELECT 1' ~> df.sleep(5)
-- written out as text), or one SQL statement. Never raises for a bad input:
-- the answer says what is wrong. caller_search_path: leave it to its default
-- (the caller's search_path, which the expression is evaluated with).
CREATE OR REPLACE FUNCTION df.explain(input text, caller_search_path text DEFAULT pg_catalog.current_setting('search_path'))
RETURNS text LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  t text := btrim(input, E' \t\r\n\f\v');
  j jsonb;
  v text;
  cur refcursor;
BEGIN
  IF t ~ '^[0-9a-fA-F]{8}$' THEN
    RETURN df._explain_instance(lower(t));
  END IF;
  BEGIN
    j := df._envelope(t, true);
    IF j IS NULL THEN
      IF t ~* '^(SELECT|INSERT|UPDATE|DELETE|MERGE|WITH|VALUES|TABLE|CREATE|ALTER|DROP|CALL|DO|TRUNCATE|GRANT|REVOKE|EXPLAIN|COPY|REFRESH|VACUUM|ANALYZE|LOCK)\s' THEN
        -- A statement (even one that uses @> or a df table) is one SQL step, as df.start would run it.
        j := jsonb_build_object('node_type', 'SQL', 'query', t);
      ELSIF strpos(t, '~>') > 0 OR strpos(t, '|=>') > 0 OR strpos(t, '?>') > 0 OR strpos(t, '!>') > 0
            OR strpos(t, '@>') > 0 OR strpos(t, 'df.') > 0 THEN
        -- As the caller, with the caller's search_path; a cursor takes exactly one SELECT.
        PERFORM pg_catalog.set_config('search_path', caller_search_path, true);
        OPEN cur FOR EXECUTE 'SELECT (' || t || E'\n)::text';
        FETCH cur INTO v;
        CLOSE cur;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
        IF v IS NULL THEN
          RETURN 'Cannot explain input: the expression returned NULL';
        END IF;
        IF df._explain_config(v) ? '_partial_if' THEN
          RETURN 'Cannot explain input: unfinished if: ?> needs its !> else branch';
        END IF;
        -- What df.start would take: an envelope, or anything else as one SQL step.
        j := coalesce(df._envelope(v, true), jsonb_build_object('node_type', 'SQL', 'query', v));
      ELSE
        RETURN 'Cannot explain input: expected a workflow expression, its JSON, or an 8-character instance id';
      END IF;
    END IF;
    RETURN df._explain_graph(j);
  EXCEPTION WHEN others THEN
    RETURN 'Cannot explain input: ' || SQLERRM;
  END;
END
$$;
