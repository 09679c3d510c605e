// The executor's reads and writes of one database's df schema, made on the
// executor's own connections. Every write that changes an instance is fenced
// by the run lease: it lands only while this executor still owns the run.
import type pg from 'pg';
import { z } from 'zod';

const instanceRow = z.object({
  id: z.string(),
  label: z.string().nullable(),
  root_node: z.string(),
  status: z.enum(['pending', 'running', 'completed', 'failed', 'cancelled']),
  database: z.string().nullable(),
  vars: z.record(z.string(), z.string().nullable()),
  role: z.string().nullable(),
  rolsuper: z.boolean().nullable(),
  rolcanlogin: z.boolean().nullable(),
});
export type InstanceRow = z.infer<typeof instanceRow>;

export interface NodeWrite {
  instanceId: string;
  nodeId: string;
  status: 'running' | 'completed' | 'failed';
  stamp: string;
  raw: string | null;
}

/** Fence of a write: $1 is the instance, $2 this executor. */
const HELD = 'EXISTS (SELECT FROM df.runs WHERE instance_id = $1 AND owner = $2)';

export class Store {
  private queue = new Map<string, NodeWrite>();
  private flushing: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;
  /** Called with the error when a batched write fails (the run is then abandoned). */
  onWriteError: (err: unknown, instanceIds: string[]) => void = () => {};

  constructor(
    private readonly pool: pg.Pool,
    readonly owner: string,
    private readonly leaseSeconds: number,
  ) {}

  /** Takes up to `limit` runs nobody holds (or whose lease ran out). */
  async claim(limit: number): Promise<string[]> {
    const { rows } = await this.pool.query<{ instance_id: string }>(
      `UPDATE df.runs r SET owner = $1, lease_expires = now() + make_interval(secs => $2)
         FROM (SELECT instance_id FROM df.runs
                WHERE lease_expires IS NULL OR lease_expires < now()
                ORDER BY created_at LIMIT $3 FOR UPDATE SKIP LOCKED) c
        WHERE r.instance_id = c.instance_id
        RETURNING r.instance_id`,
      [this.owner, this.leaseSeconds, limit],
    );
    return rows.map((r) => r.instance_id);
  }

  /** Extends the leases of the runs held; returns those still held. */
  async renew(ids: string[]): Promise<Set<string>> {
    if (ids.length === 0) return new Set();
    const { rows } = await this.pool.query<{ instance_id: string }>(
      `UPDATE df.runs SET lease_expires = now() + make_interval(secs => $2)
        WHERE owner = $1 AND instance_id = ANY($3) RETURNING instance_id`,
      [this.owner, this.leaseSeconds, ids],
    );
    return new Set(rows.map((r) => r.instance_id));
  }

  /** Gives a run back, to be retried by anyone after `delaySeconds`. */
  async release(id: string, delaySeconds: number): Promise<void> {
    await this.pool.query(
      `UPDATE df.runs SET owner = NULL, lease_expires = now() + make_interval(secs => $3) WHERE instance_id = $1 AND owner = $2`,
      [id, this.owner, delaySeconds],
    );
  }

  async load(id: string): Promise<{ instance: InstanceRow; nodes: unknown[] } | undefined> {
    const inst = await this.pool.query(
      `SELECT i.id, i.label, i.root_node, i.status, i.database, i.vars, r.rolname AS role, r.rolsuper, r.rolcanlogin
         FROM df.instances i LEFT JOIN pg_roles r ON r.oid = i.submitted_by WHERE i.id = $1`,
      [id],
    );
    if (inst.rows.length === 0) return undefined;
    const nodes = await this.pool.query(
      `SELECT id, node_type, query, result_name, left_node, right_node, status, stamp, iteration, raw_result, wake_at
         FROM df.nodes WHERE instance_id = $1`,
      [id],
    );
    return { instance: instanceRow.parse(inst.rows[0]), nodes: nodes.rows };
  }

  async markRunning(id: string): Promise<void> {
    await this.pool.query(
      `UPDATE df.instances SET status = 'running', updated_at = now()
        WHERE id = $1 AND status = 'pending' AND EXISTS (SELECT FROM df.runs WHERE instance_id = $1 AND owner = $2)`,
      [id, this.owner],
    );
  }

  /** Queues a node status write; writes are coalesced per node and flushed within milliseconds. */
  record(w: NodeWrite): void {
    this.queue.set(`${w.instanceId}/${w.nodeId}`, w);
    this.timer ??= setTimeout(() => void this.flush(), 5);
  }

  /** Drops a queued 'running' write made obsolete by a checkpoint. */
  forget(instanceId: string, nodeId: string): void {
    const key = `${instanceId}/${nodeId}`;
    if (this.queue.get(key)?.status === 'running') this.queue.delete(key);
  }

  /** Writes everything queued so far. */
  async flush(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    while (this.flushing) await this.flushing;
    if (this.queue.size === 0) return;
    const batch = [...this.queue.values()];
    this.queue.clear();
    this.flushing = this.writeNodes(batch).catch((err: unknown) => this.onWriteError(err, [...new Set(batch.map((b) => b.instanceId))]));
    try {
      await this.flushing;
    } finally {
      this.flushing = undefined;
    }
  }

  private async writeNodes(batch: NodeWrite[]): Promise<void> {
    // A late 'running' never overwrites the finished status of the same iteration.
    await this.pool.query(
      `UPDATE df.nodes n
          SET status = v.status, result = v.raw::jsonb, raw_result = v.raw, stamp = v.stamp, updated_at = now()
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS v(inst, id, status, stamp, raw)
        WHERE n.instance_id = v.inst AND n.id = v.id
          AND EXISTS (SELECT FROM df.runs r WHERE r.instance_id = v.inst AND r.owner = $6)
          AND NOT (v.status = 'running' AND n.status IN ('completed', 'failed') AND n.stamp IS NOT DISTINCT FROM v.stamp)`,
      [
        batch.map((b) => b.instanceId),
        batch.map((b) => b.nodeId),
        batch.map((b) => b.status),
        batch.map((b) => b.stamp),
        batch.map((b) => b.raw),
        this.owner,
      ],
    );
  }

  /** A LOOP's iteration, durably, before the iteration runs. */
  async setIteration(instanceId: string, nodeId: string, stamp: string, iteration: number): Promise<void> {
    await this.fenced(
      `UPDATE df.nodes SET status = 'running', stamp = $4, iteration = $5, result = NULL, raw_result = NULL, updated_at = now()
        WHERE instance_id = $1 AND id = $3 AND ${HELD}`,
      [instanceId, this.owner, nodeId, stamp, iteration],
    );
  }

  /** A SLEEP's deadline: the one recorded for this iteration, or now + seconds. */
  async sleepDeadline(instanceId: string, nodeId: string, stamp: string, seconds: number): Promise<Date> {
    const { rows } = await this.fenced<{ wake_at: Date }>(
      `UPDATE df.nodes SET status = 'running', stamp = $4, updated_at = now(),
              wake_at = CASE WHEN stamp IS NOT DISTINCT FROM $4 AND wake_at IS NOT NULL THEN wake_at
                             ELSE now() + make_interval(secs => $5) END
        WHERE instance_id = $1 AND id = $3 AND ${HELD} RETURNING wake_at`,
      [instanceId, this.owner, nodeId, stamp, seconds],
    );
    return rows[0]!.wake_at;
  }

  /** A checkpoint for a step that could not share its transaction. */
  async checkpoint(instanceId: string, nodeId: string, stamp: string, result: string): Promise<void> {
    await this.pool.query('SELECT df._checkpoint($1, $2, $3, $4, $5)', [instanceId, nodeId, this.owner, stamp, result]);
  }

  /**
   * Ends an instance: the run row goes (the fence), the root node and the
   * instance get their status and result in the same transaction.
   * Returns false if the run was no longer ours (cancelled, taken over).
   */
  async finish(id: string, rootId: string, outcome: { status: 'completed' | 'failed'; raw: string; output: string }): Promise<boolean> {
    await this.flush();
    const client = await this.pool.connect();
    try {
      await client.query('BEGIN');
      await client.query('SET LOCAL synchronous_commit = on'); // the end of an instance is durable when reported
      const del = await client.query('DELETE FROM df.runs WHERE instance_id = $1 AND owner = $2', [id, this.owner]);
      if (del.rowCount === 0) {
        await client.query('ROLLBACK');
        return false;
      }
      await client.query(
        `UPDATE df.nodes SET status = $3, result = $4::jsonb, raw_result = $4, updated_at = now()
          WHERE instance_id = $1 AND id = $2`,
        [id, rootId, outcome.status, outcome.raw],
      );
      await client.query(
        `UPDATE df.instances SET status = $2, output = $3, updated_at = now(), completed_at = now()
          WHERE id = $1 AND status NOT IN ('completed', 'failed', 'cancelled')`,
        [id, outcome.status, outcome.output],
      );
      await client.query('COMMIT');
      return true;
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {});
      throw err;
    } finally {
      client.release();
    }
  }

  /** An instance that is already terminal (cancelled) leaves the queue. */
  async drop(id: string): Promise<void> {
    await this.pool.query('DELETE FROM df.runs WHERE instance_id = $1 AND owner = $2', [id, this.owner]);
  }

  private async fenced<R extends pg.QueryResultRow>(sql: string, params: unknown[]): Promise<pg.QueryResult<R>> {
    const r = await this.pool.query<R>(sql, params);
    if (r.rowCount === 0) throw new LostRun(params[0] as string);
    return r;
  }
}

/** The run is no longer this executor's: stop working on it, write nothing more. */
export class LostRun extends Error {
  constructor(id: string) {
    super(`instance ${id} is no longer held by this executor`);
  }
}
