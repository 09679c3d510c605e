// Configuration precedence and validation: flags > PGDP_* > file > defaults.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, describeSettings, loadConfig, splitHostPort } from '../../src/config.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'pgdp-config-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const file = (content: string): string => {
  const p = path.join(tmp, `c${Math.random().toString(36).slice(2)}.json`);
  writeFileSync(p, content);
  return p;
};

describe('loadConfig', () => {
  it('has the documented defaults', () => {
    const c = loadConfig([], {});
    expect(c.upstream).toBeUndefined();
    expect(c).toMatchObject({
      dataDir: '.pg-durable/data',
      listen: '127.0.0.1:6433',
      admin: '127.0.0.1:9433',
      logLevel: 'info',
      shutdownTimeout: 30,
      help: false,
    });
  });

  it('takes flags over environment over file', () => {
    const f = file(JSON.stringify({ listen: '0.0.0.0:1111', logLevel: 'debug', shutdownTimeout: 5 }));
    const c = loadConfig(['--config', f, '--listen', '127.0.0.1:3333'], { PGDP_LISTEN: '127.0.0.1:2222', PGDP_LOG_LEVEL: 'warn' });
    expect(c).toMatchObject({ listen: '127.0.0.1:3333', logLevel: 'warn', shutdownTimeout: 5 });
    expect(loadConfig([], { PGDP_CONFIG: f }).listen).toBe('0.0.0.0:1111');
  });

  it('accepts postgres URLs, IPv6 listen addresses and admin off', () => {
    const c = loadConfig(['--upstream', 'postgresql://u:p@db:5432/app?sslmode=verify-full', '--listen', '[::1]:6433', '--admin', 'off'], {});
    expect(c.upstream).toBe('postgresql://u:p@db:5432/app?sslmode=verify-full');
    expect(splitHostPort(c.listen)).toEqual({ host: '::1', port: 6433 });
    expect(c.admin).toBe('off');
  });

  it.each([
    [['--listen', '127.0.0.1:99999'], {}, 'invalid setting listen (from --listen): "127.0.0.1:99999": expected a port from 0 to 65535'],
    [[], { PGDP_UPSTREAM: 'postgres://h/db?sslmode=sometimes' }, 'invalid setting upstream (from PGDP_UPSTREAM)'],
    [[], { PGDP_SHUTDOWN_TIMEOUT: 'soon' }, 'invalid setting shutdownTimeout (from PGDP_SHUTDOWN_TIMEOUT): "soon"'],
    [['--max-message-size', '10'], {}, 'invalid setting maxMessageSize (from --max-message-size): "10"'],
    [['--tls-key', 'k.pem'], {}, 'invalid setting tlsCert: tlsCert and tlsKey must be given together'],
    [['stray'], {}, 'Unexpected argument'],
  ] as [string[], Record<string, string>, string][])('refuses %j %j in one line', (argv, env, message) => {
    let err: unknown;
    try {
      loadConfig(argv, env);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toContain(message);
    expect((err as Error).message).not.toContain('\n');
  });

  it('refuses a config file with an unknown key or that is not a JSON object', () => {
    expect(() => loadConfig(['--config', file('{"listn": "x"}')], {})).toThrow(/unknown setting "listn"; known settings: upstream, /);
    expect(() => loadConfig(['--config', file('[1]')], {})).toThrow('expected a JSON object of settings');
    expect(() => loadConfig(['--config', file('{')], {})).toThrow('not valid JSON');
    expect(() => loadConfig([], { PGDP_LOG_LEVEL: 'x' })).toThrow('invalid setting logLevel (from PGDP_LOG_LEVEL): "x"');
  });

  it('describes every setting with a flag, a variable and a description', () => {
    for (const s of describeSettings()) {
      expect(s.flag).toMatch(/^--[a-z-]+$/);
      expect(s.env).toMatch(/^PGDP_[A-Z_]+$/);
      expect(s.description.length).toBeGreaterThan(10);
    }
  });
});
