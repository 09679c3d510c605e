// Wire-protocol constants and the few backend messages the proxy writes itself.
// Everything else is forwarded as the peer wrote it.

export const PROTOCOL_3_0 = 196608; // 3 << 16
export const SSL_REQUEST = 80877103;
export const GSSENC_REQUEST = 80877104;
export const CANCEL_REQUEST = 80877102;

/** PostgreSQL's own cap on a startup packet (MAX_STARTUP_PACKET_LENGTH). */
export const MAX_STARTUP_PACKET = 10000;

/** Frontend message type bytes accepted after startup (and 'p' for auth). */
const FRONTEND_TYPES = 'BCdcfDEHFPpQSX';
export const isFrontendType = (() => {
  const table = new Uint8Array(256);
  for (const c of FRONTEND_TYPES) table[c.charCodeAt(0)] = 1;
  return (b: number): boolean => table[b] === 1;
})();

export const MSG = {
  // frontend
  query: 0x51, // Q
  parse: 0x50, // P
  execute: 0x45, // E
  terminate: 0x58, // X
  // backend
  authentication: 0x52, // R
  backendKeyData: 0x4b, // K
  readyForQuery: 0x5a, // Z
  errorResponse: 0x45, // E
  parameterStatus: 0x53, // S
} as const;

export const AUTH_SASL = 10;

/** Fields of an ErrorResponse the proxy raises itself. */
export interface PgError {
  severity: 'ERROR' | 'FATAL';
  code: string;
  message: string;
  detail?: string;
  hint?: string;
  position?: number;
}

export function errorResponse(err: PgError): Buffer {
  const fields: [string, string][] = [
    ['S', err.severity],
    ['V', err.severity],
    ['C', err.code],
    ['M', err.message],
  ];
  if (err.detail) fields.push(['D', err.detail]);
  if (err.hint) fields.push(['H', err.hint]);
  if (err.position !== undefined) fields.push(['P', String(err.position)]);
  let len = 4 + 1;
  const encoded = fields.map(([k, v]) => {
    const b = Buffer.from(v, 'utf8');
    len += 1 + b.length + 1;
    return [k, b] as const;
  });
  const out = Buffer.alloc(1 + len);
  out[0] = MSG.errorResponse;
  out.writeInt32BE(len, 1);
  let o = 5;
  for (const [k, b] of encoded) {
    out[o++] = k.charCodeAt(0);
    b.copy(out, o);
    o += b.length;
    out[o++] = 0;
  }
  out[o] = 0;
  return out;
}

/** NegotiateProtocolVersion: the newest minor version we speak and the options we ignored. */
export function negotiateProtocolVersion(minor: number, unrecognised: string[]): Buffer {
  const names = unrecognised.map((n) => Buffer.from(n + '\0', 'utf8'));
  const len = 4 + 4 + 4 + names.reduce((s, b) => s + b.length, 0);
  const out = Buffer.alloc(1 + len);
  out[0] = 0x76; // v
  out.writeInt32BE(len, 1);
  out.writeInt32BE(minor, 5);
  out.writeInt32BE(names.length, 9);
  let o = 13;
  for (const b of names) {
    b.copy(out, o);
    o += b.length;
  }
  return out;
}

export function startupMessage(params: ReadonlyMap<string, string>): Buffer {
  const parts: Buffer[] = [];
  for (const [k, v] of params) parts.push(Buffer.from(`${k}\0${v}\0`, 'utf8'));
  parts.push(Buffer.from([0]));
  const body = Buffer.concat(parts);
  const out = Buffer.alloc(8 + body.length);
  out.writeInt32BE(8 + body.length, 0);
  out.writeInt32BE(PROTOCOL_3_0, 4);
  body.copy(out, 8);
  return out;
}

export function cancelRequest(pid: number, secret: number): Buffer {
  const out = Buffer.alloc(16);
  out.writeInt32BE(16, 0);
  out.writeInt32BE(CANCEL_REQUEST, 4);
  out.writeInt32BE(pid, 8);
  out.writeInt32BE(secret, 12);
  return out;
}

export function sslRequest(): Buffer {
  const out = Buffer.alloc(8);
  out.writeInt32BE(8, 0);
  out.writeInt32BE(SSL_REQUEST, 4);
  return out;
}

export const TERMINATE = Buffer.from([MSG.terminate, 0, 0, 0, 4]);

/** Parses the key/value pairs of a StartupMessage body (after length and version). */
export function parseStartupParams(body: Buffer): Map<string, string> | undefined {
  const params = new Map<string, string>();
  let pos = 0;
  while (pos < body.length) {
    if (body[pos] === 0) return pos === body.length - 1 ? params : undefined;
    const kEnd = body.indexOf(0, pos);
    if (kEnd < 0) return undefined;
    const vEnd = body.indexOf(0, kEnd + 1);
    if (vEnd < 0) return undefined;
    params.set(body.toString('utf8', pos, kEnd), body.toString('utf8', kEnd + 1, vEnd));
    pos = vEnd + 1;
  }
  return undefined; // missing the terminating zero byte
}

/** Reads the severity field of an ErrorResponse body (after the 5-byte header). */
export function errorSeverity(msg: Buffer): string | undefined {
  return errorField(msg, 0x56 /* V */);
}

/** One field of an ErrorResponse or NoticeResponse, by its code byte. */
export function errorField(msg: Buffer, field: number): string | undefined {
  let pos = 5;
  while (pos < msg.length && msg[pos] !== 0) {
    const code = msg[pos];
    const end = msg.indexOf(0, pos + 1);
    if (end < 0) return undefined;
    if (code === field) return msg.toString('utf8', pos + 1, end);
    pos = end + 1;
  }
  return undefined;
}

/**
 * AuthenticationSASL with SCRAM-SHA-256-PLUS removed: channel binding ties the
 * exchange to one TLS connection, and the proxy ends the client's TLS and opens
 * its own to the server, so a -PLUS exchange could never succeed through it.
 */
export function withoutChannelBinding(msg: Buffer): Buffer {
  const mechs: string[] = [];
  let pos = 9;
  while (pos < msg.length && msg[pos] !== 0) {
    const end = msg.indexOf(0, pos);
    if (end < 0) break;
    mechs.push(msg.toString('utf8', pos, end));
    pos = end + 1;
  }
  const kept = mechs.filter((m) => !m.endsWith('-PLUS'));
  if (kept.length === mechs.length) return msg;
  const body = Buffer.from(kept.map((m) => m + '\0').join('') + '\0', 'utf8');
  const out = Buffer.alloc(9 + body.length);
  out[0] = MSG.authentication;
  out.writeInt32BE(8 + body.length, 1);
  out.writeInt32BE(AUTH_SASL, 5);
  body.copy(out, 9);
  return out;
}

/**
 * True for a SASLInitialResponse whose GS2 header is "y": the client (libpq
 * over TLS) supports channel binding but believes the server does not. A
 * server reached over TLS rejects that as a downgrade attack, and the client's
 * proof covers the header, so the proxy cannot rewrite it.
 */
export function saslClaimsNoServerBinding(msg: Buffer): boolean {
  const nameEnd = msg.indexOf(0, 5);
  if (nameEnd < 0 || nameEnd + 5 >= msg.length) return false;
  return msg[nameEnd + 5] === 0x79 /* y */;
}

/**
 * Cheap pre-filter: does this Query/Parse message mention the `df` schema
 * (`df.` or `"df".`, any case)? Finds each '.' with the native indexOf and
 * looks back; false positives are fine, misses are not.
 */
export function mentionsDf(msg: Buffer, from = 5): boolean {
  let dot = msg.indexOf(0x2e, from);
  while (dot >= 0) {
    let p = dot - 1;
    if (p >= from && msg[p] === 0x22 /* " */) p--;
    const f = msg[p];
    const d = msg[p - 1];
    if (p - 1 >= from && (f === 0x66 || f === 0x46) && (d === 0x64 || d === 0x44)) {
      const q = p - 2;
      const before = q >= from ? msg[q]! : 0x20;
      // the name must start here: not the tail of a longer identifier like "pdf."
      if (!isIdentChar(before)) return true;
    }
    dot = msg.indexOf(0x2e, dot + 1);
  }
  return false;
}

/**
 * Cheap pre-filter: does this Query/Parse message mention DATABASE (as DROP,
 * ALTER ... RENAME and CREATE ... TEMPLATE do)? Two native searches; a
 * spelling in mixed case past its first letter is missed, which only costs
 * the proxy's letting go of that database first.
 */
export function mentionsDatabase(msg: Buffer, from = 5): boolean {
  return msg.indexOf('ATABASE', from, 'latin1') > from || msg.indexOf('atabase', from, 'latin1') > from;
}

function isIdentChar(b: number): boolean {
  return (
    (b >= 0x61 && b <= 0x7a) || (b >= 0x41 && b <= 0x5a) || (b >= 0x30 && b <= 0x39) || b === 0x5f || b === 0x24 || b >= 0x80
  );
}
