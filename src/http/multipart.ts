// multipart/form-data bodies for df.http_multipart (RFC 7578), from the
// JSON `parts` argument: [{ name, data_b64, filename?, content_type? }, ...].
import { randomBytes } from 'node:crypto';
import { z } from 'zod';

const PREFIX = 'df.http_multipart:';

/** Required string fields say which one is missing or mistyped. */
const field = (name: string) =>
  z.string({ error: (issue) => (issue.input === undefined ? `has no "${name}"` : `: "${name}" must be a string`) });

// Header values must not break out of their line; a media type is a token/token with optional parameters.
const MEDIA_TYPE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+\/[!#$%&'*+.^_`|~0-9A-Za-z-]+(\s*;[\x20-\x7e\t]*)?$/;

const partSchema = z.strictObject(
  {
    name: field('name').refine((v) => v !== '', { error: ': "name" is empty' }),
    data_b64: field('data_b64'),
    filename: field('filename').optional(),
    content_type: field('content_type')
      .refine((v) => MEDIA_TYPE.test(v), { error: ': "content_type" is not a media type such as image/png' })
      .optional(),
  },
  { error: (issue) => (issue.code === 'unrecognized_keys' ? `has unknown fields ${issue.keys.map((k) => `"${k}"`).join(', ')}` : 'is not an object') },
);

export type MultipartPart = z.infer<typeof partSchema>;

/**
 * Decodes base64 that may contain ASCII whitespace (PostgreSQL's encode()
 * wraps lines at 76 columns); padding is optional. Buffer.from alone would
 * silently skip invalid characters, so the alphabet is checked first.
 */
export function decodeBase64(text: string): Buffer | undefined {
  const compact = text.replace(/[ \t\r\n\f\v]/g, '');
  const m = /^[A-Za-z0-9+/]*(={0,2})$/.exec(compact);
  if (!m) return undefined;
  if (m[1] !== '' ? compact.length % 4 !== 0 : compact.length % 4 === 1) return undefined;
  return Buffer.from(compact, 'base64');
}

/** Content-Disposition quoting as browsers do it (WHATWG HTML): LF, CR and '"' percent-encoded. */
function quote(value: string): string {
  return `"${value.replace(/\n/g, '%0A').replace(/\r/g, '%0D').replace(/"/g, '%22')}"`;
}

function partError(index: number, message: string): Error {
  // Messages start with "has ..." or ": ..." so both read after "part N".
  return new Error(`${PREFIX} part ${index + 1}${message.startsWith(':') ? '' : ' '}${message}`);
}

/** Parts numbered from 1 in messages. Throws Error with a message naming the part and field. */
export function buildMultipart(parts: unknown): { body: Buffer; contentType: string } {
  if (!Array.isArray(parts)) throw new Error(`${PREFIX} parts must be a JSON array of objects`);
  if (parts.length === 0) throw new Error(`${PREFIX} parts must not be empty`);
  const decoded = parts.map((raw, i) => {
    const result = partSchema.safeParse(raw);
    if (!result.success) throw partError(i, result.error.issues[0]?.message ?? 'is invalid');
    const data = decodeBase64(result.data.data_b64);
    if (data === undefined) throw partError(i, ': "data_b64" is not valid base64');
    return { ...result.data, data };
  });

  const heads = decoded.map((p) => {
    const disposition = `form-data; name=${quote(p.name)}${p.filename === undefined ? '' : `; filename=${quote(p.filename)}`}`;
    const type = p.content_type ?? (p.filename === undefined ? undefined : 'application/octet-stream');
    return `Content-Disposition: ${disposition}\r\n${type === undefined ? '' : `Content-Type: ${type}\r\n`}\r\n`;
  });
  const boundary = pickBoundary(decoded.map((p) => p.data), heads);

  const chunks: Buffer[] = [];
  decoded.forEach((p, i) => {
    chunks.push(Buffer.from(`--${boundary}\r\n${heads[i]!}`, 'utf8'), p.data, Buffer.from('\r\n'));
  });
  chunks.push(Buffer.from(`--${boundary}--\r\n`));
  return { body: Buffer.concat(chunks), contentType: `multipart/form-data; boundary=${boundary}` };
}

/** A random boundary that occurs in no part (data or headers), so no part can end early. */
function pickBoundary(datas: readonly Buffer[], heads: readonly string[]): string {
  for (;;) {
    const boundary = `----pgdurable${randomBytes(18).toString('hex')}`;
    if (!datas.some((d) => d.includes(boundary)) && !heads.some((h) => h.includes(boundary))) return boundary;
  }
}

/** The headers without Content-Type (any case): a multipart body's boundary is ours. */
export function withoutContentType(headers: Readonly<Record<string, string>>): Record<string, string> {
  return Object.fromEntries(Object.entries(headers).filter(([name]) => name.toLowerCase() !== 'content-type'));
}
