// The log rate limiter: one line per interval per key, a global budget, a bounded table.
import { describe, expect, it } from 'vitest';
import { LogRateLimiter } from '../../src/proxy/ratelimit.js';

describe('LogRateLimiter', () => {
  it('allows one line per interval per key and reports what it left out on the next', () => {
    let now = 10_000;
    const l = new LogRateLimiter(1000, 100, 100, () => now);
    expect(l.allow('a')).toBe(0);
    for (let i = 0; i < 49; i++) expect(l.allow('a')).toBeUndefined();
    expect(l.allow('b')).toBe(0); // another address is not held back by the first
    now += 999;
    expect(l.allow('a')).toBeUndefined();
    now += 1;
    expect(l.allow('a')).toBe(50);
    expect(l.allow('a')).toBeUndefined();
    expect(l.suppressedTotal).toBe(51);
  });

  it('holds many addresses to a global budget per interval', () => {
    let now = 0;
    const l = new LogRateLimiter(1000, 10_000, 5, () => now);
    const allowed = Array.from({ length: 100 }, (_, i) => l.allow(`10.0.0.${i}`)).filter((x) => x !== undefined);
    expect(allowed).toHaveLength(5);
    now += 1000;
    // A suppressed address says so when it next gets a line.
    expect(l.allow('10.0.0.50')).toBe(1);
  });

  it('keeps at most maxKeys addresses', () => {
    const l = new LogRateLimiter(1000, 3, 1000, () => 0);
    for (const k of ['a', 'b', 'c', 'd']) l.allow(k);
    // 'a' was forgotten, so it may log again at once; 'd' is remembered.
    expect(l.allow('a')).toBe(0);
    expect(l.allow('d')).toBeUndefined();
    expect((l as unknown as { keys: Map<string, unknown> }).keys.size).toBe(3);
  });
});
