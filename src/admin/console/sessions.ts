// Who is signed in: a PostgreSQL role whose password the upstream checked
// (one connection of its own, as that role, per session), or the operator
// (the token; reads as the executor's control login, shared pools). Sessions
// live in memory, keyed by a random id in an HttpOnly cookie, and end on
// sign-out, after an idle time, or after a maximum age.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import pg from 'pg';
import { parseIntoClientConfig } from 'pg-connection-string';
import type { Logger } from 'pino';
import { HttpError } from './http.js';

/** What the console queries through: a session's own connection, or an operator pool. */
export interface Reader {
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(text: string, values?: unknown[]): Promise<pg.QueryResult<R>>;
}

export interface Session {
  readonly id: string;
  /** Required, as the X-CSRF-Token header, on every POST of the session. */
  readonly csrf: string;
  readonly kind: 'role' | 'operator';
  /** The role the session reads as (the operator: the control login's). */
  readonly role: string;
  readonly database: string;
  /** Whether the role bypasses row-level security (a superuser, the df owner, or the operator). */
  readonly seesAll: boolean;
  readonly reader: Reader;
  readonly created: number;
  lastSeen: number;
  /** Closers of the session's open event streams. */
  readonly streams: Set<() => void>;
}

interface Held extends Session {
  release(): Promise<void>;
}

export interface SessionOptions {
  /** The upstream URL clients log in to; sign-ins use it with their own user, password and database. */
  upstreamUrl: string;
  /** The executor's own connection to a database: the operator's reads. */
  control: (database: string) => pg.ClientConfig;
  adminToken?: string;
  /** A session unused this long ends. */
  idleMs: number;
  /** A session ends this long after sign-in, used or not. */
  maxAgeMs: number;
  /** Sessions at once; a sign-in past it is refused. */
  maxSessions: number;
  log: Logger;
}

const CONSOLE_APP = 'pg-durable-proxy console';
/** Statements of the console end within this: a page never hangs on a lock. */
const STATEMENT_TIMEOUT_MS = 15_000;
/** Names resolve in pg_catalog, never in a schema a user can write to. */
const SEARCH_PATH = '-c search_path=pg_catalog,pg_temp';
/** Sign-in failures one address may have in FAIL_WINDOW_MS before it must wait. */
const MAX_FAILURES = 10;
const FAIL_WINDOW_MS = 5 * 60_000;
/** Sign-ins in flight at once (each opens a connection to the upstream). */
const MAX_PENDING_SIGN_INS = 16;
/** Sessions one role holds in one database at once; another sign-in ends the oldest. */
export const SESSIONS_PER_ROLE = 4;
/** Sessions kept for the operator token whatever the roles do. */
const OPERATOR_RESERVE = 8;

const digest = (s: string): Buffer => createHash('sha256').update(s, 'utf8').digest();

/** Constant-time comparison of two strings. */
export function sameSecret(a: string, b: string): boolean {
  return timingSafeEqual(digest(a), digest(b));
}

function pgCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' ? code : undefined;
}

export class Sessions {
  private readonly sessions = new Map<string, Held>();
  private readonly pools = new Map<string, pg.Pool>();
  private readonly failures = new Map<string, number[]>();
  private pending = 0;
  private readonly sweeper: NodeJS.Timeout;
  private readonly base: pg.ClientConfig;

  constructor(private readonly opts: SessionOptions) {
    const parsed = parseIntoClientConfig(opts.upstreamUrl);
    const { user: _user, password: _password, database: _database, ...rest } = parsed;
    this.base = rest;
    this.sweeper = setInterval(() => this.sweep(), Math.min(30_000, Math.max(1000, Math.floor(opts.idleMs / 4))));
    this.sweeper.unref();
  }

  get tokenEnabled(): boolean {
    return this.opts.adminToken !== undefined;
  }

  /** The session of a request's cookie, if it is still valid; using it counts as activity when `touch`. */
  get(id: string | undefined, touch = true): Session | undefined {
    if (id === undefined) return undefined;
    const s = this.sessions.get(id);
    if (!s) return undefined;
    const now = Date.now();
    if (now - s.lastSeen > this.opts.idleMs || now - s.created > this.opts.maxAgeMs) {
      void this.end(id, 'expired');
      return undefined;
    }
    if (touch) s.lastSeen = now;
    return s;
  }

  /** Signs a role in: the upstream itself checks the password. Throws HttpError with what to tell the user. */
  async signInRole(address: string, database: string, role: string, password: string): Promise<Session> {
    this.admit(address);
    this.pending++;
    let asked = false;
    const client = new pg.Client({
      ...this.base,
      user: role,
      database,
      // Called only when the server asks for a password: a login it lets in without one (trust, peer) is refused below.
      password: () => {
        asked = true;
        return password;
      },
      application_name: CONSOLE_APP,
      options: [this.base.options, SEARCH_PATH].filter(Boolean).join(' '),
      statement_timeout: STATEMENT_TIMEOUT_MS,
      query_timeout: STATEMENT_TIMEOUT_MS + 5000,
      connectionTimeoutMillis: 10_000,
    });
    client.on('error', () => undefined); // a dead connection ends its session (below)
    try {
      try {
        await client.connect();
      } catch (err) {
        const code = pgCode(err);
        if (code?.startsWith('28')) {
          this.failed(address);
          throw new HttpError(401, 'sign-in failed: wrong role name or password (or the server does not let this role in)');
        }
        if (code === '3D000') {
          this.failed(address); // counted too: no endless probing for which databases exist
          throw new HttpError(400, `database "${database}" does not exist`);
        }
        if (code === '53300') throw new HttpError(503, 'the database server has no free connection slots');
        throw new HttpError(502, `cannot reach the database server: ${(err as Error).message}`);
      }
      if (!asked) {
        await client.end().catch(() => undefined);
        this.failed(address);
        throw new HttpError(
          401,
          'sign-in refused: the database server let this role in without checking a password (trust or peer authentication), so the console cannot tell who you are',
        );
      }
      let info: { df: boolean; can: boolean | null; sees_all: boolean; role: string };
      try {
        info = (
          await client.query<{ df: boolean; can: boolean | null; sees_all: boolean; role: string }>(
            `SELECT current_user AS role,
                    to_regclass('df.instances') IS NOT NULL AS df,
                    CASE WHEN to_regclass('df.instances') IS NOT NULL THEN has_table_privilege('df.instances', 'SELECT') END AS can,
                    coalesce((SELECT r.rolsuper OR r.rolbypassrls FROM pg_roles r WHERE r.rolname = current_user), false)
                      OR coalesce((SELECT pg_has_role(current_user, n.nspowner, 'USAGE') FROM pg_namespace n WHERE n.nspname = 'df'), false) AS sees_all`,
          )
        ).rows[0]!;
      } catch (err) {
        await client.end().catch(() => undefined);
        throw new HttpError(502, `cannot read the database: ${(err as Error).message}`);
      }
      if (!info.df) {
        await client.end().catch(() => undefined);
        throw new HttpError(400, `database "${database}" has no durable workflows (no df schema): pick the database the proxy serves`);
      }
      if (!info.can) {
        await client.end().catch(() => undefined);
        throw new HttpError(403, `role "${role}" may not use durable workflows in database "${database}" (an administrator grants it with df.grant_usage)`);
      }
      this.failures.delete(address);
      const s = this.add({
        kind: 'role',
        role: info.role,
        database,
        seesAll: info.sees_all,
        reader: client,
        release: () => client.end().catch(() => undefined),
      });
      client.on('error', () => void this.end(s.id, 'connection lost'));
      client.on('end', () => void this.end(s.id, 'connection closed'));
      this.opts.log.info({ role: info.role, database }, 'console sign-in');
      return s;
    } catch (err) {
      await client.end().catch(() => undefined);
      throw err;
    } finally {
      this.pending--;
    }
  }

  /** Signs the operator in with the admin token: every role's work, read as the executor's control login. */
  async signInOperator(address: string, database: string, token: string): Promise<Session> {
    this.admit(address);
    if (this.opts.adminToken === undefined || !sameSecret(token, this.opts.adminToken)) {
      this.failed(address);
      throw new HttpError(401, this.opts.adminToken === undefined ? 'no operator token is configured (--admin-token)' : 'sign-in failed: wrong operator token');
    }
    this.failures.delete(address);
    const pool = this.pool(database);
    let role: string;
    try {
      const { rows } = await pool.query<{ df: boolean; role: string }>(`SELECT current_user AS role, to_regclass('df.instances') IS NOT NULL AS df`);
      if (!rows[0]!.df) throw new HttpError(400, `database "${database}" has no durable workflows (no df schema): pick the database the proxy serves`);
      role = rows[0]!.role;
    } catch (err) {
      if (err instanceof HttpError) throw err;
      if (pgCode(err) === '3D000') throw new HttpError(400, `database "${database}" does not exist`);
      throw new HttpError(502, `cannot reach the database as the executor: ${(err as Error).message}`);
    }
    this.opts.log.info({ database }, 'console sign-in with the operator token');
    return this.add({ kind: 'operator', role, database, seesAll: true, reader: pool, release: async () => undefined });
  }

  /** Ends a session: its connection is closed and its event streams end. */
  async end(id: string, why: string): Promise<void> {
    const s = this.sessions.get(id);
    if (!s) return;
    this.sessions.delete(id);
    for (const close of [...s.streams]) close();
    s.streams.clear();
    this.opts.log.debug({ role: s.role, database: s.database, why }, 'console session ended');
    await s.release();
  }

  async close(): Promise<void> {
    clearInterval(this.sweeper);
    await Promise.all([...this.sessions.keys()].map((id) => this.end(id, 'console stopped')));
    await Promise.all([...this.pools.values()].map((p) => p.end().catch(() => undefined)));
    this.pools.clear();
  }

  get size(): number {
    return this.sessions.size;
  }

  private add(s: Omit<Held, 'id' | 'csrf' | 'created' | 'lastSeen' | 'streams'>): Held {
    // One role holds a few sessions at most (each role session is a database connection): a new
    // sign-in ends its oldest, so no tenant can take the console's room, or the server's connections.
    if (s.kind === 'role') {
      const mine = [...this.sessions.values()].filter((o) => o.kind === 'role' && o.role === s.role && o.database === s.database);
      if (mine.length >= SESSIONS_PER_ROLE) void this.end(mine[0]!.id, 'replaced by a newer sign-in of the role');
    }
    // Some room is kept for the operator, whatever the roles do.
    const room = s.kind === 'operator' ? this.opts.maxSessions : this.opts.maxSessions - OPERATOR_RESERVE;
    if (this.sessions.size >= room) {
      void s.release();
      throw new HttpError(503, 'too many console sessions: try again later');
    }
    const now = Date.now();
    const held: Held = {
      ...s,
      id: randomBytes(32).toString('base64url'),
      csrf: randomBytes(32).toString('base64url'),
      created: now,
      lastSeen: now,
      streams: new Set(),
    };
    this.sessions.set(held.id, held);
    return held;
  }

  /** The operator's pool for a database, shared by operator sessions. */
  private pool(database: string): pg.Pool {
    let p = this.pools.get(database);
    if (!p) {
      if (this.pools.size >= 64) throw new HttpError(503, 'too many databases open in the console');
      p = new pg.Pool({
        ...this.opts.control(database),
        application_name: `${CONSOLE_APP} (operator)`,
        statement_timeout: STATEMENT_TIMEOUT_MS,
        query_timeout: STATEMENT_TIMEOUT_MS + 5000,
        connectionTimeoutMillis: 10_000,
        max: 3,
        idleTimeoutMillis: 30_000,
      });
      p.on('error', () => undefined);
      this.pools.set(database, p);
    }
    return p;
  }

  /** Refuses a sign-in from an address with too many recent failures, or past the limits. */
  private admit(address: string): void {
    const now = Date.now();
    const recent = (this.failures.get(address) ?? []).filter((t) => now - t < FAIL_WINDOW_MS);
    if (recent.length) this.failures.set(address, recent);
    else this.failures.delete(address);
    if (recent.length >= MAX_FAILURES) {
      const wait = Math.ceil((recent[0]! + FAIL_WINDOW_MS - now) / 1000);
      throw new HttpError(429, `too many failed sign-ins from this address: try again in ${wait} s`, { 'retry-after': String(wait) });
    }
    if (this.pending >= MAX_PENDING_SIGN_INS) throw new HttpError(503, 'too many sign-ins at once: try again');
  }

  private failed(address: string): void {
    const list = this.failures.get(address) ?? [];
    list.push(Date.now());
    this.failures.set(address, list);
    // The oldest address goes first (a Map keeps insertion order): a flood of new addresses cannot reset the others.
    while (this.failures.size > 10_000) this.failures.delete(this.failures.keys().next().value!);
  }

  private sweep(): void {
    const now = Date.now();
    for (const [id, s] of this.sessions) {
      if (now - s.lastSeen > this.opts.idleMs || now - s.created > this.opts.maxAgeMs) void this.end(id, 'expired');
    }
  }
}
