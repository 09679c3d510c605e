// The seam between the wire relay and whatever compiles df.* statements.
// The relay hands over only Query and Parse messages whose text passed the
// cheap `mentionsDf` or `mentionsDatabase` pre-filters, and only once the
// session is authenticated and ready; everything else never reaches this interface.

import type { PgError } from './protocol.js';

export interface SessionInfo {
  readonly user: string;
  readonly database: string;
  /** From the last ReadyForQuery: I idle, T in a transaction block, E in a failed one. */
  readonly transactionStatus: 'I' | 'T' | 'E';
  /**
   * The session's current role (current_user, after any SET ROLE), asked of
   * the server on the session's own connection while the client waits. Call
   * it only while handling a simple Query; undefined when that Query is not
   * alone on the wire (an earlier statement is still pending), since the
   * question cannot be slipped in then.
   */
  currentRole(): Promise<string> | undefined;
}

export interface Interception {
  /** The message to send in place of the client's. */
  message: Buffer;
  /**
   * The replacement makes the server fail with an error whose message contains `marker`: the
   * session hands the client `fields` instead (the server keeps the
   * transaction state right, the proxy supplies the error and its position).
   */
  error?: { marker: string; fields: PgError };
}

export interface StatementInterceptor {
  /**
   * A whole Query ('Q') or Parse ('P') message, header included; undefined
   * forwards it unchanged. A promise holds the client's later messages back
   * until it settles (for work done elsewhere first); it must not reject.
   */
  rewrite(message: Buffer, session: SessionInfo): Interception | undefined | Promise<Interception | undefined>;
}
