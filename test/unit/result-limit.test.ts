// The step connection's size guard reads message headers as bytes arrive: a
// header split across chunks at any byte must be read the same.
import { PassThrough } from 'node:stream';
import type pg from 'pg';
import { describe, expect, it } from 'vitest';
import { cutReason, limitStepResults } from '../../src/engine/steps/sql.js';

function message(type: string, body: number): Buffer {
  const b = Buffer.alloc(5 + body, 0x61);
  b.write(type, 0, 'latin1');
  b.writeUInt32BE(4 + body, 1);
  return b;
}

function guarded(limit: number, countRows = true): { client: pg.ClientBase; stream: PassThrough } {
  const stream = new PassThrough();
  stream.on('error', () => {});
  const client = { connection: { stream } } as unknown as pg.ClientBase;
  limitStepResults(client, limit, countRows);
  return { client, stream };
}

/** Feeds `bytes` in chunks of `size`. */
function feed(stream: PassThrough, bytes: Buffer, size: number): void {
  for (let i = 0; i < bytes.length && !stream.destroyed; i += size) stream.emit('data', bytes.subarray(i, i + size));
}

describe('the step result limit', () => {
  const rows = (n: number, body: number): Buffer[] => Array.from({ length: n }, () => message('D', body));

  it('counts rows up to a ReadyForQuery, at any chunking', () => {
    for (const size of [1, 2, 3, 5, 7, 64, 4096]) {
      // 6 rows of 105 bytes, each counted with 48 more for what it costs in memory: 918, under 1000,
      // twice, with a ReadyForQuery between.
      const ok = guarded(1000);
      feed(ok.stream, Buffer.concat([...rows(6, 100), message('C', 10), message('Z', 1), ...rows(6, 100), message('Z', 1)]), size);
      expect(cutReason(ok.client)).toBeUndefined();
      expect(ok.stream.destroyed).toBe(false);

      const over = guarded(1000);
      feed(over.stream, Buffer.concat(rows(7, 100)), size);
      expect(cutReason(over.client)).toMatch(/^the step's result is larger than the limit of 1000 bytes/);
      expect(over.stream.destroyed).toBe(true);
    }
  });

  it('a row counts its bytes and 48 more for what it costs in memory: 1000 rows of 7 bytes count 55 000', () => {
    const g = guarded(55_000);
    feed(g.stream, Buffer.concat(rows(1000, 2)), 4096);
    expect(cutReason(g.client)).toBeUndefined();
    const h = guarded(55_000);
    feed(h.stream, Buffer.concat(rows(1001, 2)), 4096);
    expect(cutReason(h.client)).toMatch(/^the step's result is larger than the limit/);
  });

  it('cuts at the header of one message announced over the limit, before its body arrives', () => {
    const g = guarded(1000);
    g.stream.emit('data', message('D', 2000).subarray(0, 5));
    expect(cutReason(g.client)).toMatch(/result is larger than the limit/);
    const n = guarded(1000);
    n.stream.emit('data', message('N', 2000).subarray(0, 5));
    expect(cutReason(n.client)).toMatch(/^the server sent a notice of 2005 bytes for the step/);
  });

  it('without row counting (the executor connections) only a single message is capped', () => {
    const g = guarded(1000, false);
    feed(g.stream, Buffer.concat(rows(50, 100)), 64);
    expect(cutReason(g.client)).toBeUndefined();
    g.stream.emit('data', message('D', 5000).subarray(0, 5));
    expect(cutReason(g.client)).toMatch(/more than the executor accepts \(1000\)/);
  });
});
