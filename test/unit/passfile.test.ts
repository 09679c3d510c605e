// The step password file is matched as libpq matches a .pgpass (pgpass's
// parser and matcher, checked here against libpq's documented rules), read
// again when it changes, and ignored with a warning when others may read it;
// and the step logins the settings make of it and of the certificate directory.
import { chmodSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/config.js';
import { defaultPassfile, loginRefusal, NoStepPassword, Passfile, passwordFor, StepCredentials } from '../../src/engine/credentials.js';
import { connectionTargets, stepLoginFor } from '../../src/engine/targets.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'pgdp-passfile-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const login = { host: 'db.example.com', port: 5432, database: 'app', user: 'alice' };
const lines = (...l: string[]): string => l.join('\n') + '\n';

describe('passwordFor: which line applies', () => {
  it('the first line matching host, port, database and user wins', () => {
    const text = lines('db.example.com:5432:app:bob:bob-pw', 'db.example.com:5432:app:alice:first', 'db.example.com:5432:app:alice:second');
    expect(passwordFor(text, login)).toBe('first');
    expect(passwordFor(text, { ...login, user: 'carol' })).toBeUndefined();
  });

  it('each field must match exactly, or be *', () => {
    expect(passwordFor(lines('db.example.com:5433:app:alice:x'), login)).toBeUndefined();
    expect(passwordFor(lines('db.example.com:5432:other:alice:x'), login)).toBeUndefined();
    expect(passwordFor(lines('other.example.com:5432:app:alice:x'), login)).toBeUndefined();
    expect(passwordFor(lines('db.example.com:5432:app:Alice:x'), login)).toBeUndefined(); // case matters
    expect(passwordFor(lines('db.example.com:5432:ap:alice:x'), login)).toBeUndefined(); // no prefix match
    for (const l of ['*:5432:app:alice:w', 'db.example.com:*:app:alice:w', 'db.example.com:5432:*:alice:w', 'db.example.com:5432:app:*:w', '*:*:*:*:w']) {
      expect(passwordFor(lines(l), login)).toBe('w');
    }
  });

  it('a more specific line after a wildcard one is never reached (put specific lines first)', () => {
    expect(passwordFor(lines('*:*:*:alice:wild', 'db.example.com:5432:app:alice:specific'), login)).toBe('wild');
  });

  it('\\: and \\\\ stand for a colon and a backslash, in any field and in the password', () => {
    expect(passwordFor(lines('db.example.com:5432:app:alice:a\\:b\\\\c'), login)).toBe('a:b\\c');
    expect(passwordFor(lines('db.example.com:5432:my\\:db:alice:pw'), { ...login, database: 'my:db' })).toBe('pw');
    expect(passwordFor(lines('db.example.com:5432:app:al\\\\ice:pw'), { ...login, user: 'al\\ice' })).toBe('pw');
  });

  it('lines starting with # are comments, even one that looks like an entry', () => {
    const text = lines('# steps of the reporting roles', '#db.example.com:5432:app:alice:old', 'db.example.com:5432:app:alice:new');
    expect(passwordFor(text, login)).toBe('new');
    expect(passwordFor(lines('#h:5432:app:alice:pw'), { ...login, host: '#h' })).toBeUndefined();
  });

  it('blank lines, lines with fewer than five fields and empty fields are skipped', () => {
    const text = lines('', 'db.example.com:5432:app:alice', ':5432:app:alice:x', 'db.example.com:5432:app:alice:', '*:*:*:alice:ok');
    expect(passwordFor(text, login)).toBe('ok');
  });

  it('short lines count (libpq reads them; pgpass alone skips lines under 11 characters)', () => {
    expect(passwordFor('*:*:*:al:x\n', { ...login, user: 'al' })).toBe('x');
    expect(passwordFor('*:*:*:a:x', { ...login, user: 'a' })).toBe('x');
    expect(passwordFor('*:*:*:a:\n', { ...login, user: 'a' })).toBeUndefined();
  });

  it('Windows line ends are not part of the password; the last line needs no newline', () => {
    expect(passwordFor('db.example.com:5432:app:bob:b\r\ndb.example.com:5432:app:alice:pw\r\n', login)).toBe('pw');
    expect(passwordFor('db.example.com:5432:app:alice:pw', login)).toBe('pw');
  });

  it('the port is compared as a number', () => {
    expect(passwordFor(lines('db.example.com:5432:app:alice:pw'), { ...login, port: 5432 })).toBe('pw');
    expect(passwordFor(lines('db.example.com:6432:app:alice:pw'), login)).toBeUndefined();
  });

  it('a Unix-socket connection matches its directory and also localhost; a TCP connection to 127.0.0.1 is not localhost', () => {
    const socket = { ...login, host: '/var/run/postgresql' };
    expect(passwordFor(lines('localhost:5432:app:alice:local'), socket)).toBe('local');
    expect(passwordFor(lines('/var/run/postgresql:5432:app:alice:dir'), socket)).toBe('dir');
    expect(passwordFor(lines('/tmp:5432:app:alice:other'), socket)).toBeUndefined();
    expect(passwordFor(lines('localhost:5432:app:alice:local'), { ...login, host: '127.0.0.1' })).toBeUndefined();
    expect(passwordFor(lines('localhost:5432:app:alice:local'), { ...login, host: 'localhost' })).toBe('local');
  });
});

describe('Passfile', () => {
  const write = (name: string, content: string, mode = 0o600): string => {
    const p = path.join(tmp, name);
    writeFileSync(p, content);
    chmodSync(p, mode);
    return p;
  };

  it('names the role, host, port, database and file when it has no line for a login', async () => {
    const file = write('none', lines('*:*:*:bob:b'));
    const err = await new Passfile(file, () => {}, {}).password(login).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NoStepPassword);
    expect(err).toMatchObject({ code: '28P01' });
    expect((err as Error).message).toBe(
      `the server asks for a password for role "alice" (host db.example.com, port 5432, database "app") and the step password file ${file} has no line matching it`,
    );
    expect(loginRefusal(err)).toEqual({ code: '28P01', reason: (err as Error).message });
  });

  it('says when the file does not exist', async () => {
    const file = path.join(tmp, 'missing');
    await expect(new Passfile(file, () => {}, {}).password(login)).rejects.toThrow(`the step password file ${file} does not exist`);
  });

  it('is read again when it changes, without a restart', async () => {
    const file = write('changing', lines('*:*:*:bob:b'));
    const pf = new Passfile(file, () => {}, {});
    await expect(pf.password(login)).rejects.toBeInstanceOf(NoStepPassword);
    writeFileSync(file, lines('*:*:*:bob:b', '*:*:*:alice:a1'));
    expect(await pf.password(login)).toBe('a1');
    // Same size, new content: the mtime tells.
    writeFileSync(file, lines('*:*:*:bob:b', '*:*:*:alice:a2'));
    const later = new Date(Date.now() + 5000);
    utimesSync(file, later, later);
    expect(await pf.password(login)).toBe('a2');
  });

  it('is ignored, with one warning, while group or others may read it (as libpq does), and used again once it is 0600', async () => {
    const file = write('open', lines('*:*:*:alice:a'), 0o644);
    const warnings: string[] = [];
    const pf = new Passfile(file, (m) => warnings.push(m), {});
    const err = (await pf.password(login).catch((e: unknown) => e)) as Error;
    expect(err).toBeInstanceOf(NoStepPassword);
    expect(err.message).toContain(`the step password file ${file} is ignored (password file "${file}" has group or world access`);
    await expect(pf.password(login)).rejects.toBeInstanceOf(NoStepPassword);
    expect(warnings).toEqual([expect.stringContaining(`password file "${file}" has group or world access`)]);
    chmodSync(file, 0o600);
    expect(await pf.password(login)).toBe('a');
  });

  it('is not read when PGPASSWORD is set: as in libpq, that is every login password', async () => {
    const file = write('unused', lines('*:*:*:alice:from-file'));
    expect(await new Passfile(file, () => {}, { PGPASSWORD: 'from-env' }).password(login)).toBe('from-env');
  });

  it('defaults to PGPASSFILE, else ~/.pgpass', () => {
    expect(defaultPassfile({ PGPASSFILE: '/etc/pgdp/pgpass' })).toBe('/etc/pgdp/pgpass');
    expect(defaultPassfile({})).toBe(path.join(os.homedir(), '.pgpass'));
    expect(new StepCredentials({ env: { PGPASSFILE: '/x' } }).passfile.path).toBe('/x');
    expect(new StepCredentials({ passfile: '/y', env: { PGPASSFILE: '/x' } }).passfile.path).toBe('/y');
  });
});

describe('loginRefusal', () => {
  it('is the server refusing a login (28000, 28P01), or pg unable to answer a password request; nothing else', () => {
    expect(loginRefusal({ code: '28P01', message: 'password authentication failed for user "a"' })).toEqual({
      code: '28P01',
      reason: 'password authentication failed for user "a"',
    });
    expect(loginRefusal({ code: '28000', message: 'no pg_hba.conf entry' })).toMatchObject({ code: '28000' });
    expect(loginRefusal(new Error('SASL: SCRAM-SERVER-FIRST-MESSAGE: client password must be a string'))).toMatchObject({ code: '28P01' });
    expect(loginRefusal({ code: '3D000', message: 'database "x" does not exist' })).toBeUndefined();
    expect(loginRefusal(Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }))).toBeUndefined();
  });
});

describe('step logins from the settings', () => {
  const executor = 'postgres://exec:secret@db.example.com:5432/app';

  it('is the step URL, else the embedded socket, else the executor URL; with the password file and certificate directory', () => {
    expect(stepLoginFor({ stepPassfile: '/p' }, executor)).toEqual({ url: executor, passfile: '/p' });
    expect(stepLoginFor({}, executor, { socketDir: '/s', port: 5 })).toEqual({ socketDir: '/s', port: 5 });
    const url = 'postgres://db.example.com/app?sslmode=verify-full';
    expect(stepLoginFor({ stepUrl: url, stepCertDir: '/c' }, executor, { socketDir: '/s', port: 5 })).toEqual({ url, certDir: '/c' });
  });

  it('refuses a certificate directory without TLS to put the certificates on', () => {
    expect(() => stepLoginFor({ stepCertDir: '/c' }, executor)).toThrow(ConfigError);
    expect(() => stepLoginFor({ stepCertDir: '/c' }, executor)).toThrow(/stepCertDir: client certificates need TLS/);
    expect(() => stepLoginFor({ stepCertDir: '/c' }, executor, { socketDir: '/s', port: 5 })).toThrow(/Unix socket, which has no TLS/);
    expect(() => connectionTargets(executor, { url: `${executor}?sslmode=disable`, certDir: '/c' })).toThrow(ConfigError);
  });

  it("logs a step in as the submitter with the URL's host, port and TLS, never the executor's password", async () => {
    const t = connectionTargets(executor, { url: 'postgres://exec:secret@db.example.com:6543/x?sslmode=no-verify', passfile: path.join(tmp, 'none') });
    const c = t.step('app2', 'alice');
    expect(c).toMatchObject({ host: 'db.example.com', port: '6543', user: 'alice', database: 'app2', ssl: { rejectUnauthorized: false } });
    expect(c.password).toBeTypeOf('function');
    const ask = c.password as unknown as (p: object) => Promise<string>;
    await expect(ask({ host: 'db.example.com', port: 6543, database: 'app2', user: 'alice' })).rejects.toBeInstanceOf(NoStepPassword);
  });

  it("sends a role's certificate and key when both are in the directory, read as each connection is made", () => {
    const dir = mkdtempSync(path.join(tmp, 'certs-'));
    const t = connectionTargets(executor, { url: `${executor}?sslmode=verify-full`, certDir: dir });
    const ssl = t.step('app', 'alice').ssl as { cert?: string; key?: string };
    expect(ssl.cert).toBeUndefined();
    writeFileSync(path.join(dir, 'alice.crt'), 'CERT');
    expect(ssl.cert).toBeUndefined(); // not without its key
    writeFileSync(path.join(dir, 'alice.key'), 'KEY');
    expect({ ...ssl }).toMatchObject({ cert: 'CERT', key: 'KEY' });
    writeFileSync(path.join(dir, 'alice.crt'), 'RENEWED');
    expect(ssl.cert).toBe('RENEWED');
    // A role name is never a path.
    writeFileSync(path.join(tmp, 'outside.crt'), 'X');
    writeFileSync(path.join(tmp, 'outside.key'), 'X');
    expect((t.step('app', '../outside').ssl as { cert?: string }).cert).toBeUndefined();
  });
});
