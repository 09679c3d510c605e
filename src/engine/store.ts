// The executor's reads and writes of one database's df schema, made on the
// executor's own connections. Every write that changes an instance is fenced
// by the run lease: it lands only while this executor still owns the run.
import pg from 'pg';
import { z } from 'zod';
import { INSTANCE_STATUSES } from '../workflow/model.js';

const instanceRow = z.object({
  id: z.string(),
  label: z.string().nullable(),
  root_node: z.string(),
  status: z.enum(INSTANCE_STATUSES),
  database: z.string().nullable(),
  vars: z.record(z.string(), z.string().nullable()),
  role: z.string().nullable(),
  rolsuper: z.boolean().nullable(),
  rolcanlogin: z.boolean().nullable(),
  /** submitted_by as an oid (text): the key of per-role fairness. */
  submitter: z.string(),
  created_at: z.date(),
});
export type InstanceRow = z.infer<typeof instanceRow>;

export interface Loaded {
  instance: InstanceRow;
  /** df.nodes rows, for buildGraph to check. */
  nodes: unknown[];
  /** Why the instance row does not validate: the instance fails with this, alone. */
  invalid?: string;
}

const STATUSES = new Set<string>(INSTANCE_STATUSES);

/**
 * The instances `source` names (a query of instance ids), each instance's
 * columns (i_*) beside each of its nodes' (a row of NULLs for an instance
 * without nodes). The columns a user's data can make large (label, vars) come
 * on the instance's first row only. Each instance and its nodes are fetched
 * by key (LATERAL ... OFFSET 0 keeps the planner from joining the whole
 * tables), so the cost does not grow with the finished history beside them.
 */
const load = (source: string, takeovers = '0'): string => `SELECT i.id AS i_id, i.root_node AS i_root_node, i.status AS i_status, i.database AS i_database,
       i.created_at AS i_created_at, ${takeovers} AS i_takeovers,
       row_number() OVER (PARTITION BY i.id) = 1 AS i_head,
       CASE WHEN row_number() OVER (PARTITION BY i.id) = 1 THEN i.label END AS i_label,
       CASE WHEN row_number() OVER (PARTITION BY i.id) = 1 THEN i.vars END AS i_vars,
       r.rolname AS i_role, r.rolsuper AS i_rolsuper, r.rolcanlogin AS i_rolcanlogin,
       i.submitted_by::oid::text AS i_submitter,
       n.id, n.node_type, n.query, n.result_name, n.left_node, n.right_node, n.status, n.stamp, n.iteration, n.raw_result, n.wake_at,
       coalesce((n.status_details ->> 'break')::boolean, false) AS broke
  FROM (${source}) w(instance_id)
  CROSS JOIN LATERAL (SELECT * FROM df.instances x WHERE x.id = w.instance_id OFFSET 0) i
  LEFT JOIN pg_catalog.pg_roles r ON r.oid = i.submitted_by
  LEFT JOIN LATERAL (SELECT * FROM df.nodes y WHERE y.instance_id = i.id OFFSET 0) n ON true`;
type LoadRow = Record<string, unknown> & { i_id: string; i_head: boolean; id: string | null };

/**
 * Rows come from tables users' data reaches, so they are checked one
 * instance at a time: a row that does not validate fails that instance, not
 * the batch it was claimed with.
 */
function grouped(rows: LoadRow[]): Map<string, Loaded> {
  const parts = new Map<string, { head: LoadRow | undefined; nodes: unknown[] }>();
  for (const r of rows) {
    let p = parts.get(r.i_id);
    if (!p) parts.set(r.i_id, (p = { head: undefined, nodes: [] }));
    if (r.i_head) p.head = r;
    if (r.id !== null) p.nodes.push(r);
  }
  const out = new Map<string, Loaded>();
  for (const [id, { head: r, nodes }] of parts) {
    if (!r) continue; // cannot happen: every instance has a first row
    const fields = {
      id, label: r.i_label, root_node: r.i_root_node, status: r.i_status, database: r.i_database,
      vars: r.i_vars, role: r.i_role, rolsuper: r.i_rolsuper, rolcanlogin: r.i_rolcanlogin, submitter: r.i_submitter,
      created_at: r.i_created_at,
    };
    const parsed = instanceRow.safeParse(fields);
    if (parsed.success) {
      out.set(id, { instance: parsed.data, nodes });
      continue;
    }
    const issue = parsed.error.issues[0];
    const where = issue?.path.length ? issue.path.map(String).join('.') + ': ' : '';
    out.set(id, {
      // Enough to end it: id, root node and status come from columns the schema constrains.
      instance: {
        id, label: null, root_node: String(r.i_root_node), database: null, vars: {},
        status: STATUSES.has(r.i_status as string) ? (r.i_status as InstanceRow['status']) : 'running',
        role: typeof r.i_role === 'string' ? r.i_role : null, rolsuper: null, rolcanlogin: null, submitter: String(r.i_submitter),
        created_at: r.i_created_at instanceof Date ? r.i_created_at : new Date(),
      },
      nodes: [],
      invalid: `Invalid durable function: the instance row does not validate (${where}${issue?.message ?? 'malformed'})`,
    });
  }
  return out;
}

/**
 * Claims runs and loads them. Row locks cannot be taken in a query with window
 * functions: the turns are computed in a CTE, the runs locked (skipping those
 * others lock) in the query over it. Everything is driven by df.runs (only
 * unfinished work) and by keys.
 */
const CLAIM = `WITH turns AS (
               SELECT q.instance_id, q.created_at,
                      row_number() OVER (PARTITION BY q.submitted_by ORDER BY q.created_at, q.instance_id) + coalesce(h.n, 0) AS turn
                 FROM df.runs q
                 LEFT JOIN unnest($4::oid[], $5::int[]) AS h(role, n) ON h.role = q.submitted_by::oid
                WHERE q.lease_expires IS NULL OR q.lease_expires < now()),
             claimed AS (
               UPDATE df.runs r SET owner = $1, lease_expires = now() + make_interval(secs => $2)
                 FROM (SELECT p.instance_id, p.owner IS NOT NULL AS was_held FROM df.runs p JOIN turns t ON t.instance_id = p.instance_id
                        WHERE (p.lease_expires IS NULL OR p.lease_expires < now()) AND ($6 = 0 OR t.turn <= $6)
                        ORDER BY t.turn, t.created_at LIMIT $3 FOR UPDATE OF p SKIP LOCKED) c
                WHERE r.instance_id = c.instance_id
                RETURNING r.instance_id, c.was_held),
             started AS (
               UPDATE df.instances i SET status = 'running', updated_at = now()
                WHERE i.id = ANY (ARRAY(SELECT instance_id FROM claimed)) AND i.status = 'pending')
             ${load('SELECT instance_id FROM claimed', '(SELECT count(*) FILTER (WHERE was_held) FROM claimed)::int')}`;

const LOAD_ONE = load('SELECT $1::text');

const WRITE_NODES = `UPDATE df.nodes n
          SET status = v.status, result = v.raw::jsonb, raw_result = v.raw, stamp = v.stamp, updated_at = now(),
              wake_at = CASE WHEN n.stamp IS NOT DISTINCT FROM v.stamp THEN n.wake_at END,
              -- A node a df.break passed through ended with the break: a replay meets the break again.
              status_details = CASE WHEN v.broke THEN coalesce(n.status_details, '{}'::jsonb) || '{"break": true}'::jsonb
                                    ELSE nullif(n.status_details - 'break', '{}'::jsonb) END
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $7::boolean[]) AS v(inst, id, status, stamp, raw, broke)
        WHERE n.instance_id = v.inst AND n.id = v.id
          AND EXISTS (SELECT FROM df.runs r WHERE r.instance_id = v.inst AND r.owner = $6)
          AND NOT (v.status = 'running' AND n.status IN ('completed', 'failed') AND n.stamp IS NOT DISTINCT FROM v.stamp)`;

/** Retention's batch; the cap's boundary is the keep-th newest finished instance, found once per batch. */
const PRUNE = `WITH boundary AS (
               SELECT k.updated_at, k.id FROM df.instances k
                WHERE $2::int > 0 AND k.status IN ('completed', 'failed', 'cancelled')
                ORDER BY k.updated_at DESC, k.id DESC OFFSET greatest($2::int - 1, 0) LIMIT 1),
             doomed AS (
               SELECT f.id FROM df.instances f
                WHERE f.status IN ('completed', 'failed', 'cancelled')
                  AND (($1::float8 > 0 AND f.updated_at < now() - make_interval(secs => $1::float8 * 86400))
                       OR (f.updated_at, f.id) < (SELECT b.updated_at, b.id FROM boundary b))
                ORDER BY f.updated_at, f.id LIMIT $3 FOR UPDATE SKIP LOCKED)
             DELETE FROM df.instances i WHERE i.id = ANY (ARRAY(SELECT id FROM doomed))`;

/** The executor's statements whose plans must not read finished history (checked with EXPLAIN by a test). */
export const HOT_STATEMENTS = { claim: CLAIM, load: LOAD_ONE, writeNodes: WRITE_NODES, prune: PRUNE } as const;

export interface NodeWrite {
  instanceId: string;
  nodeId: string;
  status: 'running' | 'completed' | 'failed';
  stamp: string;
  raw: string | null;
  /** A composite node left by a df.break passing through it (raw: the break value). */
  broke?: boolean;
}

/** Fence of a write: $1 is the instance, $2 this executor. */
const HELD = 'EXISTS (SELECT FROM df.runs WHERE instance_id = $1 AND owner = $2)';

const { escapeLiteral } = pg;

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

  /**
   * Takes up to `limit` runs nobody holds (or whose lease ran out), and
   * returns them loaded: one round trip from a notification to a graph. Their
   * instances become 'running' in the same statement (the rows returned show
   * the status before it).
   *
   * Fair across submitters: each claimable run gets a turn, its rank among its
   * submitter's claimable runs (oldest first) plus the instances of that
   * submitter this executor holds already (`held`, by submitter oid); runs are
   * taken by turn, then age, so one role's backlog cannot hold every slot while
   * another role waits. With `perRole` > 0 no turn past it is taken: a role
   * never holds more than `perRole` of this executor's instances.
   */
  /** Claims runs (fairly across roles); also how many of them were taken over from an executor whose lease expired. */
  async claim(limit: number, held: Map<string, number> = new Map(), perRole = 0): Promise<{ claimed: Loaded[]; takeovers: number }> {
    const { rows } = await this.pool.query<LoadRow>({
      name: 'pgdp_claim',
      text: CLAIM,
      values: [this.owner, this.leaseSeconds, limit, [...held.keys()], [...held.values()], perRole],
    });
    return { claimed: [...grouped(rows).values()], takeovers: Number(rows[0]?.i_takeovers ?? 0) };
  }

  /** Whether a role is a superuser or can become one (df._escalates: membership, file and program roles). */
  async escalates(roleOid: string): Promise<boolean> {
    const { rows } = await this.pool.query<{ e: boolean }>({ name: 'pgdp_escalates', text: 'SELECT df._escalates($1::oid) AS e', values: [roleOid] });
    return rows[0]!.e;
  }

  /** Of `ids`, those whose instance is finished or cancelled: a df_cancel notification is only a hint to look. */
  async ended(ids: string[]): Promise<Map<string, 'completed' | 'failed' | 'cancelled'>> {
    const { rows } = await this.pool.query<{ id: string; status: 'completed' | 'failed' | 'cancelled' }>({
      name: 'pgdp_ended',
      text: `SELECT id, status FROM df.instances WHERE id = ANY($1::text[]) AND status IN ('completed', 'failed', 'cancelled')`,
      values: [ids],
    });
    return new Map(rows.map((r) => [r.id, r.status]));
  }

  /** Extends the leases of the runs held; returns those still held. */
  async renew(ids: string[]): Promise<Set<string>> {
    if (ids.length === 0) return new Set();
    const { rows } = await this.pool.query<{ instance_id: string }>({
      name: 'pgdp_renew',
      text: `UPDATE df.runs SET lease_expires = now() + make_interval(secs => $2)
              WHERE owner = $1 AND instance_id = ANY($3) RETURNING instance_id`,
      values: [this.owner, this.leaseSeconds, ids],
    });
    return new Set(rows.map((r) => r.instance_id));
  }

  /** Gives a run back, to be retried by anyone after `delaySeconds`. */
  async release(id: string, delaySeconds: number): Promise<void> {
    await this.pool.query(
      `UPDATE df.runs SET owner = NULL, lease_expires = now() + make_interval(secs => $3) WHERE instance_id = $1 AND owner = $2`,
      [id, this.owner, delaySeconds],
    );
  }

  /** Hands a run back, claimable by anyone from `wakeAt` on (a parked instance). */
  async park(id: string, wakeAt: Date | null, awaits: readonly string[] = []): Promise<void> {
    await this.fenced(`UPDATE df.runs SET owner = NULL, lease_expires = $3, awaits = $4 WHERE instance_id = $1 AND owner = $2`, [
      id,
      this.owner,
      wakeAt ?? 'infinity',
      awaits,
    ]);
    // A signal df.signal sent while the instance was still held did not make it claimable:
    // looked for after the park (a new snapshot), so none sent before it is missed.
    if (awaits.length > 0) {
      await this.pool.query(
        `UPDATE df.runs r SET lease_expires = now()
          WHERE r.instance_id = $1 AND r.owner IS NULL
            AND EXISTS (SELECT FROM df.signals s WHERE s.instance_id = $1 AND s.name = ANY ($2) AND s.taken_at IS NULL)`,
        [id, awaits],
      );
    }
  }

  /** When the next run nobody holds becomes claimable (parked, or handed back with a delay); null if none. */
  async nextDue(): Promise<Date | null> {
    const { rows } = await this.pool.query<{ at: Date | null }>({
      name: 'pgdp_next_due',
      text: `SELECT min(lease_expires) AS at FROM df.runs WHERE owner IS NULL AND lease_expires > now() AND lease_expires < 'infinity'`,
    });
    return rows[0]?.at ?? null;
  }

  /** An instance and its nodes, in one round trip. */
  async load(id: string): Promise<Loaded | undefined> {
    const { rows } = await this.pool.query<LoadRow>({ name: 'pgdp_load', text: LOAD_ONE, values: [id] });
    return grouped(rows).get(id);
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
    // A late 'running' never overwrites the finished status of the same iteration. A new
    // iteration (stamp) forgets the last one's sleep deadline: each iteration sleeps anew.
    await this.pool.query({
      name: 'pgdp_write_nodes',
      text: WRITE_NODES,
      values: [
        batch.map((b) => b.instanceId),
        batch.map((b) => b.nodeId),
        batch.map((b) => b.status),
        batch.map((b) => b.stamp),
        batch.map((b) => b.raw),
        this.owner,
        batch.map((b) => b.broke === true),
      ],
    });
  }

  /** A LOOP's iteration, durably, before the iteration runs. */
  async setIteration(instanceId: string, nodeId: string, stamp: string, iteration: number): Promise<void> {
    await this.fenced(
      `UPDATE df.nodes SET status = 'running', stamp = $4, iteration = $5, result = NULL, raw_result = NULL, updated_at = now(),
              wake_at = CASE WHEN stamp IS NOT DISTINCT FROM $4 THEN wake_at END
        WHERE instance_id = $1 AND id = $3 AND ${HELD}`,
      [instanceId, this.owner, nodeId, stamp, iteration],
    );
  }

  /** A SLEEP's deadline: the one recorded for this iteration, or now + seconds. */
  async sleepDeadline(instanceId: string, nodeId: string, stamp: string, seconds: number): Promise<Date> {
    const { rows } = await this.fenced<{ wake_at: Date }>(
      // Running again (a new loop iteration): the last iteration's result goes, as the schema requires of a running node.
      `UPDATE df.nodes SET status = 'running', stamp = $4, updated_at = now(), result = NULL, raw_result = NULL,
              wake_at = CASE WHEN stamp IS NOT DISTINCT FROM $4 AND wake_at IS NOT NULL THEN wake_at
                             ELSE now() + make_interval(secs => $5) END
        WHERE instance_id = $1 AND id = $3 AND ${HELD} RETURNING wake_at`,
      [instanceId, this.owner, nodeId, stamp, seconds],
    );
    return rows[0]!.wake_at;
  }

  /** A wait's deadline: the one recorded for this iteration, or `at` (null: none). */
  async waitDeadline(instanceId: string, nodeId: string, stamp: string, at: Date | null): Promise<Date | null> {
    const { rows } = await this.fenced<{ wake_at: Date | null }>(
      `UPDATE df.nodes SET status = 'running', stamp = $4, updated_at = now(), result = NULL, raw_result = NULL,
              wake_at = CASE WHEN stamp IS NOT DISTINCT FROM $4 AND wake_at IS NOT NULL THEN wake_at ELSE $5::timestamptz END
        WHERE instance_id = $1 AND id = $3 AND ${HELD} RETURNING wake_at`,
      [instanceId, this.owner, nodeId, stamp, at],
    );
    return rows[0]!.wake_at;
  }

  /**
   * Takes the oldest kept signal `name` of the instance for a SIGNAL node and
   * completes the node with it, in one statement: a signal is delivered once.
   * Its result JSON, or null when none is kept.
   */
  async takeSignal(instanceId: string, nodeId: string, stamp: string, name: string): Promise<string | null> {
    const { rows } = await this.pool.query<{ raw: string }>({
      name: 'pgdp_take_signal',
      text: `WITH took AS (
               UPDATE df.signals s SET taken_by = $3, taken_stamp = $4, taken_at = now()
                WHERE s.id = (SELECT k.id FROM df.signals k
                               WHERE k.instance_id = $1 AND k.name = $5 AND k.taken_at IS NULL
                                 AND EXISTS (SELECT FROM df.runs r WHERE r.instance_id = $1 AND r.owner = $2)
                               ORDER BY k.id LIMIT 1 FOR UPDATE SKIP LOCKED)
                RETURNING s.data),
             delivered AS (
               SELECT '{"signal_name":' || to_json($5::text)::text || ',"timed_out":false,"data":' || t.data || '}' AS raw FROM took t),
             done AS (
               UPDATE df.nodes n SET status = 'completed', stamp = $4, updated_at = now(), wake_at = NULL,
                      raw_result = d.raw, result = d.raw::jsonb
                 FROM delivered d
                WHERE n.instance_id = $1 AND n.id = $3
                RETURNING d.raw)
             SELECT raw FROM done`,
      values: [instanceId, this.owner, nodeId, stamp, name],
    });
    return rows[0]?.raw ?? null;
  }

  /** Completes a node now, durably (a wait's end, an HTTP step's result). */
  async complete(instanceId: string, nodeId: string, stamp: string, raw: string): Promise<void> {
    await this.fenced(
      `UPDATE df.nodes SET status = 'completed', stamp = $4, result = $5::jsonb, raw_result = $5, wake_at = NULL, updated_at = now()
        WHERE instance_id = $1 AND id = $3 AND ${HELD}`,
      [instanceId, this.owner, nodeId, stamp, raw],
    );
  }

  /** Whether the role may run this kind of HTTP step (EXECUTE on df.http or df.http_multipart, as df.grant_usage(role, include_http => true) gives). */
  async mayUseHttp(roleOid: string, kind: 'HTTP' | 'HTTP_MULTIPART'): Promise<boolean> {
    const fn = kind === 'HTTP' ? 'df.http(text, text, text, jsonb, integer)' : 'df.http_multipart(text, text, jsonb, jsonb, integer)';
    const { rows } = await this.pool.query<{ ok: boolean }>({
      name: `pgdp_may_${kind.toLowerCase()}`,
      text: `SELECT has_function_privilege($1::oid, '${fn}'::regprocedure, 'EXECUTE') AS ok`,
      values: [roleOid],
    });
    return rows[0]?.ok === true;
  }

  /** A checkpoint for a step that could not share its transaction. */
  async checkpoint(instanceId: string, nodeId: string, stamp: string, result: string): Promise<void> {
    await this.pool.query('SELECT df._checkpoint($1, $2, $3, $4, $5)', [instanceId, nodeId, this.owner, stamp, result]);
  }

  /**
   * Ends an instance: the run row goes (the fence), the root node and the
   * instance get their status and result, in one statement and one round
   * trip, committed synchronously: the end of an instance is durable when
   * reported. Returns false if the run was no longer ours (cancelled, taken over).
   */
  async finish(id: string, rootId: string, outcome: { status: 'completed' | 'failed'; raw: string; output: string }): Promise<boolean> {
    await this.flush();
    const lit = (v: string): string => escapeLiteral(v);
    // Simple protocol (literals): the two statements are one implicit transaction, so set_config(..., true) holds at its commit.
    const results = (await this.pool.query(
      `SELECT set_config('synchronous_commit', 'on', true);
       WITH ended AS (DELETE FROM df.runs WHERE instance_id = ${lit(id)} AND owner = ${lit(this.owner)} RETURNING instance_id),
            root AS (UPDATE df.nodes SET status = ${lit(outcome.status)}, result = ${lit(outcome.raw)}::jsonb, raw_result = ${lit(outcome.raw)}, updated_at = now()
                      WHERE instance_id = ${lit(id)} AND id = ${lit(rootId)} AND EXISTS (SELECT FROM ended)),
            -- What was still running when the instance ended (a race's loser, a step whose role was dropped) ended with it.
            stale AS (UPDATE df.nodes SET status = 'failed', updated_at = now()
                       WHERE instance_id = ${lit(id)} AND id <> ${lit(rootId)} AND status = 'running' AND EXISTS (SELECT FROM ended)),
            inst AS (UPDATE df.instances SET status = ${lit(outcome.status)}, output = ${lit(outcome.output)}, updated_at = now(),
                                            completed_at = ${outcome.status === 'completed' ? 'now()' : 'NULL'}
                      WHERE id = ${lit(id)} AND status NOT IN ('completed', 'failed', 'cancelled') AND EXISTS (SELECT FROM ended))
       SELECT count(*)::int AS held FROM ended`,
    )) as unknown as pg.QueryResult<{ held: number }>[];
    return results[1]!.rows[0]!.held > 0;
  }

  /**
   * Deletes up to `limit` finished instances (their nodes go with them) that
   * finished more than `days` ago (0: none for age) or are beyond the newest
   * `keep` (0: no cap); returns how many. Reads only the index of finished ones.
   */
  async prune(days: number, keep: number, limit: number): Promise<number> {
    const r = await this.pool.query({
      name: 'pgdp_prune',
      text: PRUNE,
      values: [days, keep, limit],
    });
    return r.rowCount ?? 0;
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
