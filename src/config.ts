// Configuration: flags > PGDP_* environment > config file (JSON) > defaults,
// validated with zod. An invalid setting is one line naming the setting, where
// it came from, the value and what is allowed.
import { DEFAULT_USER_AGENT, parseAllowList, type HttpPolicy } from './http/index.js';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { UpstreamError, upstreamFromUrl } from './proxy/upstream.js';

const hostPort = z.string().regex(/^(\[[0-9a-fA-F:.]+\]|[^\s:\[\]]+):\d{1,5}$/, 'expected HOST:PORT, e.g. 127.0.0.1:6433').refine(
  (v) => {
    const port = Number(v.slice(v.lastIndexOf(':') + 1));
    return port >= 0 && port <= 65535;
  },
  { message: 'expected a port from 0 to 65535' },
);

const postgresUrl = z.string().superRefine((v, ctx) => {
  try {
    upstreamFromUrl(v);
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: `expected a postgres:// URL (${err instanceof UpstreamError ? err.message : String(err)})` });
  }
});

/** One entry per setting: its flag, environment variable and file key derive from the key. */
const settings = {
  upstream: postgresUrl.optional().describe('PostgreSQL to front; absent: start an embedded PostgreSQL 17'),
  dataDir: z.string().min(1).default('.pg-durable/data').describe('data directory of the embedded PostgreSQL'),
  listen: hostPort.default('127.0.0.1:6433').describe('address the proxy listens on'),
  executorUrl: postgresUrl.optional().describe('credentials the executor and health check connect with'),
  admin: z
    .union([hostPort, z.literal('off')])
    .default('127.0.0.1:9433')
    .describe('admin HTTP address (/healthz, /metrics), or "off"'),
  console: z
    .enum(['on', 'off'])
    .default('off')
    .describe(
      'web console on the admin endpoint at /console/: "on" lets PostgreSQL roles sign in with their passwords (see docs/console.md); ' +
        'with --admin-token alone only the operator signs in; with neither the console is off',
    ),
  adminToken: z
    .string()
    .min(16, 'expected at least 16 characters')
    .optional()
    .describe("console operator token: who gives it sees and acts on every role's workflows, as the executor (prefer PGDP_ADMIN_TOKEN: ps shows flags)"),
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info').describe('pino log level'),
  tlsCert: z.string().min(1).optional().describe('PEM certificate for TLS to clients (with tlsKey)'),
  tlsKey: z.string().min(1).optional().describe('PEM private key for TLS to clients (with tlsCert)'),
  shutdownTimeout: z.coerce.number().int().min(0).max(86400).default(30).describe('seconds running statements get to finish on SIGTERM/SIGINT'),
  startupTimeout: z.coerce.number().int().min(1).max(3600).default(60).describe('seconds a client has to finish startup and authentication'),
  connectTimeout: z.coerce.number().int().min(1).max(3600).default(10).describe('seconds to wait for the upstream to accept a connection'),
  maxMessageSize: z.coerce
    .number()
    .int()
    .min(1024)
    .max(0x3fffffff)
    .default(0x3fffffff)
    .describe('largest client message accepted, in bytes (PostgreSQL allows 1 GiB - 1)'),
  stepUrl: postgresUrl
    .optional()
    .describe("how steps log in as their workflow's submitter: this URL's host, port and TLS with the submitter as user (default: the embedded server's private socket, else the executor URL without its password)"),
  stepPassfile: z
    .string()
    .min(1)
    .optional()
    .describe("libpq password file (.pgpass format) with the passwords steps log in with when the server asks for one, read again when it changes (default: PGPASSFILE, else ~/.pgpass)"),
  stepCertDir: z
    .string()
    .min(1)
    .optional()
    .describe('directory of client certificates for steps: ROLE.crt and ROLE.key (PEM) are sent, over the step URL\'s TLS, when a step logs in as ROLE'),
  allowSuperuserInstances: z
    .enum(['true', 'false'])
    .optional()
    .describe('let superusers start workflows (default: true on the embedded server, false on an upstream)'),
  databases: z
    .string()
    .regex(/^[^,]+(,[^,]+)*$/, 'expected database names separated by commas')
    .optional()
    .describe('databases the executor serves, comma-separated; it installs df there at start (default: every database with a df schema, and each where a statement first uses df)'),
  maxNewTransactionStarts: z.coerce
    .number()
    .int()
    .min(1)
    .max(1000)
    .default(2)
    .describe("transaction_mode => 'new' starts in flight at once, each on a server connection of its own (pg_durable's max_new_transaction_starts)"),
  newTransactionStartTimeout: z.coerce
    .number()
    .int()
    .min(1)
    .max(3600)
    .default(5)
    .describe("seconds a transaction_mode => 'new' start waits for a free slot before it fails with 53300"),
  dfOwner: z
    .string()
    .min(1)
    .optional()
    .describe("role that owns the df schema, of which the executor's login is a member (default: the executor's login role itself)"),
  leaseTimeout: z.coerce.number().int().min(2).max(3600).default(30).describe("seconds until another proxy may take over a dead proxy's workflows"),
  embeddedPort: z.coerce.number().int().min(0).max(65535).default(0).describe('port of the embedded PostgreSQL on 127.0.0.1; 0 picks a free one'),
  maxStepResult: z.coerce
    .number()
    .int()
    .min(65536)
    .max(256 * 1024 * 1024)
    .default(64 * 1024 * 1024)
    .describe("largest result a workflow step may return, in bytes (64 MiB); a step past it fails, its transaction rolled back"),
  maxInstances: z.coerce.number().int().min(1).max(100_000).default(1000).describe('workflow instances the executor runs at once, per database (a parked, sleeping one does not count)'),
  retentionDays: z.coerce
    .number()
    .min(0)
    .max(36500)
    .default(30)
    .describe("days finished instances (completed, failed, cancelled) are kept before they are pruned, with their nodes (pg_durable's retention_days); 0 keeps them forever"),
  retentionMaxInstances: z.coerce
    .number()
    .int()
    .min(0)
    .max(1_000_000_000)
    .default(0)
    .describe('most finished instances kept per database, the newest; older ones are pruned (pg_durable keeps 10000); 0: no cap'),
  maxInstancesPerRole: z.coerce
    .number()
    .int()
    .min(0)
    .max(100_000)
    .default(0)
    .describe('workflow instances of one submitting role the executor runs at once, per database; 0: no cap beyond maxInstances'),
  httpAllow: z
    .string()
    .optional()
    .describe(
      'where HTTP steps may go, comma-separated: hosts (api.example.com), domains with their subdomains (.example.com or *.example.com), ' +
        'IPs and CIDR ranges (203.0.113.0/24), each with an optional :port; * allows every public host. Private, loopback, link-local and ' +
        'metadata addresses are refused unless listed by IP or range. Unset: no HTTP step may run',
    ),
  httpMaxRequestBytes: z.coerce.number().int().min(0).max(1024 * 1024 * 1024).default(1024 * 1024).describe('largest request body an HTTP step may send, in bytes (1 MiB)'),
  httpMaxResponseBytes: z.coerce
    .number()
    .int()
    .min(0)
    .max(256 * 1024 * 1024)
    .default(10 * 1024 * 1024)
    .describe('largest response body an HTTP step may receive, in bytes (10 MiB); a larger one fails the step'),
  httpMaxTimeoutSeconds: z.coerce.number().int().min(1).max(86_400).default(300).describe("longest an HTTP step may take, whatever its timeout_seconds says (300)"),
} as const;

export type SettingName = keyof typeof settings;
/** Settings whose values are secrets. */
const SECRET_SETTINGS = new Set<string>(['adminToken']);
const names = Object.keys(settings) as SettingName[];

const schema = z.object(settings).strict();
export type Config = z.infer<typeof schema>;

export const flagOf = (k: string): string => '--' + k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());
export const envOf = (k: string): string => 'PGDP_' + k.replace(/[A-Z]/g, (c) => '_' + c).toUpperCase();

export class ConfigError extends Error {}

/** Each setting with its flag, variable and description, for --help and the README. */
export function describeSettings(): { name: SettingName; flag: string; env: string; description: string; default?: unknown }[] {
  return names.map((name) => {
    const s = settings[name];
    const parsed = s.safeParse(undefined);
    return {
      name,
      flag: flagOf(name),
      env: envOf(name),
      description: s.description ?? '',
      ...(parsed.success && parsed.data !== undefined ? { default: parsed.data } : {}),
    };
  });
}

type Source = 'flag' | 'env' | 'file';

export function loadConfig(argv: string[], env: NodeJS.ProcessEnv): Config & { help: boolean } {
  const options: Record<string, { type: 'string' | 'boolean'; short?: string }> = { config: { type: 'string' }, help: { type: 'boolean', short: 'h' } };
  for (const n of names) options[flagOf(n).slice(2)] = { type: 'string' };
  let flags: Record<string, string | boolean | undefined>;
  try {
    flags = parseArgs({ args: argv, options, strict: true, allowPositionals: false }).values as Record<string, string | boolean | undefined>;
  } catch (err) {
    throw new ConfigError(`${(err as Error).message.split('\n')[0]} (see --help)`);
  }

  const raw: Record<string, unknown> = {};
  const from: Record<string, string> = {};
  const configPath = (flags.config as string | undefined) ?? env.PGDP_CONFIG;
  if (configPath) {
    let text: string;
    try {
      text = readFileSync(configPath, 'utf8');
    } catch (err) {
      throw new ConfigError(`config file ${configPath}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    let file: unknown;
    try {
      file = JSON.parse(text);
    } catch (err) {
      throw new ConfigError(`config file ${configPath}: not valid JSON (${(err as Error).message})`);
    }
    if (typeof file !== 'object' || file === null || Array.isArray(file)) {
      throw new ConfigError(`config file ${configPath}: expected a JSON object of settings`);
    }
    for (const [k, v] of Object.entries(file)) {
      if (!(names as string[]).includes(k)) {
        throw new ConfigError(`config file ${configPath}: unknown setting "${k}"; known settings: ${names.join(', ')}`);
      }
      raw[k] = v;
      from[k] = `config file ${configPath}`;
    }
  }
  const set = (k: SettingName, v: string | undefined, src: Source): void => {
    if (v === undefined) return;
    raw[k] = v;
    from[k] = src === 'flag' ? flagOf(k) : envOf(k);
  };
  for (const n of names) set(n, env[envOf(n)], 'env');
  for (const n of names) set(n, flags[flagOf(n).slice(2)] as string | undefined, 'flag');

  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const key = String(issue.path[0] ?? '');
    const where = from[key] ?? 'default';
    // A secret's value is not repeated in the message (it would reach logs and terminals' scrollback).
    const shown = SECRET_SETTINGS.has(key) ? '(value not shown)' : JSON.stringify(raw[key]);
    throw new ConfigError(`invalid setting ${key} (from ${where}): ${shown}: ${issue.message}`);
  }
  const cfg = parsed.data;
  if ((cfg.tlsCert === undefined) !== (cfg.tlsKey === undefined)) {
    const missing = cfg.tlsCert === undefined ? 'tlsCert' : 'tlsKey';
    throw new ConfigError(`invalid setting ${missing}: tlsCert and tlsKey must be given together (${flagOf(missing)} / ${envOf(missing)})`);
  }
  return { ...cfg, help: flags.help === true };
}

/** Splits a validated HOST:PORT. */
export function splitHostPort(v: string): { host: string; port: number } {
  const i = v.lastIndexOf(':');
  return { host: v.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(v.slice(i + 1)) };
}

/** The HTTP steps' egress policy from the settings; an invalid --http-allow entry is a ConfigError. */
export function httpPolicy(cfg: Pick<Config, 'httpAllow' | 'httpMaxRequestBytes' | 'httpMaxResponseBytes' | 'httpMaxTimeoutSeconds'>): HttpPolicy {
  const entries = (cfg.httpAllow ?? '').split(',').map((e) => e.trim()).filter((e) => e !== '');
  let allow;
  try {
    allow = parseAllowList(entries);
  } catch (err) {
    throw new ConfigError(`invalid setting httpAllow: ${(err as Error).message}`);
  }
  return {
    allow,
    maxRequestBytes: cfg.httpMaxRequestBytes,
    maxResponseBytes: cfg.httpMaxResponseBytes,
    maxTimeoutMs: cfg.httpMaxTimeoutSeconds * 1000,
    userAgent: DEFAULT_USER_AGENT,
  };
}
