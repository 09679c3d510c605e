// npm run bench:compile: how long the proxy's DSL compiler holds the event
// loop for one df.start, against the baseline of parsing the same statement
// once with libpg-query (which compiling needs anyway), for chains of steps
// and for one large literal step. A ratio that grows with the size means work
// that is not linear in the statement.
//
//   BENCH_REPEAT   compilations per size (default 5; the median is printed)
import { parseSync } from 'libpg-query';
const { loadDslParser, MAX_COMPILED_BYTES, rewriteSql } = await import('../dist/dsl/interceptor.js');

const REPEAT = Number(process.env.BENCH_REPEAT ?? 5);
await loadDslParser();

const median = (xs) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const time = (f) => {
  const out = [];
  for (let i = 0; i < REPEAT; i++) {
    const t = performance.now();
    f();
    out.push(performance.now() - t);
  }
  return median(out);
};

const cases = [
  ...[10, 100, 1000, 2000].map((n) => [
    `chain of ${n} steps`,
    `SELECT df.start(${Array.from({ length: n }, (_, i) => `'INSERT INTO t VALUES (${i})'${i % 5 === 0 ? ` |=> 'r${i}'` : ''}`).join(' ~> ')})`,
  ]),
  ...[16, 128].map((kb) => [`one ${kb} KiB step`, `SELECT df.start('SELECT length(''${'x'.repeat(kb * 1024)}'')')`]),
];

console.log('| statement | bytes | parse ms | compile ms | compile/parse |');
console.log('| --- | ---: | ---: | ---: | ---: |');
for (const [name, sql] of cases) {
  const parse = time(() => parseSync(sql));
  const compile = time(() => rewriteSql(sql)); // compiles and validates (a plain literal is validated, not rewritten)
  console.log(`| ${name} | ${Buffer.byteLength(sql)} | ${parse.toFixed(2)} | ${compile.toFixed(2)} | ${(compile / parse).toFixed(1)} |`);
}
if (MAX_COMPILED_BYTES) console.log(`\nStatements over ${MAX_COMPILED_BYTES} bytes are not compiled by the proxy (the SQL functions build them).`);
