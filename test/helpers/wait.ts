// Polling for conditions the tests cannot be told about (another process's
// state, a server's view of a session), and a seeded random source.
import pg from 'pg';

/** Polls `probe` until it returns true; throws naming `what` after `ms`. */
export async function eventually(probe: () => boolean | Promise<boolean>, what: string, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await probe())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Waits until pg_stat_activity, seen by `admin`, has a row matching `where` (with $1 = `arg`). */
export async function untilActivity(admin: pg.Client, where: string, arg: unknown, present = true): Promise<void> {
  await eventually(
    async () => (await admin.query(`SELECT 1 FROM pg_stat_activity WHERE ${where}`, [arg])).rows.length > 0 === present,
    `pg_stat_activity ${present ? 'to show' : 'to drop'} ${where} ($1 = ${String(arg)})`,
  );
}

/** A seeded generator (mulberry32), so a failing random case can be replayed. */
export function seededRandom(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
