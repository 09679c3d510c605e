// Where the executor connects: its own login per database, and a login as a
// workflow's submitter for each step.
import type pg from 'pg';
import { parse } from 'pg-connection-string';
import { ConfigError, type Config } from '../config.js';
import { StepCredentials } from './credentials.js';

/**
 * Session settings of every step: the df.* guards know they run inside a workflow; dates in ISO;
 * standard_conforming_strings on, which substitution's quoting relies on (a startup option
 * outranks ALTER ROLE/DATABASE ... SET, and DISCARD ALL resets to it).
 */
const STEP_OPTIONS = '-c df.in_workflow=true -c datestyle=ISO,MDY -c intervalstyle=postgres -c standard_conforming_strings=on';
/** The executor's own connections: names resolve in pg_catalog, then pg_temp, never in a schema users write to. */
const CONTROL_OPTIONS = '-c search_path=pg_catalog,pg_temp';
/** A transaction_mode => 'new' start: outside any workflow, bounded as pg_durable bounds its own. */
const START_OPTIONS = '-c df.in_workflow=false -c lock_timeout=30s -c statement_timeout=30s';

/** The step URL as pg reads it (it reads sslrootcert, sslcert and sslkey files now, once). */
function parseStepUrl(url: string): ReturnType<typeof parse> {
  try {
    return parse(url);
  } catch (err) {
    throw new ConfigError(`invalid setting stepUrl: ${(err as Error).message}`);
  }
}

function withPath(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = '/' + encodeURIComponent(database);
  return u.toString();
}

export interface Targets {
  control(database: string): pg.ClientConfig;
  step(database: string, role: string): pg.ClientConfig;
  /** A login as `role` for df.start(..., transaction_mode => 'new'). */
  start(database: string, role: string): pg.ClientConfig;
}

/**
 * How steps log in as a workflow's submitter: over a Unix-socket directory
 * (the embedded server's, trust or peer), or with a URL template's host,
 * port and TLS settings and the submitter as user. When the server asks for
 * a password, it comes from `passfile` (libpq's .pgpass format; default
 * PGPASSFILE, else ~/.pgpass); over TLS, `certDir`'s ROLE.crt and ROLE.key
 * are sent as the client certificate when they exist.
 */
export type StepLogin = { socketDir: string; port: number; passfile?: string } | { url: string; passfile?: string; certDir?: string };

const NEEDS_TLS = 'invalid setting stepCertDir: client certificates need TLS on the step connections; add sslmode=verify-full (or verify-ca, require) to --step-url';

/**
 * The step login the settings ask for: stepUrl, else the embedded server's
 * socket, else the executor URL (steps log in as their submitter, never with
 * its password); with stepPassfile and stepCertDir.
 */
export function stepLoginFor(
  cfg: Pick<Config, 'stepUrl' | 'stepPassfile' | 'stepCertDir'>,
  executorUrl: string,
  embedded?: { socketDir: string; port: number },
): StepLogin {
  const passfile = cfg.stepPassfile !== undefined ? { passfile: cfg.stepPassfile } : {};
  if (!cfg.stepUrl && embedded) {
    if (cfg.stepCertDir !== undefined) {
      throw new ConfigError("invalid setting stepCertDir: steps log in over the embedded server's Unix socket, which has no TLS; give --step-url too");
    }
    return { socketDir: embedded.socketDir, port: embedded.port, ...passfile };
  }
  const url = cfg.stepUrl ?? executorUrl;
  if (cfg.stepCertDir === undefined) return { url, ...passfile };
  if (!parseStepUrl(url).ssl) throw new ConfigError(NEEDS_TLS);
  return { url, ...passfile, certDir: cfg.stepCertDir };
}

/** `executorUrl`: the executor's login. `step`: how steps log in. `warn`: where a password file's problems are reported. */
export function connectionTargets(executorUrl: string, step: StepLogin, warn?: (message: string) => void): Targets {
  const credentials = new StepCredentials({ passfile: step.passfile, certDir: 'url' in step ? step.certDir : undefined, warn });
  const password = credentials.password();
  let base: pg.ClientConfig;
  if ('url' in step) {
    // Parsed here, not handed to pg as a connectionString: pg lets the string's (empty) password override the callback.
    const { ssl, ...rest } = parseStepUrl(step.url);
    base = { ...(rest as pg.ClientConfig) };
    if (ssl !== undefined) base.ssl = (ssl === true ? {} : ssl) as pg.ClientConfig['ssl'];
    if (credentials.certDir !== undefined && !base.ssl) throw new ConfigError(NEEDS_TLS);
  } else {
    base = { host: step.socketDir, port: step.port };
  }
  const login = (database: string, role: string, options: string, application_name: string): pg.ClientConfig => ({
    ...base,
    user: role,
    database,
    options,
    application_name,
    password,
    ...(base.ssl ? { ssl: credentials.withCertificate(base.ssl as object, role) } : {}),
  });
  return {
    // The executor's own connections never resolve a name through a schema a user can write to.
    control: (database) => ({
      connectionString: withPath(executorUrl, database),
      application_name: 'pg-durable-proxy executor',
      options: CONTROL_OPTIONS,
    }),
    step: (database, role) => login(database, role, STEP_OPTIONS, 'pg-durable-proxy step'),
    start: (database, role) => login(database, role, START_OPTIONS, 'pg-durable-proxy new-transaction'),
  };
}
