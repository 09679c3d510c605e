// The response envelope an HTTP step yields, and how its body is encoded:
// text when the Content-Type declares text (or, undeclared, when the bytes are
// clean UTF-8), base64 otherwise, so binary bodies survive JSON.
import { isUtf8 } from 'node:buffer';
import { TextDecoder } from 'node:util';

export type BodyEncoding = 'text' | 'base64';

/** The JSON a df.http step results in (pg_durable's shape). */
export interface HttpEnvelope {
  status: number;
  body: string;
  encoding: BodyEncoding;
  /** Lower-case names; a repeated header's values joined with ", " (set-cookie too). */
  headers: Record<string, string>;
  /** 2xx */
  ok: boolean;
  duration_ms: number;
}

const TEXT_TYPES = new Set([
  'application/json',
  'application/xml',
  'application/javascript',
  'application/ecmascript',
  'application/x-www-form-urlencoded',
  'application/graphql',
  'application/yaml',
  'application/x-yaml',
]);

interface MediaType {
  essence: string;
  charset: string | undefined;
}

/** `type/subtype; charset=...` -> lower-case essence and the charset parameter, or undefined when not a media type. */
function parseMediaType(contentType: string): MediaType | undefined {
  const [head, ...params] = contentType.split(';');
  const essence = (head ?? '').trim().toLowerCase();
  if (!/^[!#$%&'*+.^_`|~0-9a-z-]+\/[!#$%&'*+.^_`|~0-9a-z-]+$/.test(essence)) return undefined;
  let charset: string | undefined;
  for (const param of params) {
    const eq = param.indexOf('=');
    if (eq < 0 || param.slice(0, eq).trim().toLowerCase() !== 'charset') continue;
    charset = param.slice(eq + 1).trim().replace(/^"(.*)"$/, '$1');
    break;
  }
  return { essence, charset };
}

function declaresText(essence: string): boolean {
  return (
    essence.startsWith('text/') ||
    TEXT_TYPES.has(essence) ||
    essence.endsWith('+json') ||
    essence.endsWith('+xml') ||
    essence.endsWith('+yaml')
  );
}

/** A decoder for the declared charset; unknown or absent charsets read as UTF-8. Invalid bytes become U+FFFD. */
function decoderFor(charset: string | undefined): TextDecoder {
  if (charset !== undefined) {
    try {
      return new TextDecoder(charset);
    } catch {
      // unknown label: fall through to UTF-8
    }
  }
  return new TextDecoder('utf-8');
}

/**
 * `contentEncoding`: a compressed body (gzip, br, ...) is kept as its bytes,
 * base64: responses are never decompressed (no decompression bomb), and
 * compressed bytes are no text whatever the Content-Type says.
 */
export function encodeBody(bytes: Buffer, contentType: string | undefined, contentEncoding?: string): { body: string; encoding: BodyEncoding } {
  if (contentEncoding !== undefined && !/^\s*(identity)?\s*$/i.test(contentEncoding)) return { body: bytes.toString('base64'), encoding: 'base64' };
  const media = contentType === undefined ? undefined : parseMediaType(contentType);
  if (media !== undefined && declaresText(media.essence)) {
    // Declared text is text even when it is not valid in its charset (replacement characters, never an error).
    return { body: decoderFor(media.charset).decode(bytes), encoding: 'text' };
  }
  if (isUtf8(bytes) && !bytes.includes(0)) return { body: bytes.toString('utf8'), encoding: 'text' };
  return { body: bytes.toString('base64'), encoding: 'base64' };
}

export const PREVIEW_BYTES = 512;

/**
 * The start of a body for an error message: at most 512 bytes of UTF-8, cut at
 * a character boundary, with "…" when cut. Base64 bodies are binary: only
 * their size is shown.
 */
export function errorPreview(body: string, encoding: BodyEncoding): string {
  if (encoding === 'base64') return `<${Buffer.byteLength(body, 'base64')} bytes of binary data>`;
  const bytes = Buffer.from(body, 'utf8');
  if (bytes.length <= PREVIEW_BYTES) return body;
  let end = PREVIEW_BYTES;
  while (end > 0 && (bytes[end]! & 0xc0) === 0x80) end--; // back off continuation bytes to a character start
  return `${bytes.subarray(0, end).toString('utf8')}…`;
}

/** `HTTP <M> <url> returned <code>: <preview>`, for a status the engine fails the node on (`url` as displayUrl gives it). */
export function statusMessage(method: string, url: string, envelope: Pick<HttpEnvelope, 'status' | 'body' | 'encoding'>): string {
  const preview = errorPreview(envelope.body, envelope.encoding);
  return `HTTP ${method.toUpperCase()} ${url} returned ${envelope.status}${preview === '' ? '' : `: ${preview}`}`;
}
