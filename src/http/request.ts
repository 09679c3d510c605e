// One outgoing HTTP request for an HTTP step: checked against the egress
// policy, connected to the one address the check resolved (no second DNS
// answer can redirect it), bounded in time and size, never following
// redirects. Yields the response envelope; 4xx and 5xx are results, not errors.
import http from 'node:http';
import https from 'node:https';
import { isIP, type LookupFunction } from 'node:net';
import { performance } from 'node:perf_hooks';
import { VERSION } from '../version.js';
import { encodeBody, type HttpEnvelope } from './envelope.js';
import { defaultLookup, displayUrl, HttpRefused, resolveTarget, type AllowList, type LookupFn, type Target } from './policy.js';

export interface HttpRequest {
  url: string;
  method: string;
  headers: Record<string, string>;
  body: Buffer | string | null;
}

export interface HttpPolicy {
  allow: AllowList;
  maxRequestBytes: number;
  maxResponseBytes: number;
  maxTimeoutMs: number;
  userAgent: string;
}

export interface HttpRequestOptions {
  timeoutMs: number;
  signal?: AbortSignal;
  lookup?: LookupFn;
}

/** Suggested settings: --http-max-request-bytes, --http-max-response-bytes, --http-max-timeout-seconds. */
export const HTTP_DEFAULTS = {
  maxRequestBytes: 1024 * 1024,
  maxResponseBytes: 10 * 1024 * 1024,
  maxTimeoutMs: 300_000,
} as const;

/** Response headers larger than this fail the request (Node's own default is 16 KiB). */
export const MAX_RESPONSE_HEADER_BYTES = 64 * 1024;

export const DEFAULT_USER_AGENT = `pg-durable-proxy/${VERSION}`;

/**
 * Why a permitted request did not produce a response: the request itself is
 * invalid or too large, it timed out, the connection or TLS failed, or the
 * response was too large. Policy refusals are HttpRefused instead.
 */
export type HttpFailureCode = 'invalid-request' | 'request-too-large' | 'timeout' | 'connect' | 'response-too-large';

export class HttpFailed extends Error {
  readonly kind = 'failed' as const;
  constructor(
    readonly code: HttpFailureCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'HttpFailed';
  }
}

/** Set by the proxy from the URL and body; a caller's value could contradict them (request smuggling, Host confusion). */
const MANAGED_HEADERS = new Set(['host', 'content-length', 'transfer-encoding', 'connection', 'keep-alive', 'upgrade', 'te', 'trailer', 'proxy-connection']);
/** CONNECT turns the connection into a tunnel; TRACE/TRACK echo requests back (fetch forbids all three). */
const FORBIDDEN_METHODS = new Set(['CONNECT', 'TRACE', 'TRACK']);
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const BODYLESS_METHODS = new Set(['GET', 'HEAD', 'DELETE', 'OPTIONS']);

function abortError(): Error {
  return new DOMException('This operation was aborted', 'AbortError');
}

const seconds = (ms: number): string => `${ms / 1000}s`;

/** Performs the request; rejects with HttpRefused, HttpFailed, or the abort signal's reason. */
export async function httpRequest(req: HttpRequest, policy: HttpPolicy, opts: HttpRequestOptions): Promise<HttpEnvelope> {
  const started = performance.now();
  const method = req.method.toUpperCase();
  let url: URL;
  try {
    url = new URL(req.url);
  } catch {
    throw new HttpFailed('invalid-request', `HTTP ${method}: invalid URL '${req.url.replace(/^([a-z][a-z0-9+.-]*:\/\/)[^/@]*@/i, '$1')}'`);
  }
  const shown = displayUrl(url);
  const label = `HTTP ${method} ${shown}`;
  if (!TOKEN.test(method)) throw new HttpFailed('invalid-request', `HTTP ${JSON.stringify(req.method)} ${shown}: invalid method`);
  if (FORBIDDEN_METHODS.has(method)) throw new HttpFailed('invalid-request', `${label}: the method ${method} is not allowed`);

  const body = req.body === null ? null : typeof req.body === 'string' ? Buffer.from(req.body, 'utf8') : req.body;
  if (body !== null && body.length > policy.maxRequestBytes) {
    throw new HttpFailed(
      'request-too-large',
      `${label}: the request body is larger than the limit of ${policy.maxRequestBytes} bytes (--http-max-request-bytes)`,
    );
  }
  const headers = outgoingHeaders(req.headers, label, policy.userAgent);
  headers['host'] = url.host; // from the URL, not from the address connected to
  if (body !== null) headers['content-length'] = String(body.length);
  else if (!BODYLESS_METHODS.has(method)) headers['content-length'] = '0';

  // setTimeout fires at once for delays past 2^31-1 ms: clamp.
  const wanted = opts.timeoutMs > 0 && Number.isFinite(opts.timeoutMs) ? Math.min(opts.timeoutMs, policy.maxTimeoutMs) : policy.maxTimeoutMs;
  const timeoutMs = Math.min(wanted, 2_147_483_647);
  if (opts.signal?.aborted) throw opts.signal.reason ?? abortError();

  // One controller ends every stage, DNS included: the timeout and the caller's signal both abort it.
  const stop = new AbortController();
  const timer = setTimeout(() => stop.abort(new HttpFailed('timeout', `${label} timed out after ${seconds(timeoutMs)}`)), timeoutMs);
  const onAbort = (): void => stop.abort(opts.signal?.reason ?? abortError());
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    const target = await untilAborted(resolve(url, policy.allow, opts.lookup ?? defaultLookup, label), stop.signal);
    return await send({ url, method, headers, body, target, policy, label, started, signal: stop.signal });
  } finally {
    clearTimeout(timer);
    opts.signal?.removeEventListener('abort', onAbort);
  }
}

/** The policy check, with DNS failures worded as connection failures. */
async function resolve(url: URL, allow: AllowList, lookup: LookupFn, label: string): Promise<Target> {
  try {
    return await resolveTarget(url, allow, lookup);
  } catch (err) {
    if (err instanceof HttpRefused) throw err;
    throw new HttpFailed('connect', `${label} failed: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
}

/** Rejects with the signal's reason as soon as it aborts (a DNS lookup cannot be cancelled, only abandoned). */
function untilAborted<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    work.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}

/** Lower-cased, validated caller headers plus the User-Agent default. */
function outgoingHeaders(given: Readonly<Record<string, string>>, label: string, userAgent: string): Record<string, string> {
  const out: Record<string, string> = Object.create(null) as Record<string, string>;
  for (const [name, value] of Object.entries(given)) {
    const lower = name.toLowerCase();
    if (!TOKEN.test(name)) throw new HttpFailed('invalid-request', `${label}: invalid header name ${JSON.stringify(name)}`);
    if (typeof value !== 'string') throw new HttpFailed('invalid-request', `${label}: the value of header '${name}' is not a string`);
    try {
      http.validateHeaderValue(name, value);
    } catch (err) {
      throw new HttpFailed('invalid-request', `${label}: the value of header '${name}' contains invalid characters (CR, LF or other control characters)`, {
        cause: err,
      });
    }
    if (MANAGED_HEADERS.has(lower)) throw new HttpFailed('invalid-request', `${label}: the header '${name}' is set by the proxy and cannot be given`);
    if (lower in out) throw new HttpFailed('invalid-request', `${label}: the header '${lower}' is given more than once`);
    out[lower] = value;
  }
  if (!('user-agent' in out)) out['user-agent'] = userAgent;
  return out;
}

interface Send {
  url: URL;
  method: string;
  headers: Record<string, string>;
  body: Buffer | null;
  target: Target;
  policy: HttpPolicy;
  label: string;
  started: number;
  signal: AbortSignal;
}

function send(s: Send): Promise<HttpEnvelope> {
  const { url, target, policy, label, signal } = s;
  const isIpHost = url.hostname.startsWith('[') || isIP(url.hostname) !== 0;
  const name = url.hostname.replace(/\.$/, '').toLowerCase();
  // Defence in depth: `host` is already the checked address, so net never resolves; if it ever did, only that address comes back.
  const pinned: LookupFunction = (_host, options, callback) => {
    if (options.all) callback(null, [{ address: target.address, family: target.family }]);
    else callback(null, target.address, target.family);
  };
  const options: https.RequestOptions = {
    protocol: url.protocol,
    host: target.address,
    family: target.family,
    port: url.port === '' ? undefined : Number(url.port),
    path: `${url.pathname}${url.search}`,
    method: s.method,
    headers: s.headers,
    lookup: pinned,
    agent: false, // a fresh agent per request: no pooled socket outlives its check
    maxHeaderSize: MAX_RESPONSE_HEADER_BYTES,
    // TLS: SNI and the certificate check use the URL's host name (not the address); none for IP-literal hosts.
    servername: isIpHost ? '' : name,
  };
  if (url.username !== '' || url.password !== '') {
    try {
      options.auth = `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`;
    } catch {
      throw new HttpFailed('invalid-request', `HTTP ${s.method} ${displayUrl(url)}: the user name or password in the URL is not valid percent-encoding`);
    }
  }

  return new Promise<HttpEnvelope>((resolve, reject) => {
    let settled = false;
    let request: http.ClientRequest | undefined;
    const finish = (err: unknown, envelope?: HttpEnvelope): void => {
      if (settled) return;
      settled = true;
      signal.removeEventListener('abort', onAbort);
      if (err !== undefined) {
        request?.destroy(); // also destroys the socket: nothing more is read or sent
        reject(err);
      } else {
        resolve(envelope!);
      }
    };
    const onAbort = (): void => finish(signal.reason);
    const failed = (err: unknown): void => finish(connectionError(err, label));
    if (signal.aborted) return finish(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });

    try {
      request = (url.protocol === 'https:' ? https : http).request(options);
    } catch (err) {
      return finish(new HttpFailed('invalid-request', `${label}: ${err instanceof Error ? err.message : String(err)}`, { cause: err }));
    }
    request.on('error', failed);
    request.on('response', (res) => {
      const tooLarge = (): void =>
        finish(
          new HttpFailed(
            'response-too-large',
            `${label}: the response body is larger than the limit of ${policy.maxResponseBytes} bytes (--http-max-response-bytes)`,
          ),
        );
      const declared = Number(res.headers['content-length']);
      if (Number.isFinite(declared) && declared > policy.maxResponseBytes) return tooLarge();
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > policy.maxResponseBytes) return tooLarge();
        chunks.push(chunk);
      });
      res.on('error', failed);
      res.on('end', () => {
        if (settled) return;
        const bytes = Buffer.concat(chunks, size);
        const status = res.statusCode ?? 0;
        finish(undefined, {
          status,
          ...encodeBody(bytes, res.headers['content-type'], res.headers['content-encoding']),
          headers: responseHeaders(res.rawHeaders),
          ok: status >= 200 && status < 300,
          duration_ms: Math.round(performance.now() - s.started),
        });
      });
    });
    request.end(s.body ?? undefined);
  });
}

/** Lower-case names, repeated headers (set-cookie included) joined with ", " in arrival order. */
function responseHeaders(raw: readonly string[]): Record<string, string> {
  const joined = new Map<string, string>();
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase();
    const prior = joined.get(name);
    joined.set(name, prior === undefined ? raw[i + 1]! : `${prior}, ${raw[i + 1]!}`);
  }
  return Object.fromEntries(joined); // own data properties, so even a "__proto__" header is just a key
}

function connectionError(err: unknown, label: string): HttpFailed {
  if (err instanceof HttpFailed) return err;
  const code = (err as { code?: unknown } | null)?.code;
  const reason =
    code === 'HPE_HEADER_OVERFLOW'
      ? `the response headers are larger than ${MAX_RESPONSE_HEADER_BYTES / 1024} KiB`
      : code === 'ECONNRESET' && err instanceof Error && err.message === 'aborted'
        ? 'the connection closed before the response was complete'
        : err instanceof Error
          ? err.message
          : String(err);
  return new HttpFailed('connect', `${label} failed: ${reason}`, { cause: err });
}
