-- Upkeep for long use: df keeps working after months.
--
-- df.runs is a queue: every instance inserts a row, leases update it, the end
-- deletes it. Its dead rows must not pile up between autovacuum runs (the
-- claim reads the claimable rows), so it is vacuumed and analyzed after a few
-- hundred changes instead of a fraction of its (small) size.
ALTER TABLE df.runs SET (
  autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 500,
  autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 500
);

-- Retention prunes finished instances oldest first, in small batches: this
-- index holds only finished instances, so finding a batch never reads the
-- unfinished ones, nor the whole history.
CREATE INDEX instances_finished ON df.instances (updated_at, id)
  WHERE status IN ('completed', 'failed', 'cancelled');
