-- The df schema's tables: what pg_durable users query (instances, nodes,
-- vars) plus what the executor needs (runs: claims, leases, wake-up times).
--
-- Append-only: a released migration is never edited (the proxy refuses a
-- database whose recorded checksum differs); changes go in a new file.
-- Functions live in sql/functions/ and are re-applied when they change.
--
-- Who writes what: users only read their own instances and nodes
-- (row-level security); df.start, df.cancel and the executor write them,
-- through SECURITY DEFINER functions of the schema's owner. So no role can
-- plant a row the executor must survive, nor probe another role's ids
-- through a unique-key conflict. df.vars stays writable by its owner.

CREATE TABLE df.instances (
  id            varchar(8) PRIMARY KEY CHECK (id ~ '^[0-9a-f]{8}$'),
  label         text,
  root_node     varchar(8) NOT NULL,
  status        text NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
  submitted_by  regrole NOT NULL,
  database      text,
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now(),
  completed_at  timestamptz,
  -- The submitter's df.vars at df.start: immutable for the instance.
  vars          jsonb NOT NULL DEFAULT '{}',
  -- pg_durable's engine "output": the root result text, or the error text.
  output        text,
  UNIQUE (id, submitted_by)
);
CREATE INDEX instances_status_created ON df.instances (status, created_at DESC, id);
CREATE INDEX instances_created ON df.instances (created_at DESC, id);
CREATE INDEX instances_label_created ON df.instances (label, created_at DESC, id) WHERE label IS NOT NULL;

CREATE TABLE df.nodes (
  id            varchar(8) NOT NULL,
  instance_id   varchar(8) NOT NULL,
  node_type     text NOT NULL CHECK (node_type IN
                ('SQL', 'THEN', 'IF', 'JOIN', 'LOOP', 'BREAK', 'RACE', 'SLEEP',
                 'WAIT_SCHEDULE', 'HTTP', 'HTTP_MULTIPART', 'SIGNAL')),
  query         text,
  result_name   text CHECK (result_name ~ '^[A-Za-z_][A-Za-z0-9_]*$'),
  left_node     varchar(8),
  right_node    varchar(8),
  status        text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'completed', 'failed')),
  result        jsonb CHECK (result IS NULL OR status IN ('completed', 'failed')),
  error         text,
  submitted_by  regrole NOT NULL,
  database      text,
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now(),
  status_details jsonb,
  -- Executor state. stamp: the loop iterations the status belongs to ('' outside
  -- loops); iteration: a LOOP's current iteration; raw_result: the result text
  -- with its column order (jsonb re-sorts keys, and $name takes the first
  -- column); wake_at: a SLEEP's durable deadline.
  stamp         text,
  iteration     integer,
  raw_result    text,
  wake_at       timestamptz,
  PRIMARY KEY (instance_id, id),
  FOREIGN KEY (instance_id, submitted_by) REFERENCES df.instances (id, submitted_by)
    ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
  FOREIGN KEY (instance_id, left_node) REFERENCES df.nodes (instance_id, id) DEFERRABLE INITIALLY DEFERRED,
  FOREIGN KEY (instance_id, right_node) REFERENCES df.nodes (instance_id, id) DEFERRABLE INITIALLY DEFERRED,
  CHECK (CASE
    WHEN node_type IN ('SQL', 'SLEEP', 'WAIT_SCHEDULE', 'BREAK', 'HTTP', 'HTTP_MULTIPART', 'SIGNAL')
      THEN left_node IS NULL AND right_node IS NULL AND query IS NOT NULL
    WHEN node_type = 'THEN' THEN left_node IS NOT NULL AND right_node IS NOT NULL AND query IS NULL
    WHEN node_type = 'IF' THEN left_node IS NOT NULL AND right_node IS NOT NULL AND query IS NOT NULL
    WHEN node_type = 'LOOP' THEN left_node IS NOT NULL AND right_node IS NULL
    WHEN node_type = 'JOIN' THEN left_node IS NOT NULL AND right_node IS NOT NULL
    WHEN node_type = 'RACE' THEN left_node IS NOT NULL AND right_node IS NOT NULL AND query IS NULL
  END)
);

ALTER TABLE df.instances ADD FOREIGN KEY (id, root_node) REFERENCES df.nodes (instance_id, id)
  DEFERRABLE INITIALLY DEFERRED;

CREATE TABLE df.vars (
  name   text NOT NULL,
  value  text,
  owner  regrole NOT NULL DEFAULT to_regrole(quote_ident(current_user)),
  PRIMARY KEY (owner, name)
);

-- One row per instance that is not finished: who holds it and until when.
-- Never granted to users (the lease owner is what fences checkpoints).
-- submitted_by: the instance's submitter, for fair claims and for checking
-- who may checkpoint.
CREATE TABLE df.runs (
  instance_id    varchar(8) PRIMARY KEY REFERENCES df.instances (id) ON DELETE CASCADE,
  submitted_by   regrole NOT NULL,
  owner          uuid,
  lease_expires  timestamptz,
  created_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX runs_claimable ON df.runs (lease_expires NULLS FIRST, created_at);

-- Settings the proxies publish for SQL-side checks (last writer wins).
CREATE TABLE df.settings (
  name   text PRIMARY KEY,
  value  text NOT NULL
);

-- Who is calling: a SECURITY DEFINER function sees its owner as
-- current_user, so the invoker functions in front of it (df.start,
-- df.cancel) leave a one-off token here as the caller (row-level security
-- checks the role), and the definer function takes it back. No unique key:
-- there is nothing to probe.
CREATE TABLE df.callers (
  token       uuid NOT NULL,
  role        regrole NOT NULL DEFAULT to_regrole(quote_ident(current_user)),
  created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX callers_token ON df.callers (token);

-- Row-level security: a role sees only its own instances, nodes and vars.
-- Enabled, not forced: the df schema's owner (the executor) sees everything.
ALTER TABLE df.instances ENABLE ROW LEVEL SECURITY;
ALTER TABLE df.nodes ENABLE ROW LEVEL SECURITY;
ALTER TABLE df.vars ENABLE ROW LEVEL SECURITY;
ALTER TABLE df.callers ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_instances ON df.instances FOR SELECT
  USING (submitted_by = to_regrole(quote_ident(current_user)));
CREATE POLICY own_nodes ON df.nodes FOR SELECT
  USING (submitted_by = to_regrole(quote_ident(current_user)));
CREATE POLICY own_vars ON df.vars FOR ALL
  USING (owner = to_regrole(quote_ident(current_user)))
  WITH CHECK (owner = to_regrole(quote_ident(current_user)));
CREATE POLICY own_token ON df.callers FOR INSERT
  WITH CHECK (role = to_regrole(quote_ident(current_user)));

REVOKE ALL ON ALL TABLES IN SCHEMA df FROM PUBLIC;
