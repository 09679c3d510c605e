// Rate limiting for the warnings a stranger can provoke at will (bad cancel
// keys, failed logins, refused messages): at most one line per interval per
// key (the client address), and a global budget per interval so that many
// addresses cannot flood the log either. The table of keys is bounded.

export class LogRateLimiter {
  /** Per key: when it last logged, and how many lines it had suppressed since. Map order: least recently logged (or first suppressed) first. */
  private readonly keys = new Map<string, { last: number; suppressed: number }>();
  private windowStart = 0;
  private windowLines = 0;
  /** Lines suppressed so far, for the metrics. */
  suppressedTotal = 0;

  constructor(
    private readonly intervalMs = 1000,
    private readonly maxKeys = 4096,
    private readonly globalPerInterval = 100,
    private readonly now: () => number = Date.now,
  ) {}

  /**
   * Whether a line for `key` may be logged now: undefined if not (it is
   * counted), else how many of this key's lines were suppressed before it.
   */
  allow(key: string): number | undefined {
    const t = this.now();
    const e = this.keys.get(key);
    if (t - this.windowStart >= this.intervalMs) {
      this.windowStart = t;
      this.windowLines = 0;
    }
    if ((e && t - e.last < this.intervalMs) || this.windowLines >= this.globalPerInterval) {
      this.suppressedTotal++;
      if (e) e.suppressed++;
      else this.remember(key, { last: -Infinity, suppressed: 1 });
      return undefined;
    }
    this.windowLines++;
    const suppressed = e?.suppressed ?? 0;
    this.keys.delete(key); // re-inserted last, so eviction takes the longest quiet keys
    this.remember(key, { last: t, suppressed: 0 });
    return suppressed;
  }

  private remember(key: string, entry: { last: number; suppressed: number }): void {
    this.keys.set(key, entry);
    // The oldest entry goes: at worst it logs one line more than it would have.
    if (this.keys.size > this.maxKeys) this.keys.delete(this.keys.keys().next().value!);
  }
}
