// Where the executor connects: its own login per database, and a login as a
// workflow's submitter for each step.
import type pg from 'pg';

/** Session settings of every step: the df.* guards know they run inside a workflow; dates in ISO. */
const STEP_OPTIONS = '-c df.in_workflow=true -c datestyle=ISO,MDY -c intervalstyle=postgres';

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
}

/** `executorUrl`: the executor's login. `step`: a socket directory (embedded, trust) or a URL template. */
export function connectionTargets(executorUrl: string, step: { socketDir: string; port: number } | { url: string }): Targets {
  return {
    control: (database) => ({ connectionString: withPath(executorUrl, database), application_name: 'pg-durable-proxy executor' }),
    step: (database, role) =>
      'socketDir' in step
        ? { host: step.socketDir, port: step.port, user: role, database, options: STEP_OPTIONS, application_name: 'pg-durable-proxy step' }
        : { connectionString: withPath(step.url, database, role), options: STEP_OPTIONS, application_name: 'pg-durable-proxy step' },
  };
}
