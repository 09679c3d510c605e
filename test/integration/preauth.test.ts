// Before authentication has succeeded the proxy relays only the startup, the
// encryption negotiation and the answers to the server's authentication
// requests, each small. Every attack here is made through the proxy without
// the password, and its outcome is read from the server's catalogs and the df
// tables: nothing ran, nothing started.
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDurable, type Durable } from '../helpers/durable.js';
import { ROLES } from '../helpers/roles.js';
import { RawConnection, serialize } from '../helpers/wire.js';

type ErrorMsg = { name: string; code: string; severity: string; message: string };

const DATABASE = 'pgdp_preauth';
const passwordRoles = [
  { ...ROLES.scram, request: 'authenticationSASL', expects: 'SASL' },
  { ...ROLES.md5, request: 'authenticationMD5Password', expects: 'password' },
  { ...ROLES.cleartext, request: 'authenticationCleartextPassword', expects: 'password' },
] as const;

let d: Durable;
let admin: pg.Client;
let bystander: pg.Client;

beforeAll(async () => {
  d = await startDurable(DATABASE);
  admin = await d.direct();
  // The first session through the proxy installs the df schema; then the roles may start workflows,
  // so a start that slipped through before authentication would really happen.
  const first = await d.connect();
  for (const r of passwordRoles) {
    await first.query(`SELECT df.grant_usage('${r.user}')`);
    await first.query(`GRANT CREATE ON SCHEMA public TO ${r.user}`);
  }
  bystander = await d.connect(ROLES.scram.user, ROLES.scram.password);
});
afterAll(async () => {
  // Every attack left this session alone.
  expect((await bystander.query<{ n: number }>('SELECT 42 AS n')).rows).toEqual([{ n: 42 }]);
  await d?.close();
});

const instances = async (): Promise<number> => (await admin.query<{ n: number }>('SELECT count(*)::int AS n FROM df.instances')).rows[0]!.n;
const tableExists = async (name: string): Promise<boolean> =>
  (await admin.query<{ t: string | null }>('SELECT to_regclass($1)::text AS t', [name])).rows[0]!.t !== null;

/** Opens a raw connection as `user` and waits for the server's first authentication request. */
async function askedForPassword(user: string, request: string, application = 'pgdp-preauth'): Promise<RawConnection> {
  const raw = await RawConnection.connect(d.port);
  raw.startup({ user, database: DATABASE, application_name: application });
  await raw.until(() => raw.messages.some((m) => m.name === request));
  return raw;
}

/** The connection ends with one FATAL 08P01 and nothing else after the authentication request. */
async function refused(raw: RawConnection): Promise<ErrorMsg> {
  await raw.waitClosed();
  const errors = raw.messages.filter((m) => m.name === 'error') as unknown as ErrorMsg[];
  expect(errors).toHaveLength(1);
  expect(errors[0]).toMatchObject({ code: '08P01', severity: 'FATAL' });
  expect(raw.messages.some((m) => m.name === 'authenticationOk' || m.name === 'readyForQuery' || m.name === 'dataRow')).toBe(false);
  return errors[0]!;
}

function functionCall(oid: number): Buffer {
  // FunctionCall: oid, no argument formats, no arguments, text result.
  const b = Buffer.alloc(1 + 4 + 4 + 2 + 2 + 2);
  b[0] = 0x46;
  b.writeInt32BE(b.length - 1, 1);
  b.writeInt32BE(oid, 5);
  return b;
}

/** A message header declaring `length` bytes, without the body. */
function header(type: string, length: number): Buffer {
  const b = Buffer.alloc(5);
  b[0] = type.charCodeAt(0);
  b.writeInt32BE(length, 1);
  return b;
}

describe('messages before authentication', () => {
  for (const role of passwordRoles) {
    it(`${role.method}: a Query with a 'new' df.start and no password is refused; nothing starts, nothing runs`, async () => {
      const before = await instances();
      const table = `pgdp_preauth_q_${role.method.replace(/-/g, '_')}`;
      const raw = await askedForPassword(role.user, role.request);
      raw.write(serialize.query(`SELECT df.start('CREATE TABLE ${table} (n int)', transaction_mode => 'new')`));
      const err = await refused(raw);
      // PostgreSQL's own words for a message that is not the answer it asked for.
      expect(err.message).toBe(`expected ${role.expects} response, got message type 81`);
      expect(await instances()).toBe(before);
      expect(await tableExists(table)).toBe(false);
    });
  }

  it('a Query sent with the startup packet, before any request, is refused', async () => {
    const before = await instances();
    const raw = await RawConnection.connect(d.port);
    const startup = Buffer.from(`user\0${ROLES.scram.user}\0database\0${DATABASE}\0\0`);
    const packet = Buffer.alloc(8 + startup.length);
    packet.writeInt32BE(packet.length, 0);
    packet.writeInt32BE(196608, 4);
    startup.copy(packet, 8);
    raw.write(Buffer.concat([packet, serialize.query(`SELECT df.start('SELECT 1', transaction_mode => 'new')`)]));
    const err = await refused(raw);
    expect(err.message).toBe('invalid frontend message type 81 during authentication');
    expect(await instances()).toBe(before);
  });

  it('Parse/Bind/Execute/Sync before the password is refused at the Parse; the statement never runs', async () => {
    const raw = await askedForPassword(ROLES.md5.user, 'authenticationMD5Password');
    raw.write(
      Buffer.concat([
        serialize.parse({ text: 'CREATE TABLE pgdp_preauth_parse (n int)', types: [] }),
        serialize.bind({}),
        serialize.execute({}),
        serialize.sync(),
      ]),
    );
    expect((await refused(raw)).message).toBe('expected password response, got message type 80');
    expect(await tableExists('pgdp_preauth_parse')).toBe(false);
  });

  it('a FunctionCall before the password is refused', async () => {
    // Other test files log in as the same role meanwhile: this connection is told apart by its application name.
    const sessions = async (): Promise<number> =>
      (await admin.query<{ n: number }>(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'pgdp-preauth-fc'`)).rows[0]!.n;
    const raw = await askedForPassword(ROLES.scram.user, 'authenticationSASL', 'pgdp-preauth-fc');
    raw.write(functionCall(2171 /* pg_cancel_backend */));
    expect((await refused(raw)).message).toBe('expected SASL response, got message type 70');
    expect(await sessions()).toBe(0);
  });

  it('a password message nobody asked for (a second one in a row) is refused', async () => {
    const raw = await askedForPassword(ROLES.cleartext.user, 'authenticationCleartextPassword');
    raw.write(Buffer.concat([serialize.password('wrong'), serialize.password('wrong again')]));
    expect((await refused(raw)).message).toBe('invalid frontend message type 112 during authentication');
  });

  it('a 200 MB password message is refused at its header: the body is never sent, nothing is buffered', async () => {
    const raw = await askedForPassword(ROLES.scram.user, 'authenticationSASL');
    const heap = process.memoryUsage().arrayBuffers;
    raw.write(header('p', 200 * 1024 * 1024));
    expect((await refused(raw)).message).toBe(`authentication message of ${200 * 1024 * 1024} bytes exceeds the limit of 65535`);
    // Only the five header bytes were ever sent: the answer cannot have waited for a body.
    expect(raw.socket.bytesWritten).toBeLessThan(200);
    expect(process.memoryUsage().arrayBuffers - heap).toBeLessThan(16 * 1024 * 1024);
  });

  it('a 200 MB Query before the password is refused at its header', async () => {
    const raw = await askedForPassword(ROLES.md5.user, 'authenticationMD5Password');
    raw.write(header('Q', 200 * 1024 * 1024));
    expect((await refused(raw)).message).toBe('expected password response, got message type 81');
    expect(raw.socket.bytesWritten).toBeLessThan(200);
  });

  it('a 200 MB startup packet is refused at its length', async () => {
    const raw = await RawConnection.connect(d.port);
    const len = Buffer.alloc(4);
    len.writeInt32BE(200 * 1024 * 1024);
    raw.write(len);
    expect((await refused(raw)).message).toBe(`invalid length of startup packet: ${200 * 1024 * 1024}`);
  });

  it('each refusal is counted', () => {
    expect(d.proxy.stats.refusedMessages).toBeGreaterThanOrEqual(passwordRoles.length + 7);
  });

  it('the right password still logs in, and then df.* works', async () => {
    const c = await d.connect(ROLES.scram.user, ROLES.scram.password);
    const { rows } = await c.query<{ id: string }>(`SELECT df.start('SELECT 1', transaction_mode => 'new') AS id`);
    expect(rows[0]!.id).toMatch(/^[0-9a-f]{8}$/);
    expect((await c.query('SELECT df.await_instance($1) AS s', [rows[0]!.id])).rows[0].s).toBe('completed');
  });
});
