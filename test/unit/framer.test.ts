// The framer must give the same output however the stream is cut into chunks.
import { describe, expect, it, vi } from 'vitest';
import { COLLECT, Framer, PASS, ProtocolViolation } from '../../src/proxy/framer.js';
import { seededRandom } from '../helpers/wait.js';

function message(type: string, body: Buffer): Buffer {
  const out = Buffer.alloc(5 + body.length);
  out[0] = type.charCodeAt(0);
  out.writeInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  return out;
}

/** Q messages are collected; those whose text starts with "swap" are replaced. */
function run(stream: Buffer, cuts: number[], maxLength = 1 << 30): { out: Buffer; collected: string[]; written: Buffer[] } {
  const written: Buffer[] = [];
  const collected: string[] = [];
  const f = new Framer(
    {
      classify: (type) => (type === 0x51 ? COLLECT : PASS),
      message: (msg) => {
        const text = msg.toString('latin1', 5);
        collected.push(text);
        return text.startsWith('swap') ? message('Q', Buffer.from('replaced:' + text)) : undefined;
      },
      write: (b) => written.push(b),
    },
    maxLength,
  );
  let at = 0;
  if (cuts.length === 0) f.feed(stream);
  else
    for (const c of [...cuts, stream.length]) {
      f.feed(stream.subarray(at, c));
      at = c;
    }
  expect(f.atBoundary).toBe(true);
  return { out: Buffer.concat(written), collected, written };
}

describe('Framer', () => {
  it('forwards an all-pass chunk as the very buffer that arrived', () => {
    const chunk = Buffer.concat([message('B', Buffer.alloc(10)), message('E', Buffer.alloc(5)), message('S', Buffer.alloc(0))]);
    const { written } = run(chunk, []);
    expect(written).toHaveLength(1);
    expect(written[0]).toBe(chunk);
  });

  it('produces the same bytes and the same collected messages under 500 random chunkings', () => {
    const rnd = seededRandom(42);
    const msgs: Buffer[] = [];
    const expected: Buffer[] = [];
    const texts: string[] = [];
    for (let i = 0; i < 200; i++) {
      const kind = rnd();
      if (kind < 0.3) {
        const text = (rnd() < 0.3 ? 'swap ' : 'select ') + 'x'.repeat(Math.floor(rnd() * 50)) + i;
        msgs.push(message('Q', Buffer.from(text, 'latin1')));
        texts.push(text);
        expected.push(text.startsWith('swap') ? message('Q', Buffer.from('replaced:' + text)) : msgs[msgs.length - 1]!);
      } else {
        const body = Buffer.from(Array.from({ length: Math.floor(rnd() * (kind > 0.95 ? 5000 : 40)) }, () => Math.floor(rnd() * 256)));
        msgs.push(message('d', body));
        expected.push(msgs[msgs.length - 1]!);
      }
    }
    const stream = Buffer.concat(msgs);
    const want = Buffer.concat(expected);
    for (let trial = 0; trial < 500; trial++) {
      const cuts: number[] = [];
      const mode = trial % 3;
      let at = 0;
      for (;;) {
        // tiny cuts (header splits), medium and large ones
        at += 1 + Math.floor(rnd() * (mode === 0 ? 4 : mode === 1 ? 64 : 4096));
        if (at >= stream.length) break;
        cuts.push(at);
      }
      const { out, collected } = run(stream, cuts);
      expect(collected).toEqual(texts);
      expect(out.equals(want)).toBe(true);
    }
  });

  it('a promised replacement holds back everything after it, under random chunkings, and keeps the order', async () => {
    const rnd = seededRandom(7);
    const msgs: Buffer[] = [];
    const expected: Buffer[] = [];
    for (let i = 0; i < 60; i++) {
      const kind = rnd();
      if (kind < 0.4) {
        const text = (kind < 0.15 ? 'later ' : kind < 0.25 ? 'fails ' : 'select ') + 'y'.repeat(Math.floor(rnd() * 30)) + i;
        msgs.push(message('Q', Buffer.from(text, 'latin1')));
        expected.push(text.startsWith('later') ? message('Q', Buffer.from('settled:' + text)) : msgs[msgs.length - 1]!);
      } else {
        msgs.push(message('d', Buffer.from(Array.from({ length: Math.floor(rnd() * 300) }, () => Math.floor(rnd() * 256)))));
        expected.push(msgs[msgs.length - 1]!);
      }
    }
    const stream = Buffer.concat(msgs);
    const want = Buffer.concat(expected);
    for (let trial = 0; trial < 50; trial++) {
      const written: Buffer[] = [];
      const f = new Framer(
        {
          classify: (type) => (type === 0x51 ? COLLECT : PASS),
          message: (msg) => {
            const text = msg.toString('latin1', 5);
            const wait = new Promise<void>((r) => (rnd() < 0.5 ? setImmediate(r) : queueMicrotask(r)));
            if (text.startsWith('later')) return wait.then(() => message('Q', Buffer.from('settled:' + text)));
            if (text.startsWith('fails')) return wait.then(() => Promise.reject(new Error('forward it as it was')));
            return undefined;
          },
          write: (b) => written.push(Buffer.from(b)),
        },
        1 << 30,
      );
      let at = 0;
      while (at < stream.length) {
        const next = Math.min(stream.length, at + 1 + Math.floor(rnd() * (trial % 2 ? 8 : 700)));
        f.feed(stream.subarray(at, next));
        at = next;
        if (rnd() < 0.2) await new Promise((r) => setImmediate(r));
      }
      await vi.waitFor(() => expect(f.atBoundary).toBe(true));
      expect(Buffer.concat(written).equals(want)).toBe(true);
    }
  });

  it('one byte at a time', () => {
    const stream = Buffer.concat([message('Q', Buffer.from('swap me\0')), message('d', Buffer.from('abc'))]);
    const { out } = run(stream, Array.from({ length: stream.length - 1 }, (_, i) => i + 1));
    expect(out.equals(Buffer.concat([message('Q', Buffer.from('replaced:swap me\0')), message('d', Buffer.from('abc'))]))).toBe(true);
  });

  it('rejects a length below 4 and above the limit, split or whole', () => {
    const bad = Buffer.from([0x51, 0, 0, 0, 3]);
    expect(() => run(bad, [])).toThrow(new ProtocolViolation('invalid message length 3'));
    expect(() => run(bad, [2])).toThrow(ProtocolViolation);
    const big = message('d', Buffer.alloc(100));
    expect(() => run(big, [3], 50)).toThrow('message of 104 bytes exceeds the limit of 50');
  });

  it('a classify that throws stops the stream at that message', () => {
    const f = new Framer(
      {
        classify: (type) => {
          if (type === 0x01) throw new ProtocolViolation('invalid frontend message type 1');
          return PASS;
        },
        message: () => undefined,
        write: () => undefined,
      },
      1 << 30,
    );
    expect(() => f.feed(Buffer.concat([message('d', Buffer.alloc(3)), Buffer.from([1, 0, 0, 0, 4])]))).toThrow('invalid frontend message type 1');
  });
});
