// The listener: accepts client connections, owns the proxy-issued cancel keys,
// and shuts down gracefully.
import net from 'node:net';
import { randomInt } from 'node:crypto';
import type tls from 'node:tls';
import type { Logger } from 'pino';
import type { StatementInterceptor } from './intercept.js';
import { LogRateLimiter } from './ratelimit.js';
import { Session, type SessionContext } from './session.js';
import { ProxyStats } from './stats.js';
import type { UpstreamTarget } from './upstream.js';

export interface ProxyOptions {
  upstream: UpstreamTarget;
  host: string;
  port: number;
  log: Logger;
  tls?: tls.SecureContext;
  maxMessageSize?: number;
  startupTimeoutMs?: number;
  connectTimeoutMs?: number;
  interceptor?: StatementInterceptor;
}

const cancelKey = (pid: number, secret: number): string => `${pid}/${secret}`;

export class ProxyServer {
  readonly stats = new ProxyStats();
  private readonly server: net.Server;
  private readonly sessions = new Set<Session>();
  /**
   * The clients' cancel keys: `pid/secret` → session. Keyed by both, since a backend that
   * ended and a new one reusing its pid may briefly be two live sessions with one pid.
   */
  private readonly byKey = new Map<string, Session>();
  private readonly ctx: SessionContext;
  private readonly abuse = new LogRateLimiter();

  constructor(private readonly opts: ProxyOptions) {
    const log = opts.log;
    this.ctx = {
      upstream: opts.upstream,
      tls: opts.tls,
      log,
      stats: this.stats,
      maxMessageSize: opts.maxMessageSize ?? 0x3fffffff,
      startupTimeoutMs: opts.startupTimeoutMs ?? 60_000,
      connectTimeoutMs: opts.connectTimeoutMs ?? 10_000,
      interceptor: opts.interceptor,
      register: (s) => {
        // The backend's pid, so pg_backend_pid(), pg_stat_activity and pg_cancel_backend agree with
        // the client's key; the secret is the proxy's, so only a CancelRequest through the proxy
        // works, and the proxy forwards the backend's real secret.
        const pid = s.backendKey!.pid;
        let key: string;
        let secret: number;
        do {
          secret = randomInt(-0x80000000, 0x80000000);
          key = cancelKey(pid, secret);
        } while (this.byKey.has(key));
        this.byKey.set(key, s);
        return { pid, secret };
      },
      unregister: (s) => {
        this.sessions.delete(s);
        if (!s.proxyKey) return;
        const key = cancelKey(s.proxyKey.pid, s.proxyKey.secret);
        if (this.byKey.get(key) === s) this.byKey.delete(key);
      },
      cancel: (pid, secret, address) => {
        const s = this.byKey.get(cancelKey(pid, secret));
        // Like PostgreSQL, say nothing to the requester either way.
        if (!s) {
          this.stats.cancelUnknownKey++;
          this.ctx.noteAbuse(address, { client: address, pid }, 'cancel request with an unknown key');
          return;
        }
        s.cancelBackend();
      },
      noteAbuse: (address, fields, msg) => {
        const suppressed = this.abuse.allow(address);
        this.stats.logLinesSuppressed = this.abuse.suppressedTotal;
        if (suppressed === undefined) return;
        log.warn(suppressed > 0 ? { ...fields, suppressed } : fields, msg);
      },
    };
    this.server = net.createServer((socket) => {
      this.stats.connectionsTotal++;
      this.stats.connectionsActive++;
      try {
        this.sessions.add(new Session(socket, this.ctx));
      } catch (err) {
        // A bug in setting up one session must not end the proxy.
        this.stats.connectionsActive--;
        this.stats.internalErrors++;
        log.error({ err: (err as Error).message }, 'internal error accepting a connection');
        socket.destroy();
      }
    });
  }

  listen(): Promise<{ host: string; port: number }> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.opts.port, this.opts.host, () => {
        this.server.removeListener('error', reject);
        const a = this.server.address() as net.AddressInfo;
        resolve({ host: a.address, port: a.port });
      });
    });
  }

  /**
   * Stops accepting, lets running statements finish (each session closes as
   * soon as it is idle), and after `timeoutMs` cancels and closes the rest.
   */
  async shutdown(timeoutMs: number): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const s of this.sessions) s.drain();
    const deadline = Date.now() + timeoutMs;
    while (this.sessions.size > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
    }
    if (this.sessions.size > 0) {
      this.opts.log.warn({ sessions: this.sessions.size }, 'shutdown timeout: closing sessions with running statements');
      for (const s of this.sessions) s.terminate('proxy shutdown timeout');
      // Give the cancel requests a moment to reach the server.
      await new Promise((r) => setTimeout(r, 200));
    }
    await closed;
  }
}
