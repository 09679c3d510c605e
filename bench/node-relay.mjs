// The floor of any Node.js relay: a bare socket-to-socket pipe with no
// framing, no protocol knowledge and no counters. bench/proxy.mjs runs it as a
// fourth target, so the cost of the proxy's own code (proxy vs this) is told
// apart from the cost of Node's socket I/O (this vs PgBouncer).
//   node bench/node-relay.mjs UPSTREAM_PORT LISTEN_PORT
import net from 'node:net';

const [upstreamPort, port] = process.argv.slice(2).map(Number);
net
  .createServer((client) => {
    client.setNoDelay(true);
    const server = net.connect(upstreamPort, '127.0.0.1');
    server.setNoDelay(true);
    client.on('data', (d) => server.write(d));
    server.on('data', (d) => client.write(d));
    client.on('close', () => server.destroy());
    server.on('close', () => client.destroy());
    client.on('error', () => undefined);
    server.on('error', () => undefined);
  })
  .listen(port, '127.0.0.1', () => process.stderr.write('relay ready\n'));
