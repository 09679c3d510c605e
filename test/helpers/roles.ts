// Test roles, one per authentication method the proxy must pass through.
export const ROLES = {
  trust: { user: 'pgdp_trust', password: 'unused-trust', method: 'trust' },
  cleartext: { user: 'pgdp_cleartext', password: 'clear-secret', method: 'password' },
  md5: { user: 'pgdp_md5', password: 'md5-secret', method: 'md5' },
  scram: { user: 'pgdp_scram', password: 'scram-secret', method: 'scram-sha-256' },
} as const;

export interface TestEnv {
  /** Superuser URL of the test PostgreSQL, straight (not through a proxy). */
  adminUrl: string;
  pgHost: string;
  pgPort: number;
  /** Self-signed certificate (CN localhost, SAN 127.0.0.1) the server uses; also usable by a proxy. */
  caCertPath: string;
  certPath: string;
  keyPath: string;
  /**
   * Unix socket directory where the test server trusts local logins, for the
   * executor's logins as each workflow's submitter (TEST_SOCKET_DIR with TEST_DATABASE_URL).
   */
  socketDir: string;
}
