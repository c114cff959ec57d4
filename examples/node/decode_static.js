#!/usr/bin/env node
'use strict';
// node decode_static.js MODEL.onnx PLAN.json OUT_DIR
// Decodes through a static-cache model (export-attn --kv-cache --max-len N) in place (lib/static_cache.js), step by
// step as PLAN.json says, and writes what came out, for a caller to compare (tests/deploy/test_static_decode_consumers.py
// compares it with the float64 golden). examples/cpp/decode_static takes the same arguments and writes the same files.
//
// PLAN.json: {"batch": B, "fill": 0.0, "steps": [STEP, ...]}
//   batch: the cache's slots; fill: every float of both buffers before the first step (default 0; positions beyond
//   a slot's length keep it: the step must neither read nor write them)
//   STEP: {"q_len": n, "query": "FILE", "key": "FILE", "value": "FILE", "slots": [s, ...], "reset": [s, ...]}
//     q_len new tokens for `slots` (a contiguous run; every slot when absent); FILE (relative to PLAN.json's folder):
//     raw little-endian float32 (len(slots), q_len, E); key and value default to query (self-attention); `reset`:
//     slots emptied before the step.
// OUT_DIR: output_<i>.f32 (step i's output, (len(slots), q_len, E)); past_key.f32 and past_value.f32 (the whole
//   buffers (B, heads, max_len, d_k) after the last step); summary.json {runtime, steps, lengths, heads, max_len, d_k,
//   written_in_place, returned_copy}. Exit 1 with one line "Error: ..." on stderr (a full cache: "Error: the cache
//   is full: slot S holds N of M tokens, ..."); the steps before it are written.

const fs = require('node:fs');
const path = require('node:path');
const ort = require('onnxruntime-node');
const { StaticCache } = require('./lib/static_cache');

function readFloats(file) {
  const bytes = fs.readFileSync(file);
  if (bytes.length % 4) throw new Error(`${file}: ${bytes.length} bytes is not a whole number of float32s`);
  const floats = new Float32Array(bytes.length / 4); // a copy: the Buffer's own memory may be pooled and unaligned
  new Uint8Array(floats.buffer).set(bytes);
  return floats;
}

function writeFloats(file, floats) {
  fs.writeFileSync(file, new Uint8Array(floats.buffer, floats.byteOffset, floats.byteLength));
}

async function main(argv) {
  if (argv.length !== 3) throw new Error('usage: node decode_static.js MODEL.onnx PLAN.json OUT_DIR');
  const [model, planFile, out] = argv;
  const plan = JSON.parse(fs.readFileSync(planFile, 'utf8'));
  const dir = path.dirname(planFile);
  const cache = await StaticCache.create(model, plan.batch);
  cache.buffers.key.fill(plan.fill ?? 0);
  cache.buffers.value.fill(plan.fill ?? 0);
  fs.mkdirSync(out, { recursive: true });
  let returnedCopy = null;
  for (const [i, step] of plan.steps.entries()) {
    for (const slot of step.reset || []) cache.reset(slot);
    const query = readFloats(path.join(dir, step.query));
    const key = step.key ? readFloats(path.join(dir, step.key)) : query;
    const value = step.value ? readFloats(path.join(dir, step.value)) : query;
    const output = await cache.step(query, step.q_len, { key, value, slots: step.slots ?? null });
    writeFloats(path.join(out, `output_${i}.f32`), output);
    // the binding's returned present: the caller's memory, or a copy of it (onnxruntime-node 1.30: a copy)
    returnedCopy = cache.lastResult.present_key.data.buffer !== cache.buffers.key.buffer;
  }
  writeFloats(path.join(out, 'past_key.f32'), cache.buffers.key);
  writeFloats(path.join(out, 'past_value.f32'), cache.buffers.value);
  const summary = {
    runtime: `onnxruntime-node ${ort.env.versions.node}`,
    steps: plan.steps.length,
    lengths: cache.lengths,
    heads: cache.heads,
    max_len: cache.maxLen,
    d_k: cache.dK,
    written_in_place: true, // every step's new positions were checked in the caller's buffers (StaticCache.checkWritten)
    returned_copy: returnedCopy,
  };
  fs.writeFileSync(path.join(out, 'summary.json'), JSON.stringify(summary) + '\n');
  console.log(`decode_static: ${summary.steps} steps, lengths [${summary.lengths}], written in place` +
    (returnedCopy ? ' (each present also returned as a copy)' : ''));
}

main(process.argv.slice(2)).catch((error) => {
  console.error(`Error: ${error.message}`);
  process.exit(1);
});
