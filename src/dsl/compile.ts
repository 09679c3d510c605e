// From libpg-query's parse tree of a df.start argument to the graph JSON.
// Only literal DSL is compiled: string constants, the df operators and the
// df.* constructors over them. Anything else (bind parameters, columns, other
// functions) throws NotCompilable and the statement is left to the SQL builders.
import * as B from './builders.js';
import { DslError } from './builders.js';

// libpg-query's JSON tree: loosely typed, checked as it is walked.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Ast = Record<string, any>;

export class NotCompilable extends Error {}

/** Where each step's text came from (byte offset of its string constant), for error positions. */
export type StepSources = Map<string, number>;

const SIGNATURES: Record<string, string[]> = {
  sql: ['query'],
  seq: ['a', 'b'],
  join: ['a', 'b'],
  join3: ['a', 'b', 'c'],
  race: ['a', 'b'],
  as: ['fut', 'name'],
  if: ['condition', 'then_branch', 'else_branch'],
  if_rows: ['result_name', 'then_branch', 'else_branch'],
  loop: ['body', 'condition'],
  break: ['value'],
  sleep: ['seconds'],
  wait_for_signal: ['name', 'timeout_seconds'],
  wait_for_schedule: ['cron_expr', 'time_zone'],
};
const OPTIONAL: Record<string, number> = { loop: 1, break: 1, wait_for_signal: 1, wait_for_schedule: 1 };

/** df functions that are not DSL constructors: evaluated by PostgreSQL, so the expression is left alone. */
const OTHER_DF = new Set([
  'start', 'status', 'result', 'cancel', 'list_instances', 'instance_nodes', 'instance_info', 'instance_executions', 'metrics',
  'getvar', 'grant_usage', 'revoke_usage', 'version', 'target_database', 'duroxide_schema', 'run',
  'as_op', 'if_then_op', 'if_else_op', 'loop_prefix_op', 'signal', 'explain',
  // HTTP steps take jsonb arguments (headers, parts): the SQL builders build them, and check the role may.
  'http', 'http_multipart',
]);
/** df functions whose answer ('OK', a status) is never a step: a call in a workflow is a mistake (pg_durable refuses it too). */
const NOT_A_STEP = new Set(['setvar', 'unsetvar', 'clearvars', 'await_instance', 'wait_for_completion']);

const OPERATORS = new Set(['~>', '|=>', '&', '|', '?>', '!>', '@>']);

export function funcName(f: Ast): string[] {
  return ((f.funcname ?? []) as Ast[]).map((n) => String(n.String?.sval ?? ''));
}

/** A string constant (optionally cast to text), or undefined. */
function stringConst(n: Ast): { value: string | null; at: number } | undefined {
  if (n.A_Const) {
    const c = n.A_Const;
    if (c.isnull) return { value: null, at: c.location };
    if (c.sval) return { value: String(c.sval.sval ?? ''), at: c.location };
    return undefined;
  }
  if (n.TypeCast) {
    const names = ((n.TypeCast.typeName?.names ?? []) as Ast[]).map((x) => x.String?.sval);
    const type = names[names.length - 1];
    if ((type === 'text' || type === 'varchar') && !n.TypeCast.typeName?.arrayBounds) return stringConst(n.TypeCast.arg);
  }
  return undefined;
}

function integerConst(n: Ast): bigint | null | undefined {
  const c = n.A_Const;
  if (!c) return undefined;
  if (c.isnull) return null;
  if (c.ival) return BigInt(c.ival.ival ?? 0);
  const text = c.fval?.fval ?? c.sval?.sval;
  if (typeof text === 'string' && /^\s*-?\d+\s*$/.test(text)) return BigInt(text.trim());
  return undefined;
}

export function compile(n: Ast, steps: StepSources): string | null {
  const s = stringConst(n);
  if (s) {
    if (s.value !== null && !steps.has(s.value)) steps.set(s.value, s.at);
    return s.value;
  }
  if (n.A_Expr) return operator(n.A_Expr, steps);
  if (n.FuncCall) return call(n.FuncCall, steps);
  throw new NotCompilable();
}

function operator(e: Ast, steps: StepSources): string | null {
  const name = (e.name ?? []) as Ast[];
  const op = name.length === 1 ? String(name[0]!.String?.sval) : '';
  if (e.kind !== 'AEXPR_OP' || !OPERATORS.has(op)) throw new NotCompilable();
  const at = e.location as number;
  if (op === '@>') {
    if (e.lexpr) throw new NotCompilable(); // binary @> is containment, not the loop
    const body = compile(e.rexpr, steps);
    return body === null ? null : B.loop(body, null, at);
  }
  if (!e.lexpr) throw new NotCompilable();
  const l = compile(e.lexpr, steps);
  const r = compile(e.rexpr, steps);
  switch (op) {
    case '~>':
      return B.seq(l, r);
    case '|=>':
      return B.as(l, r, at);
    case '&':
      return B.join(l, r);
    case '|':
      return B.race(l, r);
    case '?>':
      return B.ifThen(l, r);
    default:
      return B.ifElseOp(l, r, at);
  }
}

function call(f: Ast, steps: StepSources): string | null {
  const name = funcName(f);
  if (name.length !== 2 || name[0] !== 'df') throw new NotCompilable();
  const fn = name[1]!;
  const at = f.location as number;
  if (OTHER_DF.has(fn)) throw new NotCompilable();
  if (NOT_A_STEP.has(fn)) {
    throw new DslError(`df.${fn}() cannot be used as a workflow step. Call df.${fn}() before df.start().`, '42601', at);
  }
  const params = SIGNATURES[fn];
  if (!params) {
    throw new DslError(`function df.${fn} does not exist`, '42883', at,
      `The df workflow constructors are df.${Object.keys(SIGNATURES).join(', df.')}.`);
  }
  if (f.agg_star || f.agg_distinct || f.over || f.agg_order || f.agg_filter || f.func_variadic) throw new NotCompilable();
  const args: (Ast | undefined)[] = [];
  let positional = true;
  for (const a of (f.args ?? []) as Ast[]) {
    if (a.NamedArgExpr) {
      positional = false;
      const i = params.indexOf(String(a.NamedArgExpr.name));
      if (i < 0 || args[i] !== undefined) throw badArgs(fn, params, at);
      args[i] = a.NamedArgExpr.arg;
    } else {
      if (!positional) throw badArgs(fn, params, at);
      args.push(a);
    }
  }
  const required = params.length - (OPTIONAL[fn] ?? 0);
  if (args.length > params.length || params.slice(0, required).some((_, i) => args[i] === undefined)) throw badArgs(fn, params, at);
  const text = (i: number): string | null => (args[i] === undefined ? null : compile(args[i]!, steps));
  switch (fn) {
    case 'sql':
      return B.sql(text(0));
    case 'seq':
      return B.seq(text(0), text(1));
    case 'join':
      return B.join(text(0), text(1));
    case 'join3':
      return B.join3(text(0), text(1), text(2));
    case 'race':
      return B.race(text(0), text(1));
    case 'as':
      return B.as(text(0), text(1), at);
    case 'if':
      return B.ifElse(text(0), text(1), text(2));
    case 'if_rows': {
      const r = stringConst(args[0]!);
      if (!r) throw new NotCompilable();
      return B.ifRows(r.value, text(1), text(2));
    }
    case 'loop':
      return B.loop(text(0), text(1), at);
    case 'break': {
      if (args[0] === undefined) return B.brk(null);
      const v = stringConst(args[0]);
      if (!v) throw new NotCompilable();
      return B.brk(v.value);
    }
    case 'wait_for_signal': {
      const timeout = args[1] === undefined ? null : integerConst(args[1]);
      // Anything else (an expression, a value past int) is PostgreSQL's to judge.
      if (timeout === undefined || (timeout !== null && timeout > 2_147_483_647n)) throw new NotCompilable();
      return B.waitForSignal(text(0), timeout, at);
    }
    case 'wait_for_schedule':
      return B.waitForSchedule(text(0), text(1), at);
    default: {
      const secs = integerConst(args[0]!);
      if (secs === undefined) throw new NotCompilable();
      return B.sleep(secs, at);
    }
  }
}

function badArgs(fn: string, params: string[], at: number): DslError {
  const optional = OPTIONAL[fn] ?? 0;
  const shown = params.map((p, i) => (i >= params.length - optional ? `${p} DEFAULT NULL` : p)).join(', ');
  return new DslError(`df.${fn}: wrong arguments; expected df.${fn}(${shown})`, '42883', at);
}
