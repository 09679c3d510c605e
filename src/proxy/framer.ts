// Incremental framing of a stream of typed protocol messages
// (1 type byte, 4-byte length that counts itself, body).
//
// The hot path: a chunk whose messages are all "pass" is forwarded as the very
// Buffer that arrived, after a walk over its 5-byte headers. Only messages the
// caller classifies as "collect" are gathered whole (in place when they lie in
// one chunk) and handed to it, and only they can be replaced.

export const PASS = 0;
export const COLLECT = 1;
export type Classification = typeof PASS | typeof COLLECT;

export interface FramerHandler {
  /** Called once per message, on its header. Throw a ProtocolViolation to reject. */
  classify(type: number, length: number): Classification;
  /**
   * A collected message, whole (header included). Return a replacement, or
   * undefined to forward it; or a promise of either, which holds back every
   * later byte until it settles (a rejected promise forwards the message).
   */
  message(msg: Buffer): Buffer | undefined | Promise<Buffer | undefined>;
  /** Bytes to forward, in order. */
  write(bytes: Buffer): void;
  /** What feeding held-back bytes threw, once a promised replacement settled. */
  failed?(err: unknown): void;
}

/** A peer broke the protocol (or asked for what cannot work); the session ends with FATAL and this SQLSTATE. */
export class ProtocolViolation extends Error {
  constructor(
    message: string,
    readonly code = '08P01',
    readonly more: { detail?: string; hint?: string } = {},
  ) {
    super(message);
  }
}

export class Framer {
  private readonly header = Buffer.alloc(5);
  private headerLen = 0;
  /** Body bytes of the current pass-through message still to come. */
  private remaining = 0;
  /** The message being collected across chunks, and how much of it is filled. */
  private collecting: Buffer | undefined;
  private filled = 0;
  /** Chunks that arrived while a promised replacement was pending (defined only then). */
  private held: Buffer[] | undefined;

  constructor(
    private readonly handler: FramerHandler,
    private readonly maxLength: number,
  ) {}

  /** True between messages: nothing of a message has been seen or forwarded half-way. */
  get atBoundary(): boolean {
    return this.remaining === 0 && this.headerLen === 0 && this.collecting === undefined && this.held === undefined;
  }

  feed(chunk: Buffer): void {
    if (this.held) {
      this.held.push(chunk);
      return;
    }
    const h = this.handler;
    const end = chunk.length;
    let pos = 0;
    let flushFrom = 0; // start of the bytes of this chunk not yet written

    while (pos < end) {
      if (this.remaining > 0) {
        const n = Math.min(this.remaining, end - pos);
        this.remaining -= n;
        pos += n;
        continue;
      }
      if (this.collecting !== undefined) {
        const buf = this.collecting;
        const n = Math.min(buf.length - this.filled, end - pos);
        chunk.copy(buf, this.filled, pos, pos + n);
        this.filled += n;
        pos += n;
        flushFrom = pos;
        if (this.filled === buf.length) {
          this.collecting = undefined;
          const r = h.message(buf);
          if (r instanceof Promise) return this.hold(r, buf, chunk.subarray(pos));
          h.write(r ?? buf);
        }
        continue;
      }

      // A header: whole in this chunk, or completing one begun in the last.
      let type: number;
      let length: number;
      let msgStart: number; // offset of the header in this chunk, or -1 if it began earlier
      if (this.headerLen === 0 && end - pos >= 5) {
        type = chunk[pos]!;
        length = chunk.readInt32BE(pos + 1);
        msgStart = pos;
        pos += 5;
      } else {
        if (this.headerLen === 0 && pos > flushFrom) {
          h.write(chunk.subarray(flushFrom, pos));
        }
        const n = Math.min(5 - this.headerLen, end - pos);
        chunk.copy(this.header, this.headerLen, pos, pos + n);
        this.headerLen += n;
        pos += n;
        flushFrom = pos;
        if (this.headerLen < 5) break;
        this.headerLen = 0;
        type = this.header[0]!;
        length = this.header.readInt32BE(1);
        msgStart = -1;
      }

      if (length < 4 || length > this.maxLength) {
        throw new ProtocolViolation(
          length < 4 ? `invalid message length ${length}` : `message of ${length} bytes exceeds the limit of ${this.maxLength}`,
        );
      }
      const bodyLen = length - 4;

      if (h.classify(type, length) === PASS) {
        if (msgStart < 0) h.write(Buffer.from(this.header)); // header held back from the last chunk
        this.remaining = bodyLen;
        continue;
      }

      // Collect: in place if the whole message is in this chunk.
      if (msgStart >= 0 && end - pos >= bodyLen) {
        const msgEnd = pos + bodyLen;
        const replacement = h.message(chunk.subarray(msgStart, msgEnd));
        if (replacement instanceof Promise) {
          if (msgStart > flushFrom) h.write(chunk.subarray(flushFrom, msgStart));
          return this.hold(replacement, chunk.subarray(msgStart, msgEnd), chunk.subarray(msgEnd));
        }
        if (replacement !== undefined) {
          if (msgStart > flushFrom) h.write(chunk.subarray(flushFrom, msgStart));
          h.write(replacement);
          flushFrom = msgEnd;
        }
        pos = msgEnd;
        continue;
      }
      if (msgStart > flushFrom) h.write(chunk.subarray(flushFrom, msgStart));
      const buf = Buffer.allocUnsafe(1 + length);
      if (msgStart >= 0) chunk.copy(buf, 0, msgStart, pos);
      else this.header.copy(buf, 0);
      this.collecting = buf;
      this.filled = 5;
      flushFrom = pos;
      if (bodyLen === 0) {
        this.collecting = undefined;
        const r = h.message(buf);
        if (r instanceof Promise) return this.hold(r, buf, chunk.subarray(pos));
        h.write(r ?? buf);
      }
    }

    if (flushFrom < end) h.write(flushFrom === 0 ? chunk : chunk.subarray(flushFrom));
  }

  /** Holds back `rest` and all that follows until `pending` gives the message to write in place of `msg`. */
  private hold(pending: Promise<Buffer | undefined>, msg: Buffer, rest: Buffer): void {
    const original = Buffer.from(msg); // the chunk it lies in may be reused by the time we write
    this.held = rest.length > 0 ? [Buffer.from(rest)] : [];
    const resume = (replacement: Buffer | undefined): void => {
      const chunks = this.held!;
      this.held = undefined;
      try {
        this.handler.write(replacement ?? original);
        for (const c of chunks) this.feed(c); // a new hold queues the chunks after it again
      } catch (err) {
        this.handler.failed?.(err);
      }
    };
    pending.then(resume, () => resume(undefined));
  }
}
