#!/usr/bin/env node
'use strict';
// node bench.js MODEL.onnx FEEDS_DIR [--threads N]
//
// Times a model in onnxruntime-node on the feeds in FEEDS_DIR (input_K.pb TensorProto files named as the model's
// inputs, the layout of a bundle's test_data_set_N), so that a harness (bench-attn runtimes) can time the same
// model on the same inputs in other runtimes beside it. The session is made once; then each line on stdin holding
// TARGET_MS makes one untimed run and as many timed runs as fill about TARGET_MS (1 to 1000), and prints their
// mean in milliseconds on a line of its own (the protocol of examples/cpp/bench_latency). Exit 0 at the end of
// stdin, 1 on a bad file or model, 2 on usage.

const fs = require('node:fs');
const path = require('node:path');
const readline = require('node:readline');
const ort = require('onnxruntime-node');
const { loadTensor, toOrt } = require('./lib/bundle');

async function main(argv) {
  let threads = 0;
  if (argv.length === 4 && argv[2] === '--threads') threads = Number(argv[3]);
  if ((argv.length !== 2 && argv.length !== 4) || !Number.isInteger(threads) || threads < 0) {
    console.error('usage: node bench.js MODEL.onnx FEEDS_DIR [--threads N]');
    return 2;
  }
  const [model, dir] = argv;
  let session;
  let feeds;
  try {
    const options = { extra: { session: { intra_op: { allow_spinning: '0' } } } }; // as the service runs it
    if (threads) options.intraOpNumThreads = threads;
    session = await ort.InferenceSession.create(model, options);
    const files = fs.readdirSync(dir).filter((f) => /^input_\d+\.pb$/.test(f)).sort();
    feeds = Object.fromEntries(files.map((f) => loadTensor(path.join(dir, f))).map((t) => [t.name, toOrt(t)]));
  } catch (err) {
    console.error(`Error: ${String(err.message || err).split('\n')[0]}`);
    return 1;
  }
  for await (const line of readline.createInterface({ input: process.stdin })) {
    const target = Number(line.trim());
    if (!(target > 0)) {
      console.error(`Error: ${JSON.stringify(line)} is not a target in milliseconds`);
      return 2;
    }
    let start = process.hrtime.bigint();
    await session.run(feeds);
    const once = Number(process.hrtime.bigint() - start) / 1e6;
    const runs = Math.max(1, Math.min(1000, Math.round(target / Math.max(once, 1e-3))));
    start = process.hrtime.bigint();
    for (let i = 0; i < runs; i++) await session.run(feeds); // one after another: the mean is one run's latency
    console.log((Number(process.hrtime.bigint() - start) / 1e6 / runs).toFixed(6));
  }
  return 0;
}

main(process.argv.slice(2)).then((code) => { process.exitCode = code; });
