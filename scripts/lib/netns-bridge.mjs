// Tiny stream forwarder used to connect a test-owned network namespace (lo only) with the
// root namespace without giving the namespace any IP route: every hop is either loopback TCP
// inside one namespace or a filesystem Unix socket (path sockets are visible across network
// namespaces; abstract ones are not).
//
//   node netns-bridge.mjs '<json spec>'
//   spec = { "routes": [ { "listen": {"tcp": 7880} | {"unix": "/tmp/x.sock"},
//                          "connect": {"tcp": 7880} | {"unix": "/tmp/x.sock"} }, … ] }
// TCP always means 127.0.0.1 of the namespace the process runs in.
// Prints "ready" on stdout once every listener is up. Exits when stdin closes (parent gone).
import net from 'node:net';
import fs from 'node:fs';

const spec = JSON.parse(process.argv[2] ?? '{}');
const HOST = '127.0.0.1';

function listen(route) {
  return new Promise((resolve, reject) => {
    const server = net.createServer({ allowHalfOpen: true }, (inbound) => {
      const outbound = route.connect.unix
        ? net.connect({ path: route.connect.unix, allowHalfOpen: true })
        : net.connect({ host: HOST, port: route.connect.tcp, allowHalfOpen: true });
      inbound.setNoDelay?.(true);
      outbound.setNoDelay?.(true);
      inbound.pipe(outbound);
      outbound.pipe(inbound);
      const kill = () => {
        inbound.destroy();
        outbound.destroy();
      };
      inbound.on('error', kill);
      outbound.on('error', kill);
      inbound.on('close', () => outbound.end());
      outbound.on('close', () => inbound.end());
    });
    server.once('error', reject);
    if (route.listen.unix) {
      try {
        fs.unlinkSync(route.listen.unix);
      } catch {
        /* not there */
      }
      server.listen(route.listen.unix, () => resolve(server));
    } else {
      server.listen(route.listen.tcp, HOST, () => resolve(server));
    }
  });
}

try {
  await Promise.all((spec.routes ?? []).map(listen));
  process.stdout.write('ready\n');
} catch (err) {
  process.stderr.write(`netns-bridge: ${err?.message ?? err}\n`);
  process.exit(1);
}
process.stdin.on('data', () => {});
process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
