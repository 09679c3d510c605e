// `pg-durable-proxy check --upstream URL [settings]`: the managed-service
// set-up check. It takes the same settings as the proxy (flags, PGDP_*
// variables, --config), checks each database the proxy would serve, prints
// what is in place and what is missing with the statement that fixes it, and
// exits 0 only when nothing is missing.
import { ConfigError, loadConfig } from '../config.js';
import { defaultPassfile } from '../engine/credentials.js';
import { connectionTargets, stepLoginFor } from '../engine/targets.js';
import { checkDatabase, formatFindings, type Finding } from './check.js';

/** The database a URL names (PostgreSQL's default: the user's name). */
export function databaseOf(url: string): string {
  const u = new URL(url);
  return decodeURIComponent(u.pathname.slice(1)) || decodeURIComponent(u.username) || 'postgres';
}

export const CHECK_USAGE = `usage: pg-durable-proxy check --upstream URL [--executor-url URL] [--databases a,b] [--step-passfile FILE] [--step-cert-dir DIR] [--step-url URL] [--df-owner ROLE]

Connects as the executor (--executor-url, else --upstream's credentials) and checks, in each database
the proxy would serve (--databases, else the URL's database): the executor's login, pg_signal_backend,
the df schema (or the right to make it), where the DSL operators live, and a step login for every role
granted df usage. Prints what is missing with the statement that fixes it; exit 0 only when nothing is.`;

/** Runs the check; resolves to the exit status. */
export async function runCheck(argv: string[], env: NodeJS.ProcessEnv, out: (text: string) => void): Promise<number> {
  let cfg: ReturnType<typeof loadConfig>;
  try {
    cfg = loadConfig(argv, env);
  } catch (err) {
    out(`pg-durable-proxy check: ${(err as Error).message}`);
    return 2;
  }
  if (cfg.help) {
    out(CHECK_USAGE);
    return 0;
  }
  const upstream = cfg.upstream;
  const executorUrl = cfg.executorUrl ?? upstream;
  if (!executorUrl) {
    out('pg-durable-proxy check: give the server to check with --upstream URL (or --executor-url URL); the embedded server needs no check');
    return 2;
  }
  let step;
  try {
    step = stepLoginFor(cfg, executorUrl);
  } catch (err) {
    out(`pg-durable-proxy check: ${err instanceof ConfigError ? err.message : (err as Error).message}`);
    return 2;
  }
  const targets = connectionTargets(executorUrl, step, (message) => out(`warning: ${message}`));
  const passfile = cfg.stepPassfile ?? defaultPassfile(env);
  const stepHint = (role: string): string => {
    const u = new URL('url' in step ? step.url : executorUrl);
    return (
      `add a line "${u.hostname}:${u.port || 5432}:*:${role}:<password>" to the step password file ${passfile} ` +
      `(--step-passfile / PGDP_STEP_PASSFILE; mode 0600)${cfg.stepCertDir ? `, or ${role}.crt and ${role}.key to ${cfg.stepCertDir}` : ', or give it a client certificate (--step-cert-dir)'}`
    );
  };
  const databases = cfg.databases ? cfg.databases.split(',').map((d) => d.trim()) : [databaseOf(executorUrl)];
  let missing = 0;
  for (const database of databases) {
    let findings: Finding[];
    try {
      findings = await checkDatabase({ database, control: targets.control(database), step: targets.step, dfOwner: cfg.dfOwner, stepHint });
    } catch (err) {
      findings = [{ status: 'missing', what: `the check of database "${database}" ran to the end`, detail: (err as Error).message }];
    }
    missing += findings.filter((f) => f.status === 'missing').length;
    out(formatFindings(database, findings));
  }
  out(missing === 0 ? 'everything is in place' : `${missing} thing(s) missing`);
  return missing === 0 ? 0 : 1;
}
