// Text substitution into a step before it runs, as pg_durable does it:
// first one left-to-right pass for {var}, then one for $name result
// references over its output. And the truthiness rule of IF and LOOP.
import { scanSync } from 'libpg-query';
import { memoized } from './memo.js';
import { LIMITS } from '../workflow/model.js';

/** A step that cannot run: its node fails with this message. */
export class StepError extends Error {}

const IDENT = /^[A-Za-z_][A-Za-z0-9_]*$/;
const IDENT_CHAR = /[A-Za-z0-9_]/;

/** {name}: sys_instance_id, sys_label, or a snapshotted variable; anything else stays as written. */
export function substituteVars(text: string, vars: Readonly<Record<string, string>>, sys: { instanceId: string; label: string }): string {
  if (!text.includes('{')) return text;
  let out = '';
  let i = 0;
  for (;;) {
    const open = text.indexOf('{', i);
    if (open < 0) return out + text.slice(i);
    const close = text.indexOf('}', open + 1);
    if (close < 0) return out + text.slice(i);
    const name = text.slice(open + 1, close);
    out += text.slice(i, open);
    let value: string | undefined;
    if (IDENT.test(name)) {
      if (name === 'sys_instance_id') value = sys.instanceId;
      else if (name === 'sys_label') value = sys.label;
      else if (Object.hasOwn(vars, name)) value = vars[name];
    }
    out += value ?? text.slice(open, close + 1);
    i = close + 1;
  }
}

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type Mode = 'sql' | 'raw';

function parse(raw: string): { ok: true; v: Json } | { ok: false } {
  try {
    return { ok: true, v: JSON.parse(raw) as Json };
  } catch {
    return { ok: false };
  }
}

const isObject = (v: Json): v is { [k: string]: Json } => typeof v === 'object' && v !== null && !Array.isArray(v);
const quote = (s: string): string => `'${s.replaceAll("'", "''")}'`;
const quoteIdent = (s: string): string => `"${s.replaceAll('"', '""')}"`;

/** What a reference stands for, before it is rendered for the place it is in. */
type Value =
  | { t: 'json'; v: Json }
  /** A result that is not JSON: pg_durable inserts its text as written. */
  | { t: 'text'; s: string }
  | { t: 'rows'; name: string; rows: Json[] };

/** A literal in SQL: a negative number in parentheses, so `10-$x` cannot become `10--5`, a comment. */
function sqlLiteral(v: Json): string {
  if (v === null) return 'NULL';
  if (typeof v === 'string') return quote(v);
  if (typeof v === 'number') return v < 0 ? `(${String(v)})` : String(v);
  if (typeof v === 'boolean') return String(v);
  return quote(JSON.stringify(v));
}

/** pg_durable's rendering where SQL is expected. */
function sqlText(x: Value): string {
  if (x.t === 'text') return x.s;
  if (x.t === 'json') return sqlLiteral(x.v);
  const first = x.rows[0];
  if (first === undefined || !isObject(first)) return `(SELECT NULL WHERE false) AS ${quoteIdent(x.name)}`;
  const cols = Object.keys(first);
  const cell = (v: Json | undefined): string =>
    v === undefined || v === null ? 'NULL' : typeof v === 'string' || typeof v === 'object' ? `${sqlLiteral(v)}::text` : sqlLiteral(v);
  const values = x.rows.map((r) => '(' + cols.map((c) => cell(isObject(r) ? r[c] : undefined)).join(', ') + ')').join(', ');
  return `(VALUES ${values}) AS ${quoteIdent(x.name)}(${cols.map(quoteIdent).join(', ')})`;
}

/** The value as plain text: inside string literals and quoted identifiers, and in raw mode. */
function plainText(x: Value): string {
  if (x.t === 'text') return x.s;
  if (x.t === 'rows') return JSON.stringify(x.rows);
  const v = x.v;
  return v === null ? '' : typeof v === 'string' ? v : JSON.stringify(v);
}

interface Ref {
  name: string;
  col?: string;
  star?: boolean;
  nullSafe: boolean;
  end: number;
}

/** The $name references in `text`, left to right, longest name first at each `$`. */
function findRefs(text: string, names: string[]): { at: number; ref: Ref }[] {
  const found: { at: number; ref: Ref }[] = [];
  for (let d = text.indexOf('$'); d >= 0; ) {
    const ref = matchAt(text, d + 1, names);
    if (ref) found.push({ at: d, ref });
    d = text.indexOf('$', ref ? ref.end : d + 1);
  }
  return found;
}

/**
 * $name, $name?, $name.col, $name.col?, $name.* against the named results
 * (raw result texts). Unknown names, $1 and $$ are left as written.
 * In SQL mode each reference is rendered for where PostgreSQL's scanner
 * puts it, so that no value can change the statement's structure.
 */
export function substituteResults(text: string, results: ReadonlyMap<string, string>, mode: Mode = 'sql'): string {
  if (results.size === 0 || !text.includes('$')) return text;
  const refs = findRefs(text, [...results.keys()].sort((a, b) => b.length - a.length));
  if (refs.length === 0) return text;
  const places = mode === 'sql' ? placesIn(text) : undefined;
  if (places === SCAN_FAILED) {
    throw new StepError(`the step's SQL could not be scanned to place its $name references (an unterminated quote, dollar quote or comment?)`);
  }
  let out = '';
  let i = 0;
  const dollars = new Map<number, { place: DollarPlace; inserts: Insert[] }>();
  for (const { at, ref } of refs) {
    out += text.slice(i, at);
    i = ref.end;
    const written = text.slice(at, ref.end);
    if (places === undefined) {
      const x = extract(ref, results.get(ref.name)!, mode);
      out += x === undefined ? written : plainText(x);
      continue;
    }
    const place = places.get(at);
    if (place === undefined || place.k === 'odd') {
      throw new StepError(`${written}: a reference cannot be placed ${place?.what ?? 'at this point of the statement'}`);
    }
    if (place.k === 'keep') {
      out += written;
      continue;
    }
    const x = extract(ref, results.get(ref.name)!, mode);
    if (x === undefined) {
      out += written; // a missing column: PostgreSQL reports it
      continue;
    }
    let ins: string;
    if (place.k === 'sql') {
      ins = sqlText(x);
      if (fuses(out[out.length - 1], ins[0])) ins = ' ' + ins;
      if (fuses(ins[ins.length - 1], text[ref.end])) ins += ' ';
    } else {
      ins = plainText(x);
      if (place.k === 'bits' && ins.includes("'")) throw new StepError(`${written}: a value with ' cannot be placed in a bit-string literal`);
      if (place.esc !== undefined) ins = ins.replaceAll(place.esc, place.esc + place.esc);
      ins = ins.replaceAll(place.quote, place.quote + place.quote);
    }
    // PostgreSQL ends a query's text at a NUL; a json column can hold "\u0000".
    if (ins.includes('\0')) throw new StepError(`${written}: the value contains a NUL character, which SQL text cannot carry`);
    for (const q of place.within ?? []) {
      let d = dollars.get(q.start);
      if (d === undefined) dollars.set(q.start, (d = { place: q, inserts: [] }));
      d.inserts.push({ at, from: out.length, to: out.length + ins.length, templateEnd: ref.end, written });
    }
    out += ins;
  }
  out += text.slice(i);
  for (const { place, inserts } of dollars.values()) checkDollar(out, place, inserts);
  return out;
}

interface Insert {
  at: number;
  from: number;
  to: number;
  templateEnd: number;
  written: string;
}

/**
 * A dollar-quoted string must still end where it ended: its body may not
 * now contain its delimiter. (Spacing keeps a value from forming one with
 * the text around it; the check covers that too.)
 */
function checkDollar(out: string, place: DollarPlace, inserts: Insert[]): void {
  const last = inserts[inserts.length - 1]!;
  const outStart = inserts[0]!.from - (inserts[0]!.at - place.start); // nothing inserted between the token's start and its first insertion
  const outEnd = place.end + (last.to - last.templateEnd);
  const D = place.delim;
  const body = out.slice(outStart + D.length, outEnd - D.length);
  const hit = (body + D).indexOf(D);
  if (hit === body.length) return;
  const from = outStart + D.length + hit;
  const culprit = inserts.find((s) => s.from < from + D.length && s.to > from) ?? inserts[0]!;
  throw new StepError(
    `${culprit.written}: its value would end the dollar-quoted string ${D} early (it contains ${D}); use another dollar-quote tag`,
  );
}

const WORD = /[A-Za-z0-9_$\u0080-\uffff]/;
const OP = /[-+*/<>=~!@#%^&|`?]/;

/**
 * Whether two characters, side by side, would scan as (part of) one token:
 * a word or number going on, a string prefix (E'', U&''), a doubled quote,
 * a number's point, an operator or comment start going on.
 */
function fuses(a: string | undefined, b: string | undefined): boolean {
  if (a === undefined || b === undefined) return false;
  if (WORD.test(a)) return WORD.test(b) || b === "'" || b === '"' || b === '.';
  if (a === '&' && (b === "'" || b === '"')) return true;
  if ((a === "'" || a === '"') && b === a) return true;
  if (a === '.') return WORD.test(b) || b === '.';
  if (OP.test(a)) return OP.test(b);
  return a === ':' && (b === ':' || b === '=');
}

// Where each `$` of a step's text lies, as PostgreSQL's own scanner (with
// standard_conforming_strings on, as every step connection has it) sees it.

/** A dollar-quoted string, which each insertion into its body must leave ending where it ended. */
interface DollarPlace {
  delim: string;
  start: number;
  end: number;
}
/** The dollar-quoted strings a place is in, outermost first. */
type Within = readonly DollarPlace[];
type Place =
  /** Between tokens (of the statement, or of a dollar-quoted body that scans as SQL): rendered as SQL. */
  | { k: 'sql'; within?: Within }
  /** In a comment, an identifier, a delimiter, or escaped: left as written. */
  | { k: 'keep'; within?: undefined }
  /** Inside a quoted literal or identifier: plain text, the quote (and escape character) doubled. */
  | { k: 'lit' | 'bits'; quote: "'" | '"'; esc?: string; within?: Within }
  | { k: 'odd'; what: string; within?: undefined };

const placesIn = memoized((text: string): ReadonlyMap<number, Place> => locate(text), 1000);

const SCAN_FAILED = new Map<number, Place>();

function locate(text: string): ReadonlyMap<number, Place> {
  // The scanner's JSON output breaks on control characters, and lone
  // surrogates would be encoded unpredictably; the server sees U+FFFD for the
  // latter. Same lengths in UTF-16 and in UTF-8, so offsets still line up.
  const scanned = text
    .replace(/[\0-\x08\x0b\x0c\x0e-\x1f]/g, ' ')
    .replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, '\ufffd');
  const out = new Map<number, Place>();
  try {
    placeAll(scanned, 0, [], out);
  } catch (err) {
    // libpg-query reports a scanner error as text its JSON.parse then rejects.
    if (err instanceof SyntaxError || (err instanceof Error && err.message.startsWith('syntax error'))) return SCAN_FAILED;
    throw err;
  }
  return out;
}

/** Places the `$`s of `text`, which starts at `base` of the step's text; throws if it does not scan. */
function placeAll(text: string, base: number, within: Within, out: Map<number, Place>): void {
  const spans = utf16Spans(text, scanSync(text).tokens);
  spans.forEach(([s, e], n) => {
    const t = text.slice(s, e);
    if (t.includes('$')) placeToken(t, base + s, base + e, escapeOf(text, spans, n), within, out);
  });
}

/** Token byte offsets (UTF-8, as the scanner counts) as UTF-16 offsets. */
function utf16Spans(text: string, tokens: readonly { start: number; end: number }[]): [number, number][] {
  let byte = 0;
  let unit = 0;
  const at = (target: number): number => {
    while (byte < target) {
      const c = text.codePointAt(unit)!;
      byte += c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
      unit += c < 0x10000 ? 1 : 2;
    }
    return unit;
  };
  return tokens.map((t) => [at(t.start), at(t.end)]);
}

/** The escape character of a U&'' or U&"" token: \ or its UESCAPE '...'. */
function escapeOf(text: string, spans: [number, number][], n: number): string | undefined {
  const tok = (k: number): string | undefined => (spans[k] ? text.slice(spans[k][0], spans[k][1]) : undefined);
  if (!/^[uU]&/.test(tok(n) ?? '')) return undefined;
  const next = (k: number): number => {
    let j = k + 1;
    while (/^(--|\/\*)/.test(tok(j) ?? '')) j++;
    return j;
  };
  const kw = next(n);
  if (tok(kw)?.toUpperCase() !== 'UESCAPE') return '\\';
  return /^'(.)'$/su.exec(tok(next(kw)) ?? '')?.[1] ?? '';
}

function placeToken(t: string, s: number, e: number, esc: string | undefined, within: Within, out: Map<number, Place>): void {
  const KEEP: Place = { k: 'keep' };
  const all = (p: Place): void => {
    for (let i = t.indexOf('$'); i >= 0; i = t.indexOf('$', i + 1)) out.set(s + i, p);
  };
  if (t === '$' || /^\$\d+$/.test(t)) out.set(s, { k: 'sql', within });
  else if (t.startsWith('--') || t.startsWith('/*')) all(KEEP);
  else if (t[0] === '$') {
    const delim = /^\$[^$]*\$/.exec(t)![0];
    all(KEEP); // the delimiters; the body's $s are placed next
    const inner = [...within, { delim, start: s, end: e }];
    const body = t.slice(delim.length, t.length - delim.length);
    // A body is usually SQL or PL/pgSQL (the same scanner): its own strings
    // and comments count. One that does not scan gets SQL renderings.
    try {
      placeAll(body, s + delim.length, inner, out);
    } catch {
      for (let i = body.indexOf('$'); i >= 0; i = body.indexOf('$', i + 1)) out.set(s + delim.length + i, { k: 'sql', within: inner });
    }
  } else if (t[0] === '"') walkQuoted(t, s, '"', undefined, false, 'lit', within, out);
  else if (/^[uU]&"/.test(t)) walkQuoted(t, s, '"', esc, false, 'lit', within, out);
  else if (/^[uU]&'/.test(t)) walkQuoted(t, s, "'", esc, false, 'lit', within, out);
  else if (/^[eE]'/.test(t)) walkQuoted(t, s, "'", '\\', true, 'lit', within, out);
  else if (/^[bBxX]'/.test(t)) walkQuoted(t, s, "'", undefined, false, 'bits', within, out);
  else if (t[0] === "'") walkQuoted(t, s, "'", undefined, false, 'lit', within, out);
  else if (/^[A-Za-z_\u0080-\uffff]/.test(t)) all(KEEP); // foo$bar: one identifier
  else all({ k: 'odd', what: `inside ${JSON.stringify(t.slice(0, 20))}` });
}

/**
 * The `$`s of a quoted token (several segments when continued over a
 * newline): inside a segment, between segments, or right after an escape
 * character. In E'' an escape takes the next character, whatever it is; in
 * U&'' and U&"" the scanner ends the token at a lone quote regardless.
 */
function walkQuoted(
  t: string, s: number, q: "'" | '"', esc: string | undefined, escLexes: boolean, k: 'lit' | 'bits', within: Within, out: Map<number, Place>,
): void {
  const KEEP: Place = { k: 'keep' };
  if (esc === '') {
    for (let i = t.indexOf('$'); i >= 0; i = t.indexOf('$', i + 1)) out.set(s + i, { k: 'odd', what: 'in a string with an unreadable UESCAPE' });
    return;
  }
  const inside: Place = { k, quote: q, esc: k === 'bits' ? undefined : esc, within };
  const doubles = k !== 'bits'; // B'' and X'' end at any quote: '' there is two strings
  let open = false;
  for (let i = 0; i < t.length; i++) {
    const c = t[i];
    if (!open) {
      if (c === q) open = true;
      else if (c === '$') out.set(s + i, KEEP);
    } else if (c === q) {
      if (doubles && t[i + 1] === q) i++;
      else open = false;
    } else if (esc !== undefined && c === esc) {
      const n = t[i + 1];
      if (n === '$') out.set(s + ++i, KEEP); // an escaped $ is a character, not a reference
      else if (escLexes || n === esc) i++;
    } else if (c === '$') out.set(s + i, inside);
  }
}

function matchAt(text: string, at: number, names: string[]): Ref | undefined {
  for (const name of names) {
    if (!text.startsWith(name, at)) continue;
    let j = at + name.length;
    if (text[j] === '.' && text[j + 1] === '*') return { name, star: true, nullSafe: false, end: j + 2 };
    if (text[j] === '.') {
      const col = /^[A-Za-z_][A-Za-z0-9_]*/.exec(text.slice(j + 1))?.[0];
      if (col) {
        j += 1 + col.length;
        const nullSafe = text[j] === '?';
        return { name, col, nullSafe, end: nullSafe ? j + 1 : j };
      }
    }
    if (text[j] === '?') return { name, nullSafe: true, end: j + 1 };
    if (j >= text.length || !IDENT_CHAR.test(text[j]!)) return { name, nullSafe: false, end: j };
  }
  return undefined;
}

/** The value a reference stands for; undefined: a missing column, left as written (SQL mode, or ?). */
function extract(ref: Ref, raw: string, mode: Mode): Value | undefined {
  const label = `$${ref.name}${ref.col ? '.' + ref.col : ''}`;
  const json = (v: Json): Value => ({ t: 'json', v });
  const parsed = parse(raw);
  if (!parsed.ok) {
    if (ref.col !== undefined || ref.star) throw new StepError(`${label}: result '${ref.name}' is not JSON`);
    return { t: 'text', s: raw };
  }
  const v = parsed.v;
  const rows = isObject(v) && Array.isArray(v.rows) ? v.rows : undefined;
  if (ref.star) {
    if (!rows) throw new StepError(`$${ref.name}.*: invalid result format (not a row set)`);
    if (rows.length > LIMITS.expandedRows) throw new StepError(`$${ref.name}.* has ${rows.length} rows; at most ${LIMITS.expandedRows} can be expanded`);
    return { t: 'rows', name: ref.name, rows };
  }
  if (rows) {
    const first = rows[0];
    if (first === undefined || !isObject(first)) {
      if (ref.nullSafe) return json(null);
      throw new StepError(`$${ref.name} has no rows — query returned zero results`);
    }
    let value: Json | undefined;
    if (ref.col === undefined) {
      const k = Object.keys(first)[0];
      value = k === undefined ? null : first[k]!;
    } else {
      if (!Object.hasOwn(first, ref.col)) {
        if (mode === 'sql' || ref.nullSafe) return undefined;
        throw new StepError(`${label}: result '${ref.name}' has no field '${ref.col}' (available: ${Object.keys(first).join(', ')})`);
      }
      value = first[ref.col]!;
    }
    if (value === null) {
      if (ref.nullSafe) return json(null);
      throw new StepError(ref.col === undefined ? `$${ref.name} is NULL — first column of first row is NULL` : `${label} is NULL`);
    }
    return json(value);
  }
  if (ref.col === undefined) return json(raw); // the whole JSON text, as a string
  if (!isObject(v)) throw new StepError(`${label}: result '${ref.name}' is neither a row set nor a JSON object`);
  if (!Object.hasOwn(v, ref.col)) {
    if (ref.nullSafe) return json(null);
    throw new StepError(`${label}: result '${ref.name}' has no field '${ref.col}' (available: ${Object.keys(v).join(', ')})`);
  }
  const f = v[ref.col]!;
  if (f === null && !ref.nullSafe) throw new StepError(`${label} is NULL`);
  return json(f);
}

/** pg_durable's truthiness of a step result (IF conditions, LOOP while-conditions). */
export function truthy(raw: string): boolean {
  const parsed = parse(raw);
  if (!parsed.ok) return truthyValue(raw);
  const v = parsed.v;
  if (isObject(v) && Array.isArray(v.rows)) {
    const first = v.rows[0];
    if (first === undefined) return false;
    if (isObject(first)) {
      const k = Object.keys(first)[0];
      // A row without columns: the whole result decides (a non-empty object: true).
      return k !== undefined ? truthyValue(first[k]!) : truthyValue(v);
    }
    return truthyValue(first);
  }
  return truthyValue(v);
}

function truthyValue(v: Json): boolean {
  if (v === null) return false;
  if (typeof v === 'boolean') return v;
  if (typeof v === 'number') return v !== 0;
  if (Array.isArray(v)) return v.length > 0;
  if (typeof v === 'object') return Object.keys(v).length > 0;
  const s = v.trim();
  if (s === '') return false;
  const l = s.toLowerCase();
  if (l === 'true' || l === 't' || l === 'yes') return true;
  if (l === 'false' || l === 'f' || l === 'no') return false;
  if (/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(s) || /^[+-]?(inf|infinity)$/i.test(s)) return Number(s.replace(/inf$/i, 'Infinity')) !== 0;
  return true;
}
