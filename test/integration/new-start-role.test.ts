// df.start(..., transaction_mode => 'new') submits as the session's current
// role, after SET ROLE, exactly as a caller-mode start does: the proxy asks the
// client's own backend (current_user) before it starts on its own connection,
// and the client never sees that question.
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRoles, startDurable, type Durable } from '../helpers/durable.js';
import { ROLES } from '../helpers/roles.js';
import { RawConnection, serialize } from '../helpers/wire.js';

const DATABASE = 'pgdp_new_role';
const A = 'pgdp_nr_member';
const B = 'pgdp_nr_group';

let d: Durable;
let admin: pg.Client;

beforeAll(async () => {
  d = await startDurable(DATABASE);
  await createRoles([A, B]);
  admin = await d.superuser(); // grants role membership, and sees every role's instances
  await admin.query(`GRANT ${B} TO ${A}`);
  for (const r of [A, B, ROLES.scram.user]) await admin.query(`SELECT df.grant_usage('${r}')`);
});
afterAll(async () => {
  await d?.close();
});

/** Waits for the instance, then: who submitted it, and who its step ran as. */
async function outcome(id: string): Promise<{ submittedBy: string; ranAs: unknown }> {
  expect((await admin.query('SELECT df.await_instance($1) AS s', [id])).rows[0].s).toBe('completed');
  const { rows } = await admin.query<{ who: string; result: string }>(
    'SELECT submitted_by::text AS who, df.result(id) AS result FROM df.instances WHERE id = $1',
    [id],
  );
  return { submittedBy: rows[0]!.who, ranAs: (JSON.parse(rows[0]!.result) as { rows: { who: string }[] }).rows[0]!.who };
}

const START = `SELECT df.start('SELECT current_user::text AS who', transaction_mode => 'new') AS id`;

describe("transaction_mode => 'new' and the current role", () => {
  it('after SET ROLE the instance is submitted by, and its step runs as, the role set', async () => {
    const a = await d.connect(A, `${A}-pw`);
    await a.query(`SET ROLE ${B}`);
    const { rows } = await a.query<{ id: string }>(START);
    expect(await outcome(rows[0]!.id)).toEqual({ submittedBy: B, ranAs: B });
    // Caller mode agrees on who the submitter is.
    const caller = await a.query<{ id: string }>(`SELECT df.start('SELECT current_user::text AS who') AS id`);
    expect(await outcome(caller.rows[0]!.id)).toEqual({ submittedBy: B, ranAs: B });
  });

  it('without SET ROLE it is the login role', async () => {
    const a = await d.connect(A, `${A}-pw`);
    const { rows } = await a.query<{ id: string }>(START);
    expect(await outcome(rows[0]!.id)).toEqual({ submittedBy: A, ranAs: A });
  });

  it('inside a transaction that rolls back (SET LOCAL ROLE too), the instance stays: that is what new means', async () => {
    const a = await d.connect(A, `${A}-pw`);
    await a.query('BEGIN');
    await a.query(`SET LOCAL ROLE ${B}`);
    const { rows } = await a.query<{ id: string }>(START);
    await a.query('ROLLBACK');
    expect((await a.query<{ u: string }>('SELECT current_user::text AS u')).rows[0]!.u).toBe(A);
    expect(await outcome(rows[0]!.id)).toEqual({ submittedBy: B, ranAs: B });
  });

  it('the question to the server is invisible to the client: exactly one row description, row, completion and ReadyForQuery', async () => {
    const raw = await RawConnection.connect(d.port);
    await raw.login({ user: ROLES.scram.user, database: DATABASE }, ROLES.scram.password);
    const from = raw.messages.length;
    raw.write(serialize.query(START));
    await raw.readyCount(2);
    const seen = raw.messages.slice(from);
    expect(seen.map((m) => m.name)).toEqual(['rowDescription', 'dataRow', 'commandComplete', 'readyForQuery']);
    const id = (seen[1] as unknown as { fields: string[] }).fields[0]!;
    expect(await outcome(id)).toEqual({ submittedBy: ROLES.scram.user, ranAs: ROLES.scram.user });
    raw.close();
  });

  it('pipelined behind another statement it is refused with 0A000 and a hint; nothing starts; the session goes on', async () => {
    const before = (await admin.query<{ n: number }>('SELECT count(*)::int AS n FROM df.instances')).rows[0]!.n;
    const raw = await RawConnection.connect(d.port);
    await raw.login({ user: ROLES.scram.user, database: DATABASE }, ROLES.scram.password);
    raw.write(Buffer.concat([serialize.query('SELECT pg_sleep(0.1)'), serialize.query(START)]));
    await raw.readyCount(3);
    const err = raw.messages.find((m) => m.name === 'error') as unknown as { code: string; severity: string; message: string; hint: string };
    expect(err).toMatchObject({ code: '0A000', severity: 'ERROR' });
    expect(err.message).toContain("transaction_mode => 'new'");
    expect(err.hint).toContain('statement of its own');
    expect((await admin.query<{ n: number }>('SELECT count(*)::int AS n FROM df.instances')).rows[0]!.n).toBe(before);
    // Sent alone, the same statement starts.
    raw.write(serialize.query(START));
    await raw.readyCount(4);
    const row = raw.messages.filter((m) => m.name === 'dataRow').pop() as unknown as { fields: string[] };
    expect(await outcome(row.fields[0]!)).toEqual({ submittedBy: ROLES.scram.user, ranAs: ROLES.scram.user });
    raw.close();
  });
});
