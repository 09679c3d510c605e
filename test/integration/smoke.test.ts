import pg from 'pg';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startProxy, type RunningProxy } from '../helpers/proxy.js';

describe('relay smoke', () => {
  let p: RunningProxy;
  beforeAll(async () => {
    p = await startProxy();
  });
  afterAll(() => p.close());

  it('runs a query with node-postgres through the proxy', async () => {
    const c = new pg.Client({ connectionString: p.adminUrl });
    await c.connect();
    const r = await c.query('SELECT $1::int + 1 AS n, current_setting($2) AS app', [41, 'application_name']);
    expect(r.rows).toEqual([{ n: 42, app: '' }]);
    await c.end();
  });

  it('runs a query with postgres.js through the proxy', async () => {
    const sql = postgres(p.adminUrl, { max: 1 });
    const rows = await sql`SELECT ${'x'}::text || 'y' AS s`;
    expect(rows[0]).toEqual({ s: 'xy' });
    await sql.end();
  });
});
