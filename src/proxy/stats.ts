// Plain counters, bumped on the hot path with a single addition each and read
// by the admin endpoint at scrape time.
export class ProxyStats {
  connectionsTotal = 0;
  connectionsActive = 0;
  /** Client connections refused before a session existed (bad startup, TLS, cancel). */
  connectionsRejected = 0;
  bytesFromClients = 0;
  bytesToClients = 0;
  /** Simple-protocol Query and extended-protocol Execute messages. */
  queries = 0;
  /** ErrorResponse messages relayed from the server. */
  serverErrors = 0;
  /** Sessions closed by the proxy for a protocol violation (FATAL 08P01). */
  protocolErrors = 0;
  /** Query/Parse texts that mention the df schema. */
  dfStatements = 0;
  cancelRequests = 0;
  /** Cancel requests whose key matches no session (guesses, or a session already gone). */
  cancelUnknownKey = 0;
  /** Logins the server refused (an ErrorResponse of SQLSTATE class 28 during authentication). */
  authFailures = 0;
  /** Client messages the proxy refused (before authentication, too large, malformed); each closed its connection. */
  refusedMessages = 0;
  /** Exceptions of the proxy's own while relaying a session; each closed that session only. */
  internalErrors = 0;
  /** Warnings left out of the log by the per-address rate limit. */
  logLinesSuppressed = 0;
  upstreamConnectFailures = 0;
}
