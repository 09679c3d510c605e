// The proxy's side of the DSL: in Query and Parse messages, each df.start
// whose workflow is written out literally is compiled, validated and its
// workflow argument replaced by the compiled graph (a dollar-quoted string,
// which df.start takes as it is). A DSL error replaces the statement by one
// that fails on the server, so the transaction state stays the server's, and
// the session swaps that failure for the DSL error with its position.
import { randomBytes } from 'node:crypto';
import { loadModule, parseSync, scanSync } from 'libpg-query';
import type { Logger } from 'pino';
import type { Interception, SessionInfo, StatementInterceptor } from '../proxy/intercept.js';
import type { PgError } from '../proxy/protocol.js';
import { beginCompile, DslError } from './builders.js';
import { databasesToRelease } from './database-ddl.js';
import { CompileWorker } from './offload.js';
import { compile, funcName, NotCompilable, type Ast, type StepSources } from './compile.js';
import { validate } from './validate.js';

export const loadDslParser = (): Promise<void> => loadModule();

interface Token {
  start: number;
  end: number;
  text: string;
}

interface Edit {
  start: number;
  end: number;
  text: string;
}

/** Every df.start call in a parse tree. */
function findStarts(n: unknown, out: Ast[]): void {
  if (Array.isArray(n)) {
    for (const x of n) findStarts(x, out);
    return;
  }
  if (n === null || typeof n !== 'object') return;
  const o = n as Ast;
  if (o.FuncCall) {
    const name = funcName(o.FuncCall);
    if (name.length === 2 && name[0] === 'df' && name[1] === 'start') {
      out.push(o.FuncCall);
      return;
    }
  }
  for (const v of Object.values(o)) findStarts(v, out);
}

/** Byte spans of a call's top-level arguments, from the tokens. */
function argumentSpans(tokens: Token[], callAt: number): { start: number; end: number; tokens: Token[] }[] {
  let i = tokens.findIndex((t) => t.start >= callAt && t.text === '(');
  if (i < 0) return [];
  const spans: { start: number; end: number; tokens: Token[] }[] = [];
  let depth = 0;
  let current: Token[] = [];
  for (i = i + 1; i < tokens.length; i++) {
    const t = tokens[i]!;
    if (depth === 0 && (t.text === ',' || t.text === ')')) {
      if (current.length) spans.push({ start: current[0]!.start, end: current[current.length - 1]!.end, tokens: current });
      current = [];
      if (t.text === ')') break;
      continue;
    }
    if (t.text === '(' || t.text === '[') depth++;
    if (t.text === ')' || t.text === ']') depth--;
    current.push(t);
  }
  return spans;
}

function dollarQuote(text: string): string {
  let tag = 'df';
  while (text.includes(`$${tag}$`)) tag = `df_${randomBytes(4).toString('hex')}`;
  return `$${tag}$${text}$${tag}$`;
}

/** A df.start(..., transaction_mode => 'new') the proxy performs on a connection of its own. */
export interface NewStart {
  graph: string;
  label: string | null;
  database: string | null;
  /** Byte span of the whole df.start(...) call, which the started instance's id replaces. */
  start: number;
  end: number;
  /** The call has no alias: the replacement keeps the column name ("start"). */
  unnamed: boolean;
}

export interface Rewritten {
  sql: string;
  /** Nothing to change in the statement's text. */
  unchanged?: true;
  /** The statement uses the df schema (it may have to be installed first); see usesSchema. */
  needsSchema?: boolean;
  error?: DslError;
  /** Set when the statement is exactly `SELECT df.start(<literal workflow>, ..., transaction_mode => 'new')`. */
  newStart?: NewStart;
  /** The df.start calls it runs now (compiled or not; not those in a function or view it defines), for the steps' login check. */
  starts?: StartCall[];
}

/** A df.start call: its byte offset, and the database it names as a constant (null: the session's). */
export interface StartCall {
  at: number;
  database: string | null;
}

/**
 * Statements whose df.start calls start workflows as they run, and so are
 * checked for the steps' login; not those of a function, view or default
 * being defined, which start nothing yet.
 */
const STARTS_NOW = new Set([
  'SelectStmt', 'InsertStmt', 'UpdateStmt', 'DeleteStmt', 'MergeStmt', 'CallStmt', 'ExplainStmt',
  'DeclareCursorStmt', 'PrepareStmt', 'CreateTableAsStmt', 'CopyStmt',
]);

/** A string constant's value, null for NULL, undefined for anything else. */
function constant(a: Ast | undefined): string | null | undefined {
  if (a === undefined) return null;
  const c = a.A_Const as Ast | undefined;
  if (!c) return undefined;
  if (c.isnull) return null;
  return typeof c.sval?.sval === 'string' ? (c.sval.sval as string) : c.sval ? '' : undefined;
}

/** df.start's arguments by name, positional or named. */
function startArguments(call: Ast): Map<string, Ast> {
  const names = ['fut', 'label', 'database', 'transaction_mode'];
  const out = new Map<string, Ast>();
  ((call.args ?? []) as Ast[]).forEach((a, i) => {
    if (a.NamedArgExpr) out.set(a.NamedArgExpr.name as string, a.NamedArgExpr.arg as Ast);
    else if (names[i]) out.set(names[i]!, a);
  });
  return out;
}

/** The statement is one SELECT of one df.start call and nothing else (no FROM, WHERE, ...). */
function soleStartTarget(tree: Ast, call: Ast): { unnamed: boolean } | undefined {
  const stmts = tree.stmts as Ast[] | undefined;
  if (!stmts || stmts.length !== 1) return undefined;
  const sel = stmts[0]!.stmt?.SelectStmt as Ast | undefined;
  if (!sel || Object.keys(sel).some((k) => !['targetList', 'limitOption', 'op'].includes(k))) return undefined;
  const targets = sel.targetList as Ast[];
  if (targets.length !== 1 || targets[0]!.ResTarget?.val?.FuncCall !== call) return undefined;
  return { unnamed: targets[0]!.ResTarget.name === undefined };
}

/** End (exclusive) of the call whose name starts at `callAt`: its closing parenthesis. */
function callEnd(tokens: Token[], callAt: number): number | undefined {
  let depth = 0;
  for (const t of tokens) {
    if (t.start < callAt) continue;
    if (t.text === '(') depth++;
    else if (t.text === ')' && --depth === 0) return t.end;
  }
  return undefined;
}

/** Statements that run queries, in which a df reference means the df schema must be there. */
const RUNS_QUERIES = new Set([
  'SelectStmt', 'InsertStmt', 'UpdateStmt', 'DeleteStmt', 'MergeStmt', 'CallStmt', 'ExplainStmt',
  'DeclareCursorStmt', 'PrepareStmt', 'CreateTableAsStmt', 'ViewStmt',
]);

/** Does the tree name something in schema df (a function, a table)? */
function namesDf(n: unknown): boolean {
  if (Array.isArray(n)) return n.some(namesDf);
  if (n === null || typeof n !== 'object') return false;
  const o = n as Ast;
  if (o.FuncCall && funcName(o.FuncCall)[0] === 'df') return true;
  if (o.RangeVar && o.RangeVar.schemaname === 'df') return true;
  return Object.values(o).some(namesDf);
}

/**
 * Whether a statement needs the df schema: it calls df functions or reads df
 * tables, or is a DO block or a function of another schema whose body
 * mentions df (the pre-filter found "df." in the text). Statements that
 * define df's own objects (CREATE SCHEMA df, CREATE TABLE df.x, COPY df.x,
 * ALTER ..., as a restore sends them) never do: installing the schema under
 * a restore would make it fail.
 */
function usesSchema(tree: Ast): boolean {
  for (const raw of (tree.stmts ?? []) as Ast[]) {
    const stmt = (raw.stmt ?? {}) as Ast;
    const kind = Object.keys(stmt)[0] ?? '';
    if (kind === 'DoStmt') return true;
    if (kind === 'CreateFunctionStmt') {
      if (funcName(stmt.CreateFunctionStmt)[0] !== 'df') return true;
      continue;
    }
    if (RUNS_QUERIES.has(kind) && namesDf(stmt[kind])) return true;
  }
  return false;
}

/** Compiles the df.start calls of one statement text; undefined when there is nothing to change. */
export function rewriteSql(sql: string): Rewritten | undefined {
  let tree: Ast;
  try {
    tree = parseSync(sql) as Ast;
  } catch {
    return undefined; // the server reports its own syntax errors
  }
  const calls: Ast[] = [];
  const startsNow = new Set<Ast>();
  for (const raw of (tree.stmts ?? []) as Ast[]) {
    const found = calls.length;
    findStarts(raw, calls);
    if (STARTS_NOW.has(Object.keys((raw.stmt ?? {}) as Ast)[0] ?? '')) for (const c of calls.slice(found)) startsNow.add(c);
  }
  const needsSchema = usesSchema(tree);
  if (calls.length === 0) return needsSchema ? { sql, unchanged: true, needsSchema } : undefined;
  const bytes = Buffer.from(sql, 'utf8');
  const tokens = (scanSync(sql) as { tokens: Token[] }).tokens;
  const edits: Edit[] = [];
  let newStart: NewStart | undefined;
  const starts: StartCall[] = [];
  try {
    for (const call of calls) {
      const byName = startArguments(call);
      const named = constant(byName.get('database'));
      if (startsNow.has(call)) starts.push({ at: call.location as number, database: typeof named === 'string' ? named : null });
      const args = (call.args ?? []) as Ast[];
      const i = args.findIndex((a) => (a.NamedArgExpr ? a.NamedArgExpr.name === 'fut' : true));
      if (i < 0) continue;
      const fut = args[i]!.NamedArgExpr ? args[i]!.NamedArgExpr.arg : args[i]!;
      const steps: StepSources = new Map();
      let graph: string | null;
      try {
        beginCompile();
        graph = compile(fut, steps);
      } catch (err) {
        // Nested deeper than the compiler's stack: the SQL builders build it (or PostgreSQL says it is too deep).
        if (err instanceof NotCompilable || err instanceof RangeError) continue;
        throw err;
      }
      if (graph === null) continue; // df.start(NULL): the server's error
      const span = argumentSpans(tokens, call.location as number)[i];
      if (!span) continue;
      let start = span.start;
      if (args[i]!.NamedArgExpr) {
        const arrow = span.tokens.findIndex((t) => t.text === '=>');
        start = span.tokens[arrow + 1]?.start ?? start;
      }
      const locate = (query: string, offset: number | undefined): number | undefined => {
        const at = steps.get(query);
        if (at === undefined) return start;
        const tok = tokens.find((t) => t.start === at);
        // A plain '...' constant maps one to one onto its text.
        if (offset !== undefined && tok && tok.text === `'${query}'`) return at + 1 + offset;
        return at;
      };
      validate(graph, start, locate);
      const plain = fut.A_Const?.sval !== undefined;
      if (!plain) edits.push({ start, end: span.end, text: dollarQuote(graph) });
      const mode = constant(byName.get('transaction_mode'));
      if (typeof mode === 'string' && mode.toLowerCase() === 'new') {
        const sole = soleStartTarget(tree, call);
        const label = constant(byName.get('label'));
        const database = constant(byName.get('database'));
        const end = callEnd(tokens, call.location as number);
        if (sole && label !== undefined && database !== undefined && end !== undefined) {
          newStart = { graph, label, database, start: call.location as number, end, unnamed: sole.unnamed };
        }
      }
    }
  } catch (err) {
    if (err instanceof DslError) return { sql, error: err };
    throw err;
  }
  if (newStart) return { sql, newStart, needsSchema, starts };
  if (edits.length === 0) return { sql, unchanged: true, needsSchema, starts };
  return { sql: applyEdits(bytes, edits), needsSchema, starts };
}

function applyEdits(bytes: Buffer, edits: Edit[]): string {
  edits.sort((a, b) => b.start - a.start);
  let out = bytes;
  for (const e of edits) out = Buffer.concat([out.subarray(0, e.start), Buffer.from(e.text, 'utf8'), out.subarray(e.end)]);
  return out.toString('utf8');
}

/** 1-based character position of a byte offset, as PostgreSQL reports positions. */
export function charPosition(sql: string, byteOffset: number): number {
  return [...Buffer.from(sql, 'utf8').subarray(0, byteOffset).toString('utf8')].length + 1;
}

/**
 * Starts a workflow outside the client's transaction, as pg_durable's
 * transaction_mode => 'new' does: on a connection of its own, logged in as
 * the session's current role, committed at once. Resolves to the instance id;
 * rejects with the server's error.
 */
export type StartElsewhere = (
  login: { role: string; database: string },
  start: { graph: string; label: string | null; database: string | null },
) => Promise<string>;

/** The largest statement text the proxy compiles itself (a graph at the 10 000-node limit fits). */
export const MAX_COMPILED_BYTES = 512 * 1024;

/** Statements at least this large are compiled on the worker thread (a hop costs less than their compile). */
export const OFFLOAD_BYTES = 16 * 1024;

/** A Query or Parse message and where its statement text lies in it. */
interface Statement {
  message: Buffer;
  session: SessionInfo;
  sql: string;
  sqlStart: number;
  sqlEnd: number;
}

export interface InterceptorOptions {
  /** Starts a transaction_mode => 'new' workflow on a connection of its own. */
  startElsewhere?: StartElsewhere;
  /** Where large statements are compiled; default: the compile-worker next to this module, if it is there (in dist/). */
  worker?: CompileWorker | null;
  /** Closes the proxy's own connections to these databases (before a DROP, RENAME or a copy of them). */
  releaseDatabases?: (names: string[]) => Promise<void>;
  /**
   * Before a statement that uses the df schema: installs it if need be.
   * Undefined when nothing need be done; else resolves to why df cannot be
   * used in the database (the statement then fails with that), or undefined.
   */
  ensureSchema?: (database: string) => Promise<string | undefined> | undefined;
  /**
   * Whether steps can log in to `database` as `role` (Executor.checkLogin): the error a df.start
   * of that submitter fails with, else undefined; a promise only while the answer is not known.
   */
  checkLogin?: (database: string, role: string) => PgError | undefined | Promise<PgError | undefined>;
}

/** Bind carries at most this many values (an int16 count); no statement can use more. */
const MAX_PARAMETERS = 65535;

/** How many parameters a Parse's statement takes: its highest $n, or the types it declares if more. */
function parameterCount(st: Statement): number {
  const { message, sql, sqlEnd } = st;
  // After the statement's terminator: an int16 count of declared types, then their OIDs (0 for unspecified).
  const declared = sqlEnd + 3 <= message.length ? message.readUInt16BE(sqlEnd + 1) : 0;
  let highest = 0;
  try {
    for (const t of (scanSync(sql) as { tokens: (Token & { tokenName: string })[] }).tokens) {
      if (t.tokenName === 'PARAM') highest = Math.max(highest, Number(t.text.slice(1)) || 0);
    }
  } catch {
    // Unscannable text cannot have compiled into a DSL error; the declared types still count.
  }
  return Math.min(Math.max(declared, highest), MAX_PARAMETERS);
}

export class DslInterceptor implements StatementInterceptor {
  private seq = 0;
  private readonly worker: CompileWorker | undefined;
  private readonly startElsewhere: StartElsewhere | undefined;
  private readonly releaseDatabases: ((names: string[]) => Promise<void>) | undefined;
  private readonly ensureSchema: InterceptorOptions['ensureSchema'];
  private readonly checkLogin: InterceptorOptions['checkLogin'];

  constructor(
    private readonly log: Logger,
    opts: InterceptorOptions = {},
  ) {
    const worker = opts.worker === undefined ? CompileWorker.at(new URL('./compile-worker.js', import.meta.url)) : opts.worker;
    this.worker = worker ?? undefined;
    this.startElsewhere = opts.startElsewhere;
    this.releaseDatabases = opts.releaseDatabases;
    this.ensureSchema = opts.ensureSchema;
    this.checkLogin = opts.checkLogin;
  }

  /** Stops the compile worker. */
  close(): Promise<void> {
    return this.worker?.close() ?? Promise.resolve();
  }

  rewrite(message: Buffer, session: SessionInfo): Interception | undefined | Promise<Interception | undefined> {
    const type = message[0];
    let sqlStart = 5;
    if (type === 0x50) {
      const nameEnd = message.indexOf(0, 5);
      if (nameEnd < 0) return undefined;
      sqlStart = nameEnd + 1;
    }
    const sqlEnd = message.indexOf(0, sqlStart);
    if (sqlEnd < 0) return undefined;
    // Parsing alone costs about 80 ms a MiB: a statement larger than this goes to the SQL builders as
    // written, rather than keep the compile worker (or, without one, the event loop) busy.
    if (sqlEnd - sqlStart > MAX_COMPILED_BYTES) return undefined;
    const st: Statement = { message, session, sql: message.toString('utf8', sqlStart, sqlEnd), sqlStart, sqlEnd };
    if (this.releaseDatabases && /database/i.test(st.sql)) {
      const names = databasesToRelease(st.sql);
      if (names.length > 0) {
        const go = (): Interception | undefined | Promise<Interception | undefined> => this.compile(st);
        return this.releaseDatabases(names).then(go, go);
      }
    }
    return this.compile(st);
  }

  private compile(st: Statement): Interception | undefined | Promise<Interception | undefined> {
    const { session, sql } = st;
    // A compiler bug must not cost the user the statement: the SQL builders still work.
    const failed = (err: unknown): undefined => {
      this.log.error({ err: (err as Error).message, user: session.user }, 'df compiler failed; statement forwarded unchanged');
      return undefined;
    };
    if (this.worker && st.sqlEnd - st.sqlStart >= OFFLOAD_BYTES) {
      // The session's later bytes wait for this statement; every other session's go on.
      return this.worker
        .rewrite(sql)
        .then((r) => this.rewritten(r, st), failed)
        .catch(failed);
    }
    let r: Rewritten | undefined;
    try {
      r = rewriteSql(sql);
    } catch (err) {
      return failed(err);
    }
    return this.rewritten(r, st);
  }

  /** What a compiled statement becomes on the wire, once the df schema it uses is there. */
  private rewritten(r: Rewritten | undefined, st: Statement): Interception | undefined | Promise<Interception | undefined> {
    if (!r) return undefined;
    const ensuring = r.needsSchema && !r.error ? this.ensureSchema?.(st.session.database) : undefined;
    if (!ensuring) return this.onWire(r, st);
    return ensuring.then((why) =>
      this.onWire(
        why === undefined
          ? r
          : {
              sql: st.sql,
              error: new DslError(
                `pg-durable-proxy does not serve database "${st.session.database}": ${why}`,
                '55000',
                undefined,
                'The proxy log has the same line; `pg-durable-proxy check` lists what the executor role lacks.',
              ),
            },
        st,
      ),
    );
  }

  private onWire(r: Rewritten, st: Statement): Interception | undefined | Promise<Interception | undefined> {
    const { message, session, sql, sqlStart, sqlEnd } = st;
    const type = message[0];
    const replace = (text: string, error?: Interception['error']): Interception => {
      const body = Buffer.from(text, 'utf8');
      const head = message.subarray(0, sqlStart);
      const tail = message.subarray(sqlEnd); // the terminator, and Parse's parameter types
      const out = Buffer.concat([head, body, tail]);
      out.writeInt32BE(out.length - 1, 1);
      return { message: out, error };
    };
    if (r.error) {
      return this.failWith(st, replace, {
        severity: 'ERROR',
        code: r.error.code,
        message: r.error.message,
        hint: r.error.hint,
        position: r.error.at !== undefined ? charPosition(sql, r.error.at) : undefined,
      });
    }
    const ns = r.newStart;
    if (ns) {
      // Only a simple Query starts at once: a Parse may be executed many times, or never.
      // Anything else reaches df.start, which explains why 'new' needs this form.
      if (type !== 0x51 || !this.startElsewhere) return undefined;
      if (session.transactionStatus === 'E') return undefined; // the server refuses the statement, and nothing starts
      // The start submits as the current role (after SET ROLE), as caller mode does: the server says which it is.
      const role = session.currentRole();
      if (role === undefined) {
        return this.failWith(st, replace, {
          severity: 'ERROR',
          code: '0A000',
          message: "df.start() with transaction_mode => 'new' cannot run while earlier statements of the session are pending",
          hint: 'Send it as a statement of its own, once the earlier statements have finished (not pipelined).',
          position: charPosition(sql, ns.start),
        });
      }
      const bytes = Buffer.from(sql, 'utf8');
      const startElsewhere = this.startElsewhere;
      return role.then(async (current) =>
        // It logs in as the current role, as its steps will: first, whether the proxy can.
        (await this.loginCheck([{ at: ns.start, database: ns.database }], current, st)) ??
        startElsewhere({ role: current, database: session.database }, { graph: ns.graph, label: ns.label, database: ns.database }),
      ).then(
        (id) =>
          typeof id === 'string'
            ? replace(applyEdits(bytes, [{ start: ns.start, end: ns.end, text: `'${id}'::text${ns.unnamed ? ' AS start' : ''}` }]))
            : this.failWith(st, replace, id),
        (err: unknown) => {
          const e = err as { code?: string; message?: string; detail?: string; hint?: string };
          this.log.warn({ err: e.message, user: session.user }, "transaction_mode => 'new': the start failed");
          return this.failWith(st, replace, {
            severity: 'ERROR',
            code: typeof e.code === 'string' && e.code.length === 5 ? e.code : '08006',
            message: typeof e.code === 'string' ? String(e.message) : `df.start(): transaction_mode => 'new' could not open its own connection: ${e.message}`,
            detail: e.detail,
            hint: e.hint,
            position: charPosition(sql, ns.start),
          });
        },
      );
    }
    // The submitter is the current role; the login role stands for it (asking the server costs a round trip,
    // and cannot be done when pipelined). After a SET ROLE, steps that cannot log in fail the instance instead.
    const go = (): Interception | undefined => (r.unchanged ? undefined : replace(r.sql));
    const refused = this.loginCheck(r.starts, session.user, st);
    if (refused === undefined) return go();
    if (!(refused instanceof Promise)) return this.failWith(st, replace, refused);
    return refused.then((fields) => (fields ? this.failWith(st, replace, fields) : go()));
  }

  /**
   * Whether the proxy can log in as `role` for the workflows of these
   * df.start calls: the error of the first it cannot, at that call, else
   * undefined. Without a promise once the answers are known (a Map look-up).
   */
  private loginCheck(starts: StartCall[] | undefined, role: string, st: Statement): PgError | undefined | Promise<PgError | undefined> {
    const check = this.checkLogin;
    if (!check || !starts?.length) return undefined;
    const answers = starts.map((s) => check(s.database ?? st.session.database, role));
    const first = (known: (PgError | undefined)[]): PgError | undefined => {
      const i = known.findIndex((a) => a !== undefined);
      return i < 0 ? undefined : { ...known[i]!, position: charPosition(st.sql, starts[i]!.at) };
    };
    if (!answers.some((a) => a instanceof Promise)) return first(answers as (PgError | undefined)[]);
    return Promise.all(answers).then(first, () => undefined);
  }

  /**
   * The statement becomes one the server fails with a marker; the session shows `fields` instead.
   * It fails in parse analysis (the marker literal's cast to int4 is evaluated then), so a Parse
   * fails at Parse like a syntax error, and the rest of the batch is skipped to the Sync. It
   * takes the client's parameters ($1 .. $N as text, after the marker, never analysed), so
   * nothing can object to their number or types first.
   */
  private failWith(
    st: Statement,
    replace: (text: string, error?: Interception['error']) => Interception,
    fields: PgError,
  ): Interception {
    // Random, so that no statement of the client's can raise it and have its error swapped.
    const marker = `pgdp_dsl_error_${randomBytes(8).toString('hex')}_${++this.seq}`;
    const n = st.message[0] === 0x50 ? parameterCount(st) : 0;
    let text = `SELECT '${marker}'::pg_catalog.int4`;
    for (let i = 1; i <= n; i++) text += `, $${i}::pg_catalog.text`;
    return replace(text, { marker, fields });
  }
}
