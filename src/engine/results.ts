// A SQL step's rows as the JSON text pg_durable stores:
// {"rows":[{col:val,...}],"row_count":N}, columns in SELECT order.
// Every PostgreSQL type has a value (pg_durable fails on arrays, bytea,
// intervals and more): arrays become JSON arrays, bytea base64, and types
// without a JSON counterpart their text form.
import type { FieldDef } from 'pg';

const T = {
  bool: 16, bytea: 17, name: 19, int8: 20, int2: 21, int4: 23, text: 25, oid: 26, json: 114,
  float4: 700, float8: 701, bpchar: 1042, varchar: 1043, date: 1082, timestamp: 1114, timestamptz: 1184,
  numeric: 1700, uuid: 2950, jsonb: 3802, void: 2278,
} as const;

/** Array type oid → element type oid, for the built-in types above. */
const ARRAY_OF: Record<number, number> = {
  1000: T.bool, 1001: T.bytea, 1003: T.name, 1016: T.int8, 1005: T.int2, 1007: T.int4, 1009: T.text, 1028: T.oid,
  199: T.json, 1021: T.float4, 1022: T.float8, 1014: T.bpchar, 1015: T.varchar, 1182: T.date, 1115: T.timestamp,
  1185: T.timestamptz, 1231: T.numeric, 2951: T.uuid, 3807: T.jsonb,
};

/** A value rendered as JSON text, from PostgreSQL's text output (DateStyle ISO). */
export function jsonValue(text: string | null, type: number): string {
  if (text === null) return 'null';
  switch (type) {
    case T.bool:
      return text === 't' ? 'true' : 'false';
    case T.int2:
    case T.int4:
    case T.int8:
    case T.oid:
      return text;
    case T.float4:
    case T.float8:
      return /^-?(Infinity|NaN)$/.test(text) ? 'null' : text;
    case T.json:
    case T.jsonb:
      return text;
    case T.void:
      return 'null';
    case T.timestamptz:
      return JSON.stringify(timestamptz(text));
    case T.timestamp:
      return JSON.stringify(text.replace(' ', 'T'));
    case T.bytea:
      return JSON.stringify(text.startsWith('\\x') ? Buffer.from(text.slice(2), 'hex').toString('base64') : text);
    default: {
      const elem = ARRAY_OF[type];
      if (elem !== undefined) return arrayJson(text, elem);
      return JSON.stringify(text);
    }
  }
}

/** `2024-06-15 14:30:00.5+02` → `2024-06-15T12:30:00.5+00:00` (RFC 3339, UTC, fraction kept). */
function timestamptz(text: string): string {
  const m = /^(\d{4,})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(\.\d+)?([+-])(\d\d)(?::(\d\d))?(?::(\d\d))?$/.exec(text);
  if (!m) return text; // infinity, BC dates: their text form
  const sign = m[8] === '-' ? -1 : 1;
  const offset = sign * (Number(m[9]) * 3600 + Number(m[10] ?? 0) * 60 + Number(m[11] ?? 0));
  const d = new Date(0);
  d.setUTCFullYear(Number(m[1]), Number(m[2]) - 1, Number(m[3])); // not Date.UTC: it maps years 0-99 to 19xx
  d.setUTCHours(Number(m[4]), Number(m[5]), Number(m[6]) - offset, 0);
  const iso = d.toISOString(); // YYYY-MM-DDTHH:MM:SS.sssZ
  return `${iso.slice(0, 19)}${m[7] ?? ''}+00:00`;
}

/** PostgreSQL array text (`{1,2,NULL}`, `{{a,"b c"}}`) → JSON array text. */
function arrayJson(text: string, elem: number): string {
  let i = 0;
  // A leading dimension decoration ("[0:1]={...}") is dropped.
  if (text[0] === '[') i = text.indexOf('=') + 1;
  const parse = (): string => {
    // text[i] === '{'
    i++;
    const out: string[] = [];
    if (text[i] === '}') {
      i++;
      return '[]';
    }
    for (;;) {
      if (text[i] === '{') out.push(parse());
      else if (text[i] === '"') {
        let s = '';
        i++;
        while (text[i] !== '"') {
          if (text[i] === '\\') i++;
          s += text[i++];
        }
        i++;
        out.push(jsonValue(s, elem));
      } else {
        let j = i;
        while (text[j] !== ',' && text[j] !== '}') j++;
        const raw = text.slice(i, j);
        i = j;
        out.push(raw === 'NULL' ? 'null' : jsonValue(raw, elem));
      }
      if (text[i] === ',') {
        i++;
        continue;
      }
      i++; // '}'
      return '[' + out.join(',') + ']';
    }
  };
  return parse();
}

/** The JSON of a result would be longer than allowed. */
export class ResultTooLarge extends Error {
  constructor(readonly limit: number) {
    super(`the result as JSON is longer than ${limit} characters`);
  }
}

/**
 * Rows in array mode (values as text) → the step result's JSON text. Column
 * names repeat in every row and escapes lengthen values, so the JSON can be
 * many times the rows' size: past `maxLength` characters it stops with
 * ResultTooLarge, before the text outgrows what a string (or jsonb) can hold.
 */
export function resultJson(fields: FieldDef[], rows: (string | null)[][], maxLength = Infinity): string {
  const keys = fields.map((f) => JSON.stringify(f.name));
  const parts: string[] = [];
  let length = 0;
  for (const row of rows) {
    // Duplicate column names collapse to one key (the last value), as a JSON object would.
    const seen = new Map<string, string>();
    for (let c = 0; c < fields.length; c++) seen.set(keys[c]!, jsonValue(row[c] ?? null, fields[c]!.dataTypeID));
    const part = '{' + [...seen].map(([k, v]) => k + ':' + v).join(',') + '}';
    length += part.length + 1;
    if (length > maxLength) throw new ResultTooLarge(maxLength);
    parts.push(part);
  }
  return `{"rows":[${parts.join(',')}],"row_count":${rows.length}}`;
}
