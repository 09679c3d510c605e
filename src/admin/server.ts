// Admin HTTP: /healthz (200 only while the upstream answers a query) and
// /metrics (Prometheus text format).
import http from 'node:http';
import type net from 'node:net';
import pg from 'pg';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { Logger } from 'pino';
import type { ProxyStats } from '../proxy/stats.js';

/** A part of the admin endpoint beyond /healthz and /metrics: answers the requests it takes (returns true), leaves the rest. */
export type AdminHandler = (req: http.IncomingMessage, res: http.ServerResponse) => boolean;

export interface AdminOptions {
  host: string;
  port: number;
  stats: ProxyStats;
  /** URL the health probe connects with. */
  probeUrl: string;
  log: Logger;
  /** More metrics served on /metrics beside the proxy's own (the engine's). */
  registries?: Registry[];
  /** More of the admin endpoint (the console), asked before the 404. */
  handlers?: AdminHandler[];
  /** How long a client may take to send a request's headers (default 10 s): a slow client cannot hold a socket. */
  headersTimeoutMs?: number;
}

/** Connections the admin endpoint holds at once (the console's live streams count). */
const MAX_CONNECTIONS = 1024;

function registry(stats: ProxyStats): Registry {
  const reg = new Registry();
  collectDefaultMetrics({ register: reg, prefix: 'pgdp_' }); // pgdp_process_*, pgdp_nodejs_*
  // The proxy keeps plain counters on its hot path; prom-client reads them at scrape time.
  const counter = (name: string, help: string, read: () => number): void => {
    new Counter({ name, help, registers: [reg], collect() { this.reset(); this.inc(read()); } });
  };
  const gauge = (name: string, help: string, read: () => number): void => {
    new Gauge({ name, help, registers: [reg], collect() { this.set(read()); } });
  };
  gauge('pgdp_client_connections', 'Client connections open now', () => stats.connectionsActive);
  counter('pgdp_client_connections_total', 'Client connections accepted', () => stats.connectionsTotal);
  counter('pgdp_client_connections_rejected_total', 'Client connections refused during startup', () => stats.connectionsRejected);
  counter('pgdp_bytes_from_clients_total', 'Bytes received from clients', () => stats.bytesFromClients);
  counter('pgdp_bytes_to_clients_total', 'Bytes sent to clients', () => stats.bytesToClients);
  counter('pgdp_queries_total', 'Query and Execute messages relayed', () => stats.queries);
  counter('pgdp_server_errors_total', 'ErrorResponse messages relayed from the server', () => stats.serverErrors);
  counter('pgdp_protocol_errors_total', 'Client sessions closed for a protocol violation', () => stats.protocolErrors);
  counter('pgdp_df_statements_total', 'Statements that mention the df schema', () => stats.dfStatements);
  counter('pgdp_cancel_requests_total', 'Cancel requests received', () => stats.cancelRequests);
  counter('pgdp_cancel_unknown_key_total', 'Cancel requests whose key matched no session', () => stats.cancelUnknownKey);
  counter('pgdp_auth_failures_total', 'Logins the server refused (SQLSTATE class 28 during authentication)', () => stats.authFailures);
  counter(
    'pgdp_refused_messages_total',
    'Client messages refused by the proxy (before authentication, too large, or malformed); each closed its connection',
    () => stats.refusedMessages,
  );
  counter('pgdp_internal_errors_total', 'Sessions closed by an internal error of the proxy', () => stats.internalErrors);
  counter('pgdp_log_lines_suppressed_total', 'Warnings left out of the log by the per-address rate limit', () => stats.logLinesSuppressed);
  counter('pgdp_upstream_connect_failures_total', 'Failed connections to the upstream', () => stats.upstreamConnectFailures);
  return reg;
}

export class AdminServer {
  private readonly server: http.Server;
  private readonly pool: pg.Pool;

  constructor(private readonly opts: AdminOptions) {
    const reg = opts.registries?.length ? Registry.merge([registry(opts.stats), ...opts.registries]) : registry(opts.stats);
    this.pool = new pg.Pool({
      connectionString: opts.probeUrl,
      max: 1,
      idleTimeoutMillis: 10_000,
      connectionTimeoutMillis: 2_000,
      query_timeout: 2_000,
      application_name: 'pg-durable-proxy:health',
    });
    this.pool.on('error', () => undefined); // an idle probe connection that dies is simply replaced
    const headersTimeout = opts.headersTimeoutMs ?? 10_000;
    // Slow clients (a request's headers a byte at a time) are cut off: checked often enough to matter.
    this.server = http.createServer({ headersTimeout, requestTimeout: headersTimeout * 3, connectionsCheckingInterval: Math.min(1000, headersTimeout) }, (req, res) => {
      const url = req.url?.split('?')[0];
      for (const handle of opts.handlers ?? []) if (handle(req, res)) return;
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET, HEAD' }).end();
        return;
      }
      if (url === '/healthz') {
        this.health().then(
          () => res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n'),
          (err: Error) => res.writeHead(503, { 'content-type': 'text/plain' }).end(`upstream unavailable: ${err.message}\n`),
        );
      } else if (url === '/metrics') {
        reg.metrics().then(
          (text) => res.writeHead(200, { 'content-type': reg.contentType }).end(text),
          (err: Error) => res.writeHead(500).end(err.message),
        );
      } else {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /healthz or /metrics\n');
      }
    });
    this.server.maxConnections = MAX_CONNECTIONS;
  }

  private async health(): Promise<void> {
    await this.pool.query('SELECT 1');
  }

  listen(): Promise<{ host: string; port: number }> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.opts.port, this.opts.host, () => {
        this.server.removeListener('error', reject);
        const a = this.server.address() as net.AddressInfo;
        resolve({ host: a.address, port: a.port });
      });
    });
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    await this.pool.end();
  }
}
