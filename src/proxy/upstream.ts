// Connections to the upstream PostgreSQL, with TLS as the URL's sslmode asks
// (libpq semantics: disable | allow | prefer | require | verify-ca | verify-full).
import net from 'node:net';
import tls from 'node:tls';
import { readFileSync } from 'node:fs';
import { sslRequest } from './protocol.js';

export type SslMode = 'disable' | 'allow' | 'prefer' | 'require' | 'verify-ca' | 'verify-full';
export const SSL_MODES: readonly SslMode[] = ['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full'];

export interface UpstreamTarget {
  host: string; // a hostname, an IP, or a directory holding the Unix socket
  port: number;
  sslmode: SslMode;
  sslrootcert?: string;
  sslcert?: string;
  sslkey?: string;
}

export class UpstreamError extends Error {}

/** Parses the parts of a postgres:// URL the relay needs; throws with a readable reason. */
export function upstreamFromUrl(url: string): UpstreamTarget {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new UpstreamError('not a URL');
  }
  if (u.protocol !== 'postgres:' && u.protocol !== 'postgresql:') {
    throw new UpstreamError(`scheme must be postgres:// or postgresql://, not ${u.protocol}//`);
  }
  const q = u.searchParams;
  const host = q.get('host') ?? (decodeURIComponent(u.hostname.replace(/^\[|\]$/g, '')) || 'localhost');
  const port = Number(q.get('port') ?? (u.port || 5432));
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new UpstreamError(`invalid port ${port}`);
  const sslmode = (q.get('sslmode') ?? 'prefer') as SslMode;
  if (!SSL_MODES.includes(sslmode)) {
    throw new UpstreamError(`invalid sslmode "${sslmode}": expected one of ${SSL_MODES.join(', ')}`);
  }
  const target: UpstreamTarget = { host, port, sslmode };
  for (const k of ['sslrootcert', 'sslcert', 'sslkey'] as const) {
    const v = q.get(k);
    if (v) target[k] = v;
  }
  return target;
}

function tlsOptions(t: UpstreamTarget, socket: net.Socket): tls.ConnectionOptions {
  // libpq: 'require' with a root certificate behaves as verify-ca.
  const verifyChain = t.sslmode === 'verify-ca' || t.sslmode === 'verify-full' || (t.sslmode === 'require' && !!t.sslrootcert);
  const opts: tls.ConnectionOptions = { socket, rejectUnauthorized: verifyChain };
  if (!net.isIP(t.host) && !t.host.startsWith('/')) opts.servername = t.host;
  if (t.sslrootcert) opts.ca = readFileSync(t.sslrootcert);
  if (t.sslcert) opts.cert = readFileSync(t.sslcert);
  if (t.sslkey) opts.key = readFileSync(t.sslkey);
  if (verifyChain && t.sslmode !== 'verify-full') opts.checkServerIdentity = () => undefined;
  return opts;
}

/** Opens a connection to the upstream, negotiating TLS; resolves once the stream is ready for a startup packet. */
export function connectUpstream(t: UpstreamTarget, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const raw = t.host.startsWith('/')
      ? net.connect({ path: `${t.host}/.s.PGSQL.${t.port}` })
      : net.connect({ host: t.host, port: t.port });
    raw.setNoDelay(true);
    let settled = false;
    const fail = (err: Error): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      raw.destroy();
      reject(err instanceof UpstreamError ? err : new UpstreamError(err.message));
    };
    const done = (s: net.Socket): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      raw.removeListener('error', fail);
      resolve(s);
    };
    const timer = setTimeout(() => fail(new UpstreamError(`timeout after ${timeoutMs} ms`)), timeoutMs);
    raw.once('error', fail);
    raw.once('connect', () => {
      if (t.sslmode === 'disable' || t.sslmode === 'allow' || t.host.startsWith('/')) return done(raw);
      raw.write(sslRequest());
      raw.once('data', (d: Buffer) => {
        if (d.length !== 1) return fail(new UpstreamError('unexpected answer to SSLRequest'));
        if (d[0] === 0x4e /* N */) {
          if (t.sslmode === 'prefer') return done(raw);
          return fail(new UpstreamError(`server does not support SSL, but sslmode=${t.sslmode} requires it`));
        }
        if (d[0] !== 0x53 /* S */) return fail(new UpstreamError('unexpected answer to SSLRequest'));
        raw.pause();
        let secure: tls.TLSSocket;
        try {
          secure = tls.connect(tlsOptions(t, raw));
        } catch (err) {
          return fail(err as Error);
        }
        secure.once('error', fail);
        secure.once('secureConnect', () => {
          secure.removeListener('error', fail);
          done(secure);
        });
      });
    });
  });
}
