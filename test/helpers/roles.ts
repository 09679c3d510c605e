// Test roles, one per authentication method the proxy must pass through.
export const ROLES = {
  trust: { user: 'pgdp_trust', password: 'unused-trust', method: 'trust' },
  cleartext: { user: 'pgdp_cleartext', password: 'clear-secret', method: 'password' },
  md5: { user: 'pgdp_md5', password: 'md5-secret', method: 'md5' },
  scram: { user: 'pgdp_scram', password: 'scram-secret', method: 'scram-sha-256' },
} as const;

/** Managed mode: the executor's least-privilege login (sql/executor-role.sql). */
export const EXECUTOR = { user: 'pgdp_executor', password: 'executor-secret' } as const;
/** Managed mode: the ordinary role that owns the test databases and starts their workflows. */
export const APP = { user: 'pgdp_app', password: 'app-secret' } as const;

export interface TestEnv {
  /**
   * embedded: the embedded PostgreSQL 17 (or TEST_DATABASE_URL), a superuser executor, steps over a trust socket.
   * managed (TEST_MODE=managed): PostgreSQL from TEST_PG_BIN behaving like a managed service (SCRAM over TCP
   * for every role, no socket), the executor a plain role, steps logging in with the passfile.
   */
  mode: 'embedded' | 'managed';
  /** Superuser URL of the test PostgreSQL, straight (not through a proxy). */
  adminUrl: string;
  /** The executor's login (database postgres): the superuser, or EXECUTOR in managed mode. */
  executorUrl: string;
  /** The role tests start workflows as through the proxy: the superuser, or APP in managed mode. */
  app: { user: string; password: string };
  /** A libpq password file with every test role's password (createRoles adds to it). */
  passfile: string;
  /** server_version_num of the test server. */
  serverVersion: number;
  /** Managed mode: the server's own binaries (psql, pg_dump, pg_restore of its version). */
  pgBin?: string;
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
  socketDir?: string;
}
