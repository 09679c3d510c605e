// HTTP egress policy: which URLs an HTTP step may reach. Many tenants'
// workflows run in this proxy, so the default is "nothing": every host must be
// listed with --http-allow, and private or special addresses need an explicit
// IP or CIDR entry even when their host name is listed.
import { promises as dns } from 'node:dns';
import { domainToASCII } from 'node:url';
import ipaddr from 'ipaddr.js';

type IP = ipaddr.IPv4 | ipaddr.IPv6;

/** One parsed --http-allow entry; `port` undefined means any port. */
export type AllowEntry =
  | { kind: 'any'; port: number | undefined; source: string }
  | { kind: 'host'; host: string; port: number | undefined; source: string }
  /** `.example.com` / `*.example.com`: the apex and every subdomain, at any depth. */
  | { kind: 'domain'; domain: string; port: number | undefined; source: string }
  /** An IP is a CIDR of full length (/32, /128). */
  | { kind: 'cidr'; address: IP; prefix: number; port: number | undefined; source: string };

export interface AllowList {
  readonly entries: readonly AllowEntry[];
}

/** The address a checked request connects to, and nothing else. */
export interface Target {
  address: string;
  family: 4 | 6;
}

export interface ResolvedAddress {
  address: string;
  family: number;
}

/** Resolves a host name to all its addresses (dns.promises.lookup with all: true has this shape). */
export type LookupFn = (hostname: string, options: { all: true; verbatim: true }) => Promise<ResolvedAddress[]>;

export const defaultLookup: LookupFn = (hostname, options) => dns.lookup(hostname, options);

/** Which rule refused: the scheme, the host not being listed, or an address it resolves to. */
export type RefusalRule = 'scheme' | 'host' | 'address';

export class HttpRefused extends Error {
  readonly kind = 'refused' as const;
  constructor(
    readonly rule: RefusalRule,
    message: string,
  ) {
    super(message);
    this.name = 'HttpRefused';
  }
}

// ---------------------------------------------------------------------------
// Parsing --http-allow

/**
 * Parses --http-allow entries (the caller splits the comma-separated flag).
 * Forms: `*`, `api.example.com`, `.example.com` or `*.example.com` (apex and
 * subdomains), `203.0.113.7`, `::1`, `10.0.0.0/8`, `fd00::/8`, each with an
 * optional `:PORT` (IPv6 in brackets then: `[::1]:8080`, `[fd00::/8]:443`).
 */
export function parseAllowList(entries: readonly string[]): AllowList {
  return { entries: entries.map(parseEntry) };
}

function parseEntry(raw: string): AllowEntry {
  const source = raw.trim();
  // Typed as a never-returning function so TypeScript narrows after `if (...) fail(...)`.
  const fail: (what: string) => never = (what) => {
    throw new Error(`invalid --http-allow entry '${raw}': ${what}`);
  };
  if (source === '') fail('the entry is empty');

  let hostPart: string;
  let port: number | undefined;
  if (source.startsWith('[')) {
    // Bracketed IPv6 address or CIDR, optionally with a port.
    const m = /^\[([^\]]*)\](?::(.*))?$/.exec(source);
    if (!m) fail("expected [IPV6] or [IPV6]:PORT");
    hostPart = m[1] ?? '';
    port = m[2] === undefined ? undefined : parsePort(m[2], fail);
    if (!hostPart.includes(':')) fail('only IPv6 addresses go in brackets');
    return ipEntry(hostPart, port, source, fail);
  }
  const colons = source.split(':').length - 1;
  if (colons > 1) return ipEntry(source, undefined, source, fail); // bare IPv6: no port possible
  if (colons === 1) {
    const at = source.lastIndexOf(':');
    hostPart = source.slice(0, at);
    port = parsePort(source.slice(at + 1), fail);
  } else {
    hostPart = source;
  }
  if (hostPart === '') fail('the host is empty');
  if (hostPart === '*') return { kind: 'any', port, source };
  if (hostPart.includes('/') || ipaddr.IPv4.isValidFourPartDecimal(hostPart)) return ipEntry(hostPart, port, source, fail);
  if (hostPart.startsWith('*.') || hostPart.startsWith('.')) {
    const domain = hostName(hostPart.slice(hostPart.indexOf('.') + 1), fail);
    return { kind: 'domain', domain, port, source };
  }
  if (hostPart.includes('*')) fail("'*' is only allowed alone or as a leading '*.'");
  return { kind: 'host', host: hostName(hostPart, fail), port, source };
}

function parsePort(text: string, fail: (what: string) => never): number {
  if (!/^\d{1,5}$/.test(text)) fail(`'${text}' is not a port number`);
  const port = Number(text);
  if (port < 1 || port > 65535) fail(`port ${port} is not between 1 and 65535`);
  return port;
}

function ipEntry(text: string, port: number | undefined, source: string, fail: (what: string) => never): AllowEntry {
  if (text.includes('%')) fail('IPv6 zone IDs are not supported');
  if (text.includes('/')) {
    const base = text.slice(0, text.indexOf('/'));
    if (!base.includes(':') && !ipaddr.IPv4.isValidFourPartDecimal(base)) fail(`'${base}' is not a dotted-decimal IPv4 address`);
    if (!ipaddr.isValidCIDR(text)) fail(`'${text}' is not a valid CIDR range`);
    const [address, prefix] = ipaddr.parseCIDR(text);
    // ::ffff:0:0/96 and narrower are IPv4 ranges: match them as such (addresses are compared after the same mapping).
    if (address.kind() === 'ipv6' && (address as ipaddr.IPv6).isIPv4MappedAddress() && prefix >= 96) {
      return { kind: 'cidr', address: (address as ipaddr.IPv6).toIPv4Address(), prefix: prefix - 96, port, source };
    }
    return { kind: 'cidr', address, prefix, port, source };
  }
  if (!text.includes(':') && !ipaddr.IPv4.isValidFourPartDecimal(text)) fail(`'${text}' is not a dotted-decimal IPv4 address`);
  if (!ipaddr.isValid(text)) fail(`'${text}' is not a valid IP address`);
  const address = ipaddr.process(text);
  return { kind: 'cidr', address, prefix: address.kind() === 'ipv4' ? 32 : 128, port, source };
}

const LABEL = /^(?!-)[a-z0-9_-]{1,63}(?<!-)$/;

/** Lower-case punycode form without a trailing dot, as URL's hostname gives it. */
function hostName(text: string, fail: (what: string) => never): string {
  const bare = text.replace(/\.$/, '');
  // WHATWG URLs read a name whose last label is numeric as IPv4 (127.1, 0x7f.1): such an entry could never match a name.
  const last = bare.slice(bare.lastIndexOf('.') + 1).toLowerCase();
  if (/^(\d+|0x[0-9a-f]*)$/.test(last)) fail(`'${text}' is neither a host name nor a dotted-decimal IPv4 address (a.b.c.d, each 0 to 255)`);
  const ascii = domainToASCII(bare);
  if (ascii === '' || ascii.length > 253 || !ascii.split('.').every((l) => LABEL.test(l))) fail(`'${text}' is not a valid host name`);
  return ascii;
}

// ---------------------------------------------------------------------------
// Checking a URL

/** The addresses cloud providers serve instance metadata (and credentials) on; named in messages. */
const METADATA: Record<string, [IP, number][]> = {
  metadata: [
    [ipaddr.parse('169.254.169.254'), 32], // AWS, GCP, Azure, OpenStack, ...
    [ipaddr.parse('fd00:ec2::254'), 128], // AWS IPv6
    [ipaddr.parse('100.100.100.200'), 32], // Alibaba Cloud
  ],
};

/**
 * Ranges ipaddr.js calls unicast that must not be reached either: ::/96
 * (deprecated IPv4-compatible addresses, part of IANA's reserved ::/8).
 */
const EXTRA_SPECIAL: Record<string, [IP, number][]> = {
  reserved: [[ipaddr.parse('::'), 96]],
};

const KIND_WORDS: Record<string, string> = {
  metadata: 'cloud metadata',
  private: 'private',
  loopback: 'loopback',
  linkLocal: 'link-local',
  uniqueLocal: 'unique-local',
  multicast: 'multicast',
  unspecified: 'unspecified',
  broadcast: 'broadcast',
  reserved: 'reserved',
  carrierGradeNat: 'carrier-grade NAT',
  benchmarking: 'benchmarking',
  '6to4': '6to4 relay',
  teredo: 'Teredo relay',
  rfc6052: 'NAT64',
  rfc6145: 'IPv4-translated',
  ipv4Mapped: 'IPv4-mapped',
  deprecatedSiteLocal: 'site-local',
  discard: 'discard-only',
  amt: 'AMT relay',
  as112: 'AS112',
  as112v6: 'AS112',
  deprecatedOrchid: 'ORCHID',
  orchid2: 'ORCHID',
  droneRemoteIdProtocolEntityTags: 'DRIP',
  segmentRouting: 'segment-routing',
};

/** The special range an address is in ('metadata', 'private', ...), or undefined for a public unicast address. */
export function specialRange(address: IP): string | undefined {
  const metadata = ipaddr.subnetMatch(address, METADATA, 'none');
  if (metadata !== 'none') return metadata;
  const range = address.range();
  if (range !== 'unicast') return range;
  const extra = ipaddr.subnetMatch(address, EXTRA_SPECIAL, 'none');
  return extra === 'none' ? undefined : extra;
}

/** The port a URL connects to. */
export function urlPort(url: URL): number {
  if (url.port !== '') return Number(url.port);
  return url.protocol === 'https:' ? 443 : 80;
}

/** The URL as it may appear in messages and logs: without user name and password. */
export function displayUrl(url: URL): string {
  if (url.username === '' && url.password === '') return url.href;
  const copy = new URL(url.href);
  copy.username = '';
  copy.password = '';
  return copy.href;
}

/** `port` undefined: any port matches (to tell "not listed" from "listed for other ports"). */
const portOk = (entry: AllowEntry, port: number | undefined): boolean => port === undefined || entry.port === undefined || entry.port === port;

function coveredByIp(list: AllowList, address: IP, port: number | undefined, exact: boolean): boolean {
  return list.entries.some(
    (e) =>
      e.kind === 'cidr' &&
      portOk(e, port) &&
      e.address.kind() === address.kind() &&
      address.match(e.address, e.prefix) &&
      // A metadata address needs its own entry: listing 169.254.0.0/16 or 100.64.0.0/10 for a network must not open it.
      (!exact || e.prefix === (address.kind() === 'ipv4' ? 32 : 128)),
  );
}

function nameListed(list: AllowList, host: string, port: number | undefined): boolean {
  return list.entries.some((e) => {
    if (!portOk(e, port)) return false;
    switch (e.kind) {
      case 'any':
        return true;
      case 'host':
        return e.host === host;
      case 'domain':
        return host === e.domain || host.endsWith(`.${e.domain}`);
      case 'cidr':
        return false;
    }
  });
}

/**
 * Why an address may not be reached ("private", "cloud metadata", ...), or
 * undefined when it may; `hint` says how to list it.
 */
function addressProblem(list: AllowList, address: IP, port: number): { kind: string; hint: string } | undefined {
  const range = specialRange(address);
  if (range === undefined) return undefined;
  const exact = range === 'metadata';
  if (coveredByIp(list, address, port, exact)) return undefined;
  const otherPorts = coveredByIp(list, address, undefined, exact);
  return { kind: KIND_WORDS[range] ?? range, hint: `list it in --http-allow${otherPorts ? ` for port ${port}` : ''} to allow it` };
}

const article = (word: string): string => (/^[aeiou]/i.test(word) ? 'an' : 'a');

function toTarget(address: IP): Target {
  return address.kind() === 'ipv4' ? { address: address.toString(), family: 4 } : { address: address.toString(), family: 6 };
}

/**
 * Checks a URL against the allow-list and resolves its host once; the request
 * must connect to exactly the returned address (a second resolution could
 * answer differently: DNS rebinding). Throws HttpRefused naming the rule;
 * DNS failures (ENOTFOUND, ...) are passed on as they are.
 */
export async function resolveTarget(url: URL, list: AllowList, lookup: LookupFn = defaultLookup): Promise<Target> {
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new HttpRefused('scheme', `unsupported URL scheme '${url.protocol}'; only http and https are allowed`);
  }
  const port = urlPort(url);
  const bare = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;

  if (ipaddr.isValid(bare)) {
    // URL has already turned 2130706433, 0177.0.0.1, 0x7f.1 and 127.1 into 127.0.0.1; process() maps ::ffff:a.b.c.d to IPv4.
    const address = ipaddr.process(bare);
    const problem = addressProblem(list, address, port);
    if (problem !== undefined) {
      throw new HttpRefused(
        'address',
        `host '${url.hostname}' is ${address.toString()}, ${article(problem.kind)} ${problem.kind} address; ${problem.hint}`,
      );
    }
    // A public IP literal passes with `*` or an entry covering it.
    const listed = coveredByIp(list, address, port, false) || list.entries.some((e) => e.kind === 'any' && portOk(e, port));
    if (!listed) throw notListed(url, coveredByIp(list, address, undefined, false));
    return toTarget(address);
  }

  const host = url.hostname.replace(/\.$/, '').toLowerCase();
  if (!nameListed(list, host, port)) throw notListed(url, nameListed(list, host, undefined));
  const answers = await lookup(host, { all: true, verbatim: true });
  if (answers.length === 0) throw new HttpRefused('address', `host '${url.hostname}' resolves to no address`);
  const addresses = answers.map((a) => ipaddr.process(a.address));
  // Every address must pass, not just the one we pick: a name answering with a
  // public and a private address (or a rebinding list) is refused outright, so
  // no retry or resolver ordering can ever lead a request inside.
  for (const address of addresses) {
    const problem = addressProblem(list, address, port);
    if (problem !== undefined) {
      throw new HttpRefused(
        'address',
        `host '${url.hostname}' resolves to ${address.toString()}, ${article(problem.kind)} ${problem.kind} address; ${problem.hint}`,
      );
    }
  }
  return toTarget(addresses[0]!);
}

/** `otherPorts`: the host is listed, but only for other ports than the URL's. */
function notListed(url: URL, otherPorts: boolean): HttpRefused {
  const port = otherPorts ? ` for port ${urlPort(url)}` : '';
  return new HttpRefused('host', `host '${url.hostname}' is not in the HTTP allow-list (--http-allow)${port}`);
}
