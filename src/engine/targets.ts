// Where the executor connects: its own login per database, and a login as a
// workflow's submitter for each step.
import type pg from 'pg';

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

function withPath(url: string, database: string, user?: string): string {
  const u = new URL(url);
  u.pathname = '/' + encodeURIComponent(database);
  if (user !== undefined) {
    u.username = encodeURIComponent(user);
    u.password = '';
  }
  return u.toString();
}

export interface Targets {
  control(database: string): pg.ClientConfig;
  step(database: string, role: string): pg.ClientConfig;
  /** A login as `role` for df.start(..., transaction_mode => 'new'). */
  start(database: string, role: string): pg.ClientConfig;
}

/** `executorUrl`: the executor's login. `step`: a socket directory (embedded, trust) or a URL template. */
export function connectionTargets(executorUrl: string, step: { socketDir: string; port: number } | { url: string }): Targets {
  const login = (database: string, role: string, options: string, application_name: string): pg.ClientConfig =>
    'socketDir' in step
      ? { host: step.socketDir, port: step.port, user: role, database, options, application_name }
      : { connectionString: withPath(step.url, database, role), options, application_name };
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
