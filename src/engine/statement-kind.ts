// What the PostgreSQL parser says about a step's statement, which decides
// how the step travels: on its own (refused in a transaction block), with its
// checkpoint in one round trip (no rows to wait for), and whether its
// connection needs a DISCARD ALL afterwards (session state it may leave).
import { loadModule, parseSync } from 'libpg-query';
import { memoized } from './memo.js';

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
  /** It cannot leave session state behind (plain DML or SELECT calling only built-ins): no DISCARD ALL after it. */
  sessionClean: boolean;
}

const TRANSACTIONAL: StepKind = { ownTransaction: false, noRows: false, sessionClean: false };

/**
 * What the parser says about a step's statement; cached, loop bodies repeat.
 * Unparsable text or several statements count as transactional and
 * row-returning: PostgreSQL reports their error.
 */
export const stepKind = memoized((sql: string): StepKind => classify(sql), 10_000);

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
  return { ownTransaction: refusedInTransaction(kind, body), noRows: returnsNoRows(kind, body), sessionClean: leavesNoSessionState(kind, body) };
}

/** Built-in functions that change no session state, callable unqualified or as pg_catalog.*. */
const PURE_FUNCTIONS = new Set([
  'count', 'sum', 'avg', 'min', 'max', 'bool_and', 'bool_or', 'every', 'array_agg', 'string_agg', 'json_agg', 'jsonb_agg',
  'json_object_agg', 'jsonb_object_agg', 'row_number', 'rank', 'dense_rank', 'lag', 'lead', 'first_value', 'last_value',
  'now', 'clock_timestamp', 'statement_timestamp', 'transaction_timestamp', 'timeofday', 'date_trunc', 'date_part', 'extract',
  'age', 'make_interval', 'make_date', 'make_timestamp', 'make_timestamptz', 'to_timestamp', 'to_char', 'to_date', 'to_number',
  'lower', 'upper', 'length', 'char_length', 'octet_length', 'substr', 'substring', 'replace', 'split_part', 'btrim', 'ltrim',
  'rtrim', 'concat', 'concat_ws', 'format', 'left', 'right', 'lpad', 'rpad', 'position', 'strpos', 'starts_with', 'md5', 'sha256',
  'encode', 'decode', 'regexp_replace', 'regexp_match', 'regexp_matches', 'regexp_split_to_array', 'string_to_array', 'array_to_string',
  'abs', 'round', 'trunc', 'ceil', 'ceiling', 'floor', 'mod', 'power', 'sqrt', 'random', 'gen_random_uuid', 'greatest', 'least',
  'to_json', 'to_jsonb', 'json_build_object', 'jsonb_build_object', 'json_build_array', 'jsonb_build_array', 'jsonb_set',
  'jsonb_array_elements', 'jsonb_array_elements_text', 'json_array_elements', 'jsonb_each', 'jsonb_each_text', 'jsonb_object_keys',
  'jsonb_array_length', 'jsonb_typeof', 'jsonb_strip_nulls', 'row_to_json', 'array_length', 'cardinality', 'unnest',
  'generate_series', 'array_append', 'array_cat', 'array_remove', 'coalesce', 'nullif',
]);

/**
 * Whether a statement provably leaves no session state (SET, PREPARE, LISTEN,
 * TEMP tables, session advisory locks, ...) on its connection: a SELECT or
 * DML statement whose function calls are all known built-ins. Triggers,
 * defaults and rules it fires are taken on trust.
 */
function leavesNoSessionState(kind: string | undefined, body: ParseNode): boolean {
  switch (kind) {
    case 'SelectStmt':
      return body.intoClause === undefined && callsOnlyPureFunctions(body);
    case 'InsertStmt':
    case 'UpdateStmt':
    case 'DeleteStmt':
    case 'MergeStmt':
      return callsOnlyPureFunctions(body);
    default:
      return false;
  }
}

function callsOnlyPureFunctions(n: unknown): boolean {
  if (Array.isArray(n)) return n.every(callsOnlyPureFunctions);
  if (n === null || typeof n !== 'object') return true;
  const o = n as ParseNode;
  const call = o.FuncCall as { funcname?: { String?: { sval?: string } }[] } | undefined;
  if (call) {
    const names = (call.funcname ?? []).map((p) => p.String?.sval ?? '');
    const fn = names[names.length - 1] ?? '';
    if (!PURE_FUNCTIONS.has(fn) || (names.length === 2 && names[0] !== 'pg_catalog') || names.length > 2) return false;
  }
  return Object.values(o).every(callsOnlyPureFunctions);
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
      // RETURNING: returningClause since PostgreSQL 18's parser, returningList before.
      return body.returningClause === undefined && (!Array.isArray(body.returningList) || body.returningList.length === 0);
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
