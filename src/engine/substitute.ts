// Text substitution into a step before it runs, as pg_durable does it:
// first one left-to-right pass for {var}, then one for $name result
// references over its output. And the truthiness rule of IF and LOOP.

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

function render(v: Json, mode: Mode): string {
  if (mode === 'raw') return v === null ? '' : typeof v === 'string' ? v : JSON.stringify(v);
  if (v === null) return 'NULL';
  if (typeof v === 'string') return quote(v);
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  return quote(JSON.stringify(v));
}

function rowSet(name: string, rows: Json[], mode: Mode): string {
  if (rows.length > 10000) throw new StepError(`$${name}.* has ${rows.length} rows; at most 10000 can be expanded`);
  if (mode === 'raw') return JSON.stringify(rows);
  const first = rows[0];
  if (first === undefined || !isObject(first)) return `(SELECT NULL WHERE false) AS "${name}"`;
  const cols = Object.keys(first);
  const lit = (v: Json | undefined): string =>
    v === undefined || v === null ? 'NULL' : typeof v === 'string' ? `${quote(v)}::text`
      : typeof v === 'number' || typeof v === 'boolean' ? String(v) : `${quote(JSON.stringify(v))}::text`;
  const values = rows.map((r) => '(' + cols.map((c) => lit(isObject(r) ? r[c] : undefined)).join(', ') + ')').join(', ');
  return `(VALUES ${values}) AS "${name}"(${cols.map((c) => `"${c.replaceAll('"', '""')}"`).join(', ')})`;
}

/**
 * $name, $name?, $name.col, $name.col?, $name.* against the named results
 * (raw result texts). Unknown names, $1 and $$ are left as written.
 */
export function substituteResults(text: string, results: ReadonlyMap<string, string>, mode: Mode = 'sql'): string {
  if (results.size === 0 || !text.includes('$')) return text;
  const names = [...results.keys()].sort((a, b) => b.length - a.length);
  let out = '';
  let i = 0;
  for (;;) {
    const d = text.indexOf('$', i);
    if (d < 0) return out + text.slice(i);
    out += text.slice(i, d);
    const m = matchAt(text, d + 1, names);
    if (!m) {
      out += '$';
      i = d + 1;
      continue;
    }
    const replaced = extract(m, results.get(m.name)!, mode);
    if (replaced === undefined) {
      out += text.slice(d, m.end); // a missing column: in SQL mode PostgreSQL reports it
    } else {
      out += replaced;
    }
    i = m.end;
  }
}

interface Ref {
  name: string;
  col?: string;
  star?: boolean;
  nullSafe: boolean;
  end: number;
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

function extract(ref: Ref, raw: string, mode: Mode): string | undefined {
  const label = `$${ref.name}${ref.col ? '.' + ref.col : ''}`;
  const parsed = parse(raw);
  if (!parsed.ok) {
    if (ref.col !== undefined || ref.star) throw new StepError(`${label}: result '${ref.name}' is not JSON`);
    return raw;
  }
  const v = parsed.v;
  const rows = isObject(v) && Array.isArray(v.rows) ? v.rows : undefined;
  if (ref.star) {
    if (!rows) throw new StepError(`$${ref.name}.*: invalid result format (not a row set)`);
    return rowSet(ref.name, rows, mode);
  }
  if (rows) {
    const first = rows[0];
    if (first === undefined || !isObject(first)) {
      if (ref.nullSafe) return render(null, mode);
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
      if (ref.nullSafe) return render(null, mode);
      throw new StepError(ref.col === undefined ? `$${ref.name} is NULL — first column of first row is NULL` : `${label} is NULL`);
    }
    return render(value, mode);
  }
  if (ref.col === undefined) return mode === 'sql' ? quote(raw) : raw;
  if (!isObject(v)) throw new StepError(`${label}: result '${ref.name}' is neither a row set nor a JSON object`);
  if (!Object.hasOwn(v, ref.col)) {
    if (ref.nullSafe) return render(null, mode);
    throw new StepError(`${label}: result '${ref.name}' has no field '${ref.col}' (available: ${Object.keys(v).join(', ')})`);
  }
  const f = v[ref.col]!;
  if (f === null && !ref.nullSafe) throw new StepError(`${label} is NULL`);
  return render(f, mode);
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
