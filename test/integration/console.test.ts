// The web console over HTTP (no browser): sign-in checked by PostgreSQL,
// the session cookie, CSRF, who sees what (row-level security, the operator
// token), cancel and signal through df.cancel/df.signal, and the live event
// streams fed by the engine's events; and the command's --console and
// --admin-token settings.
import type pg from 'pg';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Console } from '../../src/admin/console/index.js';
import { SESSIONS_PER_ROLE } from '../../src/admin/console/sessions.js';
import { AdminServer } from '../../src/admin/server.js';
import { loadConfig } from '../../src/config.js';
import { connectionTargets } from '../../src/engine/targets.js';
import { createRoles, dbUrl, startDurable, stepLogin, type Durable } from '../helpers/durable.js';
import { env, runCli, type CliProcess } from '../helpers/proxy.js';
import { eventually } from '../helpers/wait.js';

const ALICE = 'pgdp_console_alice';
const BOB = 'pgdp_console_bob';
const TOKEN = 'console-test-operator-token-0123456789';

let d: Durable;
let admin: AdminServer;
let con: Console;
let base: string;
let alice: pg.Client;
let bob: pg.Client;

interface Reply {
  status: number;
  headers: Headers;
  body: any;
}

/** A browser's view of the console: its cookie and CSRF token. */
class Visitor {
  cookie: string | undefined;
  csrf: string | undefined;
  setCookie: string | undefined;

  constructor(readonly origin = base) {}

  async req(path: string, opts: { method?: string; body?: unknown; headers?: Record<string, string>; csrf?: string | null } = {}): Promise<Reply> {
    const headers: Record<string, string> = { ...(opts.headers ?? {}) };
    if (this.cookie) headers.cookie = this.cookie;
    if (opts.body !== undefined) headers['content-type'] ??= 'application/json';
    const csrf = opts.csrf === undefined ? this.csrf : opts.csrf;
    if (opts.method === 'POST' && csrf) headers['x-csrf-token'] = csrf;
    const res = await fetch(this.origin + path, {
      method: opts.method ?? 'GET',
      headers,
      redirect: 'manual',
      ...(opts.body !== undefined ? { body: typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body) } : {}),
    });
    const text = await res.text();
    let body: unknown = text;
    try {
      body = JSON.parse(text);
    } catch {
      // not JSON
    }
    const set = res.headers.getSetCookie()[0];
    if (set) {
      this.setCookie = set;
      const value = set.split(';')[0]!;
      this.cookie = value.endsWith('=') ? undefined : value;
    }
    return { status: res.status, headers: res.headers, body };
  }

  async login(body: Record<string, unknown>, headers: Record<string, string> = {}): Promise<Reply> {
    const r = await this.req('/console/api/login', { method: 'POST', body, headers });
    if (r.status === 200) this.csrf = r.body.csrf;
    return r;
  }

  async as(role: string): Promise<this> {
    const r = await this.login({ role, password: `${role}-pw` });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    return this;
  }

  async ids(query = ''): Promise<string[]> {
    const r = await this.req(`/console/api/instances${query}`);
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    return r.body.instances.map((i: { id: string }) => i.id);
  }
}

/** A server-sent event stream, read as it arrives. */
async function events(v: Visitor, path: string): Promise<{ next(event: string, pred?: (data: any) => boolean, ms?: number): Promise<any>; seen: { event: string; data: any }[]; close(): void }> {
  const ac = new AbortController();
  const res = await fetch(base + path, { headers: { cookie: v.cookie ?? '' }, signal: ac.signal });
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toContain('text/event-stream');
  const seen: { event: string; data: any }[] = [];
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  void (async () => {
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let at;
        while ((at = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, at);
          buf = buf.slice(at + 2);
          const event = /^event: (.*)$/m.exec(block)?.[1];
          const data = /^data: (.*)$/m.exec(block)?.[1];
          if (event && data) seen.push({ event, data: JSON.parse(data) });
        }
      }
    } catch {
      // aborted
    }
  })();
  let from = 0;
  return {
    seen,
    async next(event, pred = () => true, ms = 10_000) {
      let found: any;
      await eventually(
        () => {
          const i = seen.findIndex((e, k) => k >= from && e.event === event && pred(e.data));
          if (i < 0) return false;
          from = i + 1;
          found = seen[i]!.data;
          return true;
        },
        `event ${event} on ${path}`,
        ms,
      );
      return found;
    },
    close: () => ac.abort(),
  };
}

async function start(c: pg.Client, fut: string, label: string): Promise<string> {
  return (await c.query<{ id: string }>(`SELECT df.start(${fut}, $1) AS id`, [label])).rows[0]!.id;
}

let direct: pg.Client | undefined;
const status = async (id: string): Promise<string> => {
  direct ??= await d.direct();
  return (await direct.query<{ s: string }>('SELECT status AS s FROM df.instances WHERE id = $1', [id])).rows[0]!.s;
};

beforeAll(async () => {
  d = await startDurable('pgdp_console');
  await createRoles([ALICE, BOB]);
  const su = await d.connect();
  for (const r of [ALICE, BOB]) await su.query(`SELECT df.grant_usage('${r}')`);
  con = new Console({
    upstreamUrl: dbUrl(env().adminUrl, d.database),
    control: connectionTargets(dbUrl(env().executorUrl, d.database), stepLogin()).control,
    defaultDatabase: d.database,
    events: d.executor.events,
    adminToken: TOKEN,
    log: pino({ level: 'silent' }),
  });
  admin = new AdminServer({ host: '127.0.0.1', port: 0, stats: d.proxy.stats, probeUrl: env().adminUrl, log: pino({ level: 'silent' }), handlers: [con.handler] });
  const a = await admin.listen();
  base = `http://${a.host}:${a.port}`;
  alice = await d.connect(ALICE, `${ALICE}-pw`);
  bob = await d.connect(BOB, `${BOB}-pw`);
});

afterAll(async () => {
  await admin?.close();
  await con?.close();
  await d?.close();
});

describe('the page', () => {
  it('is served with a Content-Security-Policy, scripts only from files, beside /healthz and /metrics', async () => {
    const v = new Visitor();
    const page = await v.req('/console/');
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toContain('text/html');
    const csp = page.headers.get('content-security-policy')!;
    expect(csp).toContain("script-src 'self'");
    expect(csp).toContain("frame-ancestors 'none'");
    expect(csp).not.toContain('unsafe-inline');
    expect(page.headers.get('x-content-type-options')).toBe('nosniff');
    // Every script is a file; none is inline.
    for (const m of String(page.body).matchAll(/<script([^>]*)>([\s\S]*?)<\/script>/g)) {
      expect(m[1]).toMatch(/src="/);
      expect(m[2]!.trim()).toBe('');
    }
    for (const asset of ['app.js', 'graph.js', 'console.css', 'vendor/elk.bundled.js']) {
      const r = await fetch(`${base}/console/assets/${asset}`);
      expect(r.status, asset).toBe(200);
      await r.arrayBuffer();
    }
    expect((await v.req('/console/assets/../server.ts')).status).toBe(404);
    expect((await v.req('/console')).status).toBe(301);
    expect((await v.req('/console/api/nope')).status).toBe(404);
    expect((await fetch(`${base}/healthz`)).status).toBe(200);
    expect((await fetch(`${base}/metrics`)).status).toBe(200);
    expect((await fetch(`${base}/elsewhere`)).status).toBe(404);
  });

  it('answers the API only when signed in', async () => {
    const v = new Visitor();
    const s = await v.req('/console/api/session');
    expect(s.body).toMatchObject({ signed_in: false, token_enabled: true, default_database: d.database });
    expect(s.body.csrf).toBeUndefined();
    expect((await v.req('/console/api/instances')).status).toBe(401);
    expect((await v.req('/console/api/events')).status).toBe(401);
    expect((await v.req('/console/api/instances/0000abcd')).status).toBe(401);
  });
});

describe('sign-in', () => {
  it('refuses a wrong password (PostgreSQL checks it) and sets no cookie', async () => {
    const v = new Visitor();
    const r = await v.login({ role: ALICE, password: 'wrong' });
    expect(r.status).toBe(401);
    expect(r.body.error).toMatch(/wrong role name or password/);
    expect(v.setCookie).toBeUndefined();
    const nobody = await v.login({ role: 'pgdp_console_nobody', password: 'x' });
    expect(nobody.status).toBe(401);
    expect(nobody.body.error).toBe(r.body.error); // an unknown role reads the same
  });

  it('signs a role in with its password: an HttpOnly, SameSite=Strict cookie with a random id', async () => {
    const v = new Visitor();
    const r = await v.login({ role: ALICE, password: `${ALICE}-pw` });
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ signed_in: true, kind: 'role', role: ALICE, database: d.database, sees_all: false });
    expect(r.body.csrf).toMatch(/^[A-Za-z0-9_-]{43}$/);
    const attrs = v.setCookie!.split(';').map((a) => a.trim());
    expect(attrs[0]).toMatch(/^pgdp_console=[A-Za-z0-9_-]{43}$/);
    expect(attrs).toContain('HttpOnly');
    expect(attrs).toContain('SameSite=Strict');
    expect(attrs).not.toContain('Secure'); // plain HTTP
    expect(attrs.some((a) => /^(Max-Age|Expires)=/i.test(a))).toBe(false);
    const again = new Visitor();
    await again.login({ role: ALICE, password: `${ALICE}-pw` });
    expect(again.cookie).not.toBe(v.cookie);
    expect((await v.req('/console/api/session')).body).toMatchObject({ signed_in: true, role: ALICE, csrf: r.body.csrf });
    // Behind a reverse proxy that terminates TLS the cookie is Secure.
    const tls = new Visitor();
    await tls.login({ role: ALICE, password: `${ALICE}-pw` }, { 'x-forwarded-proto': 'https' });
    expect(tls.setCookie!.split(';').map((a) => a.trim())).toContain('Secure');
  });

  it('signs the operator in with the token only', async () => {
    const v = new Visitor();
    expect((await v.login({ token: 'not-the-token' })).status).toBe(401);
    const r = await v.login({ token: TOKEN });
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ signed_in: true, kind: 'operator', sees_all: true, database: d.database });
  });

  it('refuses a database that does not exist, and a sign-in from another origin', async () => {
    const v = new Visitor();
    const r = await v.login({ role: ALICE, password: `${ALICE}-pw`, database: 'pgdp_console_nonexistent' });
    expect(r.status).toBe(400);
    expect(r.body.error).toMatch(/does not exist/);
    const cross = await v.login({ role: ALICE, password: `${ALICE}-pw` }, { origin: 'http://evil.example' });
    expect(cross.status).toBe(403);
    expect(v.setCookie).toBeUndefined();
    const form = await v.req('/console/api/login', { method: 'POST', body: `role=${ALICE}&password=${ALICE}-pw`, headers: { 'content-type': 'application/x-www-form-urlencoded' } });
    expect(form.status).toBe(415);
  });

  it('signs out: the session ends, its cookie is cleared', async () => {
    const v = await new Visitor().as(ALICE);
    expect((await v.req('/console/api/logout', { method: 'POST', body: {}, csrf: null })).status).toBe(403);
    const out = await v.req('/console/api/logout', { method: 'POST', body: {} });
    expect(out.status).toBe(200);
    expect(v.setCookie).toMatch(/Max-Age=0/);
    expect(v.cookie).toBeUndefined();
    expect((await v.req('/console/api/session')).body.signed_in).toBe(false);
  });
});

describe('limits', () => {
  it('one role holds at most a few sessions (each is a database connection): a newer sign-in ends its oldest', async () => {
    const visitors: Visitor[] = [];
    for (let i = 0; i < SESSIONS_PER_ROLE + 3; i++) visitors.push(await new Visitor().as(BOB));
    const conns = await (await d.direct()).query<{ n: number }>(
      `SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = $1 AND application_name = 'pg-durable-proxy console'`,
      [BOB],
    );
    expect(conns.rows[0]!.n).toBeLessThanOrEqual(SESSIONS_PER_ROLE);
    expect((await visitors[0]!.req('/console/api/instances')).status).toBe(401);
    expect((await visitors.at(-1)!.req('/console/api/instances')).status).toBe(200);
    for (const v of visitors) await v.req('/console/api/logout', { method: 'POST', body: {} });
  });

  it('refuses control characters in a role, a database or a password (a NUL would add startup parameters)', async () => {
    for (const body of [
      { role: `${ALICE}\u0000options\u0000-c search_path=public`, password: `${ALICE}-pw` },
      { role: ALICE, password: `${ALICE}-pw`, database: `${'x'}\u0000work_mem\u00001MB` },
      { role: ALICE, password: `${ALICE}-pw\n` },
    ]) {
      const r = await new Visitor().login(body);
      expect(r.status, JSON.stringify(body)).toBe(400);
      expect(r.body.error).toMatch(/contains a control character/);
    }
  });
});

describe('who sees what', () => {
  let a1: string;
  let a2: string;
  let b1: string;
  beforeAll(async () => {
    a1 = await start(alice, `'SELECT 1'`, 'alice-first');
    a2 = await start(alice, `'SELECT 2'`, 'alice-second');
    b1 = await start(bob, `'SELECT 3'`, 'bob-first');
  });

  it('a role sees only its own instances; the operator sees both', async () => {
    const va = await new Visitor().as(ALICE);
    const vb = await new Visitor().as(BOB);
    const op = new Visitor();
    await op.login({ token: TOKEN });
    const seenByAlice = await va.ids();
    expect(seenByAlice).toEqual(expect.arrayContaining([a1, a2]));
    expect(seenByAlice).not.toContain(b1);
    const seenByBob = await vb.ids();
    expect(seenByBob).toContain(b1);
    expect(seenByBob).not.toContain(a1);
    expect(await op.ids()).toEqual(expect.arrayContaining([a1, a2, b1]));
    // The role filter: the operator's view of one role; a role asking for another's sees nothing.
    const onlyBob = await op.ids(`?role=${BOB}`);
    expect(onlyBob).toContain(b1);
    expect(onlyBob).not.toContain(a1);
    expect(await va.ids(`?role=${BOB}`)).toEqual([]);
    // Instance pages follow the same rule.
    expect((await va.req(`/console/api/instances/${b1}`)).status).toBe(404);
    const mine = await va.req(`/console/api/instances/${a1}`);
    expect(mine.status).toBe(200);
    expect(mine.body.instance).toMatchObject({ id: a1, label: 'alice-first', submitter: ALICE });
    expect((await op.req(`/console/api/instances/${b1}`)).body.instance.submitter).toBe(BOB);
  });

  it('lists with status, created, finished and submitter, filtered and paged by df.list_instances\u2019s cursor', async () => {
    const va = await new Visitor().as(ALICE);
    await eventually(async () => (await status(a1)) === 'completed' && (await status(a2)) === 'completed', 'the instances to complete');
    const r = await va.req('/console/api/instances?label=alice-first');
    expect(r.body.instances).toHaveLength(1);
    expect(r.body.instances[0]).toMatchObject({ id: a1, status: 'completed', label: 'alice-first', submitter: ALICE });
    expect(Date.parse(r.body.instances[0].completed_at)).toBeGreaterThanOrEqual(Date.parse(r.body.instances[0].created_at));
    expect(await va.ids('?status=failed')).not.toContain(a1);
    // Pages of one: the cursor walks them without repeats, for both list queries.
    for (const filter of ['', `&role=${ALICE}`]) {
      const walked: string[] = [];
      let cursor: string | null = null;
      do {
        const page: Reply = await va.req(`/console/api/instances?limit=1${filter}${cursor ? `&cursor=${cursor}` : ''}`);
        expect(page.status, JSON.stringify(page.body)).toBe(200);
        walked.push(...page.body.instances.map((i: { id: string }) => i.id));
        cursor = page.body.next_cursor;
      } while (cursor && walked.length < 50);
      expect(new Set(walked).size).toBe(walked.length);
      expect(walked).toEqual(expect.arrayContaining([a1, a2]));
      expect(walked).toEqual(await va.ids(filter ? `?${filter.slice(1)}` : ''));
    }
    expect((await va.req('/console/api/instances?cursor=zz')).status).toBe(400);
    expect((await va.req('/console/api/instances?status=bogus')).status).toBe(400);
  });

  it('shows an instance: its nodes with statuses, definitions and results, and df.explain', async () => {
    const va = await new Visitor().as(ALICE);
    const id = await start(alice, `df.seq('SELECT 7 AS n', df.if('SELECT true', 'SELECT ''yes''', 'SELECT ''no'''))`, 'alice-shape');
    await eventually(async () => (await status(id)) === 'completed', 'the instance to complete');
    const r = await va.req(`/console/api/instances/${id}`);
    expect(r.status).toBe(200);
    const nodes = r.body.nodes as { type: string; query: string; inferred_status: string; result: string | null; updated_at: string }[];
    expect(nodes.map((n) => n.type).sort()).toEqual(['IF', 'SQL', 'SQL', 'SQL', 'SQL', 'THEN']);
    expect(nodes.find((n) => n.query === 'SELECT 7 AS n')).toMatchObject({ inferred_status: 'completed' });
    expect(nodes.find((n) => n.query === `SELECT 'no'`)).toMatchObject({ inferred_status: 'skipped' });
    expect(nodes.find((n) => n.query === `SELECT 'yes'`)!.result).toContain('yes');
    expect(r.body.explain).toContain(`Instance: ${id} (alice-shape)`);
    expect(r.body.explain).toContain('SELECT 7 AS n');
  });
});

describe('actions', () => {
  it('need the session\u2019s CSRF token, a JSON body and the console\u2019s origin', async () => {
    const va = await new Visitor().as(ALICE);
    const id = await start(alice, `df.wait_for_signal('never', 600)`, 'alice-csrf');
    const path = `/console/api/instances/${id}/cancel`;
    expect((await va.req(path, { method: 'POST', body: {}, csrf: null })).status).toBe(403);
    expect((await va.req(path, { method: 'POST', body: {}, csrf: 'x'.repeat(43) })).status).toBe(403);
    expect((await va.req(path, { method: 'POST', body: {}, headers: { origin: 'http://evil.example' } })).status).toBe(403);
    expect((await va.req(path, { method: 'POST', body: {}, headers: { 'sec-fetch-site': 'cross-site' } })).status).toBe(403);
    expect((await va.req(path, { method: 'POST', body: 'reason=x', headers: { 'content-type': 'text/plain' } })).status).toBe(415);
    // Another session's token is not this one's.
    const other = await new Visitor().as(ALICE);
    expect((await va.req(path, { method: 'POST', body: {}, csrf: other.csrf! })).status).toBe(403);
    expect(await status(id)).not.toBe('cancelled');
    const ok = await va.req(path, { method: 'POST', body: { reason: 'not needed' }, headers: { origin: base } });
    expect(ok.status, JSON.stringify(ok.body)).toBe(200);
    expect(ok.body.result).toContain(`Instance ${id} cancelled`);
    expect(await status(id)).toBe('cancelled');
    expect((await va.req(path, { method: 'POST', body: {} })).status).toBe(409);
  });

  it('cancel goes through df.cancel as the role: not another role\u2019s instance; the operator may', async () => {
    const va = await new Visitor().as(ALICE);
    const op = new Visitor();
    await op.login({ token: TOKEN });
    const bobs = await start(bob, `df.wait_for_signal('never', 600)`, 'bob-wait');
    const r = await va.req(`/console/api/instances/${bobs}/cancel`, { method: 'POST', body: {} });
    expect(r.status).toBe(404);
    expect(r.body.error).toMatch(/not found or access denied/);
    expect(await status(bobs)).not.toBe('cancelled');
    const byOperator = await op.req(`/console/api/instances/${bobs}/cancel`, { method: 'POST', body: { reason: 'operator says no' } });
    expect(byOperator.status, JSON.stringify(byOperator.body)).toBe(200);
    expect(await status(bobs)).toBe('cancelled');
  });

  it('signal goes through df.signal as the role: the waiting instance completes with the payload; not another role\u2019s', async () => {
    const va = await new Visitor().as(ALICE);
    const id = await start(alice, `df.as(df.wait_for_signal('approve', 600), 's') ~> 'SELECT $s.data AS got'`, 'alice-approve');
    const bobs = await start(bob, `df.wait_for_signal('approve', 600)`, 'bob-approve');
    const denied = await va.req(`/console/api/instances/${bobs}/signal`, { method: 'POST', body: { name: 'approve', data: '{}' } });
    expect(denied.status).toBe(404);
    const r = await va.req(`/console/api/instances/${id}/signal`, { method: 'POST', body: { name: 'approve', data: '{"ok": true}' } });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect(r.body.result).toBe('OK');
    await eventually(async () => (await status(id)) === 'completed', 'the signalled instance to complete');
    const result = (await alice.query<{ r: string }>('SELECT df.result($1) AS r', [id])).rows[0]!.r;
    expect(result).toContain('ok');
    expect(await status(bobs)).toBe('running');
    const late = await va.req(`/console/api/instances/${id}/signal`, { method: 'POST', body: { name: 'approve' } });
    expect(late.status).toBe(409);
    expect((await va.req(`/console/api/instances/${id}/signal`, { method: 'POST', body: {} })).status).toBe(400);
    await bob.query('SELECT df.cancel($1)', [bobs]);
  });
});

describe('live updates', () => {
  it('an instance page\u2019s stream gets a snapshot, then the nodes that change', async () => {
    const va = await new Visitor().as(ALICE);
    const id = await start(alice, `df.wait_for_signal('go', 600) ~> 'SELECT 1 AS one'`, 'alice-live');
    const s = await events(va, `/console/api/events?instance=${id}`);
    try {
      const snap = await s.next('snapshot');
      expect(snap.instance.id).toBe(id);
      const sql = () => (snap.nodes as { type: string; query: string; inferred_status: string }[]).find((n) => n.type === 'SQL')!;
      expect(sql().inferred_status).toBe('pending');
      await eventually(async () => (await status(id)) === 'running', 'the instance to run');
      await alice.query(`SELECT df.signal($1, 'go')`, [id]);
      const done = await s.next('update', (u) => u.nodes.some((n: { type: string; inferred_status: string }) => n.type === 'SQL' && n.inferred_status === 'completed') || u.instance.status === 'completed');
      expect(done.instance.id).toBe(id);
      await eventually(() => s.seen.some((e) => e.event === 'update' && e.data.instance.status === 'completed'), 'an update saying the instance completed');
      // Throttled: a handful of reads, not one per engine event.
      expect(s.seen.filter((e) => e.event === 'update').length).toBeLessThan(10);
    } finally {
      s.close();
    }
  });

  it('the list\u2019s stream tells a role of its own instances only', async () => {
    const va = await new Visitor().as(ALICE);
    const s = await events(va, '/console/api/events');
    try {
      await s.next('hello');
      const bobs = await start(bob, `'SELECT 2'`, 'bob-live');
      const mine = await start(alice, `'SELECT 1'`, 'alice-live-list');
      const got = await s.next('instances', (e) => e.instances.some((i: { id: string; status: string }) => i.id === mine && i.status === 'completed'));
      expect(got.instances.find((i: { id: string }) => i.id === mine)).toMatchObject({ label: 'alice-live-list', submitter: ALICE });
      await eventually(async () => (await status(bobs)) === 'completed', 'bob\u2019s instance to complete');
      await new Promise((r) => setTimeout(r, 600)); // past the throttle: anything about bob's would be here by now
      expect(JSON.stringify(s.seen)).not.toContain(bobs);
    } finally {
      s.close();
    }
  });

  it('a stream for an instance the role cannot see says gone once and ends: it does not answer at each change of it', async () => {
    const other = await start(bob, `df.wait_for_signal('later', 60)`, 'bob-hidden');
    const va = await new Visitor().as(ALICE);
    const res = await fetch(`${base}/console/api/events?instance=${other}`, { headers: { cookie: va.cookie! } });
    expect(res.status).toBe(200);
    // The stream ends by itself: the whole body can be read.
    const text = await res.text();
    expect(text.match(/^event: gone$/gm)).toHaveLength(1);
    await bob.query('SELECT df.cancel($1)', [other]);
  });

  it('a stream ends when its session signs out', async () => {
    const va = await new Visitor().as(ALICE);
    const s = await events(va, '/console/api/events');
    await s.next('hello');
    await va.req('/console/api/logout', { method: 'POST', body: {} });
    await s.next('signedout');
    s.close();
  });
});

describe('the command', () => {
  let cli: CliProcess | undefined;
  afterAll(() => {
    cli?.child.kill('SIGTERM');
  });

  it('has --console (off by default) and --admin-token (PGDP_ADMIN_TOKEN, at least 16 characters, never echoed)', () => {
    expect(loadConfig([], {}).console).toBe('off');
    expect(loadConfig(['--console', 'on'], {}).console).toBe('on');
    expect(loadConfig([], { PGDP_ADMIN_TOKEN: TOKEN }).adminToken).toBe(TOKEN);
    expect(() => loadConfig(['--admin-token', 'short'], {})).toThrow(/adminToken.*at least 16/);
    expect(() => loadConfig(['--admin-token', 'short-secret'], {})).toThrow(/^(?!.*short-secret)/s);
    expect(() => loadConfig(['--console', 'maybe'], {})).toThrow(/console/);
  });

  async function adminOf(c: CliProcess): Promise<{ admin: string; console: string }> {
    await c.ready;
    let line: { admin: string; console: string } | undefined;
    await eventually(() => {
      line = c
        .stdout()
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as { msg: string; admin: string; console: string })
        .find((l) => l.msg === 'admin endpoint listening');
      return line !== undefined;
    }, 'the admin endpoint log line');
    return line!;
  }

  const args = (): string[] => {
    const e = env();
    const steps =
      e.socketDir !== undefined
        ? ['--step-url', `postgres://steps@127.0.0.1:${e.pgPort}/${d.database}?host=${encodeURIComponent(e.socketDir)}`, '--allow-superuser-instances', 'true']
        : ['--executor-url', dbUrl(e.executorUrl, d.database), '--step-passfile', e.passfile];
    return ['--upstream', dbUrl(e.adminUrl, d.database), '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--log-level', 'info', '--databases', d.database, ...steps];
  };

  it('serves the console on the admin endpoint, with sign-in (--console on) and the operator token', async () => {
    cli = runCli([...args(), '--console', 'on'], { PGDP_ADMIN_TOKEN: TOKEN });
    const at = await adminOf(cli);
    expect(at.console).toBe(`${at.admin}/console/`);
    expect((await fetch(at.console)).status).toBe(200);
    const v = new Visitor(at.admin);
    const r = await v.login({ role: ALICE, password: `${ALICE}-pw` });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect(r.body.database).toBe(d.database);
    expect((await v.ids()).length).toBeGreaterThan(0);
    const op = new Visitor(at.admin);
    expect((await op.login({ token: TOKEN })).status).toBe(200);
    expect((await op.login({ role: ALICE, password: `${ALICE}-pw`, database: 'postgres' })).body.error).toMatch(/not served by this proxy/);
    cli.child.kill('SIGTERM');
    await cli.exited;
    cli = undefined;
  });

  it('with --admin-token alone the console is there for the operator only; roles cannot sign in', async () => {
    cli = runCli(args(), { PGDP_ADMIN_TOKEN: TOKEN });
    const at = await adminOf(cli);
    expect(at.console).toBe(`${at.admin}/console/`);
    const v = new Visitor(at.admin);
    const r = await v.login({ role: ALICE, password: `${ALICE}-pw` });
    expect(r.status).toBe(403);
    expect(r.body.error).toMatch(/signing in with a role is off on this proxy \(start it with --console on\)/);
    expect((await new Visitor(at.admin).login({ token: TOKEN })).status).toBe(200);
    cli.child.kill('SIGTERM');
    await cli.exited;
    cli = undefined;
  });

  it('by default (neither --console on nor a token): 404 there, /healthz as before', async () => {
    cli = runCli(args());
    const at = await adminOf(cli);
    expect(at.console).toBe('off');
    expect((await fetch(`${at.admin}/console/`)).status).toBe(404);
    expect((await fetch(`${at.admin}/healthz`)).status).toBe(200);
    cli.child.kill('SIGTERM');
    await cli.exited;
    cli = undefined;
  });
});
