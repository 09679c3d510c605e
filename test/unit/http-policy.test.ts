// The HTTP egress policy: allow-list parsing and every refusal rule, with an
// injected DNS lookup (no network).
import { describe, expect, it, vi } from 'vitest';
import { HttpRefused, parseAllowList, resolveTarget, type LookupFn, type ResolvedAddress } from '../../src/http/index.js';

/** A lookup answering from a table; unknown names fail like getaddrinfo. */
function table(answers: Record<string, string[]>): LookupFn {
  return async (hostname) => {
    const list = answers[hostname];
    if (list === undefined) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: 'ENOTFOUND' });
    return list.map((address): ResolvedAddress => ({ address, family: address.includes(':') ? 6 : 4 }));
  };
}

const PUBLIC = '93.184.215.14';
const dns = table({
  'api.example.com': [PUBLIC],
  'a.example.com': [PUBLIC],
  'a.b.example.com': [PUBLIC],
  'example.com': [PUBLIC],
  'notexample.com': [PUBLIC],
  'other.org': [PUBLIC],
  'v6.example.net': ['2606:2800:21f:cb07:6820:80da:af6b:8b2c'],
  'mixed.example.net': [PUBLIC, '10.0.0.5'],
  'mapped.example.net': ['::ffff:10.0.0.1'],
  localhost: ['127.0.0.1', '::1'],
  'internal.corp': ['10.1.2.3'],
  'xn--bcher-kva.de': [PUBLIC],
});

const check = (url: string, entries: string[], lookup: LookupFn = dns) => resolveTarget(new URL(url), parseAllowList(entries), lookup);

async function refusal(url: string, entries: string[], lookup: LookupFn = dns): Promise<HttpRefused> {
  const err: unknown = await check(url, entries, lookup).then(
    (t) => new Error(`expected a refusal, got ${JSON.stringify(t)}`),
    (e: unknown) => e,
  );
  if (!(err instanceof HttpRefused)) throw err;
  return err;
}

describe('parseAllowList', () => {
  it('parses every entry form', () => {
    const list = parseAllowList([
      '*',
      'API.Example.com.',
      '.example.org',
      '*.example.net',
      '203.0.113.7',
      '::1',
      '10.0.0.0/8',
      'fd00::/8',
      '127.0.0.1:8080',
      '[::1]:8080',
      'api.example.com:443',
      '[fd00::/8]:443',
      'bücher.de',
      ' spaced.example ',
    ]);
    expect(list.entries.map((e) => [e.kind, e.port])).toEqual([
      ['any', undefined],
      ['host', undefined],
      ['domain', undefined],
      ['domain', undefined],
      ['cidr', undefined],
      ['cidr', undefined],
      ['cidr', undefined],
      ['cidr', undefined],
      ['cidr', 8080],
      ['cidr', 8080],
      ['host', 443],
      ['cidr', 443],
      ['host', undefined],
      ['host', undefined],
    ]);
    expect(list.entries[1]).toMatchObject({ host: 'api.example.com' });
    expect(list.entries[2]).toMatchObject({ domain: 'example.org' });
    expect(list.entries[3]).toMatchObject({ domain: 'example.net' });
    expect(list.entries[12]).toMatchObject({ host: 'xn--bcher-kva.de' });
    expect(list.entries[4]).toMatchObject({ prefix: 32 });
    expect(list.entries[5]).toMatchObject({ prefix: 128 });
  });

  it.each([
    ['', 'the entry is empty'],
    ['a.com:0', 'port 0 is not between 1 and 65535'],
    ['a.com:70000', 'port 70000 is not between 1 and 65535'],
    ['a.com:http', "'http' is not a port number"],
    ['10.0.0.0/33', 'not a valid CIDR range'],
    ['0177.0.0.1', "'0177.0.0.1' is neither a host name nor a dotted-decimal IPv4 address"],
    ['127.1', "'127.1' is neither a host name nor a dotted-decimal IPv4 address"],
    ['256.0.0.1', "'256.0.0.1' is neither a host name nor a dotted-decimal IPv4 address"],
    ['10.0.0.0/8:99999', 'port 99999 is not between 1 and 65535'],
    ['10/8', "'10' is not a dotted-decimal IPv4 address"],
    ['fe80::1%eth0', 'zone IDs are not supported'],
    ['[::1', 'expected [IPV6] or [IPV6]:PORT'],
    ['[10.0.0.1]:80', 'only IPv6 addresses go in brackets'],
    ['a*.example.com', "'*' is only allowed alone"],
    ['bad host', "'bad host' is not a valid host name"],
    ['-a.com', "'-a.com' is not a valid host name"],
    ['gg::1', "'gg::1' is not a valid IP address"],
    [':80', 'the host is empty'],
  ])('refuses %j', (entry, message) => {
    expect(() => parseAllowList([entry])).toThrow(`invalid --http-allow entry '${entry}': `);
    expect(() => parseAllowList([entry])).toThrow(message);
  });
});

describe('resolveTarget: refusals', () => {
  it('refuses schemes other than http and https', async () => {
    for (const url of ['ftp://api.example.com/x', 'file:///etc/passwd', 'gopher://api.example.com/', 'data:text/plain,hi']) {
      const err = await refusal(url, ['*']);
      expect(err.rule).toBe('scheme');
      expect(err.message).toMatch(/^unsupported URL scheme '[a-z]+:'; only http and https are allowed$/);
    }
  });

  it('refuses a host that is not listed', async () => {
    const err = await refusal('https://other.org/', ['api.example.com', '.example.com']);
    expect(err.rule).toBe('host');
    expect(err.message).toBe("host 'other.org' is not in the HTTP allow-list (--http-allow)");
    // suffix entries match whole labels only
    expect((await refusal('https://notexample.com/', ['.example.com'])).rule).toBe('host');
    // an empty list allows nothing
    expect((await refusal('https://api.example.com/', [])).rule).toBe('host');
  });

  it('refuses a listed host on a port its entry does not allow', async () => {
    const err = await refusal('http://api.example.com:8080/', ['api.example.com:443']);
    expect(err.message).toBe("host 'api.example.com' is not in the HTTP allow-list (--http-allow) for port 8080");
    expect((await refusal('http://api.example.com/', ['api.example.com:443'])).rule).toBe('host'); // http: port 80
    expect((await refusal('http://127.0.0.1:9090/', ['127.0.0.1:8080'])).message).toBe(
      "host '127.0.0.1' is 127.0.0.1, a loopback address; list it in --http-allow for port 9090 to allow it",
    );
    expect((await refusal('http://203.0.113.7:9090/', ['203.0.113.7:8080'])).message).toContain('for port 9090');
  });

  // Every special range, as an IP literal under `*`: refused naming the range.
  it.each([
    ['http://10.1.2.3/', '10.1.2.3', 'private'],
    ['http://172.16.0.1/', '172.16.0.1', 'private'],
    ['http://172.31.255.254/', '172.31.255.254', 'private'],
    ['http://192.168.1.1/', '192.168.1.1', 'private'],
    ['http://127.0.0.1/', '127.0.0.1', 'loopback'],
    ['http://127.255.1.2/', '127.255.1.2', 'loopback'],
    ['http://0.0.0.0/', '0.0.0.0', 'unspecified'],
    ['http://0/', '0.0.0.0', 'unspecified'],
    ['http://169.254.169.254/latest/meta-data/', '169.254.169.254', 'cloud metadata'],
    ['http://169.254.1.1/', '169.254.1.1', 'link-local'],
    ['http://100.100.100.200/', '100.100.100.200', 'cloud metadata'],
    ['http://[fd00:ec2::254]/', 'fd00:ec2::254', 'cloud metadata'],
    ['http://100.64.0.1/', '100.64.0.1', 'carrier-grade NAT'],
    ['http://224.0.0.1/', '224.0.0.1', 'multicast'],
    ['http://255.255.255.255/', '255.255.255.255', 'broadcast'],
    ['http://240.0.0.1/', '240.0.0.1', 'reserved'],
    ['http://198.18.0.1/', '198.18.0.1', 'reserved'],
    ['http://192.0.2.1/', '192.0.2.1', 'reserved'],
    ['http://[::1]/', '::1', 'loopback'],
    ['http://[0:0:0:0:0:0:0:1]/', '::1', 'loopback'],
    ['http://[::]/', '::', 'unspecified'],
    ['http://[fe80::1]/', 'fe80::1', 'link-local'],
    ['http://[fc00::1]/', 'fc00::1', 'unique-local'],
    ['http://[fd12:3456::1]/', 'fd12:3456::1', 'unique-local'],
    ['http://[ff02::1]/', 'ff02::1', 'multicast'],
    ['http://[::ffff:10.0.0.1]/', '10.0.0.1', 'private'],
    ['http://[::ffff:7f00:1]/', '127.0.0.1', 'loopback'],
    ['http://[::ffff:169.254.169.254]/', '169.254.169.254', 'cloud metadata'],
    ['http://[::127.0.0.1]/', '::7f00:1', 'reserved'],
    ['http://[64:ff9b::a00:1]/', '64:ff9b::a00:1', 'NAT64'],
    ['http://[2002:a00:1::1]/', '2002:a00:1::1', '6to4 relay'],
    ['http://[2001::1]/', '2001::1', 'Teredo relay'],
    ['http://[2001:db8::1]/', '2001:db8::1', 'reserved'],
    // WHATWG URL spellings of 127.0.0.1
    ['http://2130706433/', '127.0.0.1', 'loopback'],
    ['http://0177.0.0.1/', '127.0.0.1', 'loopback'],
    ['http://0x7f000001/', '127.0.0.1', 'loopback'],
    ['http://0x7f.1/', '127.0.0.1', 'loopback'],
    ['http://127.1/', '127.0.0.1', 'loopback'],
  ])('refuses %s as %s (%s)', async (url, address, kind) => {
    const err = await refusal(url, ['*']);
    expect(err.rule).toBe('address');
    const host = new URL(url).hostname;
    const a = /^[aeiou]/i.test(kind) ? 'an' : 'a';
    expect(err.message).toBe(`host '${host}' is ${address}, ${a} ${kind} address; list it in --http-allow to allow it`);
  });

  it('refuses a special IP literal with the range even when the list has no `*`', async () => {
    expect((await refusal('http://10.0.0.1/', ['api.example.com'])).message).toContain('a private address');
  });

  it('refuses a name resolving to a private address, even when the name is listed', async () => {
    const err = await refusal('http://internal.corp/', ['internal.corp']);
    expect(err.rule).toBe('address');
    expect(err.message).toBe("host 'internal.corp' resolves to 10.1.2.3, a private address; list it in --http-allow to allow it");
    // localhost listed by name does not make 127.0.0.1 acceptable
    expect((await refusal('http://localhost:8080/', ['localhost'])).message).toBe(
      "host 'localhost' resolves to 127.0.0.1, a loopback address; list it in --http-allow to allow it",
    );
  });

  it('refuses a name when any one of its addresses is special', async () => {
    const err = await refusal('https://mixed.example.net/', ['*']);
    expect(err.message).toBe("host 'mixed.example.net' resolves to 10.0.0.5, a private address; list it in --http-allow to allow it");
    // localhost: 127.0.0.1 listed, ::1 not
    expect((await refusal('http://localhost/', ['localhost', '127.0.0.1'])).message).toContain('resolves to ::1, a loopback address');
  });

  it('refuses a name resolving to an IPv4-mapped private address', async () => {
    expect((await refusal('http://mapped.example.net/', ['*'])).message).toContain('resolves to 10.0.0.1, a private address');
  });

  it('refuses a name resolving to nothing', async () => {
    const empty: LookupFn = async () => [];
    expect((await refusal('http://api.example.com/', ['*'], empty)).message).toBe("host 'api.example.com' resolves to no address");
  });

  it('needs an exact entry for a metadata address: a covering CIDR is not enough', async () => {
    expect((await refusal('http://169.254.169.254/', ['169.254.0.0/16'])).message).toContain('a cloud metadata address');
    expect((await refusal('http://100.100.100.200/', ['100.64.0.0/10'])).message).toContain('a cloud metadata address');
    await expect(check('http://169.254.169.254/', ['169.254.169.254'])).resolves.toEqual({ address: '169.254.169.254', family: 4 });
  });

  it('passes DNS failures on unchanged', async () => {
    await expect(check('http://nowhere.example.com/', ['*'])).rejects.toThrow('getaddrinfo ENOTFOUND nowhere.example.com');
  });

  it('does not resolve a name that is not listed', async () => {
    const lookup = vi.fn(dns);
    await refusal('http://other.org/', ['api.example.com'], lookup);
    expect(lookup).not.toHaveBeenCalled();
  });
});

describe('resolveTarget: allowed', () => {
  it('allows a public name and address under `*`', async () => {
    await expect(check('https://other.org/x', ['*'])).resolves.toEqual({ address: PUBLIC, family: 4 });
    await expect(check(`http://${PUBLIC}/`, ['*'])).resolves.toEqual({ address: PUBLIC, family: 4 });
    await expect(check('https://v6.example.net/', ['*'])).resolves.toEqual({ address: '2606:2800:21f:cb07:6820:80da:af6b:8b2c', family: 6 });
  });

  it('allows an exact host, case-insensitively and with a trailing dot', async () => {
    await expect(check('https://API.EXAMPLE.COM./v1', ['api.example.com'])).resolves.toMatchObject({ address: PUBLIC });
    await expect(check('https://api.example.com/', ['Api.Example.Com'])).resolves.toMatchObject({ address: PUBLIC });
  });

  it('allows the apex and every subdomain for `.example.com` and `*.example.com`', async () => {
    for (const entry of ['.example.com', '*.example.com']) {
      for (const host of ['example.com', 'a.example.com', 'a.b.example.com']) {
        await expect(check(`https://${host}/`, [entry])).resolves.toMatchObject({ address: PUBLIC });
      }
    }
  });

  it('compares IDN hosts in punycode', async () => {
    await expect(check('https://bücher.de/', ['bücher.de'])).resolves.toMatchObject({ address: PUBLIC });
    await expect(check('https://BÜCHER.de/', ['xn--bcher-kva.de'])).resolves.toMatchObject({ address: PUBLIC });
  });

  it('allows explicitly listed private addresses, by IP or CIDR', async () => {
    await expect(check('http://127.0.0.1:8080/', ['127.0.0.1'])).resolves.toEqual({ address: '127.0.0.1', family: 4 });
    await expect(check('http://127.0.0.1:8080/', ['127.0.0.0/8'])).resolves.toEqual({ address: '127.0.0.1', family: 4 });
    await expect(check('http://127.1/', ['127.0.0.0/8'])).resolves.toEqual({ address: '127.0.0.1', family: 4 });
    await expect(check('http://[::ffff:127.0.0.1]/', ['127.0.0.1'])).resolves.toEqual({ address: '127.0.0.1', family: 4 });
    await expect(check('http://[::1]/', ['::1'])).resolves.toEqual({ address: '::1', family: 6 });
    await expect(check('http://[fd00::5]/', ['fd00::/8'])).resolves.toEqual({ address: 'fd00::5', family: 6 });
    await expect(check('http://10.9.8.7/', ['::ffff:10.0.0.0/104'])).resolves.toEqual({ address: '10.9.8.7', family: 4 });
    // a listed name whose private address is listed too
    await expect(check('http://internal.corp/', ['internal.corp', '10.0.0.0/8'])).resolves.toEqual({ address: '10.1.2.3', family: 4 });
    await expect(check('http://localhost/', ['localhost', '127.0.0.1', '::1'])).resolves.toEqual({ address: '127.0.0.1', family: 4 });
  });

  it('allows port-restricted entries on their port only', async () => {
    await expect(check('http://127.0.0.1:8080/', ['127.0.0.1:8080'])).resolves.toMatchObject({ address: '127.0.0.1' });
    await expect(check('http://[::1]:8080/', ['[::1]:8080'])).resolves.toMatchObject({ address: '::1' });
    await expect(check('https://api.example.com/', ['api.example.com:443'])).resolves.toMatchObject({ address: PUBLIC });
    await expect(check('https://api.example.com:443/', ['api.example.com:443'])).resolves.toMatchObject({ address: PUBLIC });
    await expect(check('http://api.example.com/', ['*:80'])).resolves.toMatchObject({ address: PUBLIC });
    expect((await refusal('http://api.example.com:81/', ['*:80'])).rule).toBe('host');
    // the address entry's port restriction applies too
    expect((await refusal('http://internal.corp:9090/', ['internal.corp', '10.0.0.0/8:8080'])).message).toBe(
      "host 'internal.corp' resolves to 10.1.2.3, a private address; list it in --http-allow for port 9090 to allow it",
    );
    await expect(check('http://internal.corp:8080/', ['internal.corp', '10.0.0.0/8:8080'])).resolves.toMatchObject({ address: '10.1.2.3' });
  });

  it('resolves once, with all addresses in resolver order', async () => {
    const lookup = vi.fn(dns);
    await check('https://api.example.com/', ['*'], lookup);
    expect(lookup).toHaveBeenCalledTimes(1);
    expect(lookup).toHaveBeenCalledWith('api.example.com', { all: true, verbatim: true });
  });

  it('does not look up IP literals', async () => {
    const lookup = vi.fn(dns);
    await check('http://127.0.0.1/', ['127.0.0.1'], lookup);
    expect(lookup).not.toHaveBeenCalled();
  });
});
