// Runs one SQL step on a connection logged in as the submitter.
//
// Exactly-once: the statement and its checkpoint (df._checkpoint, which also
// fences on the run lease) commit in one transaction, so a crash before COMMIT
// undoes both and after it the step is never run again. Statements PostgreSQL
// refuses inside a transaction block run on their own and are checkpointed
// right after: at-least-once.
import { loadModule, parseSync } from 'libpg-query';
import type pg from 'pg';
import { Aborted } from './interpreter.js';
import { resultJson } from './results.js';
import { StepError } from './substitute.js';

let parserReady: Promise<void> | undefined;
export const loadParser = (): Promise<void> => (parserReady ??= loadModule());

type ParseNode = Record<string, unknown>;

function hasOption(options: unknown, name: string): boolean {
  return Array.isArray(options) && options.some((o) => (o as { DefElem?: { defname?: string } }).DefElem?.defname === name);
}

const ownTransaction = new Map<string, boolean>();

/**
 * Whether PostgreSQL would refuse this statement in a transaction block;
 * cached, loop bodies repeat. Unparsable text or several statements count as
 * transactional: PostgreSQL reports their error.
 */
export function needsOwnTransaction(sql: string): boolean {
  let own = ownTransaction.get(sql);
  if (own === undefined) {
    own = classify(sql);
    if (ownTransaction.size >= 10_000) ownTransaction.clear();
    ownTransaction.set(sql, own);
  }
  return own;
}

function classify(sql: string): boolean {
  let stmts: { stmt?: ParseNode }[];
  try {
    stmts = (parseSync(sql) as { stmts?: { stmt?: ParseNode }[] }).stmts ?? [];
  } catch {
    return false;
  }
  if (stmts.length !== 1) return false;
  const stmt = stmts[0]!.stmt ?? {};
  const [kind] = Object.keys(stmt);
  return refusedInTransaction(kind, (kind ? stmt[kind] : {}) as ParseNode);
}

function refusedInTransaction(kind: string | undefined, body: ParseNode): boolean {
  switch (kind) {
    case 'VacuumStmt':
    case 'CreatedbStmt':
    case 'DropdbStmt':
    case 'AlterSystemStmt':
    case 'CreateTableSpaceStmt':
    case 'DropTableSpaceStmt':
    case 'TransactionStmt':
      return true;
    case 'IndexStmt':
      return body.concurrent === true;
    case 'DropStmt':
      return body.concurrent === true;
    case 'ReindexStmt':
      return hasOption(body.params, 'concurrently') || body.kind === 'REINDEX_OBJECT_SYSTEM' || body.kind === 'REINDEX_OBJECT_DATABASE';
    case 'ClusterStmt':
      return body.relation === undefined;
    case 'CreateSubscriptionStmt':
    case 'DropSubscriptionStmt':
    case 'AlterSubscriptionStmt':
      return true;
    default:
      return false;
  }
}

/** Connection-level failures: the step did not fail, the executor lost its way to the database. */
export function isInfrastructureError(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  if (typeof code !== 'string') return true; // socket errors, "Connection terminated", timeouts
  return code.startsWith('08') || code === '57P01' || code === '57P02' || code === '57P03' || code === '53300';
}

/** A step failure as pg_durable stores it: the server's message, with its SQLSTATE. */
export function stepErrorText(err: unknown): string {
  const e = err as { message?: string; code?: string };
  return e.code ? `${e.message} (SQLSTATE ${e.code})` : String(e.message ?? err);
}

const identity = (v: string): string => v;
/** Every value as PostgreSQL's text form: results.ts types it by oid. */
const TEXT_TYPES = { getTypeParser: () => identity } as unknown as pg.CustomTypesConfig;

export interface Checkpoint {
  instanceId: string;
  nodeId: string;
  owner: string;
  stamp: string;
}

export interface StepConnection {
  client: pg.PoolClient;
  /** Asks the server to cancel whatever this connection is running. */
  cancel(): Promise<void>;
}

async function execute(client: pg.PoolClient, sql: string): Promise<string> {
  const r = await client.query({ text: sql, rowMode: 'array', types: TEXT_TYPES, queryMode: 'extended' } as pg.QueryConfig);
  return resultJson(r.fields, r.rows as (string | null)[][]);
}

/**
 * Runs `sql` and checkpoints it. `sameDatabase`: the step runs in the database
 * holding the df schema, so statement and checkpoint can share a transaction.
 * Throws StepError (the step failed), Aborted, or an infrastructure error.
 */
export async function runSqlStep(
  conn: StepConnection,
  sql: string,
  cp: Checkpoint,
  opts: { sameDatabase: boolean; checkpointElsewhere: (result: string) => Promise<void>; signal: AbortSignal },
): Promise<string> {
  const { client } = conn;
  if (opts.signal.aborted) throw new Aborted();
  let cancelling: Promise<void> | undefined;
  const onAbort = (): void => {
    cancelling = conn.cancel().catch(() => {});
  };
  opts.signal.addEventListener('abort', onAbort, { once: true });
  const atomic = opts.sameDatabase && !needsOwnTransaction(sql);
  let inTransaction = false;
  try {
    let result: string;
    try {
      if (atomic) {
        await client.query('BEGIN');
        inTransaction = true;
      }
      // Extended protocol: PostgreSQL itself refuses several statements, as pg_durable's prepared execution does.
      result = await execute(client, sql);
    } catch (err) {
      if (opts.signal.aborted) throw new Aborted();
      if ((err as { code?: string }).code && !isInfrastructureError(err)) throw new StepError(stepErrorText(err));
      throw err;
    }
    if (opts.signal.aborted) throw new Aborted();
    if (atomic) {
      const lit = (v: string): string => client.escapeLiteral(v);
      await client.query(
        `SELECT df._checkpoint(${lit(cp.instanceId)}, ${lit(cp.nodeId)}, ${lit(cp.owner)}, ${lit(cp.stamp)}, ${lit(result)}); COMMIT`,
      );
      inTransaction = false;
    } else {
      await opts.checkpointElsewhere(result);
    }
    return result;
  } finally {
    opts.signal.removeEventListener('abort', onAbort);
    // The caller discards a cancelled connection; the cancel must land before that.
    if (cancelling) await cancelling;
    if (inTransaction) await client.query('ROLLBACK').catch(() => {});
  }
}
