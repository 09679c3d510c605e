// Everything a client may do before it has authenticated, in one place:
// SSL/GSS negotiation, the startup packet, a CancelRequest, and then only the
// answers to the server's authentication requests. Until the server has said
// AuthenticationOk and its first ReadyForQuery, nothing a client sends is
// interpreted (no df compile, no 'new' starts) and every message is small,
// so a client without credentials can neither act nor make the proxy buffer.
import type net from 'node:net';
import tls from 'node:tls';
import { COLLECT, PASS, ProtocolViolation, type Classification } from './framer.js';
import {
  AUTH_SASL,
  CANCEL_REQUEST,
  GSSENC_REQUEST,
  MAX_STARTUP_PACKET,
  SSL_REQUEST,
  negotiateProtocolVersion,
  parseStartupParams,
  saslClaimsNoServerBinding,
  withoutChannelBinding,
} from './protocol.js';

/**
 * Largest pre-authentication client message: PostgreSQL's own largest
 * (PG_MAX_AUTH_TOKEN_LENGTH, for passwords and GSS tokens; SASL messages are
 * capped lower by the server itself), so the proxy never refuses what the
 * server would take, and holds at most this much for a stranger.
 */
export const MAX_AUTH_MESSAGE = 65535;

/** The client closed its connection before a session existed. */
export class ClientGone extends Error {}

export interface StartupHooks {
  readonly tls: tls.SecureContext | undefined;
  /** A CancelRequest arrived; the proxy answers nothing either way, as PostgreSQL does. */
  cancel(pid: number, secret: number): void;
  /** The client socket was wrapped in TLS; errors on the new socket must be watched too. */
  upgraded(socket: tls.TLSSocket): void;
}

export type Negotiated =
  | { kind: 'cancel' }
  | { kind: 'startup'; client: net.Socket; params: Map<string, string>; user: string; database: string };

/**
 * Reads packets until a startup packet (or a CancelRequest) arrives, answering
 * SSL and GSS encryption requests on the way. The socket is left paused, with
 * any bytes after the startup packet pushed back for the relay.
 */
export async function negotiate(initial: net.Socket, hooks: StartupHooks): Promise<Negotiated> {
  let client = initial;
  for (;;) {
    const { packet, extra } = await readPacket(client);
    const code = packet.readInt32BE(4);
    if (code === SSL_REQUEST || code === GSSENC_REQUEST) {
      // Bytes sent before the TLS handshake could be injected by a man in the middle (CVE-2021-23214).
      if (extra.length > 0) throw new ProtocolViolation('received unencrypted data after SSL request');
      if (code === SSL_REQUEST && hooks.tls && !(client instanceof tls.TLSSocket)) {
        client.write('S');
        const secure = await upgradeToTls(client, hooks.tls);
        hooks.upgraded(secure);
        client = secure;
      } else {
        client.write('N');
      }
      continue;
    }
    if (code === CANCEL_REQUEST) {
      if (packet.length !== 16) throw new ProtocolViolation('invalid length of cancel request');
      hooks.cancel(packet.readInt32BE(8), packet.readInt32BE(12));
      return { kind: 'cancel' };
    }
    if (code >> 16 !== 3) {
      throw new ProtocolViolation(`unsupported frontend protocol ${code >> 16}.${code & 0xffff}: server supports 3.0 to 3.0`);
    }
    const params = parseStartupParams(packet.subarray(8));
    if (!params) throw new ProtocolViolation('invalid startup packet layout: expected terminator as last byte');
    const user = params.get('user');
    if (!user) throw new ProtocolViolation('no PostgreSQL user name specified in startup packet', '28000');
    // We speak 3.0; options of newer minor versions (_pq_.*) are declined, as the server would.
    const unrecognised = [...params.keys()].filter((k) => k.startsWith('_pq_.'));
    if ((code & 0xffff) > 0 || unrecognised.length > 0) {
      for (const k of unrecognised) params.delete(k);
      client.write(negotiateProtocolVersion(0, unrecognised));
    }
    if (extra.length > 0) client.unshift(extra);
    return { kind: 'startup', client, params, user, database: params.get('database') || user };
  }
}

/** Authentication request codes the client must answer with a 'p' message, and what PostgreSQL calls that answer. */
const ANSWERED: Record<number, string> = {
  3: 'password', // CleartextPassword
  5: 'password', // MD5Password
  7: 'GSS', // GSS
  8: 'GSS', // GSSContinue (the last one may need no answer; then none comes)
  9: 'GSS', // SSPI
  [AUTH_SASL]: 'SASL',
  11: 'SASL', // SASLContinue
};

const PASSWORD_MESSAGE = 0x70; // 'p'
const TERMINATE = 0x58; // 'X'

/**
 * The authentication exchange as the proxy relays it: the client may send a
 * 'p' message only in answer to a request of the server, one per request, of
 * at most MAX_AUTH_MESSAGE bytes; anything else ends the connection before
 * its body is read.
 */
export class AuthGate {
  /** What the server's pending request expects ('password', 'SASL', 'GSS'), or undefined. */
  private due: string | undefined;
  /** The server asked for SASL and the client's first response has not been seen yet. */
  private saslInitialDue = false;
  /** AuthenticationOk arrived: the client must wait for ReadyForQuery. */
  authenticated = false;

  /** A server Authentication message, before it is forwarded; returns what to forward. */
  fromServer(msg: Buffer): Buffer | undefined {
    if (msg.length < 9) return undefined;
    const code = msg.readInt32BE(5);
    if (code === 0) {
      this.authenticated = true;
      this.due = undefined;
      return undefined;
    }
    this.due = ANSWERED[code];
    if (code === AUTH_SASL) {
      this.saslInitialDue = true;
      return withoutChannelBinding(msg);
    }
    return undefined;
  }

  /**
   * A client message header before the session is ready. Returns how the relay
   * treats it, or throws the ProtocolViolation PostgreSQL itself would raise.
   */
  classify(type: number, length: number): Classification | 'terminate' {
    if (type === TERMINATE) return 'terminate';
    if (type !== PASSWORD_MESSAGE || this.due === undefined) {
      throw new ProtocolViolation(
        this.due !== undefined
          ? `expected ${this.due} response, got message type ${type}`
          : `invalid frontend message type ${type} during authentication`,
      );
    }
    if (length > MAX_AUTH_MESSAGE) {
      throw new ProtocolViolation(`authentication message of ${length} bytes exceeds the limit of ${MAX_AUTH_MESSAGE}`);
    }
    this.due = undefined;
    return this.saslInitialDue ? COLLECT : PASS;
  }

  /** A collected 'p' message (the first SASL response): refuses channel binding that cannot pass the proxy. */
  clientMessage(msg: Buffer, upstreamTls: boolean): void {
    this.saslInitialDue = false;
    if (upstreamTls && saslClaimsNoServerBinding(msg)) {
      throw new ProtocolViolation('SCRAM channel binding cannot pass through pg-durable-proxy', '28000', {
        detail:
          'The client connected with TLS and offered channel binding; the proxy ends that TLS connection and opens its own to the server, which would see the exchange as a downgrade attack.',
        hint: 'Connect with channel_binding=disable, or configure the upstream with sslmode=disable on a trusted network.',
      });
    }
  }
}

/** Reads one length-prefixed startup-phase packet; leaves the socket paused. */
function readPacket(sock: net.Socket): Promise<{ packet: Buffer; extra: Buffer }> {
  return new Promise((resolve, reject) => {
    let buf: Buffer = Buffer.alloc(0);
    const cleanup = (): void => {
      sock.removeListener('data', onData);
      sock.removeListener('end', onEnd);
      sock.removeListener('close', onEnd);
    };
    const onEnd = (): void => {
      cleanup();
      reject(new ClientGone());
    };
    const onData = (d: Buffer): void => {
      buf = buf.length === 0 ? d : Buffer.concat([buf, d]);
      if (buf.length < 4) return;
      const len = buf.readInt32BE(0);
      if (len < 8 || len > MAX_STARTUP_PACKET) {
        cleanup();
        sock.pause();
        reject(new ProtocolViolation(`invalid length of startup packet: ${len}`));
        return;
      }
      if (buf.length < len) return;
      cleanup();
      sock.pause();
      resolve({ packet: buf.subarray(0, len), extra: buf.subarray(len) });
    };
    sock.on('data', onData);
    sock.once('end', onEnd);
    sock.once('close', onEnd);
    sock.resume();
  });
}

function upgradeToTls(sock: net.Socket, secureContext: tls.SecureContext): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const secure = new tls.TLSSocket(sock, { isServer: true, secureContext });
    const onError = (err: Error): void => reject(new ProtocolViolation(`TLS handshake failed: ${err.message}`));
    secure.once('error', onError);
    secure.once('secure', () => {
      secure.removeListener('error', onError);
      resolve(secure);
    });
  });
}
