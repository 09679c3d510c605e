// HTTP step requests against a real node:http server on 127.0.0.1 (listed
// explicitly: loopback is otherwise refused): envelopes, limits, timeouts,
// aborts, DNS pinning, TLS SNI and multipart bodies.
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import {
  buildMultipart,
  DEFAULT_USER_AGENT,
  HttpFailed,
  HttpRefused,
  httpRequest,
  parseAllowList,
  withoutContentType,
  type HttpEnvelope,
  type HttpPolicy,
  type HttpRequest,
  type LookupFn,
} from '../../src/http/index.js';

const PNG = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0xff, 0xfe]);

interface Arrival {
  req: http.IncomingMessage;
  res: http.ServerResponse;
  body: Buffer;
}

/** Handlers that only record the request (slow, hold) hand it to whoever waits for that path. */
const waiters = new Map<string, (a: Arrival) => void>();
const arrival = (p: string): Promise<Arrival> => new Promise((resolve) => waiters.set(p, resolve));
/** Resolves when the server's end of a connection is gone (events.once would reject on the reset's 'error'). */
const socketClosed = (s: Socket): Promise<void> => new Promise((resolve) => (s.destroyed ? resolve() : s.once('close', () => resolve())));

let connections = 0;
const server = http.createServer((req, res) => {
  req.socket.on('error', () => {}); // clients the tests cut off reset the connection
  const chunks: Buffer[] = [];
  req.on('data', (c: Buffer) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks);
    const p = new URL(req.url!, 'http://x').pathname;
    waiters.get(p)?.({ req, res, body });
    waiters.delete(p);
    route(p, req, res, body);
  });
});
server.on('connection', () => connections++);

function route(p: string, req: http.IncomingMessage, res: http.ServerResponse, body: Buffer): void {
  switch (p) {
    case '/echo':
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ method: req.method, url: req.url, headers: req.headers, body: body.toString('utf8') }));
      return;
    case '/binary':
      res.writeHead(200, { 'content-type': 'image/png' });
      res.end(PNG);
      return;
    case '/redirect':
      res.writeHead(301, { location: '/echo' });
      res.end('moved');
      return;
    case '/missing':
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('no such thing');
      return;
    case '/broken':
      res.writeHead(500, { 'content-type': 'text/plain' });
      res.end('it broke');
      return;
    case '/repeated':
      res.writeHead(200, [
        ['Set-Cookie', 'a=1'],
        ['Set-Cookie', 'b=2'],
        ['X-Multi', 'one'],
        ['x-multi', 'two'],
        ['X-Single', 'only'],
        ['Content-Type', 'text/plain'],
      ]);
      res.end('ok');
      return;
    case '/big': {
      // Streams until the client goes away.
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      const chunk = Buffer.alloc(64 * 1024, 1);
      const pump = (): void => {
        while (!res.destroyed && res.write(chunk));
        if (!res.destroyed) res.once('drain', pump);
      };
      pump();
      return;
    }
    case '/declared-big':
      res.writeHead(200, { 'content-length': String(1024 * 1024 * 1024) });
      res.write('x'); // and never the rest
      return;
    case '/trickle':
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('first part, then nothing');
      return;
    case '/huge-headers':
      res.writeHead(200, { 'x-huge': 'h'.repeat(70 * 1024) });
      res.end('ok');
      return;
    case '/multipart':
      void new Request('http://x/', { method: 'POST', body, headers: { 'content-type': req.headers['content-type'] ?? '' } })
        .formData()
        .then(async (form) => {
          const out: Record<string, unknown> = {};
          for (const [name, value] of form) {
            out[name] =
              typeof value === 'string' ? value : { filename: value.name, type: value.type, b64: Buffer.from(await value.arrayBuffer()).toString('base64') };
          }
          res.setHeader('content-type', 'application/json');
          res.end(JSON.stringify({ contentType: req.headers['content-type'], parts: out }));
        })
        .catch((err: unknown) => {
          res.writeHead(400);
          res.end(String(err));
        });
      return;
    case '/slow':
    case '/hold':
      return; // never answered
    default:
      res.writeHead(418);
      res.end();
  }
}

let port = 0;
let base = '';
beforeAll(async () => {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  port = (server.address() as AddressInfo).port;
  base = `http://127.0.0.1:${port}`;
});
afterAll(async () => {
  server.closeAllConnections();
  server.close();
});

const policy = (overrides: Partial<HttpPolicy> = {}): HttpPolicy => ({
  allow: parseAllowList(['127.0.0.1']),
  maxRequestBytes: 1024 * 1024,
  maxResponseBytes: 10 * 1024 * 1024,
  maxTimeoutMs: 30_000,
  userAgent: DEFAULT_USER_AGENT,
  ...overrides,
});

const request = (r: Partial<HttpRequest> & { url: string }, p: HttpPolicy = policy(), timeoutMs = 10_000, signal?: AbortSignal) =>
  httpRequest({ method: 'GET', headers: {}, body: null, ...r }, p, { timeoutMs, ...(signal ? { signal } : {}) });

async function failure(promise: Promise<HttpEnvelope>): Promise<HttpFailed> {
  const err: unknown = await promise.then(
    (env) => new Error(`expected a failure, got ${JSON.stringify(env).slice(0, 200)}`),
    (e: unknown) => e,
  );
  if (!(err instanceof HttpFailed)) throw err;
  return err;
}

const echoed = (env: HttpEnvelope): { method: string; url: string; headers: Record<string, string>; body: string } => JSON.parse(env.body);

describe('httpRequest', () => {
  it('GETs and returns every envelope field', async () => {
    const env = await request({ url: `${base}/echo?q=1` });
    expect(env).toMatchObject({ status: 200, encoding: 'text', ok: true });
    expect(Object.keys(env).sort()).toEqual(['body', 'duration_ms', 'encoding', 'headers', 'ok', 'status']);
    expect(env.headers['content-type']).toBe('application/json');
    expect(env.headers['content-length']).toBe(String(Buffer.byteLength(env.body)));
    expect(Number.isInteger(env.duration_ms) && env.duration_ms >= 0).toBe(true);
    const e = echoed(env);
    expect(e).toMatchObject({ method: 'GET', url: '/echo?q=1', body: '' });
    expect(e.headers['host']).toBe(`127.0.0.1:${port}`);
    expect(e.headers['connection']).toBe('close'); // no pooled socket
    expect(e.headers['content-length']).toBeUndefined();
  });

  it('POSTs a body with its Content-Length and the caller headers', async () => {
    const env = await request({
      url: `${base}/echo`,
      method: 'post',
      headers: { 'Content-Type': 'application/json', 'Idempotency-Key': 'wf-1-node-2' },
      body: '{"hé":1}',
    });
    const e = echoed(env);
    expect(e.method).toBe('POST');
    expect(e.body).toBe('{"hé":1}');
    expect(e.headers).toMatchObject({ 'content-type': 'application/json', 'idempotency-key': 'wf-1-node-2', 'content-length': '9' });
    const bin = echoed(await request({ url: `${base}/echo`, method: 'PUT', body: Buffer.from('raw') }));
    expect(bin).toMatchObject({ method: 'PUT', body: 'raw' });
    expect(bin.headers['content-length']).toBe('3');
    const empty = echoed(await request({ url: `${base}/echo`, method: 'POST' }));
    expect(empty.headers['content-length']).toBe('0');
  });

  it('sets the User-Agent unless the caller gives one', async () => {
    expect(echoed(await request({ url: `${base}/echo` })).headers['user-agent']).toBe(DEFAULT_USER_AGENT);
    expect(DEFAULT_USER_AGENT).toMatch(/^pg-durable-proxy\/\d/);
    expect(echoed(await request({ url: `${base}/echo` }, policy({ userAgent: 'tenant-proxy/1' }))).headers['user-agent']).toBe('tenant-proxy/1');
    expect(echoed(await request({ url: `${base}/echo`, headers: { 'user-AGENT': 'mine/2' } })).headers['user-agent']).toBe('mine/2');
  });

  it('returns binary bodies as base64', async () => {
    const env = await request({ url: `${base}/binary` });
    expect(env).toMatchObject({ status: 200, encoding: 'base64', body: PNG.toString('base64') });
    expect(env.headers['content-type']).toBe('image/png');
  });

  it('does not follow redirects', async () => {
    const env = await request({ url: `${base}/redirect` });
    expect(env).toMatchObject({ status: 301, ok: false, body: 'moved' });
    expect(env.headers['location']).toBe('/echo');
  });

  it('returns 404 and 500 as envelopes', async () => {
    await expect(request({ url: `${base}/missing` })).resolves.toMatchObject({ status: 404, ok: false, body: 'no such thing', encoding: 'text' });
    await expect(request({ url: `${base}/broken` })).resolves.toMatchObject({ status: 500, ok: false, body: 'it broke' });
  });

  it('joins repeated headers, set-cookie included', async () => {
    const env = await request({ url: `${base}/repeated` });
    expect(env.headers).toMatchObject({ 'set-cookie': 'a=1, b=2', 'x-multi': 'one, two', 'x-single': 'only', 'content-type': 'text/plain' });
  });

  it('times out a response that does not come, and closes the connection', async () => {
    const arrived = arrival('/slow');
    const err = await failure(request({ url: `${base}/slow` }, policy(), 300));
    expect(err.code).toBe('timeout');
    expect(err.message).toBe(`HTTP GET ${base}/slow timed out after 0.3s`);
    await socketClosed((await arrived).req.socket);
  });

  it('caps the timeout at the policy maximum, and covers the whole body', async () => {
    const err = await failure(request({ url: `${base}/trickle` }, policy({ maxTimeoutMs: 250 }), 60_000));
    expect(err.message).toBe(`HTTP GET ${base}/trickle timed out after 0.25s`);
  });

  it('stops reading a response over the limit and destroys the socket', async () => {
    const arrived = arrival('/big');
    const err = await failure(request({ url: `${base}/big` }, policy({ maxResponseBytes: 200_000 })));
    expect(err.code).toBe('response-too-large');
    expect(err.message).toBe(`HTTP GET ${base}/big: the response body is larger than the limit of 200000 bytes (--http-max-response-bytes)`);
    await socketClosed((await arrived).req.socket);
  });

  it('refuses a response whose Content-Length is over the limit before reading it', async () => {
    const arrived = arrival('/declared-big');
    const err = await failure(request({ url: `${base}/declared-big` }, policy({ maxResponseBytes: 1000 })));
    expect(err.code).toBe('response-too-large');
    await socketClosed((await arrived).req.socket);
  });

  it('fails on response headers over 64 KiB', async () => {
    const err = await failure(request({ url: `${base}/huge-headers` }));
    expect(err.message).toBe(`HTTP GET ${base}/huge-headers failed: the response headers are larger than 64 KiB`);
  });

  it('refuses a request body over the limit without connecting', async () => {
    const before = connections;
    const err = await failure(request({ url: `${base}/echo`, method: 'POST', body: 'x'.repeat(11) }, policy({ maxRequestBytes: 10 })));
    expect(err.code).toBe('request-too-large');
    expect(err.message).toBe(`HTTP POST ${base}/echo: the request body is larger than the limit of 10 bytes (--http-max-request-bytes)`);
    expect(connections).toBe(before);
    // exactly the limit is fine
    await expect(request({ url: `${base}/echo`, method: 'POST', body: 'x'.repeat(10) }, policy({ maxRequestBytes: 10 }))).resolves.toMatchObject({ status: 200 });
  });

  it('aborts via the signal with its reason, and closes the connection', async () => {
    const arrived = arrival('/hold');
    const controller = new AbortController();
    const pending = request({ url: `${base}/hold` }, policy(), 30_000, controller.signal);
    const { req } = await arrived;
    const reason = new Error('cancelled by the test');
    controller.abort(reason);
    await expect(pending).rejects.toBe(reason);
    await socketClosed(req.socket);
    // an already aborted signal rejects before anything happens; without a reason it is an AbortError
    const before = connections;
    const pre = new AbortController();
    pre.abort();
    await expect(request({ url: `${base}/echo` }, policy(), 30_000, pre.signal)).rejects.toMatchObject({ name: 'AbortError' });
    expect(connections).toBe(before);
  });

  it('pins the connection to the address checked: one lookup, no second answer', async () => {
    let calls = 0;
    const lookup = vi.fn<LookupFn>(async () => (calls++ === 0 ? [{ address: '127.0.0.1', family: 4 }] : [{ address: '10.0.0.1', family: 4 }]));
    const p = policy({ allow: parseAllowList(['pinned.test', '127.0.0.1']) });
    const env = await httpRequest({ url: `http://pinned.test:${port}/echo`, method: 'GET', headers: {}, body: null }, p, { timeoutMs: 10_000, lookup });
    expect(env.status).toBe(200);
    expect(echoed(env).headers['host']).toBe(`pinned.test:${port}`);
    expect(lookup).toHaveBeenCalledTimes(1);
    // the next request sees the rebound answer and is refused
    await expect(httpRequest({ url: `http://pinned.test:${port}/echo`, method: 'GET', headers: {}, body: null }, p, { timeoutMs: 10_000, lookup })).rejects.toThrow(
      "host 'pinned.test' resolves to 10.0.0.1, a private address; list it in --http-allow to allow it",
    );
  });

  it('refuses by policy before connecting', async () => {
    const before = connections;
    await expect(request({ url: `http://localhost:${port}/echo` })).rejects.toBeInstanceOf(HttpRefused);
    await expect(request({ url: `http://[::ffff:127.0.0.1]:${port}/echo` }, policy({ allow: parseAllowList(['*']) }))).rejects.toThrow('a loopback address');
    await expect(request({ url: `ftp://127.0.0.1:${port}/` })).rejects.toThrow("unsupported URL scheme 'ftp:'");
    expect(connections).toBe(before);
  });

  it('words connection failures, without the userinfo', async () => {
    const closed = http.createServer();
    closed.listen(0, '127.0.0.1');
    await once(closed, 'listening');
    const deadPort = (closed.address() as AddressInfo).port;
    closed.close();
    await once(closed, 'close');
    const err = await failure(request({ url: `http://user:secret@127.0.0.1:${deadPort}/x` }));
    expect(err.code).toBe('connect');
    expect(err.message).toBe(`HTTP GET http://127.0.0.1:${deadPort}/x failed: connect ECONNREFUSED 127.0.0.1:${deadPort}`);
    const dns = await failure(
      httpRequest({ url: 'http://nowhere.test/', method: 'GET', headers: {}, body: null }, policy({ allow: parseAllowList(['nowhere.test']) }), {
        timeoutMs: 10_000,
        lookup: async () => {
          throw Object.assign(new Error('getaddrinfo ENOTFOUND nowhere.test'), { code: 'ENOTFOUND' });
        },
      }),
    );
    expect(dns.message).toBe('HTTP GET http://nowhere.test/ failed: getaddrinfo ENOTFOUND nowhere.test');
  });

  it('sends URL userinfo as Basic authentication', async () => {
    const e = echoed(await request({ url: `http://us%20er:p%40ss@127.0.0.1:${port}/echo` }));
    expect(e.headers['authorization']).toBe(`Basic ${Buffer.from('us er:p@ss').toString('base64')}`);
  });

  it.each([
    [{ 'X-Bad': 'a\r\nInjected: 1' }, "the value of header 'X-Bad' contains invalid characters"],
    [{ 'X-Bad': 'a\nb' }, "the value of header 'X-Bad' contains invalid characters"],
    [{ 'Bad Name': 'x' }, 'invalid header name "Bad Name"'],
    [{ 'X-A\r\n': 'x' }, 'invalid header name "X-A\\r\\n"'],
    [{ Host: 'evil.example' }, "the header 'Host' is set by the proxy"],
    [{ 'Transfer-Encoding': 'chunked' }, "the header 'Transfer-Encoding' is set by the proxy"],
    [{ 'x-a': '1', 'X-A': '2' }, "the header 'x-a' is given more than once"],
  ])('refuses invalid headers %j', async (headers, message) => {
    const before = connections;
    const err = await failure(request({ url: `${base}/echo`, headers }));
    expect(err.code).toBe('invalid-request');
    expect(err.message).toContain(`HTTP GET ${base}/echo: `);
    expect(err.message).toContain(message);
    expect(connections).toBe(before);
  });

  it('refuses invalid methods and URLs', async () => {
    expect((await failure(request({ url: `${base}/echo`, method: 'GE T' }))).message).toBe(`HTTP "GE T" ${base}/echo: invalid method`);
    expect((await failure(request({ url: `${base}/echo`, method: 'CONNECT' }))).message).toContain('the method CONNECT is not allowed');
    expect((await failure(request({ url: 'http://user:pw@' }))).message).toBe("HTTP GET: invalid URL 'http://'");
  });

  it('sends a multipart body the server parses', async () => {
    const { body, contentType } = buildMultipart([
      { name: 'title', data_b64: Buffer.from('report').toString('base64') },
      { name: 'file', data_b64: PNG.toString('base64').replace(/(.{8})/g, '$1\n'), filename: 'a.png', content_type: 'image/png' },
    ]);
    const headers = { ...withoutContentType({ 'content-type': 'text/plain', 'X-Tenant': 't1' }), 'Content-Type': contentType };
    const env = await request({ url: `${base}/multipart`, method: 'POST', headers, body });
    expect(env.status).toBe(200);
    const got = JSON.parse(env.body) as { contentType: string; parts: Record<string, unknown> };
    expect(got.contentType).toBe(contentType);
    expect(got.parts).toEqual({ title: 'report', file: { filename: 'a.png', type: 'image/png', b64: PNG.toString('base64') } });
  });
});

describe('httpRequest over TLS', () => {
  let tmp = '';
  let tls: https.Server;
  const sni: (string | undefined)[] = [];
  beforeAll(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'pgdp-http-'));
    const key = path.join(tmp, 'key.pem');
    const cert = path.join(tmp, 'cert.pem');
    execFileSync(
      'openssl',
      ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=localhost',
        '-addext', 'subjectAltName=DNS:localhost'],
      { stdio: 'ignore' },
    );
    tls = https.createServer(
      {
        key: readFileSync(key),
        cert: readFileSync(cert),
        SNICallback: (servername, cb) => {
          sni.push(servername);
          cb(null, undefined);
        },
      },
      (_req, res) => res.end('secret'),
    );
    tls.listen(0, '127.0.0.1');
    await once(tls, 'listening');
  });
  afterAll(() => {
    tls.close();
    rmSync(tmp, { recursive: true, force: true });
  });

  it('sends the host name as SNI to the pinned address and checks the certificate', async () => {
    const tlsPort = (tls.address() as AddressInfo).port;
    const lookup: LookupFn = async () => [{ address: '127.0.0.1', family: 4 }];
    const err = await failure(
      httpRequest({ url: `https://localhost:${tlsPort}/`, method: 'GET', headers: {}, body: null }, policy({ allow: parseAllowList(['localhost', '127.0.0.1']) }), {
        timeoutMs: 10_000,
        lookup,
      }),
    );
    expect(sni).toEqual(['localhost']);
    // the self-signed certificate is not trusted: a TLS failure, not a response
    expect(err.code).toBe('connect');
    expect(err.message).toMatch(new RegExp(`^HTTP GET https://localhost:${tlsPort}/ failed: self[- ]signed certificate`));
  });
});

describe('httpRequest over IPv6', () => {
  let v6: http.Server | undefined;
  beforeAll(async () => {
    const s = http.createServer((req, res) => res.end(JSON.stringify({ host: req.headers.host, from: req.socket.remoteAddress })));
    const ok = await new Promise<boolean>((resolve) => {
      s.once('error', () => resolve(false));
      s.listen(0, '::1', () => resolve(true));
    });
    if (ok) v6 = s;
  });
  afterAll(() => v6?.close());

  it('an IPv6 literal listed for another port only is refused before anything connects', async () => {
    await expect(request({ url: 'http://[::1]:8080/' }, policy({ allow: parseAllowList(['[::1]:1']) }))).rejects.toThrow(
      'list it in --http-allow for port 8080 to allow it',
    );
  });

  it('connects to a listed IPv6 literal and names it in brackets in Host (or, with no IPv6 loopback here, fails as a connect error)', async () => {
    // A machine without ::1 cannot serve the request; what it must still do is fail cleanly, as a connect failure.
    const port = v6 ? (v6.address() as AddressInfo).port : 9;
    const attempt = request({ url: `http://[::1]:${port}/` }, policy({ allow: parseAllowList([`[::1]:${port}`]) }));
    if (v6) {
      expect(JSON.parse((await attempt).body)).toEqual({ host: `[::1]:${port}`, from: '::1' });
    } else {
      await expect(attempt).rejects.toMatchObject({ code: 'connect' });
    }
  });
});
