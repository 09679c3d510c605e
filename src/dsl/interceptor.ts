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
import { DslError } from './builders.js';
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

export interface Rewritten {
  sql: string;
  error?: DslError;
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
  findStarts(tree.stmts, calls);
  if (calls.length === 0) return undefined;
  const bytes = Buffer.from(sql, 'utf8');
  const tokens = (scanSync(sql) as { tokens: Token[] }).tokens;
  const edits: Edit[] = [];
  try {
    for (const call of calls) {
      const args = (call.args ?? []) as Ast[];
      const i = args.findIndex((a) => (a.NamedArgExpr ? a.NamedArgExpr.name === 'fut' : true));
      if (i < 0) continue;
      const fut = args[i]!.NamedArgExpr ? args[i]!.NamedArgExpr.arg : args[i]!;
      const steps: StepSources = new Map();
      let graph: string | null;
      try {
        graph = compile(fut, steps);
      } catch (err) {
        if (err instanceof NotCompilable) continue;
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
    }
  } catch (err) {
    if (err instanceof DslError) return { sql, error: err };
    throw err;
  }
  if (edits.length === 0) return undefined;
  edits.sort((a, b) => b.start - a.start);
  let out = bytes;
  for (const e of edits) out = Buffer.concat([out.subarray(0, e.start), Buffer.from(e.text, 'utf8'), out.subarray(e.end)]);
  return { sql: out.toString('utf8') };
}

/** 1-based character position of a byte offset, as PostgreSQL reports positions. */
export function charPosition(sql: string, byteOffset: number): number {
  return [...Buffer.from(sql, 'utf8').subarray(0, byteOffset).toString('utf8')].length + 1;
}

export class DslInterceptor implements StatementInterceptor {
  private seq = 0;

  constructor(private readonly log: Logger) {}

  rewrite(message: Buffer, session: SessionInfo): Interception | undefined {
    const type = message[0];
    let nameEnd = 5;
    let sqlStart = 5;
    if (type === 0x50) {
      nameEnd = message.indexOf(0, 5);
      if (nameEnd < 0) return undefined;
      sqlStart = nameEnd + 1;
    }
    const sqlEnd = message.indexOf(0, sqlStart);
    if (sqlEnd < 0) return undefined;
    const sql = message.toString('utf8', sqlStart, sqlEnd);
    let r: Rewritten | undefined;
    try {
      r = rewriteSql(sql);
    } catch (err) {
      // A compiler bug must not cost the user the statement: the SQL builders still work.
      this.log.error({ err: (err as Error).message, user: session.user }, 'df compiler failed; statement forwarded unchanged');
      return undefined;
    }
    if (!r) return undefined;
    let text = r.sql;
    let error: Interception['error'];
    if (r.error) {
      const marker = `pg-durable-proxy:dsl-error:${++this.seq}`;
      text = `DO $pgdp$BEGIN RAISE EXCEPTION '${marker}'; END$pgdp$`;
      error = {
        marker,
        fields: {
          severity: 'ERROR',
          code: r.error.code,
          message: r.error.message,
          hint: r.error.hint,
          position: r.error.at !== undefined ? charPosition(sql, r.error.at) : undefined,
        },
      };
    }
    const body = Buffer.from(text, 'utf8');
    const head = message.subarray(0, sqlStart);
    const tail = message.subarray(sqlEnd); // the terminator, and Parse's parameter types
    const out = Buffer.concat([head, body, tail]);
    out.writeInt32BE(out.length - 1, 1);
    return { message: out, error };
  }
}
