// One client connection and its own backend connection, relayed message by message.
import type net from 'node:net';
import tls from 'node:tls';
import type { Logger } from 'pino';
import { COLLECT, Framer, PASS, ProtocolViolation, type Classification, type FramerHandler } from './framer.js';
import type { Interception, SessionInfo, StatementInterceptor } from './intercept.js';
import {
  MSG,
  cancelRequest,
  TERMINATE,
  errorResponse,
  errorField,
  errorSeverity,
  isFrontendType,
  mentionsDatabase,
  mentionsDf,
  startupMessage,
  type PgError,
} from './protocol.js';
import { AuthGate, ClientGone, negotiate } from './startup.js';
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
   * Issues the client's cancel key for a session that now has a backend key: the
   * backend's own pid (what pg_backend_pid() and pg_stat_activity show) and a secret of the proxy's.
   */
  register(session: Session): { pid: number; secret: number };
  unregister(session: Session): void;
  /** Forwards a CancelRequest carrying the proxy's key to the matching backend. */
  cancel(pid: number, secret: number, address: string): void;
  /**
   * A warning a stranger can provoke at will (failed logins, refused
   * messages): logged at most about once a second per client address.
   */
  noteAbuse(address: string, fields: Record<string, unknown>, msg: string): void;
}

const EMPTY = Buffer.alloc(0);

/** What the session asks the server when a 'new' start needs the current role. */
const ROLE_PROBE = (() => {
  const sql = Buffer.from('SELECT current_user\0', 'utf8');
  const out = Buffer.alloc(5 + sql.length);
  out[0] = MSG.query;
  out.writeInt32BE(4 + sql.length, 1);
  sql.copy(out, 5);
  return out;
})();

type State = 'startup' | 'auth' | 'ready' | 'closed';

/** A FramerHandler whose classify and message are swapped as the session moves on, instead of testing a state per message. */
type SwitchableHandler = FramerHandler & {
  classify: FramerHandler['classify'];
  message: FramerHandler['message'];
};

interface RoleProbe {
  resolve(role: string): void;
  reject(err: Error): void;
  role: string | undefined;
  error: string | undefined;
}

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
  private readonly clientHandler: SwitchableHandler;
  private readonly serverHandler: SwitchableHandler;
  private readonly gate = new AuthGate();
  /** ReadyForQuery messages owed by the server (one per Query, Sync, FunctionCall sent). */
  private pendingReady = 0;
  /** An Execute was sent with no Sync yet (a Flush-driven client); its statement may be running. */
  private unsynced = false;
  /** An extended-protocol message was sent with no Sync yet: the server may be skipping to the Sync. */
  private extendedOpen = false;
  /** Transaction status from the last ReadyForQuery: I, T or E. */
  private txStatus = 0x49;
  /** The client is not read from: authenticated, waiting for the first ReadyForQuery. */
  private clientHeld = false;
  /** A `SELECT current_user` the session slipped in for a 'new' start, whose answer it swallows. */
  private probe: RoleProbe | undefined;

  /** For interceptors: the transaction status the client last saw (I idle, T in a transaction, E failed). */
  get transactionStatus(): 'I' | 'T' | 'E' {
    return String.fromCharCode(this.txStatus) as 'I' | 'T' | 'E';
  }
  private serverSentFatal = false;
  private clientTerminated = false;
  private draining = false;
  /** The session reached its first ReadyForQuery (it was logged as opened). */
  private opened = false;
  private application: string | undefined;
  private readonly openedAt = Date.now();
  private bytesIn = 0;
  private bytesOut = 0;
  private closeReason = 'client disconnected';
  private startupTimer: NodeJS.Timeout | undefined;
  /** The backend's own cancel key, and the one the client was given instead (same pid, the proxy's secret). */
  backendKey: { pid: number; secret: number } | undefined;
  proxyKey: { pid: number; secret: number } | undefined;
  readonly remote: string;
  /** The client's address without the port: what abuse is counted by. */
  readonly address: string;
  private readonly log: Logger;

  constructor(
    socket: net.Socket,
    private readonly ctx: SessionContext,
  ) {
    this.client = socket;
    this.address = socket.remoteAddress ?? 'unix';
    this.remote = `${this.address}:${socket.remotePort ?? 0}`;
    this.log = ctx.log.child({ client: this.remote });
    this.clientHandler = this.makeClientHandler();
    this.serverHandler = this.makeServerHandler();
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

  // ---- startup: negotiation (startup.ts), then the upstream connection

  private async startup(): Promise<void> {
    const n = await negotiate(this.client, {
      tls: this.ctx.tls,
      cancel: (pid, secret) => {
        this.ctx.stats.cancelRequests++;
        this.ctx.cancel(pid, secret, this.address);
      },
      upgraded: (secure) => {
        this.client = secure;
        secure.on('error', (err) => this.onClientGone(err.message));
      },
    });
    if (n.kind === 'cancel') {
      this.client.end();
      this.finish();
      return;
    }
    this.user = n.user;
    this.database = n.database;
    await this.connect(n.params);
  }

  private async connect(params: Map<string, string>): Promise<void> {
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
    this.log.debug({ user: this.user, database: this.database, application: params.get('application_name') }, 'authenticating');
    this.application = params.get('application_name');

    this.serverFramer = new Framer(this.serverHandler, 0x7fffffff);
    this.clientFramer = new Framer(this.clientHandler, this.ctx.maxMessageSize);
    server.on('data', (chunk: Buffer) => this.fromServer(chunk));
    this.client.on('data', (chunk: Buffer) => this.fromClient(chunk));
    this.client.on('drain', () => server.resume());
    server.on('drain', () => {
      if (!this.clientHeld) this.client.resume();
    });
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

  /**
   * The DSL error whose marker the server's error quotes (as in `invalid input syntax for
   * type integer: "<marker>"`, in whatever language the server speaks), forgotten once found.
   */
  private markedError(msg: Buffer): PgError | undefined {
    const text = errorField(msg, 0x4d);
    if (text === undefined) return undefined;
    for (const [marker, fields] of this.pendingErrors) {
      if (!text.includes(marker)) continue;
      this.pendingErrors.delete(marker);
      return fields;
    }
    return undefined;
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

  /** Whatever feeding the client's bytes threw: a protocol violation, a goodbye, or a bug of ours; each closes only this session. */
  private clientStreamFailed(err: unknown): void {
    if (this.state === 'closed') return;
    if (err instanceof ClientGone) {
      // A Terminate during authentication: the client gave up, nothing to tell anyone.
      this.clientTerminated = true;
      this.closeReason = 'client terminated during authentication';
      this.onClientGone(this.closeReason);
      return;
    }
    if (!(err instanceof ProtocolViolation)) {
      this.internalError(err);
      return;
    }
    this.ctx.stats.protocolErrors++;
    this.ctx.stats.refusedMessages++;
    this.closeReason = `protocol violation: ${err.message}`;
    this.ctx.noteAbuse(
      this.address,
      { client: this.remote, user: this.user, authenticated: this.state === 'ready', reason: err.message },
      'protocol violation from client',
    );
    this.fatal({ severity: 'FATAL', code: err.code, message: err.message, ...err.more });
  }

  private fromServer(chunk: Buffer): void {
    this.bytesOut += chunk.length;
    this.ctx.stats.bytesToClients += chunk.length;
    try {
      this.serverFramer!.feed(chunk);
    } catch (err) {
      if (this.state === 'closed') return;
      if (!(err instanceof ProtocolViolation)) {
        this.internalError(err);
        return;
      }
      this.closeReason = `protocol violation from server: ${err.message}`;
      this.log.error({ reason: err.message }, 'protocol violation from server');
      this.fatal({ severity: 'FATAL', code: '08P01', message: `invalid message from the upstream server: ${err.message}` });
    }
  }

  /** A bug in handling this session's bytes: this session ends, the proxy carries on. */
  private internalError(err: unknown): void {
    if (this.state === 'closed') return;
    this.ctx.stats.internalErrors++;
    const e = err instanceof Error ? err : new Error(String(err));
    this.closeReason = `internal error: ${e.message}`;
    this.log.error({ err: e.message, stack: e.stack, user: this.user }, 'internal error while relaying; closing the session');
    if (this.busy) this.cancelBackend();
    this.fatal({ severity: 'FATAL', code: 'XX000', message: 'internal error in pg-durable-proxy: the session was closed' });
  }

  private makeClientHandler(): SwitchableHandler {
    return {
      // Until the session is ready: only answers to the server's authentication requests (startup.ts).
      classify: (type: number, length: number): Classification => {
        const c = this.gate.classify(type, length);
        if (c === 'terminate') throw new ClientGone();
        return c;
      },
      message: (msg: Buffer): undefined => {
        this.gate.clientMessage(msg, this.server instanceof tls.TLSSocket);
        return undefined;
      },
      write: (bytes: Buffer): void => {
        // Held bytes released after the session closed (a 'new' start settling late) go nowhere.
        if (this.state === 'closed') return;
        if (!this.server!.write(bytes)) this.client.pause();
      },
      failed: (err: unknown): void => this.clientStreamFailed(err),
    };
  }

  /** The client side once ready: one switch per message header, nothing allocated. */
  private readonly readyClientClassify = (type: number): Classification => {
    switch (type) {
      case MSG.query:
        this.ctx.stats.queries++;
        this.pendingReady++;
        return COLLECT;
      case MSG.parse:
        this.extendedOpen = true;
        return COLLECT;
      case 0x42: // Bind
      case 0x44: // Describe
      case 0x43: // Close
        this.extendedOpen = true;
        return PASS;
      case MSG.execute:
        this.ctx.stats.queries++;
        this.unsynced = true;
        this.extendedOpen = true;
        return PASS;
      case 0x53: // Sync
        this.unsynced = false;
        this.extendedOpen = false;
        this.pendingReady++;
        return PASS;
      case 0x46: // FunctionCall
        this.pendingReady++;
        return PASS;
      case MSG.terminate:
        this.clientTerminated = true;
        return PASS;
      default:
        if (!isFrontendType(type)) throw new ProtocolViolation(`invalid frontend message type ${type}`);
        return PASS;
    }
  };

  private readonly readyClientMessage = (msg: Buffer): Buffer | undefined | Promise<Buffer | undefined> => {
    if (mentionsDf(msg)) this.ctx.stats.dfStatements++;
    else if (!mentionsDatabase(msg)) return undefined;
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
  };

  private makeServerHandler(): SwitchableHandler {
    return {
      classify: (): Classification => COLLECT, // startup messages are few and some get rewritten
      message: (msg) => this.serverMessage(msg),
      write: (bytes: Buffer): void => {
        if (!this.client.write(bytes)) this.server!.pause();
      },
    };
  }

  private readonly readyServerClassify = (type: number): Classification => {
    if (type === MSG.readyForQuery) return COLLECT;
    if (type === MSG.errorResponse) {
      this.ctx.stats.serverErrors++;
      return COLLECT;
    }
    return PASS;
  };

  private serverMessage(msg: Buffer): Buffer | undefined {
    switch (msg[0]) {
      case MSG.readyForQuery:
        this.txStatus = msg[5] ?? 0x49;
        if (this.state !== 'ready') return this.becomeReady();
        if (this.pendingReady > 0) {
          this.pendingReady--;
          if (!this.busy && this.draining) queueMicrotask(() => this.drain());
        }
        return undefined;
      case MSG.errorResponse: {
        if (this.pendingErrors.size > 0) {
          const replacement = this.markedError(msg);
          if (replacement) return errorResponse(replacement);
        }
        const sev = errorSeverity(msg);
        if (sev === 'FATAL' || sev === 'PANIC') this.serverSentFatal = true;
        if (this.state !== 'ready') {
          this.ctx.stats.serverErrors++;
          const code = errorField(msg, 0x43 /* C */);
          if (!this.gate.authenticated && code?.startsWith('28')) {
            this.ctx.stats.authFailures++;
            this.closeReason = 'authentication failed';
            this.ctx.noteAbuse(
              this.address,
              { client: this.remote, user: this.user, database: this.database, code, reason: errorField(msg, 0x4d) },
              'login failed',
            );
          }
        }
        return undefined;
      }
      case MSG.authentication: {
        const out = this.gate.fromServer(msg);
        // Authenticated: the client waits for ReadyForQuery; what it sends early stays unread until then.
        if (this.gate.authenticated && !this.clientHeld) {
          this.clientHeld = true;
          this.client.pause();
        }
        return out;
      }
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
  }

  /** The server's first ReadyForQuery: from here on the client's messages are relayed and interpreted. */
  private becomeReady(): undefined {
    this.state = 'ready';
    this.opened = true;
    clearTimeout(this.startupTimer);
    this.clientHandler.classify = this.readyClientClassify;
    this.clientHandler.message = this.readyClientMessage;
    this.serverHandler.classify = this.readyServerClassify;
    this.log.info({ user: this.user, database: this.database, application: this.application }, 'connection opened');
    if (this.draining) queueMicrotask(() => this.drain());
    this.releaseClient();
    return undefined;
  }

  private releaseClient(): void {
    this.clientHeld = false;
    if (this.state !== 'closed') this.client.resume();
  }

  // ---- the current role, for a 'new' start

  /** See SessionInfo.currentRole. */
  currentRole(): Promise<string> | undefined {
    // Idle: the Query being intercepted is the only one owed a ReadyForQuery and no
    // extended-protocol batch is open, so the server answers the probe next and alone.
    if (this.state !== 'ready' || this.probe || this.pendingReady !== 1 || this.unsynced || this.extendedOpen) return undefined;
    return new Promise<string>((resolve, reject) => {
      this.probe = { resolve, reject, role: undefined, error: undefined };
      this.serverHandler.classify = () => COLLECT;
      this.serverHandler.message = (msg) => this.probeMessage(msg);
      this.server!.write(ROLE_PROBE);
    });
  }

  /** The server's answer to the probe is swallowed; asynchronous messages (notices, notifications) still reach the client. */
  private probeMessage(msg: Buffer): Buffer | undefined {
    const probe = this.probe!;
    switch (msg[0]) {
      case 0x44: // DataRow: one column, the role name
        if (msg.length >= 11 && msg.readInt16BE(5) === 1) {
          const len = msg.readInt32BE(7);
          if (len >= 0 && 11 + len <= msg.length) probe.role = msg.toString('utf8', 11, 11 + len);
        }
        return EMPTY;
      case 0x54: // RowDescription
      case 0x43: // CommandComplete
      case 0x49: // EmptyQueryResponse
        return EMPTY;
      case MSG.errorResponse: {
        probe.error = errorField(msg, 0x4d) ?? 'error';
        const sev = errorSeverity(msg);
        if (sev === 'FATAL' || sev === 'PANIC') {
          // The session is ending: the client sees why.
          this.serverSentFatal = true;
          this.endProbe();
          probe.reject(new Error(probe.error));
          return undefined;
        }
        return EMPTY;
      }
      case MSG.readyForQuery:
        this.txStatus = msg[5] ?? this.txStatus;
        this.endProbe();
        if (probe.role !== undefined && probe.error === undefined) probe.resolve(probe.role);
        else probe.reject(new Error(`could not learn the current role: ${probe.error ?? 'no answer'}`));
        return EMPTY;
      default:
        return undefined;
    }
  }

  private endProbe(): void {
    this.probe = undefined;
    this.serverHandler.classify = this.state === 'ready' ? this.readyServerClassify : () => COLLECT;
    this.serverHandler.message = (msg) => this.serverMessage(msg);
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
    if (!this.closeReason.startsWith('authentication failed')) {
      this.closeReason = this.serverSentFatal ? 'server ended the session' : reason;
    }
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
    if (violation) {
      this.ctx.stats.protocolErrors++;
      this.ctx.stats.refusedMessages++;
    }
    const message = err instanceof Error ? err.message : String(err);
    this.closeReason = `startup failed: ${message}`;
    if (violation) this.ctx.noteAbuse(this.address, { client: this.remote, reason: message }, 'startup refused');
    else this.log.error({ err: message, stack: (err as Error)?.stack }, 'startup failed');
    this.fatal({
      severity: 'FATAL',
      code: violation ? err.code : '08000',
      message,
    });
  }

  private finish(): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    clearTimeout(this.startupTimer);
    this.ctx.unregister(this);
    this.ctx.stats.connectionsActive--;
    const probe = this.probe;
    this.probe = undefined;
    probe?.reject(new Error('the session closed'));
    const fields = {
      user: this.user,
      database: this.database,
      durationMs: Date.now() - this.openedAt,
      bytesIn: this.bytesIn,
      bytesOut: this.bytesOut,
      reason: this.closeReason,
    };
    // Sessions that never authenticated are a stranger's to open at will: counted and rate-limited elsewhere, not logged each.
    if (this.opened) this.log.info(fields, 'connection closed');
    else if (this.server !== undefined) this.log.debug(fields, 'connection closed before authentication');
  }
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
