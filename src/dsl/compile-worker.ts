// The compiler on a thread of its own: the proxy hands it the large df.start
// statements, so that compiling one never holds up the other sessions' bytes.
import { parentPort } from 'node:worker_threads';
import { loadDslParser, rewriteSql } from './interceptor.js';
import { toWire, type CompileRequest, type CompileReply } from './offload.js';

await loadDslParser();
parentPort!.on('message', ({ id, sql }: CompileRequest) => {
  let reply: CompileReply;
  try {
    reply = { id, result: toWire(rewriteSql(sql)) };
  } catch (err) {
    reply = { id, failed: (err as Error).message };
  }
  parentPort!.postMessage(reply);
});
