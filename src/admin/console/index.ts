// The web console, served by the admin endpoint under /console/: the page,
// its JSON API and its live event streams. See docs/console.md.
//
//   GET  /console/                          the page (assets under /console/assets/)
//   GET  /console/api/session               who is signed in (and the CSRF token)
//   POST /console/api/login                 {database, role, password} or {database, token}
//   POST /console/api/logout
//   GET  /console/api/instances             ?status=&label=&role=&cursor=&limit=
//   GET  /console/api/instances/ID          the instance, its nodes, df.explain
//   POST /console/api/instances/ID/cancel   {reason}
//   POST /console/api/instances/ID/signal   {name, data}
//   GET  /console/api/events[?instance=ID]  server-sent events
//
// Every POST but the sign-in needs the session's CSRF token (X-CSRF-Token);
// every POST needs a JSON body and, from a browser, the console's own origin.
import type http from 'node:http';
import type pg from 'pg';
import type { Logger } from 'pino';
import type { AdminHandler } from '../server.js';
import type { EngineEvents } from '../../engine/events.js';
import { HttpError, overTls, parseCookies, readJson, remoteAddress, sameOrigin, sendError, sendJson, SECURITY_HEADERS } from './http.js';
import { LiveHub, MAX_STREAMS } from './live.js';
import { cancelInstance, ID, INSTANCE_STATUSES, instanceDetail, instanceStatus, listInstances, signalInstance } from './queries.js';
import { sameSecret, Sessions, type Session } from './sessions.js';
import { hasAsset, serveAsset } from './static.js';

export const PREFIX = '/console';
export const COOKIE = 'pgdp_console';

export interface ConsoleOptions {
  /** The upstream URL clients log in to: sign-ins connect there with their own role, password and database. */
  upstreamUrl: string;
  /** The executor's own connection to a database: what the operator token reads as. */
  control: (database: string) => pg.ClientConfig;
  /** The database the sign-in form offers first (the executor's). */
  defaultDatabase: string;
  /** When set, the only databases one may sign in to (the proxy's --databases). */
  databases?: string[];
  /** The engine's events: what live views redraw on. */
  events?: EngineEvents;
  /** The operator token (--admin-token); without it only roles sign in. */
  adminToken?: string;
  /** Whether PostgreSQL roles may sign in with their passwords (--console on); default true. */
  roleSignIn?: boolean;
  log: Logger;
  /** A session unused this long ends (default 30 minutes). */
  idleMs?: number;
  /** A session ends this long after sign-in (default 12 hours). */
  maxAgeMs?: number;
  /** Sessions at once (default 64; each role session holds a database connection). */
  maxSessions?: number;
}

const BODY_LIMIT = 1024 * 1024;

function str(v: unknown, what: string, max: number): string {
  if (typeof v !== 'string') throw new HttpError(400, `${what} is required`);
  if (v.length > max) throw new HttpError(400, `${what} is longer than ${max} characters`);
  // A NUL would end the value in the startup packet and start another parameter there.
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(v)) throw new HttpError(400, `${what} contains a control character`);
  return v;
}

function obj(v: unknown): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new HttpError(400, 'expected a JSON object');
  return v as Record<string, unknown>;
}

export class Console {
  private readonly sessions: Sessions;
  private readonly hub: LiveHub;
  private closed = false;

  /** The admin endpoint's handler: takes /console and everything under it. */
  readonly handler: AdminHandler = (req, res) => {
    const path = (req.url ?? '/').split('?')[0]!;
    if (path !== PREFIX && !path.startsWith(PREFIX + '/')) return false;
    this.route(req, res, path.slice(PREFIX.length)).catch((err: unknown) => {
      if (!(err instanceof HttpError)) this.opts.log.error({ err: (err as Error).message, path }, 'console request failed');
      sendError(res, err);
    });
    return true;
  };

  constructor(private readonly opts: ConsoleOptions) {
    this.sessions = new Sessions({
      upstreamUrl: opts.upstreamUrl,
      control: opts.control,
      ...(opts.adminToken !== undefined ? { adminToken: opts.adminToken } : {}),
      idleMs: opts.idleMs ?? 30 * 60_000,
      maxAgeMs: opts.maxAgeMs ?? 12 * 3600_000,
      maxSessions: opts.maxSessions ?? 64,
      log: opts.log,
    });
    this.hub = new LiveHub(opts.events);
  }

  async close(): Promise<void> {
    this.closed = true;
    this.hub.close();
    await this.sessions.close();
  }

  private session(req: http.IncomingMessage, touch = true): Session | undefined {
    return this.sessions.get(parseCookies(req.headers.cookie).get(COOKIE), touch);
  }

  private signedIn(req: http.IncomingMessage): Session {
    const s = this.session(req);
    if (!s) throw new HttpError(401, 'not signed in (or the session expired)');
    return s;
  }

  /** A POST of a signed-in session: same origin, and its CSRF token. */
  private acting(req: http.IncomingMessage): Session {
    if (!sameOrigin(req)) throw new HttpError(403, 'cross-origin request refused');
    const s = this.signedIn(req);
    const token = req.headers['x-csrf-token'];
    if (typeof token !== 'string' || !sameSecret(token, s.csrf)) throw new HttpError(403, 'missing or wrong CSRF token (X-CSRF-Token)');
    return s;
  }

  private describe(s: Session | undefined): Record<string, unknown> {
    const base = {
      token_enabled: this.sessions.tokenEnabled,
      default_database: this.opts.defaultDatabase,
      databases: this.opts.databases ?? null,
    };
    if (!s) return { signed_in: false, ...base };
    return { signed_in: true, ...base, kind: s.kind, role: s.role, database: s.database, sees_all: s.seesAll, csrf: s.csrf };
  }

  private cookie(req: http.IncomingMessage, value: string, clear = false): string {
    // No Path: the browser scopes it to the API's own path as it sees it, behind any reverse-proxy prefix.
    return [`${COOKIE}=${value}`, 'HttpOnly', 'SameSite=Strict', ...(overTls(req) ? ['Secure'] : []), ...(clear ? ['Max-Age=0'] : [])].join('; ');
  }

  private database(v: unknown): string {
    const db = v === undefined || v === null || v === '' ? this.opts.defaultDatabase : str(v, 'database', 63);
    if (this.opts.databases && !this.opts.databases.includes(db)) {
      throw new HttpError(400, `database "${db}" is not served by this proxy; it serves: ${this.opts.databases.join(', ')}`);
    }
    return db;
  }

  private async route(req: http.IncomingMessage, res: http.ServerResponse, path: string): Promise<void> {
    if (this.closed) throw new HttpError(503, 'the console is stopping');
    const method = req.method ?? 'GET';
    const allow = (...methods: string[]): void => {
      if (!methods.includes(method)) throw new HttpError(405, `use ${methods.join(' or ')}`, { allow: methods.join(', ') });
    };
    if (path === '') {
      allow('GET', 'HEAD');
      res.writeHead(301, { ...SECURITY_HEADERS, location: `${PREFIX}/` }).end();
      return;
    }
    if (path === '/') {
      allow('GET', 'HEAD');
      serveAsset(req, res, 'index.html');
      return;
    }
    if (path.startsWith('/assets/')) {
      allow('GET', 'HEAD');
      const name = path.slice('/assets/'.length);
      if (!hasAsset(name) || !serveAsset(req, res, name)) throw new HttpError(404, 'no such file');
      return;
    }
    if (!path.startsWith('/api/')) throw new HttpError(404, 'not found');
    const api = path.slice('/api'.length);
    const query = new URL(req.url ?? '/', 'http://console').searchParams;

    if (api === '/session') {
      allow('GET');
      sendJson(res, 200, this.describe(this.session(req)));
      return;
    }
    if (api === '/login') {
      allow('POST');
      if (!sameOrigin(req)) throw new HttpError(403, 'cross-origin request refused');
      const body = obj(await readJson(req, 64 * 1024));
      const database = this.database(body.database);
      const address = remoteAddress(req);
      let s: Session;
      if (body.token !== undefined) {
        s = await this.sessions.signInOperator(address, database, str(body.token, 'token', 1024));
      } else {
        if (this.opts.roleSignIn === false) {
          throw new HttpError(403, 'signing in with a role is off on this proxy (start it with --console on); sign in with the operator token');
        }
        const role = str(body.role, 'role', 63).trim();
        if (role === '') throw new HttpError(400, 'role is required');
        s = await this.sessions.signInRole(address, database, role, str(body.password, 'password', 1024));
      }
      // Signing in again replaces the session the browser had.
      const previous = parseCookies(req.headers.cookie).get(COOKIE);
      if (previous) void this.sessions.end(previous, 'signed in again');
      sendJson(res, 200, this.describe(s), { 'set-cookie': this.cookie(req, s.id) });
      return;
    }
    if (api === '/logout') {
      allow('POST');
      const s = this.acting(req);
      await this.sessions.end(s.id, 'signed out');
      sendJson(res, 200, { signed_in: false }, { 'set-cookie': this.cookie(req, '', true) });
      return;
    }
    if (api === '/events') {
      allow('GET');
      const s = this.signedIn(req);
      const instance = query.get('instance') ?? undefined;
      if (instance !== undefined && !ID.test(instance)) throw new HttpError(400, 'invalid instance id');
      if (this.hub.streams >= MAX_STREAMS) throw new HttpError(503, 'too many live views open: try again later');
      this.hub.open(s, instance, res);
      return;
    }
    if (api === '/instances') {
      allow('GET');
      const s = this.signedIn(req);
      const status = query.get('status') || undefined;
      if (status !== undefined && !(INSTANCE_STATUSES as readonly string[]).includes(status)) {
        throw new HttpError(400, `status must be one of ${INSTANCE_STATUSES.join(', ')}`);
      }
      const limitText = query.get('limit');
      const limit = limitText === null ? 50 : Number(limitText);
      if (!Number.isInteger(limit) || limit < 1 || limit > 500) throw new HttpError(400, 'limit must be a whole number from 1 to 500');
      const label = query.get('label') || undefined;
      const role = query.get('role')?.trim() || undefined;
      const cursor = query.get('cursor') || undefined;
      if ((label?.length ?? 0) > 1000 || (role?.length ?? 0) > 63 || (cursor?.length ?? 0) > 512) throw new HttpError(400, 'filter too long');
      const page = await listInstances(s.reader, {
        limit,
        ...(status ? { status } : {}),
        ...(label ? { label } : {}),
        ...(role ? { role } : {}),
        ...(cursor ? { cursor } : {}),
      });
      sendJson(res, 200, page);
      return;
    }
    const m = /^\/instances\/([^/]+)(\/cancel|\/signal)?$/.exec(api);
    if (!m) throw new HttpError(404, 'not found');
    const id = m[1]!;
    if (!ID.test(id)) throw new HttpError(400, 'invalid instance id');
    if (m[2] === undefined) {
      allow('GET');
      const s = this.signedIn(req);
      const detail = await instanceDetail(s.reader, id);
      if (!detail) throw new HttpError(404, `Instance not found or access denied: ${id}`);
      sendJson(res, 200, detail);
      return;
    }
    allow('POST');
    const s = this.acting(req);
    const body = obj(await readJson(req, BODY_LIMIT));
    if (m[2] === '/cancel') {
      const reason = body.reason === undefined || body.reason === '' ? `Cancelled in the console by ${s.kind === 'operator' ? 'the operator' : s.role}` : str(body.reason, 'reason', 1000);
      const status = await instanceStatus(s.reader, id);
      if (status !== undefined && ['completed', 'failed', 'cancelled'].includes(status)) {
        throw new HttpError(409, `Instance ${id} has already finished (${status})`);
      }
      const result = await cancelInstance(s.reader, id, reason);
      this.opts.log.info({ instance: id, database: s.database, by: s.kind === 'operator' ? 'operator' : s.role }, 'console: instance cancelled');
      this.hub.touch(s.database, id);
      sendJson(res, 200, { result });
      return;
    }
    const name = str(body.name, 'name', 200);
    const data = body.data === undefined ? '{}' : typeof body.data === 'string' ? body.data : JSON.stringify(body.data);
    if (data.length > BODY_LIMIT) throw new HttpError(413, 'the signal payload is too large');
    const result = await signalInstance(s.reader, id, name, data);
    this.opts.log.info({ instance: id, database: s.database, signal: name, by: s.kind === 'operator' ? 'operator' : s.role }, 'console: signal sent');
    this.hub.touch(s.database, id);
    sendJson(res, 200, { result });
  }
}
