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
  /** See SessionContext.prepareDatabase. */
  prepareDatabase?: (database: string) => Promise<void> | undefined;
}

export class ProxyServer {
  readonly stats = new ProxyStats();
  private readonly server: net.Server;
  private readonly sessions = new Set<Session>();
  private readonly byKey = new Map<number, Session>(); // proxy pid → session
  private nextPid = randomInt(1, 1 << 20);
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
      prepareDatabase: opts.prepareDatabase,
      register: (s) => {
        // Proxy pids are unique among live sessions; the secret is what authorises a cancel.
        do this.nextPid = this.nextPid >= 0x7ffffffe ? 1 : this.nextPid + 1;
        while (this.byKey.has(this.nextPid));
        const key = { pid: this.nextPid, secret: randomInt(-0x80000000, 0x7fffffff) };
        this.byKey.set(key.pid, s);
        return key;
      },
      unregister: (s) => {
        this.sessions.delete(s);
        if (s.proxyKey && this.byKey.get(s.proxyKey.pid) === s) this.byKey.delete(s.proxyKey.pid);
      },
      cancel: (pid, secret, address) => {
        const s = this.byKey.get(pid);
        // Like PostgreSQL, say nothing to the requester either way.
        if (!s || s.proxyKey?.secret !== secret) {
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
