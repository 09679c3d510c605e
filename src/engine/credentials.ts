// How steps prove they are their workflow's submitter when the server asks:
// a password from a libpq password file (.pgpass format, matched as libpq
// matches it), and a client certificate per role from a directory. A trust or
// peer socket needs neither. pg asks for the password only when the server
// requests one; a login that has none fails with NoStepPassword, naming what
// was looked up where, instead of pg's "client password must be a string".
import { readFile, stat } from 'node:fs/promises';
import { readFileSync, statSync, type Stats } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import type { PgError } from '../proxy/protocol.js';

interface PassEntry {
  host: string;
  port: string;
  database: string;
  user: string;
  password: string;
}

/** What a .pgpass line is matched against: the connection pg is making. */
export interface PassfileLogin {
  host: string;
  port: number;
  database: string;
  user: string;
}

/** pgpass/lib/helper.js (pg's own .pgpass reader): the parsing, matching and permission rules. */
interface PgpassHelper {
  parseLine(line: string): PassEntry | null;
  isValidEntry(entry: PassEntry): boolean;
  match(login: { host: string; port: number | string; database: string; user: string }, entry: PassEntry): boolean;
  usePgPass(stats: Stats, file: string): boolean;
  warnTo(stream: NodeJS.WritableStream): NodeJS.WritableStream;
}
const helper = createRequire(import.meta.url)('pgpass/lib/helper.js') as PgpassHelper;

/**
 * parseLine ignores lines shorter than 11 characters, which libpq accepts
 * (`*:*:*:ab:x`). Such a line is padded with characters no password holds
 * (passwords are C strings), which land in the password field and are cut off again.
 */
const PAD = '\0\0';

/** libpq: a host that is a Unix-socket directory. */
const isSocket = (host: string): boolean => host.startsWith('/') || host.startsWith('@');

/**
 * The password of the first line of `text` matching `login`, as libpq picks
 * it: `*` matches anything, `\:` and `\\` are a colon and a backslash, lines
 * starting with `#` are comments, and a line needs all five fields (empty
 * ones never match). A Unix-socket connection matches its directory and also
 * `localhost` (libpq: only for its compiled-in default directory, which a
 * proxy cannot know; the embedded server's directory is private anyway).
 */
export function passwordFor(text: string, login: PassfileLogin): string | undefined {
  const hosts = isSocket(login.host) ? [login.host, 'localhost'] : [login.host || 'localhost'];
  for (const raw of text.split(/\r?\n/)) {
    if (raw.startsWith('#')) continue;
    const padded = raw.length < 11;
    const entry = helper.parseLine(padded ? raw + PAD : raw);
    if (!entry) continue;
    if (padded) {
      if (!entry.password.endsWith(PAD)) continue;
      entry.password = entry.password.slice(0, -PAD.length);
    }
    if (!helper.isValidEntry(entry)) continue;
    if (hosts.some((host) => helper.match({ ...login, host }, entry))) return entry.password;
  }
  return undefined;
}

/** libpq's default password file: PGPASSFILE, else ~/.pgpass. */
export function defaultPassfile(env: NodeJS.ProcessEnv = process.env): string {
  return env.PGPASSFILE || path.join(os.homedir(), '.pgpass');
}

/** A step login the server asked a password for, and none is known: the connection fails with this. */
export class NoStepPassword extends Error {
  readonly code = '28P01';
  constructor(
    readonly login: PassfileLogin,
    readonly passfile: string,
    why: string,
  ) {
    super(
      `the server asks for a password for role "${login.user}" (host ${login.host}, port ${login.port}, database "${login.database}") ` +
        `and the step password file ${passfile} ${why}`,
    );
  }
}

type Loaded = { text: string } | { none: string };

/**
 * A libpq password file, read again whenever it changes (its mtime, size or
 * inode), so an operator can add a role without restarting the proxy.
 * Ignored with a warning, as libpq ignores it, when it is not a plain file
 * or group or others may read it; and, as in libpq, when PGPASSWORD is set,
 * which is then every login's password.
 */
export class Passfile {
  private seen: { version: string; loaded: Loaded } | undefined;
  private reading: Promise<Loaded> | undefined;
  private lastWarning: string | undefined;

  constructor(
    readonly path: string,
    private readonly warn: (message: string) => void = (m) => process.emitWarning(m),
    private readonly env: NodeJS.ProcessEnv = process.env,
  ) {}

  /** The password for `login`; rejects with NoStepPassword when there is none. */
  async password(login: PassfileLogin): Promise<string> {
    if (this.env.PGPASSWORD) return this.env.PGPASSWORD;
    // One read at a time: a burst of new step connections shares it.
    this.reading ??= this.load().finally(() => (this.reading = undefined));
    const loaded = await this.reading;
    if ('none' in loaded) throw new NoStepPassword(login, this.path, loaded.none);
    const found = passwordFor(loaded.text, login);
    if (found === undefined) throw new NoStepPassword(login, this.path, 'has no line matching it');
    return found;
  }

  private async load(): Promise<Loaded> {
    let st: Stats;
    try {
      st = await stat(this.path);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      return { none: code === 'ENOENT' ? 'does not exist' : `cannot be read (${code ?? (err as Error).message})` };
    }
    const version = `${st.ino}:${st.size}:${st.mtimeMs}:${st.mode}`;
    if (this.seen?.version === version) return this.seen.loaded;
    const loaded = await this.read(st);
    this.seen = { version, loaded };
    return loaded;
  }

  private async read(st: Stats): Promise<Loaded> {
    // usePgPass writes its warning to a stream; it is collected and logged, once per change.
    let warning = '';
    const collect = new Writable({
      write(chunk: Buffer, _enc, done) {
        warning += chunk.toString();
        done();
      },
    });
    const previous = helper.warnTo(collect);
    let usable: boolean;
    try {
      usable = helper.usePgPass(st, this.path);
    } finally {
      helper.warnTo(previous);
    }
    if (!usable) {
      // usePgPass also declines, without a word, while PGPASSWORD is set at all (even empty).
      const message = warning.trim() || `password file "${this.path}" is not read while PGPASSWORD is set (unset it)`;
      if (this.lastWarning !== message) this.warn(`${message}: steps get no passwords from it`);
      this.lastWarning = message;
      return { none: `is ignored (${message.replace(/^WARNING: /, '')})` };
    }
    this.lastWarning = undefined;
    try {
      return { text: await readFile(this.path, 'utf8') };
    } catch (err) {
      return { none: `cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})` };
    }
  }
}

/** A file's contents, read again when it changes; undefined while it does not exist. */
class WatchedFile {
  private seen: { version: string; text: string } | undefined;
  constructor(readonly path: string) {}
  /** Never throws: pg reads TLS options inside its socket handlers, where an exception would end the process. */
  read(): string | undefined {
    try {
      const st = statSync(this.path);
      const version = `${st.ino}:${st.size}:${st.mtimeMs}`;
      if (this.seen?.version !== version) this.seen = { version, text: readFileSync(this.path, 'utf8') };
      return this.seen.text;
    } catch {
      this.seen = undefined;
      return undefined;
    }
  }
}

export interface StepCredentialOptions {
  /** The stepPassfile setting; default libpq's (PGPASSFILE, else ~/.pgpass). */
  passfile?: string;
  /** The stepCertDir setting: ROLE.crt and ROLE.key for each role that logs in with a certificate. */
  certDir?: string;
  warn?: (message: string) => void;
  env?: NodeJS.ProcessEnv;
}

/** pg's `password` option: called only when the server asks, with the parameters of the connection being made. */
export type PasswordCallback = (params?: PassfileLogin) => Promise<string>;

export class StepCredentials {
  readonly passfile: Passfile;
  readonly certDir: string | undefined;
  private readonly certs = new Map<string, { cert: WatchedFile; key: WatchedFile }>();

  constructor(opts: StepCredentialOptions = {}) {
    const env = opts.env ?? process.env;
    this.passfile = new Passfile(opts.passfile ?? defaultPassfile(env), opts.warn, env);
    this.certDir = opts.certDir;
  }

  /** The password option of a step login. */
  password(): PasswordCallback {
    const passfile = this.passfile;
    return async function (this: unknown, params?: PassfileLogin): Promise<string> {
      const p = params!;
      try {
        return await passfile.password({ host: p.host, port: Number(p.port), database: p.database, user: p.user });
      } catch (err) {
        // pg leaves the socket of a failed password callback open, and the server would keep
        // the unauthenticated backend until authentication_timeout: close it once pg has the error.
        const stream = (this as { connection?: { stream?: { destroy(): void } } } | undefined)?.connection?.stream;
        if (stream) setImmediate(() => stream.destroy());
        throw err;
      }
    };
  }

  /**
   * `ssl` with role's client certificate and key, when both files exist in
   * the certificate directory. They are getters, read as each connection is
   * made (pg copies the TLS options then), so a certificate added or renewed
   * later is used without a restart.
   */
  withCertificate<T extends object>(ssl: T, role: string): T {
    if (this.certDir === undefined) return ssl;
    // A role name is a file name here, never a path.
    if (role !== path.basename(role) || role === '.' || role === '..' || role.includes('\0')) return ssl;
    let files = this.certs.get(role);
    if (!files) {
      files = { cert: new WatchedFile(path.join(this.certDir, `${role}.crt`)), key: new WatchedFile(path.join(this.certDir, `${role}.key`)) };
      if (this.certs.size > 10_000) this.certs.clear();
      this.certs.set(role, files);
    }
    const { cert, key } = files;
    const pair = (): { cert: string; key: string } | undefined => {
      const c = cert.read();
      const k = key.read();
      return c !== undefined && k !== undefined ? { cert: c, key: k } : undefined;
    };
    const out = { ...ssl };
    Object.defineProperties(out, {
      cert: { enumerable: true, configurable: true, get: () => pair()?.cert },
      key: { enumerable: true, configurable: true, get: () => pair()?.key },
    });
    return out;
  }
}

/** What a step login's failure says, when it is the server (or the proxy) refusing the login itself. */
export function loginRefusal(err: unknown): { code: string; reason: string } | undefined {
  const e = err as { code?: unknown; message?: unknown };
  const message = typeof e?.message === 'string' ? e.message : String(err);
  if (typeof e?.code === 'string' && e.code.startsWith('28')) return { code: e.code, reason: message };
  // pg's own failures to answer the server's password request.
  if (/client password must be a string|^Password must be a string|^SASL: /.test(message)) return { code: '28P01', reason: message };
  return undefined;
}

export const LOGIN_HINT =
  "Steps log in as the workflow's submitter. Give pg-durable-proxy that role's credentials: a line in its step password file " +
  '(--step-passfile / PGDP_STEP_PASSFILE, .pgpass format; default PGPASSFILE, else ~/.pgpass), a client certificate ROLE.crt ' +
  'and ROLE.key in --step-cert-dir / PGDP_STEP_CERT_DIR, or a trust or peer rule in pg_hba.conf for the socket of --step-url.';

/** The error of a df.start (and of a step) whose submitter the proxy cannot log in as. */
export function cannotLogIn(role: string, refusal: { code: string; reason: string }): PgError {
  return {
    severity: 'ERROR',
    code: refusal.code === '28000' || refusal.code === '28P01' ? refusal.code : '28000',
    message: `pg-durable-proxy cannot log in as role "${role}" to run its workflow steps: ${refusal.reason}`,
    hint: LOGIN_HINT,
  };
}
