// The seam between the wire relay and whatever compiles df.* statements.
// The relay hands over only Query and Parse messages whose text passed the
// cheap `mentionsDf` pre-filter; everything else never reaches this interface.

export interface SessionInfo {
  readonly user: string;
  readonly database: string;
}

export interface StatementInterceptor {
  /**
   * A whole Query ('Q') or Parse ('P') message, header included. Return the
   * message to send in its place, or undefined to forward it unchanged.
   */
  rewrite(message: Buffer, session: SessionInfo): Buffer | undefined;
}
