// Live views: server-sent event streams fed by the engine's events. The
// engine says only that an instance of a database changed (ids, never data);
// each stream then re-reads what it shows as its own session's role, so row-
// level security decides what it learns, and at most once per THROTTLE_MS
// however fast the engine goes.
import type http from 'node:http';
import type { EngineEvents } from '../../engine/events.js';
import { SECURITY_HEADERS } from './http.js';
import { instanceDetail, instancesByIds, type Detail, type NodeRow } from './queries.js';
import type { Session } from './sessions.js';

/** A view re-reads at most this often. */
export const THROTTLE_MS = 250;
const HEARTBEAT_MS = 20_000;
/** A stream whose client reads slower than this much output is closed. */
const MAX_BUFFERED = 4 * 1024 * 1024;
export const MAX_STREAMS_PER_SESSION = 6;
export const MAX_STREAMS = 512;

/** Runs `run` after `ms` when poked, never two at once, the next at least `ms` after the last began. */
export class Throttle {
  private timer: NodeJS.Timeout | undefined;
  private running = false;
  private again = false;
  private closed = false;

  constructor(
    private readonly ms: number,
    private readonly run: () => Promise<void>,
  ) {}

  poke(): void {
    if (this.closed || this.timer) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.timer = setTimeout(() => void this.fire(), this.ms);
  }

  private async fire(): Promise<void> {
    this.timer = undefined;
    this.running = true;
    try {
      await this.run();
    } catch {
      // the stream reports its own failures
    } finally {
      this.running = false;
      if (this.again) {
        this.again = false;
        this.poke();
      }
    }
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
  }
}

interface Subscriber {
  database: string;
  /** The instance page's instance; undefined for the list. */
  instance: string | undefined;
  changed(instance: string): void;
}

/** Hands the engine's `changed` and `ended` events to the streams of their database. */
export class LiveHub {
  private readonly subs = new Set<Subscriber>();
  private readonly onEvent = (e: { database: string; instance: string }): void => this.touch(e.database, e.instance);

  constructor(private readonly events: EngineEvents | undefined) {
    events?.on('changed', this.onEvent);
    events?.on('ended', this.onEvent);
  }

  get streams(): number {
    return this.subs.size;
  }

  /** Something of `instance` changed (the engine said so, or the console acted on it). */
  touch(database: string, instance: string): void {
    for (const s of this.subs) {
      if (s.database === database && (s.instance === undefined || s.instance === instance)) s.changed(instance);
    }
  }

  /** Opens an event stream on `res` for the session: the instance page's (`instance`) or the list's. */
  open(session: Session, instance: string | undefined, res: http.ServerResponse): void {
    res.writeHead(200, {
      ...SECURITY_HEADERS,
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    let ended = false;
    const send = (event: string, data: unknown): void => {
      if (ended) return;
      res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
      if (res.writableLength > MAX_BUFFERED) close();
    };
    const heartbeat = setInterval(() => !ended && res.write(': ping\n\n'), HEARTBEAT_MS);
    heartbeat.unref();
    const pending = new Set<string>();
    let last: Detail | undefined;
    const refresh = async (): Promise<void> => {
      if (instance !== undefined) {
        let now: Detail | undefined;
        try {
          now = await instanceDetail(session.reader, instance);
        } catch (err) {
          send('problem', { error: (err as Error).message });
          return;
        }
        if (!now) {
          // Not there, or not this role's: said once and the stream ends. Staying subscribed would
          // answer again at each change of it, telling another role's instance from none.
          send('gone', { id: instance });
          gone();
          res.end();
          return;
        }
        if (!last) send('snapshot', now);
        else {
          const d = diff(last, now);
          if (d.nodes.length > 0 || d.explain !== undefined || JSON.stringify(last.instance) !== JSON.stringify(now.instance)) send('update', d);
        }
        last = now;
        return;
      }
      const ids = [...pending];
      pending.clear();
      try {
        const rows = await instancesByIds(session.reader, ids);
        if (rows.length) send('instances', { instances: rows });
      } catch (err) {
        send('problem', { error: (err as Error).message });
      }
    };
    const throttle = new Throttle(THROTTLE_MS, refresh);
    const sub: Subscriber = {
      database: session.database,
      instance,
      changed: (id) => {
        pending.add(id);
        throttle.poke();
      },
    };
    const close = (): void => {
      if (ended) return;
      send('signedout', {});
      ended = true;
      throttle.close();
      clearInterval(heartbeat);
      this.subs.delete(sub);
      session.streams.delete(close);
      res.end();
    };
    const gone = (): void => {
      if (ended) return;
      ended = true;
      throttle.close();
      clearInterval(heartbeat);
      this.subs.delete(sub);
      session.streams.delete(close);
    };
    res.on('close', gone);
    // The oldest of a session's streams gives way to a new one.
    if (session.streams.size >= MAX_STREAMS_PER_SESSION) [...session.streams][0]!();
    session.streams.add(close);
    this.subs.add(sub);
    res.write('retry: 3000\n\n');
    send('hello', { instance: instance ?? null, throttle_ms: THROTTLE_MS });
    // The instance page gets its first picture at once, then what changes.
    if (instance !== undefined) void refresh();
  }

  close(): void {
    this.events?.off('changed', this.onEvent);
    this.events?.off('ended', this.onEvent);
    this.subs.clear();
  }
}

const nodeKey = (n: NodeRow): string => `${n.inferred_status}|${n.status}|${n.updated_at}|${n.iteration ?? ''}|${n.stamp ?? ''}|${n.result ?? ''}`;

/** What changed between two readings of an instance: its row, the nodes that changed, df.explain's text if it changed. */
function diff(before: Detail, now: Detail): { instance: Detail['instance']; nodes: NodeRow[]; explain?: string } {
  const old = new Map(before.nodes.map((n) => [n.id, nodeKey(n)]));
  const nodes = now.nodes.filter((n) => old.get(n.id) !== nodeKey(n));
  return { instance: now.instance, nodes, ...(now.explain !== before.explain ? { explain: now.explain } : {}) };
}
