// A raw protocol client for the cases real drivers cannot produce: malformed
// messages, pipelined batches, protocol negotiation. Messages are built with
// pg-protocol's serializer and read back with its parser.
import net from 'node:net';
import { serialize } from 'pg-protocol';
import { Parser } from 'pg-protocol/dist/parser.js';
import type { BackendMessage } from 'pg-protocol/dist/messages.js';

export { serialize };

export class RawConnection {
  readonly messages: BackendMessage[] = [];
  /** Everything received after the single-byte answers, as it arrived. */
  private received: Buffer[] = [];
  private readonly parser = new Parser();
  private waiters: (() => void)[] = [];
  closed = false;
  /** Single bytes answered to SSLRequest / GSSENCRequest. */
  readonly singleBytes: number[] = [];
  private expectSingleByte = 0;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (d: Buffer) => {
      let chunk = d;
      while (this.expectSingleByte > 0 && chunk.length > 0) {
        this.singleBytes.push(chunk[0]!);
        this.expectSingleByte--;
        chunk = chunk.subarray(1);
      }
      if (chunk.length > 0) {
        this.received.push(chunk);
        this.parser.parse(chunk, (m) => this.messages.push(m));
      }
      this.wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
    socket.on('error', () => undefined);
  }

  static connect(port: number, host = '127.0.0.1'): Promise<RawConnection> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ port, host }, () => resolve(new RawConnection(s)));
      s.once('error', reject);
    });
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  bytes(): Buffer {
    return Buffer.concat(this.received);
  }

  write(bytes: Buffer | Uint8Array): void {
    this.socket.write(bytes);
  }

  /** Sends a request answered by one byte (SSLRequest, GSSENCRequest). */
  async request(code: number): Promise<number> {
    const b = Buffer.alloc(8);
    b.writeInt32BE(8, 0);
    b.writeInt32BE(code, 4);
    this.expectSingleByte++;
    const have = this.singleBytes.length;
    this.write(b);
    await this.until(() => this.singleBytes.length > have);
    return this.singleBytes[have]!;
  }

  /** A startup packet with any protocol version and parameters. */
  startup(params: Record<string, string>, version = 196608): void {
    const body = Buffer.from(Object.entries(params).map(([k, v]) => `${k}\0${v}\0`).join('') + '\0');
    const b = Buffer.alloc(8 + body.length);
    b.writeInt32BE(8 + body.length, 0);
    b.writeInt32BE(version, 4);
    body.copy(b, 8);
    this.write(b);
  }

  /** Waits until `cond` holds (checked after each arrival), or throws after `ms`. */
  async until(cond: () => boolean, ms = 10_000): Promise<void> {
    const deadline = Date.now() + ms;
    while (!cond()) {
      if (this.closed && !cond()) throw new Error(`connection closed; got: ${this.messages.map((m) => m.name).join(', ')}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out; got: ${this.messages.map((m) => m.name).join(', ')}`);
      await new Promise<void>((res) => {
        const t = setTimeout(res, left);
        this.waiters.push(() => {
          clearTimeout(t);
          res();
        });
      });
    }
  }

  /** Waits for the n-th ReadyForQuery counted from the start of the connection. */
  async readyCount(n: number): Promise<void> {
    await this.until(() => this.messages.filter((m) => m.name === 'readyForQuery').length >= n);
  }

  async waitClosed(ms = 10_000): Promise<void> {
    await this.until(() => this.closed, ms);
  }

  close(): void {
    this.socket.destroy();
  }
}
