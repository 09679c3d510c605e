// Runs one SQL step on a connection logged in as the submitter.
//
// Exactly-once: the statement and its checkpoint (df._checkpoint, which also
// fences on the run lease) commit in one transaction, so a crash before COMMIT
// undoes both and after it the step is never run again. Statements PostgreSQL
// refuses inside a transaction block run on their own and are checkpointed
// right after: at-least-once.
import { loadModule, parseSync } from 'libpg-query';
import type pg from 'pg';
import { serialize } from 'pg-protocol';
import { Aborted } from './interpreter.js';
import { resultJson } from './results.js';
import { StepError } from './substitute.js';

let parserReady: Promise<void> | undefined;
export const loadParser = (): Promise<void> => (parserReady ??= loadModule());

type ParseNode = Record<string, unknown>;

function hasOption(options: unknown, name: string): boolean {
  return Array.isArray(options) && options.some((o) => (o as { DefElem?: { defname?: string } }).DefElem?.defname === name);
}

export interface StepKind {
  /** PostgreSQL refuses it in a transaction block (VACUUM, CREATE INDEX CONCURRENTLY, ...). */
  ownTransaction: boolean;
  /** It returns no rows (DML without RETURNING, common DDL): its result is known before it runs. */
  noRows: boolean;
}

const TRANSACTIONAL: StepKind = { ownTransaction: false, noRows: false };
const kinds = new Map<string, StepKind>();

/**
 * What the parser says about a step's statement; cached, loop bodies repeat.
 * Unparsable text or several statements count as transactional and
 * row-returning: PostgreSQL reports their error.
 */
export function stepKind(sql: string): StepKind {
  let kind = kinds.get(sql);
  if (kind === undefined) {
    kind = classify(sql);
    if (kinds.size >= 10_000) kinds.clear();
    kinds.set(sql, kind);
  }
  return kind;
}

export const needsOwnTransaction = (sql: string): boolean => stepKind(sql).ownTransaction;

function classify(sql: string): StepKind {
  let stmts: { stmt?: ParseNode }[];
  try {
    stmts = (parseSync(sql) as { stmts?: { stmt?: ParseNode }[] }).stmts ?? [];
  } catch {
    return TRANSACTIONAL;
  }
  if (stmts.length !== 1) return TRANSACTIONAL;
  const stmt = stmts[0]!.stmt ?? {};
  const [kind] = Object.keys(stmt);
  const body = (kind ? stmt[kind] : {}) as ParseNode;
  return { ownTransaction: refusedInTransaction(kind, body), noRows: returnsNoRows(kind, body) };
}

/**
 * Statements that never send rows in the extended protocol: PostgreSQL sends
 * rows only for the statement's own RETURNING (a rule's DO INSTEAD SELECT
 * rows are discarded), and these utility statements return none.
 */
function returnsNoRows(kind: string | undefined, body: ParseNode): boolean {
  switch (kind) {
    case 'InsertStmt':
    case 'UpdateStmt':
    case 'DeleteStmt':
    case 'MergeStmt':
      return !Array.isArray(body.returningList) || body.returningList.length === 0;
    case 'CreateStmt':
    case 'CreateTableAsStmt':
    case 'AlterTableStmt':
    case 'DropStmt':
    case 'TruncateStmt':
    case 'IndexStmt':
    case 'ViewStmt':
    case 'GrantStmt':
    case 'CommentStmt':
    case 'DoStmt':
    case 'RefreshMatViewStmt':
    case 'NotifyStmt':
    case 'CreateSchemaStmt':
    case 'CreateSeqStmt':
    case 'RenameStmt':
      return true;
    default:
      return false;
  }
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

/** An error of the statement itself is the step's failure; a lost connection is not. */
function stepFailure(err: unknown): unknown {
  if ((err as { code?: string }).code && !isInfrastructureError(err)) return new StepError(stepErrorText(err));
  return err;
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

/** Where a failure of an atomic step happened: it decides who is at fault. */
type Phase = 'statement' | 'checkpoint' | 'commit';

/** Thrown by AtomicStep for a failure after the statement succeeded. */
export class CheckpointError extends Error {
  constructor(
    readonly original: Error & { code?: string },
    readonly phase: Exclude<Phase, 'statement'>,
  ) {
    super(original.message);
  }
}

const CHECKPOINT = 'pgdp_checkpoint';
const CHECKPOINT_SQL = 'SELECT df._checkpoint($1, $2, $3, $4, $5)';
/** Connections whose session holds the prepared checkpoint. */
const prepared = new WeakSet<object>();

interface WireConnection {
  stream: { writable: boolean; write(b: Buffer): boolean };
}

/** The result of a statement that returns no rows, as pg_durable stores it. */
export const NO_ROWS = '{"rows":[],"row_count":0}';

/**
 * A step's statement and its checkpoint in one implicit transaction, without
 * BEGIN/COMMIT: PostgreSQL runs everything up to a Sync as one transaction,
 * committed at the Sync, rolled back whole on any error.
 *
 * Two round trips: Parse/Bind/Describe/Execute/Flush for the statement; once
 * its rows are in, Bind/Execute of the prepared checkpoint with the result,
 * and Sync. One round trip when the result is known beforehand (`known`: the
 * statement returns no rows): statement, checkpoint and Sync go together.
 *
 * A pg "submittable": the client hands it the protocol messages until the
 * next ReadyForQuery, as it does for pg-cursor.
 */
class AtomicStep {
  readonly done: Promise<string>;
  private resolve!: (v: string) => void;
  private reject!: (e: unknown) => void;
  private phase: Phase = 'statement';
  private fields: pg.FieldDef[] = [];
  private rows: (string | null)[][] = [];
  private result = '';
  private synced = false;
  private failed = false;
  private connection: WireConnection | undefined;

  constructor(
    private readonly sql: string,
    private readonly cp: Checkpoint,
    private readonly known: string | undefined,
  ) {
    this.done = new Promise((res, rej) => {
      this.resolve = res;
      this.reject = rej;
    });
  }

  submit(connection: WireConnection): void {
    this.connection = connection;
    const statement = [serialize.parse({ text: this.sql }), serialize.bind({}), serialize.describe({ type: 'P' }), serialize.execute({})];
    if (this.known === undefined) write(connection, [...statement, serialize.flush()]);
    else write(connection, [...statement, ...this.checkpoint(this.known)]);
  }

  /** Bind/Execute of the prepared checkpoint, and the Sync that commits. */
  private checkpoint(result: string): Buffer[] {
    const c = this.connection!;
    const { instanceId, nodeId, owner, stamp } = this.cp;
    this.synced = true;
    return [
      // Close first: a failed earlier attempt may have left the statement half known. Closing none is no error.
      ...(prepared.has(c) ? [] : [serialize.close({ type: 'S', name: CHECKPOINT }), serialize.parse({ name: CHECKPOINT, text: CHECKPOINT_SQL })]),
      serialize.bind({ statement: CHECKPOINT, values: [instanceId, nodeId, owner, stamp, result] }),
      serialize.execute({}),
      serialize.sync(),
    ];
  }

  handleRowDescription(msg: { fields: pg.FieldDef[] }): void {
    this.fields = msg.fields;
  }

  handleDataRow(msg: { fields: (string | null)[] }): void {
    if (this.phase === 'statement') this.rows.push(msg.fields); // later: the checkpoint's own (void) row
  }

  handleEmptyQuery(): void {
    this.statementDone();
  }

  handleCommandComplete(): void {
    if (this.phase === 'statement') this.statementDone();
    else this.phase = 'commit'; // the checkpoint ran; what fails now fails the COMMIT
  }

  private statementDone(): void {
    this.result = resultJson(this.fields, this.rows);
    this.rows = [];
    this.phase = 'checkpoint';
    if (this.known === undefined) write(this.connection!, this.checkpoint(this.result));
  }

  handleError(err: Error & { code?: string }): void {
    this.failed = true;
    if (this.phase === 'statement') {
      // The server skips everything up to a Sync after an error.
      if (!this.synced && this.connection?.stream.writable) write(this.connection, [serialize.sync()]);
      this.reject(err);
    } else {
      this.reject(new CheckpointError(err, this.phase));
    }
  }

  handleReadyForQuery(): void {
    if (this.failed) return;
    prepared.add(this.connection!);
    this.resolve(this.result);
  }

  handleCopyInResponse(connection: { sendCopyFail(msg: string): void }): void {
    connection.sendCopyFail('COPY FROM STDIN is not available in a durable step');
  }

  handleCopyData(): void {}

  handlePortalSuspended(): void {}
}

function write(connection: WireConnection, parts: Buffer[]): void {
  if (connection.stream.writable) connection.stream.write(parts.length === 1 ? parts[0]! : Buffer.concat(parts));
}

/**
 * Runs `sql` and checkpoints it. `sameDatabase`: the step runs in the database
 * holding the df schema, so statement and checkpoint can share a transaction.
 * `checkpointElsewhere` writes the checkpoint of a step that could not
 * share its transaction.
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
  const kind = stepKind(sql);
  try {
    if (opts.sameDatabase && !kind.ownTransaction) {
      try {
        // Extended protocol: PostgreSQL itself refuses several statements, as pg_durable's prepared execution does.
        return await client.query(new AtomicStep(sql, cp, kind.noRows ? NO_ROWS : undefined)).done;
      } catch (err) {
        if (opts.signal.aborted) throw new Aborted();
        if (err instanceof CheckpointError) {
          // Deferred constraints, serialization failures: the step's own transaction failed at COMMIT.
          if (err.phase === 'commit' && !isInfrastructureError(err.original)) throw new StepError(stepErrorText(err.original));
          throw err.original; // the checkpoint itself failed (40001: the run is no longer ours); nothing committed
        }
        throw stepFailure(err);
      }
    }
    let result: string;
    try {
      result = await execute(client, sql);
    } catch (err) {
      if (opts.signal.aborted) throw new Aborted();
      throw stepFailure(err);
    }
    if (opts.signal.aborted) throw new Aborted();
    await opts.checkpointElsewhere(result);
    return result;
  } finally {
    opts.signal.removeEventListener('abort', onAbort);
    // The caller discards a cancelled connection; the cancel must land before that.
    if (cancelling) await cancelling;
  }
}
