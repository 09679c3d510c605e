// What the console reads and does, in SQL, as the session's role: the df
// functions (df.list_instances, df.instance_nodes, df.explain, df.cancel,
// df.signal) and df.instances/df.nodes, which every reader sees through
// row-level security (its own instances only, unless it bypasses it).
import { HttpError } from './http.js';
import type { Reader } from './sessions.js';

export const INSTANCE_STATUSES = ['pending', 'running', 'completed', 'failed', 'cancelled'] as const;
export const ID = /^[0-9a-f]{8}$/;
/** Longest result, query or output text sent to the page; the rest is cut (the page says so). */
export const TEXT_LIMIT = 16_384;
/** Nodes drawn at most: a larger graph is refused (df allows 10000). */
export const NODE_LIMIT = 2000;

export interface InstanceRow {
  id: string;
  label: string | null;
  status: string;
  submitter: string;
  created_at: string;
  updated_at: string;
  completed_at: string | null;
  output: string | null;
  output_cut: boolean;
  root_node?: string;
}

export interface NodeRow {
  id: string;
  type: string;
  query: string | null;
  query_cut: boolean;
  result_name: string | null;
  left_node: string | null;
  right_node: string | null;
  status: string;
  inferred_status: string;
  skipped_because: string | null;
  result: string | null;
  result_cut: boolean;
  status_details: string | null;
  created_at: string | null;
  updated_at: string;
  iteration: number | null;
  stamp: string | null;
  wake_at: string | null;
}

export interface ListFilter {
  status?: string;
  label?: string;
  role?: string;
  cursor?: string;
  limit: number;
}

const iso = (v: unknown): string | null => (v instanceof Date ? v.toISOString() : v === null || v === undefined ? null : String(v));

function instanceOut(r: Record<string, unknown>): InstanceRow {
  return {
    id: String(r.id),
    label: (r.label as string | null) ?? null,
    status: String(r.status),
    submitter: String(r.submitter ?? ''),
    created_at: iso(r.created_at)!,
    updated_at: iso(r.updated_at) ?? iso(r.created_at)!,
    completed_at: iso(r.completed_at),
    output: (r.output as string | null) ?? null,
    output_cut: r.output_cut === true,
    ...(r.root_node !== undefined ? { root_node: String(r.root_node) } : {}),
  };
}

/** What a failed statement tells the page: df's own refusals are the user's to read. */
export function pgFailure(err: unknown): HttpError {
  if (err instanceof HttpError) return err;
  const e = err as { code?: string; message?: string };
  const message = e.message ?? String(err);
  switch (e.code) {
    case 'P0002':
      return new HttpError(404, message);
    case '55000':
      return new HttpError(409, message);
    case '22023':
    case '22P02':
      return new HttpError(400, message);
    case '42501':
      return new HttpError(403, message);
    case '57014':
      return new HttpError(504, 'the database did not answer in time (statement timeout)');
    default:
      return new HttpError(e.code ? 500 : 502, e.code ? `the database refused: ${message}` : `the database is unreachable: ${message}`);
  }
}

/** df.list_instances's cursor, hex of v1|<created_at>|<id>: decoded only in the exact form it makes. */
export function decodeCursor(cursor: string): { ts: string; id: string } {
  const bad = new HttpError(400, 'invalid cursor');
  if (cursor.length > 512 || !/^([0-9a-f]{2})+$/.test(cursor)) throw bad;
  const parts = Buffer.from(cursor, 'hex').toString('utf8').split('|');
  if (parts.length !== 3 || parts[0] !== 'v1' || !ID.test(parts[2]!) || !/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}\+00$/.test(parts[1]!)) throw bad;
  return { ts: parts[1]!, id: parts[2]! };
}

const LIST_COLUMNS = `pg_catalog.pg_get_userbyid(i.submitted_by::oid) AS submitter, i.updated_at,
  left(i.output, ${TEXT_LIMIT}) AS output, coalesce(length(i.output) > ${TEXT_LIMIT}, false) AS output_cut`;

/**
 * A page of instances, newest first. Without a role filter it is
 * df.list_instances's page and cursor; with one, the same keyset order and
 * cursor format over df.instances of that submitter (df.list_instances has
 * no role filter), so cursors of either kind page both.
 */
export async function listInstances(db: Reader, f: ListFilter): Promise<{ instances: InstanceRow[]; next_cursor: string | null }> {
  try {
    if (f.role === undefined) {
      const { rows } = await db.query(
        `SELECT l.instance_id AS id, l.label, l.status, l.created_at, l.completed_at, l.next_cursor, ${LIST_COLUMNS}
           FROM df.list_instances($1::text, $2::int, $3::text, $4::text) l
           LEFT JOIN df.instances i ON i.id = l.instance_id
          ORDER BY l.created_at DESC, l.instance_id`,
        [f.status ?? null, f.limit, f.label ?? null, f.cursor ?? null],
      );
      return { instances: rows.map(instanceOut), next_cursor: (rows[0]?.next_cursor as string | null | undefined) ?? null };
    }
    const after = f.cursor !== undefined ? decodeCursor(f.cursor) : undefined;
    const { rows } = await db.query(
      `SELECT i.id, i.label, i.status, i.created_at, i.completed_at, ${LIST_COLUMNS},
              encode(convert_to('v1|' || to_char(i.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US') || '+00|' || i.id, 'UTF8'), 'hex') AS cursor
         FROM df.instances i
        WHERE i.submitted_by::oid = (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = $3)
          AND ($1::text IS NULL OR i.status = $1)
          AND ($2::text IS NULL OR i.label = $2)
          AND ($4::timestamptz IS NULL OR i.created_at < $4 OR (i.created_at = $4 AND i.id > $5))
        ORDER BY i.created_at DESC, i.id
        LIMIT $6`,
      [f.status ?? null, f.label ?? null, f.role, after?.ts ?? null, after?.id ?? null, f.limit + 1],
    );
    const more = rows.length > f.limit;
    const page = rows.slice(0, f.limit);
    return { instances: page.map(instanceOut), next_cursor: more ? String(page[page.length - 1]!.cursor) : null };
  } catch (err) {
    throw pgFailure(err);
  }
}

/** The instances of `ids` the reader may see (row-level security drops the others). */
export async function instancesByIds(db: Reader, ids: string[]): Promise<InstanceRow[]> {
  if (ids.length === 0) return [];
  const { rows } = await db.query(
    `SELECT i.id, i.label, i.status, i.created_at, i.completed_at, ${LIST_COLUMNS}
       FROM df.instances i WHERE i.id = ANY ($1::text[])`,
    [ids],
  );
  return rows.map(instanceOut);
}

export interface Detail {
  instance: InstanceRow & { root_node: string };
  nodes: NodeRow[];
  explain: string;
}

/** An instance with its nodes (df.instance_nodes, with the loop iteration from df.nodes) and df.explain's text; undefined when the reader cannot see it. */
export async function instanceDetail(db: Reader, id: string): Promise<Detail | undefined> {
  try {
    const inst = await db.query(
      `SELECT i.id, i.label, i.status, i.root_node, i.created_at, i.completed_at, ${LIST_COLUMNS},
              (SELECT count(*) FROM df.nodes n WHERE n.instance_id = i.id) AS node_count
         FROM df.instances i WHERE i.id = $1`,
      [id],
    );
    const row = inst.rows[0];
    if (!row) return undefined;
    if (Number(row.node_count) > NODE_LIMIT) throw new HttpError(413, `the workflow has ${String(row.node_count)} nodes: the console draws at most ${NODE_LIMIT}`);
    const nodes = await db.query(
      `SELECT n.node_id AS id, n.node_type AS type, left(n.query, ${TEXT_LIMIT}) AS query, coalesce(length(n.query) > ${TEXT_LIMIT}, false) AS query_cut,
              n.result_name, n.left_node, n.right_node, n.status, n.inferred_status, n.inferred_status_from_ancestor_id AS skipped_because,
              left(n.result, ${TEXT_LIMIT}) AS result, coalesce(length(n.result) > ${TEXT_LIMIT}, false) AS result_cut,
              n.status_details, x.created_at, n.updated_at, x.iteration, x.stamp, x.wake_at
         FROM df.instance_nodes($1) n
         LEFT JOIN df.nodes x ON x.instance_id = $1 AND x.id = n.node_id`,
      [id],
    );
    const explain = await db.query<{ e: string | null }>('SELECT df.explain($1) AS e', [id]);
    return {
      instance: instanceOut(row) as InstanceRow & { root_node: string },
      nodes: nodes.rows.map((r) => ({
        id: String(r.id),
        type: String(r.type),
        query: (r.query as string | null) ?? null,
        query_cut: r.query_cut === true,
        result_name: (r.result_name as string | null) ?? null,
        left_node: (r.left_node as string | null) ?? null,
        right_node: (r.right_node as string | null) ?? null,
        status: String(r.status),
        inferred_status: String(r.inferred_status ?? r.status),
        skipped_because: (r.skipped_because as string | null) ?? null,
        result: (r.result as string | null) ?? null,
        result_cut: r.result_cut === true,
        status_details: (r.status_details as string | null) ?? null,
        created_at: iso(r.created_at),
        updated_at: iso(r.updated_at)!,
        iteration: (r.iteration as number | null) ?? null,
        stamp: (r.stamp as string | null) ?? null,
        wake_at: iso(r.wake_at),
      })),
      explain: explain.rows[0]?.e ?? '',
    };
  } catch (err) {
    throw pgFailure(err);
  }
}

/** The instance's status as the reader sees it; undefined when it cannot see it. */
export async function instanceStatus(db: Reader, id: string): Promise<string | undefined> {
  try {
    const { rows } = await db.query<{ status: string }>('SELECT i.status FROM df.instances i WHERE i.id = $1', [id]);
    return rows[0]?.status;
  } catch (err) {
    throw pgFailure(err);
  }
}

/** df.cancel as the session's role: its submitter or an administrator only. */
export async function cancelInstance(db: Reader, id: string, reason: string): Promise<string> {
  try {
    const { rows } = await db.query<{ r: string }>('SELECT df.cancel($1, $2) AS r', [id, reason]);
    return rows[0]!.r;
  } catch (err) {
    throw pgFailure(err);
  }
}

/** df.signal as the session's role. */
export async function signalInstance(db: Reader, id: string, name: string, data: string): Promise<string> {
  try {
    const { rows } = await db.query<{ r: string }>('SELECT df.signal($1, $2, $3) AS r', [id, name, data]);
    return rows[0]!.r;
  } catch (err) {
    throw pgFailure(err);
  }
}
