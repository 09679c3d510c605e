-- Signals are kept: df.signal stores one here until a wait of its instance
-- takes it (pg_durable drops a signal sent before its wait is reached). Each
-- signal is taken by one wait, oldest first; the wait and the taking are
-- written in one statement, so a signal is delivered exactly once.
CREATE TABLE df.signals (
  id            bigserial PRIMARY KEY,
  instance_id   varchar(8) NOT NULL REFERENCES df.instances (id) ON DELETE CASCADE,
  name          text NOT NULL,
  data          text NOT NULL,        -- JSON text, as sent (a non-JSON payload arrives as a JSON string)
  sent_by       regrole NOT NULL,
  sent_at       timestamptz NOT NULL DEFAULT now(),
  taken_by      varchar(8),           -- the SIGNAL node that took it, and its loop iteration
  taken_stamp   text,
  taken_at      timestamptz
);
-- Only the signals still waiting for a wait: finding one never reads delivered ones.
CREATE INDEX signals_kept ON df.signals (instance_id, name, id) WHERE taken_at IS NULL;
CREATE INDEX signals_instance ON df.signals (instance_id);
ALTER TABLE df.signals ENABLE ROW LEVEL SECURITY;

-- The signal names a parked instance waits for: df.signal makes it claimable
-- at once when it sends one of them.
ALTER TABLE df.runs ADD COLUMN awaits text[];
