// HTTP steps in workflows: df.http and df.http_multipart against a real HTTP
// server on loopback (allowed explicitly by the test's egress policy): the
// response envelope, results used by later steps, failures, the policy's
// refusals, the Idempotency-Key, and who may build and run HTTP steps.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { httpPolicy } from '../../src/config.js';
import { createRoles, runWorkflow, startDurable, type Durable } from '../helpers/durable.js';
import { env } from '../helpers/proxy.js';
import { dbUrl } from '../helpers/durable.js';

interface Seen {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

let server: http.Server;
let base: string;
const seen: Seen[] = [];
let d: Durable;
let app: pg.Client;

beforeAll(async () => {
  server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      seen.push({ method: req.method!, url: req.url!, headers: req.headers, body });
      const path = req.url!.split('?')[0];
      if (path === '/json') {
        res.writeHead(200, { 'Content-Type': 'application/json', 'X-Twice': ['a', 'b'] });
        res.end(JSON.stringify({ id: 7, name: 'seven' }));
      } else if (path === '/echo') {
        res.writeHead(201, { 'Content-Type': 'text/plain; charset=utf-8' });
        res.end(`${req.method} ${body.toString()}`);
      } else if (path === '/binary') {
        res.writeHead(200, { 'Content-Type': 'application/octet-stream' });
        res.end(Buffer.from([0, 1, 2, 255]));
      } else if (path === '/redirect') {
        res.writeHead(302, { Location: '/json' });
        res.end();
      } else if (path === '/missing') {
        res.writeHead(404, { 'Content-Type': 'text/plain' });
        res.end('no such thing');
      } else if (path === '/broken') {
        res.writeHead(503, { 'Content-Type': 'text/plain' });
        res.end('down for maintenance');
      } else if (path === '/slow') {
        setTimeout(() => res.end('late'), 5000).unref();
      } else if (path === '/big') {
        res.writeHead(200, { 'Content-Type': 'text/plain' });
        res.end('x'.repeat(4096));
      } else if (path === '/form') {
        // A real multipart parser: the Fetch API's.
        void new Request('http://x/', { method: 'POST', headers: { 'content-type': req.headers['content-type']! }, body })
          .formData()
          .then(async (form) => {
            const parts = await Promise.all(
              [...form.entries()].map(async ([k, v]) => (typeof v === 'string' ? { k, v } : { k, file: v.name, type: v.type, v: Buffer.from(await v.arrayBuffer()).toString() })),
            );
            res.writeHead(200, { 'Content-Type': 'application/json' });
            res.end(JSON.stringify(parts));
          });
      } else {
        res.writeHead(200);
        res.end('ok');
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  d = await startDurable('pgdp_http_steps', {
    http: httpPolicy({ httpAllow: '127.0.0.1', httpMaxRequestBytes: 1024 * 1024, httpMaxResponseBytes: 1024, httpMaxTimeoutSeconds: 300 }),
  });
  if (env().mode === 'managed') {
    // The df owner gives the app role HTTP steps, as an administrator would.
    const owner = new pg.Client(dbUrl(env().executorUrl, d.database));
    await owner.connect();
    await owner.query(`SELECT df.grant_usage($1, include_http => true, with_grant => true)`, [env().app.user]).finally(() => owner.end());
  }
  app = await d.connect();
});
afterAll(async () => {
  await d?.close();
  await new Promise((r) => server.close(r));
});

const lit = (s: string): string => pg.escapeLiteral(s);
const nodeResult = async (id: string, type = 'HTTP'): Promise<unknown> =>
  (await (await d.direct()).query(`SELECT result FROM df.nodes WHERE instance_id = $1 AND node_type = $2`, [id, type])).rows[0]?.result;

describe('df.http', () => {
  it('GET: the response envelope, and $resp.body / $resp.status in a later step', async () => {
    const r = await runWorkflow(app, `df.start(df.http(${lit(`${base}/json`)}, 'GET') |=> 'resp' ~> 'SELECT $resp.status AS s, ($resp.body)::jsonb ->> ''name'' AS n')`);
    expect(r).toMatchObject({ status: 'completed', result: { rows: [{ s: 200, n: 'seven' }], row_count: 1 } });
    const env = (await nodeResult(r.id)) as Record<string, unknown>;
    expect(env).toMatchObject({ status: 200, body: '{"id":7,"name":"seven"}', encoding: 'text', ok: true });
    expect((env.headers as Record<string, string>)['x-twice']).toBe('a, b');
    expect(typeof env.duration_ms).toBe('number');
  });

  it('POST with a substituted body and headers; every request carries an Idempotency-Key of instance, node and iteration', async () => {
    seen.length = 0;
    const r = await runWorkflow(
      app,
      `df.start('SELECT ''ann'' AS who' |=> 'u' ~> df.http(${lit(`${base}/echo`)}, 'post', 'who=$u.who&id={sys_instance_id}', '{"X-Who": "$u.who", "X-N": 5}'))`,
    );
    expect(r.status).toBe('completed');
    expect(r.result).toMatchObject({ status: 201, body: `POST who=ann&id=${r.id}`, encoding: 'text', ok: true });
    const req = seen[0]!;
    expect(req.headers['x-who']).toBe('ann');
    expect(req.headers['x-n']).toBeUndefined(); // only string-valued headers are sent
    expect(req.headers['user-agent']).toMatch(/^pg-durable-proxy\//);
    const node = (await (await d.direct()).query(`SELECT id FROM df.nodes WHERE instance_id = $1 AND node_type = 'HTTP'`, [r.id])).rows[0].id;
    expect(req.headers['idempotency-key']).toBe(`${r.id}-${node}-0`);
  });

  it('a binary body arrives base64; 3xx is not followed; 4xx completes with ok false; 5xx fails the node', async () => {
    expect((await runWorkflow(app, `df.start(df.http(${lit(`${base}/binary`)}, 'GET'))`)).result).toMatchObject({ body: 'AAEC/w==', encoding: 'base64' });
    const redirect = await runWorkflow(app, `df.start(df.http(${lit(`${base}/redirect`)}, 'GET'))`);
    expect(redirect.result).toMatchObject({ status: 302, ok: false, headers: { location: '/json' } });
    expect((await runWorkflow(app, `df.start(df.http(${lit(`${base}/missing`)}, 'GET'))`)).result).toMatchObject({ status: 404, ok: false, body: 'no such thing' });
    const broken = await runWorkflow(app, `df.start(df.http(${lit(`${base}/broken`)}, 'GET'))`);
    expect(broken.status).toBe('failed');
    expect(broken.output).toBe(`HTTP GET ${base}/broken returned 503: down for maintenance`);
  });

  it('a request past its timeout fails; a response larger than the limit fails', async () => {
    const slow = await runWorkflow(app, `df.start(df.http(${lit(`${base}/slow`)}, 'GET', timeout_seconds => 1))`);
    expect(slow.status).toBe('failed');
    expect(slow.output).toMatch(/timed out after 1s/);
    const big = await runWorkflow(app, `df.start(df.http(${lit(`${base}/big`)}, 'GET'))`);
    expect(big.status).toBe('failed');
    expect(big.output).toMatch(/larger than the limit of 1024 bytes/);
  });

  it('the egress policy refuses what it does not list, and says which rule refused', async () => {
    for (const [url, message] of [
      ['http://10.1.2.3/x', /is 10\.1\.2\.3, a private address; list it in --http-allow/],
      ['http://169.254.169.254/latest/meta-data/', /metadata/],
      // Other spellings of 10.0.0.1: IPv4-mapped IPv6, decimal (127.0.0.1 itself is allowed by this policy).
      ['http://[::ffff:10.0.0.1]/x', /10\.0\.0\.1, a private address/],
      ['http://167772161/x', /10\.0\.0\.1, a private address/],
      ['http://[::1]:9/x', /loopback/],
      [`http://localhost:${new URL(base).port}/json`, /not in the HTTP allow-list/],
      ['http://example.com/', /not in the HTTP allow-list/],
    ] as const) {
      const r = await runWorkflow(app, `df.start(df.http(${lit(url)}, 'GET'))`);
      expect(r.status, url).toBe('failed');
      expect(r.output, url).toMatch(/^HTTP GET .* refused: /);
      expect(r.output, url).toMatch(message);
    }
  });

  it('a URL whose user name is not valid percent-encoding fails the step (it does not retry for ever)', async () => {
    const r = await runWorkflow(app, `df.start(df.http(${lit(`http://%E0%A4%A@127.0.0.1:${new URL(base).port}/json`)}, 'GET'))`);
    expect(r.status).toBe('failed');
    expect(r.output).toMatch(/the user name or password in the URL is not valid percent-encoding/);
  });

  it('an unsupported scheme or method is refused when the workflow is built', async () => {
    await expect(app.query(`SELECT df.start(df.http('ftp://example.com/x'))`)).rejects.toMatchObject({ code: '22023', message: expect.stringMatching(/^Blocked: unsupported URL scheme 'ftp'/) });
    await expect(app.query(`SELECT df.start(df.http(${lit(base)}, 'BREW'))`)).rejects.toMatchObject({ code: '22023', message: expect.stringMatching(/^Unsupported HTTP method 'BREW'/) });
    await expect(app.query(`SELECT df.start(df.http(${lit(base)}, 'GET', timeout_seconds => 0))`)).rejects.toMatchObject({ message: 'Timeout must be positive' });
  });
});

describe('df.http_multipart', () => {
  it('sends several parts as multipart/form-data; the caller\'s Content-Type is replaced by ours', async () => {
    const parts = JSON.stringify([
      { name: 'note', data_b64: Buffer.from('hello').toString('base64') },
      { name: 'file', filename: 'a.txt', content_type: 'text/plain', data_b64: Buffer.from('file body').toString('base64') },
    ]);
    const r = await runWorkflow(app, `df.start(df.http_multipart(${lit(`${base}/form`)}, 'POST', ${lit(parts)}, '{"Content-Type": "text/nonsense"}'))`);
    expect(r.status).toBe('completed');
    expect(JSON.parse((r.result as { body: string }).body)).toEqual([
      { k: 'note', v: 'hello' },
      { k: 'file', file: 'a.txt', type: 'text/plain', v: 'file body' },
    ]);
    await expect(app.query(`SELECT df.start(df.http_multipart(${lit(base)}, 'POST', '[]'))`)).rejects.toMatchObject({ message: expect.stringMatching(/^parts must be a non-empty JSON array/) });
  });
});

describe('who may run HTTP steps', () => {
  it('a role without include_http cannot build one, nor start a hand-written one; revoked later, the step fails when it runs', async () => {
    await createRoles(['pgdp_http_carol']);
    const su = await d.direct();
    await su.query(`SELECT df.grant_usage('pgdp_http_carol')`);
    const carol = await d.connect('pgdp_http_carol', 'pgdp_http_carol-pw');
    await expect(carol.query(`SELECT df.start(df.http(${lit(`${base}/json`)}, 'GET'))`)).rejects.toMatchObject({ code: '42501' });
    const graph = JSON.stringify({ node_type: 'HTTP', query: JSON.stringify({ url: `${base}/json`, method: 'GET', body: null, headers: null, timeout_seconds: 5 }) });
    await expect(carol.query(`SELECT df.start(${lit(graph)})`)).rejects.toMatchObject({
      code: '42501',
      message: 'permission denied: role pgdp_http_carol may not run HTTP steps',
    });
    // Granted, started, then revoked before the step runs: the run-time check stops it.
    await su.query(`SELECT df.grant_usage('pgdp_http_carol', include_http => true)`);
    await carol.query('BEGIN');
    const id = (await carol.query(`SELECT df.start('SELECT pg_sleep(0.5)' ~> df.http(${lit(`${base}/json`)}, 'GET')) AS id`)).rows[0].id as string;
    await carol.query('COMMIT');
    await su.query(`REVOKE EXECUTE ON FUNCTION df.http(text, text, text, jsonb, integer) FROM pgdp_http_carol`);
    await carol.query('SELECT df.await_instance($1, 30)', [id]);
    const row = (await carol.query('SELECT status, output FROM df.instances WHERE id = $1', [id])).rows[0];
    expect(row).toEqual({ status: 'failed', output: expect.stringMatching(/^permission denied: role pgdp_http_carol may not run HTTP steps \(an administrator grants it/) });
  });
});
