// One client connection and its own backend connection, relayed message by message.
import type net from 'node:net';
import tls from 'node:tls';
import type { Logger } from 'pino';
import { COLLECT, Framer, PASS, ProtocolViolation, type Classification, type FramerHandler } from './framer.js';
import type { Interception, SessionInfo, StatementInterceptor } from './intercept.js';
import {
  AUTH_SASL,
  CANCEL_REQUEST,
  GSSENC_REQUEST,
  MAX_STARTUP_PACKET,
  MSG,
  cancelRequest,
  SSL_REQUEST,
  TERMINATE,
  errorResponse,
  errorField,
  errorSeverity,
  isFrontendType,
  mentionsDf,
  negotiateProtocolVersion,
  saslClaimsNoServerBinding,
  parseStartupParams,
  startupMessage,
  withoutChannelBinding,
  type PgError,
} from './protocol.js';
import type { ProxyStats } from './stats.js';
import { connectUpstream, type UpstreamTarget } from './upstream.js';

export interface SessionContext {
  readonly upstream: UpstreamTarget;
  readonly tls: tls.SecureContext | undefined;
  readonly log: Logger;
  readonly stats: ProxyStats;
  readonly maxMessageSize: number;
  readonly startupTimeoutMs: number;
  readonly connectTimeoutMs: number;
  readonly interceptor: StatementInterceptor | undefined;
  /**
   * Readies a database for df.* use (the df schema) when a session first
   * reaches it; the client gets its first ReadyForQuery once that is done.
   */
  readonly prepareDatabase: ((database: string) => Promise<void> | undefined) | undefined;
  /** Issues the proxy's own cancel key for a session that now has a backend key. */
  register(session: Session): { pid: number; secret: number };
  unregister(session: Session): void;
  /** Forwards a CancelRequest carrying the proxy's key to the matching backend. */
  cancel(pid: number, secret: number): void;
}

class ClientGone extends Error {}

const EMPTY = Buffer.alloc(0);

type State = 'startup' | 'auth' | 'ready' | 'closed';

export class Session implements SessionInfo {
  user = '';
  database = '';
  /** DSL errors waiting for the server's failure of their marker statement. */
  private readonly pendingErrors = new Map<string, PgError>();
  private state: State = 'startup';
  private client: net.Socket;
  private server: net.Socket | undefined;
  private clientFramer: Framer | undefined;
  private serverFramer: Framer | undefined;
  /** ReadyForQuery messages owed by the server (one per Query, Sync, FunctionCall sent). */
  private pendingReady = 0;
  /** An Execute was sent with no Sync yet (a Flush-driven client); its statement may be running. */
  private unsynced = false;
  /** Transaction status from the last ReadyForQuery: I, T or E. */
  private txStatus = 0x49;

  /** For interceptors: the transaction status the client last saw (I idle, T in a transaction, E failed). */
  get transactionStatus(): 'I' | 'T' | 'E' {
    return String.fromCharCode(this.txStatus) as 'I' | 'T' | 'E';
  }
  private serverSentFatal = false;
  /** The server asked for SASL and the client's first response has not been seen yet. */
  private saslInitialDue = false;
  private clientTerminated = false;
  private draining = false;
  private readonly openedAt = Date.now();
  private bytesIn = 0;
  private bytesOut = 0;
  private closeReason = 'client disconnected';
  private startupTimer: NodeJS.Timeout | undefined;
  /** The backend's own cancel key, and the one the client was given instead. */
  backendKey: { pid: number; secret: number } | undefined;
  proxyKey: { pid: number; secret: number } | undefined;
  readonly remote: string;
  private readonly log: Logger;

  constructor(
    socket: net.Socket,
    private readonly ctx: SessionContext,
  ) {
    this.client = socket;
    this.remote = `${socket.remoteAddress ?? 'unix'}:${socket.remotePort ?? 0}`;
    this.log = ctx.log.child({ client: this.remote });
    socket.setNoDelay(true);
    socket.on('error', (err) => this.onClientGone(err.message));
    socket.on('close', () => this.onClientGone('client disconnected'));
    this.startupTimer = setTimeout(
      () => this.fatal({ severity: 'FATAL', code: '08P01', message: 'timeout waiting for the startup and authentication to finish' }),
      ctx.startupTimeoutMs,
    );
    this.startup().catch((err: unknown) => this.onStartupError(err));
  }

  /** The server may be running a statement for this client. */
  private get busy(): boolean {
    return this.pendingReady > 0 || this.unsynced;
  }

  // ---- startup: SSL/GSS negotiation, the startup packet, the upstream connection

  private async startup(): Promise<void> {
    for (;;) {
      const { packet, extra } = await readPacket(this.client);
      const code = packet.readInt32BE(4);
      if (code === SSL_REQUEST || code === GSSENC_REQUEST) {
        // Bytes sent before the TLS handshake could be injected by a man in the middle (CVE-2021-23214).
        if (extra.length > 0) throw new ProtocolViolation('received unencrypted data after SSL request');
        if (code === SSL_REQUEST && this.ctx.tls && !(this.client instanceof tls.TLSSocket)) {
          this.client.write('S');
          this.client = await upgradeToTls(this.client, this.ctx.tls);
          this.client.on('error', (err) => this.onClientGone(err.message));
        } else {
          this.client.write('N');
        }
        continue;
      }
      if (code === CANCEL_REQUEST) {
        if (packet.length !== 16) throw new ProtocolViolation('invalid length of cancel request');
        this.ctx.stats.cancelRequests++;
        this.ctx.cancel(packet.readInt32BE(8), packet.readInt32BE(12));
        this.client.end();
        this.finish();
        return;
      }
      if (code >> 16 !== 3) {
        throw new ProtocolViolation(`unsupported frontend protocol ${code >> 16}.${code & 0xffff}: server supports 3.0 to 3.0`);
      }
      if (extra.length > 0) this.client.unshift(extra);
      await this.connect(code, packet);
      return;
    }
  }

  private async connect(version: number, packet: Buffer): Promise<void> {
    const params = parseStartupParams(packet.subarray(8));
    if (!params) throw new ProtocolViolation('invalid startup packet layout: expected terminator as last byte');
    const user = params.get('user');
    if (!user) throw new ProtocolViolation('no PostgreSQL user name specified in startup packet', '28000');
    this.user = user;
    this.database = params.get('database') || user;

    // We speak 3.0; options of newer minor versions (_pq_.*) are declined, as the server would.
    const unrecognised = [...params.keys()].filter((k) => k.startsWith('_pq_.'));
    if ((version & 0xffff) > 0 || unrecognised.length > 0) {
      for (const k of unrecognised) params.delete(k);
      this.client.write(negotiateProtocolVersion(0, unrecognised));
    }

    let server: net.Socket;
    try {
      server = await connectUpstream(this.ctx.upstream, this.ctx.connectTimeoutMs);
    } catch (err) {
      this.ctx.stats.upstreamConnectFailures++;
      this.closeReason = 'upstream unreachable';
      this.log.warn({ err: (err as Error).message }, 'upstream connection failed');
      this.fatal({
        severity: 'FATAL',
        code: '08006',
        message: `could not connect to the upstream server: ${(err as Error).message}`,
      });
      return;
    }
    if (this.state === 'closed') {
      server.destroy();
      return;
    }
    this.server = server;
    this.state = 'auth';
    server.on('error', (err) => this.onServerGone(err.message));
    server.on('close', () => this.onServerGone('server closed the connection'));
    this.log.info({ user: this.user, database: this.database, application: params.get('application_name') }, 'connection opened');

    this.serverFramer = new Framer(this.serverHandler(), 0x7fffffff);
    this.clientFramer = new Framer(this.clientHandler(), this.ctx.maxMessageSize);
    server.on('data', (chunk: Buffer) => this.fromServer(chunk));
    this.client.on('data', (chunk: Buffer) => this.fromClient(chunk));
    this.client.on('drain', () => server.resume());
    server.on('drain', () => this.client.resume());
    server.write(startupMessage(params));
    this.client.resume();
  }

  // ---- relay

  private intercepted(r: Interception): Buffer {
    if (r.error) {
      this.pendingErrors.set(r.error.marker, r.error.fields);
      // A marker the server never reached (an aborted transaction answers first) is forgotten eventually.
      if (this.pendingErrors.size > 100) this.pendingErrors.delete(this.pendingErrors.keys().next().value!);
    }
    return r.message;
  }

  private fromClient(chunk: Buffer): void {
    this.bytesIn += chunk.length;
    this.ctx.stats.bytesFromClients += chunk.length;
    try {
      this.clientFramer!.feed(chunk);
    } catch (err) {
      this.clientStreamFailed(err);
    }
  }

  private clientStreamFailed(err: unknown): void {
    if (!(err instanceof ProtocolViolation)) throw err;
    this.ctx.stats.protocolErrors++;
    this.closeReason = `protocol violation: ${err.message}`;
    this.log.warn({ reason: err.message }, 'protocol violation from client');
    this.fatal({ severity: 'FATAL', code: err.code, message: err.message, ...err.more });
  }

  private fromServer(chunk: Buffer): void {
    this.bytesOut += chunk.length;
    this.ctx.stats.bytesToClients += chunk.length;
    try {
      this.serverFramer!.feed(chunk);
    } catch (err) {
      if (!(err instanceof ProtocolViolation)) throw err;
      this.closeReason = `protocol violation from server: ${err.message}`;
      this.log.error({ reason: err.message }, 'protocol violation from server');
      this.fatal({ severity: 'FATAL', code: '08P01', message: `invalid message from the upstream server: ${err.message}` });
    }
  }

  private clientHandler(): FramerHandler {
    const stats = this.ctx.stats;
    return {
      classify: (type: number): Classification => {
        if (!isFrontendType(type)) {
          throw new ProtocolViolation(`invalid frontend message type ${type}`);
        }
        switch (type) {
          case MSG.query:
            stats.queries++;
            this.pendingReady++;
            return COLLECT;
          case MSG.parse:
            return COLLECT;
          case 0x70: // password / SASL response, looked at only for the first SASL response
            return this.saslInitialDue ? COLLECT : PASS;
          case MSG.execute:
            stats.queries++;
            this.unsynced = true;
            return PASS;
          case 0x53: // Sync
            this.unsynced = false;
            this.pendingReady++;
            return PASS;
          case 0x46: // FunctionCall
            this.pendingReady++;
            return PASS;
          case MSG.terminate:
            this.clientTerminated = true;
            return PASS;
          default:
            return PASS;
        }
      },
      message: (msg: Buffer): Buffer | undefined | Promise<Buffer | undefined> => {
        if (msg[0] === 0x70) {
          this.saslInitialDue = false;
          if (this.server instanceof tls.TLSSocket && saslClaimsNoServerBinding(msg)) {
            throw new ProtocolViolation('SCRAM channel binding cannot pass through pg-durable-proxy', '28000', {
              detail:
                'The client connected with TLS and offered channel binding; the proxy ends that TLS connection and opens its own to the server, which would see the exchange as a downgrade attack.',
              hint: 'Connect with channel_binding=disable, or configure the upstream with sslmode=disable on a trusted network.',
            });
          }
          return undefined;
        }
        if (!mentionsDf(msg)) return undefined;
        stats.dfStatements++;
        const r = this.ctx.interceptor?.rewrite(msg, this);
        if (!r) return undefined;
        if (!(r instanceof Promise)) return this.intercepted(r);
        // The interceptor works elsewhere first (a start on its own connection): the client waits.
        this.client.pause();
        return r
          .then((i) => (i ? this.intercepted(i) : undefined))
          .finally(() => {
            if (this.state !== 'closed') this.client.resume();
          });
      },
      write: (bytes: Buffer): void => {
        if (!this.server!.write(bytes)) this.client.pause();
      },
      failed: (err: unknown): void => this.clientStreamFailed(err),
    };
  }

  private serverHandler(): FramerHandler {
    const stats = this.ctx.stats;
    return {
      classify: (type: number): Classification => {
        if (this.state !== 'ready') return COLLECT; // startup messages are few and some get rewritten
        if (type === MSG.readyForQuery) return COLLECT;
        if (type === MSG.errorResponse) {
          stats.serverErrors++;
          return COLLECT;
        }
        return PASS;
      },
      message: (msg: Buffer): Buffer | undefined => {
        switch (msg[0]) {
          case MSG.readyForQuery:
            this.txStatus = msg[5] ?? 0x49;
            if (this.state !== 'ready') {
              this.state = 'ready';
              clearTimeout(this.startupTimer);
              if (this.draining) queueMicrotask(() => this.drain());
              const preparing = this.ctx.prepareDatabase?.(this.database);
              if (preparing) {
                const rfq = Buffer.from(msg);
                void preparing.then(() => {
                  if (this.state !== 'closed') this.client.write(rfq);
                });
                return EMPTY;
              }
            } else if (this.pendingReady > 0) {
              this.pendingReady--;
              if (!this.busy && this.draining) queueMicrotask(() => this.drain());
            }
            return undefined;
          case MSG.errorResponse: {
            if (this.pendingErrors.size > 0) {
              const marker = errorField(msg, 0x4d);
              const replacement = marker !== undefined ? this.pendingErrors.get(marker) : undefined;
              if (replacement) {
                this.pendingErrors.delete(marker!);
                return errorResponse(replacement);
              }
            }
            if (this.state !== 'ready') stats.serverErrors++;
            const sev = errorSeverity(msg);
            if (sev === 'FATAL' || sev === 'PANIC') this.serverSentFatal = true;
            return undefined;
          }
          case MSG.authentication:
            if (msg.length > 9 && msg.readInt32BE(5) === AUTH_SASL) {
              this.saslInitialDue = true;
              return withoutChannelBinding(msg);
            }
            return undefined;
          case MSG.backendKeyData: {
            if (msg.length !== 13) return undefined;
            this.backendKey = { pid: msg.readInt32BE(5), secret: msg.readInt32BE(9) };
            this.proxyKey = this.ctx.register(this);
            const out = Buffer.from(msg);
            out.writeInt32BE(this.proxyKey.pid, 5);
            out.writeInt32BE(this.proxyKey.secret, 9);
            return out;
          }
          default:
            return undefined;
        }
      },
      write: (bytes: Buffer): void => {
        if (!this.client.write(bytes)) this.server!.pause();
      },
    };
  }

  // ---- endings

  /** Graceful shutdown: close now if idle, else as soon as the running statement finishes. */
  drain(): void {
    this.draining = true;
    if (this.state === 'closed') return;
    if (this.state === 'startup' || (this.state === 'ready' && !this.busy)) {
      this.closeReason = 'proxy shutting down';
      this.fatal({ severity: 'FATAL', code: '57P01', message: 'terminating connection due to administrator command' });
    }
  }

  /** Immediate close: cancels a running statement, then ends both sides. */
  terminate(reason: string): void {
    if (this.state === 'closed') return;
    this.closeReason = reason;
    if (this.busy) this.cancelBackend();
    this.fatal({ severity: 'FATAL', code: '57P01', message: 'terminating connection due to administrator command' });
  }

  /** Sends a CancelRequest for this session's backend on a fresh upstream connection. */
  cancelBackend(): void {
    const key = this.backendKey;
    if (!key) return;
    this.ctx.log.debug({ client: this.remote }, 'cancelling backend statement');
    void sendCancel(this.ctx.upstream, this.ctx.connectTimeoutMs, key.pid, key.secret).catch((err: Error) =>
      this.log.warn({ err: err.message }, 'cancel request to upstream failed'),
    );
  }

  /** Sends an error to the client (if it is still there and at a message boundary) and closes everything. */
  private fatal(err: PgError): void {
    if (this.state === 'closed') return;
    const atBoundary = this.serverFramer === undefined || this.serverFramer.atBoundary;
    if (atBoundary && this.client.writable) this.client.end(errorResponse(err));
    else this.client.destroy();
    this.closeServer();
    this.finish();
  }

  private onClientGone(reason: string): void {
    if (this.state === 'closed') return;
    if (!this.clientTerminated) this.closeReason = reason;
    // A client that vanished must not leave a running statement or an open transaction behind.
    if (this.busy) this.cancelBackend();
    this.closeServer();
    this.client.destroy();
    this.finish();
  }

  private onServerGone(reason: string): void {
    if (this.state === 'closed') return;
    if (this.clientTerminated) {
      this.client.end();
      this.finish();
      return;
    }
    this.closeReason = this.serverSentFatal ? 'server ended the session' : reason;
    if (this.serverSentFatal) {
      this.client.end();
      this.finish();
      return;
    }
    this.fatal({
      severity: 'FATAL',
      code: '08006',
      message: 'server closed the connection unexpectedly',
      detail: 'The upstream PostgreSQL server terminated this session abnormally before or while processing the request.',
    });
  }

  private closeServer(): void {
    const s = this.server;
    if (!s || s.destroyed) return;
    // A Terminate after half a client message would be read as the rest of it; EOF alone ends the session then.
    const atBoundary = this.clientFramer === undefined || this.clientFramer.atBoundary;
    if (s.writable && !this.clientTerminated && atBoundary) s.end(TERMINATE);
    else s.end();
    // A server that does not close its side soon is not waited for.
    setTimeout(() => s.destroy(), 5000).unref();
  }

  private onStartupError(err: unknown): void {
    if (err instanceof ClientGone || this.state === 'closed') {
      if (this.state !== 'closed') {
        this.closeReason = 'client disconnected during startup';
        this.finish();
      }
      return;
    }
    this.ctx.stats.connectionsRejected++;
    const violation = err instanceof ProtocolViolation;
    if (violation) this.ctx.stats.protocolErrors++;
    const message = err instanceof Error ? err.message : String(err);
    this.closeReason = `startup failed: ${message}`;
    this.log.warn({ reason: message }, 'startup failed');
    this.fatal({
      severity: 'FATAL',
      code: violation ? err.code : '08000',
      message,
    });
  }

  private finish(): void {
    if (this.state === 'closed') return;
    const wasSession = this.server !== undefined;
    this.state = 'closed';
    clearTimeout(this.startupTimer);
    this.ctx.unregister(this);
    this.ctx.stats.connectionsActive--;
    if (wasSession) {
      this.log.info(
        {
          user: this.user,
          database: this.database,
          durationMs: Date.now() - this.openedAt,
          bytesIn: this.bytesIn,
          bytesOut: this.bytesOut,
          reason: this.closeReason,
        },
        'connection closed',
      );
    }
  }
}

/** Reads one length-prefixed startup-phase packet; leaves the socket paused. */
function readPacket(sock: net.Socket): Promise<{ packet: Buffer; extra: Buffer }> {
  return new Promise((resolve, reject) => {
    let buf: Buffer = Buffer.alloc(0);
    const cleanup = (): void => {
      sock.removeListener('data', onData);
      sock.removeListener('end', onEnd);
      sock.removeListener('close', onEnd);
    };
    const onEnd = (): void => {
      cleanup();
      reject(new ClientGone());
    };
    const onData = (d: Buffer): void => {
      buf = buf.length === 0 ? d : Buffer.concat([buf, d]);
      if (buf.length < 4) return;
      const len = buf.readInt32BE(0);
      if (len < 8 || len > MAX_STARTUP_PACKET) {
        cleanup();
        sock.pause();
        reject(new ProtocolViolation(`invalid length of startup packet: ${len}`));
        return;
      }
      if (buf.length < len) return;
      cleanup();
      sock.pause();
      resolve({ packet: buf.subarray(0, len), extra: buf.subarray(len) });
    };
    sock.on('data', onData);
    sock.once('end', onEnd);
    sock.once('close', onEnd);
    sock.resume();
  });
}

function upgradeToTls(sock: net.Socket, secureContext: tls.SecureContext): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const secure = new tls.TLSSocket(sock, { isServer: true, secureContext });
    const onError = (err: Error): void => reject(new ProtocolViolation(`TLS handshake failed: ${err.message}`));
    secure.once('error', onError);
    secure.once('secure', () => {
      secure.removeListener('error', onError);
      resolve(secure);
    });
  });
}

/** Sends a CancelRequest to the upstream on a new connection, as the protocol requires. */
export async function sendCancel(upstream: UpstreamTarget, timeoutMs: number, pid: number, secret: number): Promise<void> {
  const sock = await connectUpstream(upstream, timeoutMs);
  await new Promise<void>((resolve) => {
    sock.on('error', () => resolve());
    sock.on('close', () => resolve());
    sock.end(cancelRequest(pid, secret));
  });
}
