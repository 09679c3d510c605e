// Runs one SQL step on a connection logged in as the submitter.
//
// Exactly-once: the statement and its checkpoint (df._checkpoint, which also
// fences on the run lease) commit in one transaction, so a crash before COMMIT
// undoes both and after it the step is never run again. Statements PostgreSQL
// refuses inside a transaction block run on their own and are checkpointed
// right after: at-least-once.
import type { Duplex } from 'node:stream';
import type pg from 'pg';
import { serialize } from 'pg-protocol';
import { Aborted } from '../interpreter.js';
import { ResultTooLarge, resultJson } from '../results.js';
import { stepKind } from '../statement-kind.js';
import { StepError } from '../substitute.js';

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

async function execute(client: pg.PoolClient, sql: string, maxResult: number): Promise<string> {
  const r = await client.query({ text: sql, rowMode: 'array', types: TEXT_TYPES, queryMode: 'extended' } as pg.QueryConfig);
  // The reply may have arrived whole in the chunk that crossed the limit.
  const cut = cutReason(client);
  if (cut) throw new StepError(cut);
  try {
    return resultJson(r.fields, r.rows as (string | null)[][], maxResult);
  } catch (err) {
    throw new StepError(tooLargeText(err, maxResult));
  }
}

/** Why a step connection was cut short (its result too large), by pg connection. */
const cuts = new WeakMap<object, string>();

const SETTING = '--max-step-result / PGDP_MAX_STEP_RESULT';

function tooLargeText(err: unknown, maxResult: number): string {
  if (err instanceof ResultTooLarge || err instanceof RangeError) {
    return `the step's result as JSON is larger than the limit of ${maxResult} bytes (${SETTING})`;
  }
  throw err;
}

/** Ends a step connection: what it was running never commits (no Sync was sent, or the server sees the socket close). */
function cutConnection(connection: { stream: Duplex }, reason: string): void {
  if (!cuts.has(connection)) cuts.set(connection, reason);
  connection.stream.destroy(new Error(reason));
}

/** Set when the connection was ended because the step's result passed the limit: the step's failure. */
export function cutReason(client: pg.ClientBase): string | undefined {
  return cuts.get((client as unknown as { connection: object }).connection);
}

/**
 * What a row costs the executor beyond its bytes on the wire (the array and
 * strings it becomes): counted with it, so that millions of tiny rows cannot
 * take far more memory than the limit says.
 */
const ROW_OVERHEAD = 48;

const MESSAGE_NAMES: Record<number, string> = { 0x45: 'an error', 0x4e: 'a notice', 0x54: 'a row description', 0x41: 'a notification' };

/**
 * Caps what the server sends for a step, as it arrives. pg-protocol buffers a
 * whole message before parsing it, and a value larger than a V8 string throws
 * inside the socket's 'data' handler, which would end the process; a large
 * one just fills memory. Message headers (type byte, int32 length) are read
 * ahead of the parser: a message announced larger than `maxBytes`, or (with
 * `countRows`) the rows since the last ReadyForQuery adding up to more, end
 * the connection before the parser buffers more than the chunk at hand.
 */
export function limitStepResults(client: pg.ClientBase, maxBytes: number, countRows: boolean): void {
  const connection = (client as unknown as { connection: { stream: Duplex } }).connection;
  const stream = connection.stream; // the TLS socket when TLS is on: it carries the plain protocol
  const header = Buffer.alloc(5);
  let have = 0; // header bytes gathered (a header may straddle chunks)
  let skip = 0; // body bytes of the current message not seen yet
  let rows = 0; // DataRow and CopyData bytes since the last ReadyForQuery
  const onData = (chunk: Buffer): void => {
    let i = 0;
    while (i < chunk.length) {
      if (skip > 0) {
        const n = Math.min(skip, chunk.length - i);
        skip -= n;
        i += n;
        continue;
      }
      header[have++] = chunk[i++]!;
      if (have < 5) continue;
      have = 0;
      const type = header[0]!;
      const size = header.readUInt32BE(1) + 1;
      skip = size - 5;
      const isRow = type === 0x44 || type === 0x64;
      if (type === 0x5a) rows = 0;
      else if (isRow && countRows) rows += size + ROW_OVERHEAD;
      if (rows > maxBytes || size > maxBytes) {
        stream.removeListener('data', onData);
        cutConnection(
          connection,
          !countRows
            ? `the server sent a message of ${size} bytes, more than the executor accepts (${maxBytes})`
            : isRow || rows > maxBytes
            ? `the step's result is larger than the limit of ${maxBytes} bytes (${SETTING})`
            : `the server sent ${MESSAGE_NAMES[type] ?? `a message (type ${String.fromCharCode(type)})`} of ${size} bytes for the step, more than the limit of ${maxBytes} bytes (${SETTING})`,
        );
        return;
      }
    }
  };
  stream.prependListener('data', onData);
}

/** Where a failure of an atomic step happened: it decides who is at fault. */
type Phase = 'statement' | 'checkpoint' | 'commit';

/** Thrown by AtomicStep for a failure after the statement succeeded. */
class CheckpointError extends Error {
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
const NO_ROWS = '{"rows":[],"row_count":0}';

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
    private readonly maxResult: number,
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
    // This runs inside the socket's 'data' handler: a throw here would end the process.
    try {
      this.result = resultJson(this.fields, this.rows, this.maxResult);
    } catch (err) {
      this.rows = [];
      this.failed = true;
      let reason: string;
      try {
        reason = tooLargeText(err, this.maxResult);
      } catch (other) {
        reason = `the step's result cannot be stored: ${(other as Error).message}`;
      }
      // Without a Sync the statement's transaction is still open: closing the connection rolls it back.
      cutConnection(this.connection as unknown as { stream: Duplex }, reason);
      this.reject(new StepError(reason));
      return;
    }
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

/**
 * Gives a step connection back with no session state left: what a step SET,
 * PREPAREd, LISTENed to, locked for the session or made TEMP does not reach
 * the next step on it (pg_durable opens a new connection per step). Unless
 * the parser shows the statement cannot have left any, a DISCARD ALL runs
 * after the step has finished, off its path; the connection returns to the
 * pool once it is clean.
 */
export function releaseClean(client: pg.PoolClient, sql: string): void {
  if (stepKind(sql).sessionClean) return client.release();
  client.query('DISCARD ALL').then(
    () => {
      prepared.delete((client as unknown as { connection: object }).connection); // DISCARD ALL deallocates it too
      client.release();
    },
    () => client.release(true),
  );
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
  opts: { sameDatabase: boolean; checkpointElsewhere: (result: string) => Promise<void>; signal: AbortSignal; maxResult?: number },
): Promise<string> {
  const { client } = conn;
  const maxResult = opts.maxResult ?? Infinity;
  try {
    return await runChecked(conn, sql, cp, opts, maxResult);
  } catch (err) {
    // A cut connection fails whatever way the error surfaced (socket error, failed checkpoint, cancel).
    const cut = cutReason(client);
    if (cut && !(err instanceof Aborted)) throw new StepError(cut);
    throw err;
  }
}

async function runChecked(
  conn: StepConnection,
  sql: string,
  cp: Checkpoint,
  opts: { sameDatabase: boolean; checkpointElsewhere: (result: string) => Promise<void>; signal: AbortSignal },
  maxResult: number,
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
        return await client.query(new AtomicStep(sql, cp, kind.noRows ? NO_ROWS : undefined, maxResult)).done;
      } catch (err) {
        if (opts.signal.aborted) throw new Aborted();
        if (err instanceof CheckpointError) {
          // Deferred constraints, serialization failures: the step's own transaction failed at COMMIT.
          if (err.phase === 'commit' && !isInfrastructureError(err.original)) throw new StepError(stepErrorText(err.original));
          if (err.original.code === '26000') {
            // Retrying would do the same again: the step's statement itself removed the checkpoint (DEALLOCATE).
            throw new StepError(`the step deallocated the executor's prepared checkpoint, so it cannot commit: ${stepErrorText(err.original)}`);
          }
          throw err.original; // the checkpoint itself failed (40001: the run is no longer ours); nothing committed
        }
        throw stepFailure(err);
      }
    }
    let result: string;
    try {
      result = await execute(client, sql, maxResult);
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
