// COPY in both directions, 10 MB each way, byte for byte.
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import pg from 'pg';
import { from as copyFrom, to as copyTo } from 'pg-copy-streams';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startProxy, type RunningProxy } from '../helpers/proxy.js';
import { ROLES } from '../helpers/roles.js';
import { RawConnection, serialize } from '../helpers/wire.js';

const ROWS = 105_000;
/** ~10.5 MB of COPY text: each line `id<TAB>payload`, payloads varied so a lost or moved chunk shows. */
function* copyLines(): Generator<string> {
  for (let i = 1; i <= ROWS; i++) {
    yield `${i}\t${createHash('sha256').update(String(i)).digest('hex')}${'x'.repeat(i % 40)}${'y'.repeat(10)}\n`;
  }
}
const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');

describe('COPY through the proxy', () => {
  let p: RunningProxy;
  let sql: postgres.Sql;
  const expected = Buffer.from([...copyLines()].join(''));
  beforeAll(async () => {
    p = await startProxy();
    sql = postgres(p.url(ROLES.scram.user, ROLES.scram.password), { max: 1, onnotice: () => undefined });
    await sql`DROP TABLE IF EXISTS pgdp_copy`;
    await sql`CREATE TABLE pgdp_copy (id int PRIMARY KEY, payload text NOT NULL)`;
  });
  afterAll(async () => {
    await sql`DROP TABLE IF EXISTS pgdp_copy`;
    await sql.end();
    await p.close();
  });

  it('COPY FROM STDIN of 10 MB arrives whole (postgres.js, streamed in many chunks)', async () => {
    expect(expected.length).toBeGreaterThan(10 * 1024 * 1024);
    const writable = await sql`COPY pgdp_copy (id, payload) FROM STDIN`.writable();
    await pipeline(Readable.from(copyLines()), writable);
    const [row] = await sql<{ n: number; digest: string }[]>`
      SELECT count(*)::int AS n,
             encode(sha256(convert_to(string_agg(id || E'\\t' || payload || E'\\n', '' ORDER BY id), 'UTF8')), 'hex') AS digest
        FROM pgdp_copy`;
    expect(row).toEqual({ n: ROWS, digest: sha(expected) });
  });

  // node-postgres with pg-copy-streams here: postgres.js's COPY TO readable can leave its socket
  // paused after the last row (it hangs the same way without the proxy).
  it('COPY TO STDOUT of 10 MB comes back byte for byte (node-postgres)', async () => {
    const c = new pg.Client({ connectionString: p.url(ROLES.scram.user, ROLES.scram.password) });
    await c.connect();
    const readable = c.query(copyTo('COPY (SELECT id, payload FROM pgdp_copy ORDER BY id) TO STDOUT'));
    const chunks: Buffer[] = [];
    for await (const chunk of readable) chunks.push(chunk as Buffer);
    const got = Buffer.concat(chunks);
    expect(got.length).toBe(expected.length);
    expect(sha(got)).toBe(sha(expected));
    // the session is usable after the COPY
    const r = await c.query<{ n: number }>('SELECT count(*)::int AS n FROM pgdp_copy');
    expect(r.rows[0]).toEqual({ n: ROWS });
    await c.end();
  });

  it('COPY FROM STDIN of 10 MB with node-postgres, in a transaction, rolled back', async () => {
    const c = new pg.Client({ connectionString: p.url(ROLES.scram.user, ROLES.scram.password) });
    await c.connect();
    await c.query('BEGIN');
    await c.query('CREATE TEMP TABLE copy_again (id int, payload text) ON COMMIT DROP');
    await pipeline(Readable.from(copyLines()), c.query(copyFrom('COPY copy_again FROM STDIN')));
    const r = await c.query<{ n: number; same: boolean }>(
      `SELECT count(*)::int AS n, bool_and(a.payload = b.payload) AS same FROM copy_again a JOIN pgdp_copy b USING (id)`,
    );
    expect(r.rows[0]).toEqual({ n: ROWS, same: true });
    await c.query('ROLLBACK');
    await c.end();
  });

  it('CopyFail aborts a COPY FROM with the client’s reason and the session goes on', async () => {
    const raw = await RawConnection.connect(p.port);
    await raw.login({ user: ROLES.scram.user, database: 'postgres' }, ROLES.scram.password);
    raw.write(serialize.query('CREATE TEMP TABLE t (n int)'));
    await raw.readyCount(2);
    raw.write(serialize.query('COPY t FROM STDIN'));
    await raw.until(() => raw.messages.some((m) => m.name === 'copyInResponse'));
    raw.write(Buffer.concat([serialize.copyData(Buffer.from('1\n2\n')), serialize.copyFail('changed my mind')]));
    await raw.readyCount(3);
    const err = raw.messages.find((m) => m.name === 'error') as unknown as { code: string; message: string };
    expect(err.code).toBe('57014');
    expect(err.message).toContain('changed my mind');
    raw.write(serialize.query('SELECT count(*) FROM t'));
    await raw.readyCount(4);
    expect((raw.messages.filter((m) => m.name === 'dataRow').pop() as unknown as { fields: string[] }).fields).toEqual(['0']);
    raw.close();
  });
});
