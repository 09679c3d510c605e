// A raw protocol client for the cases real drivers cannot produce: malformed
// messages, pipelined batches, protocol negotiation. Messages are built with
// pg-protocol's serializer and read back with its parser.
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import net from 'node:net';
import { serialize } from 'pg-protocol';
import { Parser } from 'pg-protocol/dist/parser.js';
import type { BackendMessage } from 'pg-protocol/dist/messages.js';

export { serialize };

/** pg's own SCRAM client (pg/lib/crypto/sasl.js). */
interface ScramSession {
  mechanism: string;
  response: string;
}
const sasl = createRequire(import.meta.url)('pg/lib/crypto/sasl.js') as {
  startSession(mechanisms: string[]): ScramSession;
  continueSession(session: ScramSession, password: string, serverData: string): Promise<void>;
  finalizeSession(session: ScramSession, serverData: string): void;
};

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

  /**
   * Startup and authentication, answering whatever the server asks (trust,
   * cleartext, md5, SCRAM-SHA-256) with `password`; resolves at the first
   * ReadyForQuery. The messages seen stay in `messages`.
   */
  async login(params: Record<string, string>, password?: string, version?: number): Promise<void> {
    this.startup(params, version);
    let seen = 0;
    let scram: ScramSession | undefined;
    for (;;) {
      await this.until(() => this.messages.length > seen);
      const m = this.messages[seen++] as unknown as { name: string; mechanisms?: string[]; data?: string; salt?: Buffer; message?: string };
      if (m.name === 'readyForQuery') return;
      // A message pg-protocol does not know (NegotiateProtocolVersion) comes as an error without a severity.
      if (m.name === 'error' && (m as { severity?: string }).severity !== undefined) throw new Error(`login failed: ${m.message}`);
      if (password === undefined && m.name.startsWith('authentication') && m.name !== 'authenticationOk') {
        throw new Error(`the server asks for ${m.name} and no password was given`);
      }
      if (m.name === 'authenticationCleartextPassword') this.write(serialize.password(password!));
      if (m.name === 'authenticationMD5Password') {
        const md5 = (x: string | Buffer): string => createHash('md5').update(x).digest('hex');
        const inner = md5(password! + params.user);
        this.write(serialize.password('md5' + md5(Buffer.concat([Buffer.from(inner), m.salt!]))));
      }
      if (m.name === 'authenticationSASL') {
        scram = sasl.startSession(m.mechanisms!);
        this.write(serialize.sendSASLInitialResponseMessage(scram.mechanism, scram.response));
      }
      if (m.name === 'authenticationSASLContinue') {
        await sasl.continueSession(scram!, password!, m.data!);
        this.write(serialize.sendSCRAMClientFinalMessage(scram!.response));
      }
      if (m.name === 'authenticationSASLFinal') sasl.finalizeSession(scram!, m.data!);
    }
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
