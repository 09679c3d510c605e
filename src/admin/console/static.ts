// The page's files: src/admin/ui (copied to dist/admin/ui by the build) and
// the layout library from node_modules, read once and kept (with a gzip
// copy), served only by name from a fixed list.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type http from 'node:http';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { SECURITY_HEADERS } from './http.js';

const UI_DIR = fileURLToPath(new URL('../ui/', import.meta.url));
const require = createRequire(import.meta.url);

const TYPES: Record<string, string> = {
  html: 'text/html; charset=utf-8',
  css: 'text/css; charset=utf-8',
  js: 'text/javascript; charset=utf-8',
};

/** Served name → file. */
const FILES: Record<string, () => string> = {
  'index.html': () => UI_DIR + 'index.html',
  'console.css': () => UI_DIR + 'console.css',
  'app.js': () => UI_DIR + 'app.js',
  'graph.js': () => UI_DIR + 'graph.js',
  'vendor/elk.bundled.js': () => require.resolve('elkjs/lib/elk.bundled.js'),
};

interface Asset {
  body: Buffer;
  gzip: Buffer;
  type: string;
  etag: string;
}

const cache = new Map<string, Asset>();

function load(name: string): Asset | undefined {
  const known = cache.get(name);
  if (known) return known;
  const file = FILES[name];
  if (!file) return undefined;
  const body = readFileSync(file());
  const asset: Asset = {
    body,
    gzip: gzipSync(body),
    type: TYPES[name.slice(name.lastIndexOf('.') + 1)] ?? 'application/octet-stream',
    etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"`,
  };
  cache.set(name, asset);
  return asset;
}

export function hasAsset(name: string): boolean {
  return Object.hasOwn(FILES, name);
}

/** Answers with a page file; false when there is no such file. */
export function serveAsset(req: http.IncomingMessage, res: http.ServerResponse, name: string): boolean {
  const a = load(name);
  if (!a) return false;
  const headers: Record<string, string> = {
    ...SECURITY_HEADERS,
    'content-type': a.type,
    'cache-control': name === 'index.html' ? 'no-store' : 'no-cache',
    etag: a.etag,
    vary: 'accept-encoding',
  };
  if (req.headers['if-none-match'] === a.etag) {
    res.writeHead(304, headers).end();
    return true;
  }
  const gz = /\bgzip\b/.test(String(req.headers['accept-encoding'] ?? ''));
  const body = gz ? a.gzip : a.body;
  res.writeHead(200, { ...headers, ...(gz ? { 'content-encoding': 'gzip' } : {}), 'content-length': String(body.length) });
  res.end(req.method === 'HEAD' ? undefined : body);
  return true;
}
