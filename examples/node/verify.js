#!/usr/bin/env node
'use strict';
// node verify.js BUNDLE_DIR
// Checks the manifest's sha256s, runs every golden vector set in onnxruntime-node, and compares the outputs
// with the float64 PyTorch answers within the manifest's tolerance. A model with a KV cache also decodes the
// manifest's decode steps, threading each step's present_* into the next step's past_* (a static cache's buffers
// start as zeros of first_past's shape). An output with valid_lengths (a static cache's presents) is compared
// over each batch row's valid part only. Each set's and step's
// inputs are first checked against each other by the model's named dims (lib/dims.js): a mismatch is a FAILED
// line naming both inputs and the dim. One line per set or step; exit 0 when all pass.

const path = require('node:path');
const ort = require('onnxruntime-node');
const {
  BundleError, changedFiles, checkOutputs, compare, loadTensor, readManifest, stepLabel, toOrt,
} = require('./lib/bundle');
const { dimsProblem } = require('./lib/dims');

// A set's or step's feeds checked against each other by the model's named dims (lib/dims.js, the rule the service
// applies): a FAILED line naming both inputs and the dim, or null.
function dimsVerdict(manifest, feeds, label) {
  const shapes = Object.fromEntries(Object.entries(feeds).map(([name, t]) => [name, Array.from(t.dims)]));
  const problem = dimsProblem(manifest, shapes);
  return problem && `FAILED | onnxruntime-node | ${label} | the inputs disagree: ${problem}`;
}

async function verify(dir, log = console.log) {
  const manifest = readManifest(dir);
  const changed = changedFiles(dir, manifest);
  if (changed.length) {
    throw new BundleError(`the bundle was changed after it was written: ${changed.join('; ')}`);
  }
  // errors only: a warning (TensorScatter copying a static cache it was not bound to write in place) is not a verdict
  const session = await ort.InferenceSession.create(path.join(dir, manifest.model.file), { logSeverityLevel: 3 });
  checkOutputs(dir, manifest, session.outputNames); // every set and step compares every output of the model
  let passed = 0;
  let failed = 0;
  for (const set of manifest.test_data_sets) {
    const feeds = {};
    for (const f of set.inputs) feeds[f.name] = toOrt(loadTensor(path.join(dir, f.file)));
    const refused = dimsVerdict(manifest, feeds, `${set.folder} (${set.case})`);
    if (refused) {
      log(refused);
      failed++;
      continue;
    }
    const results = await session.run(feeds);
    const verdicts = set.outputs.map((f) => {
      const expected = loadTensor(path.join(dir, f.file));
      return { name: f.name, ...compare(results[f.name], expected, manifest.tolerance, f.valid_lengths) };
    });
    const ok = verdicts.every((v) => v.passed);
    const maxAbs = Math.max(...verdicts.map((v) => v.maxAbs));
    const reasons = verdicts.filter((v) => !v.passed).map((v) => `${v.name}: ${v.reason}`).join('; ');
    log(`${ok ? 'PASSED' : 'FAILED'} | onnxruntime-node | ${set.folder} (${set.case}) | max_abs=${maxAbs.toPrecision(3)}` +
        (ok ? '' : ` | ${reasons}`));
    if (ok) passed++; else failed++;
  }
  if (manifest.decode) { // a model with a KV cache: decode step by step, threading present_* into past_*
    const { thread, first_past: first, steps } = manifest.decode;
    let past = {};
    const empty = { float32: Float32Array, float16: Uint16Array }[first.dtype];
    if (!empty) throw new BundleError(`decode.first_past.dtype ${JSON.stringify(first.dtype)}: this verifier takes float32 or float16`);
    const size = first.shape.reduce((a, b) => a * b, 1); // zeros: none for a growing cache, the buffers for a static one
    for (const name of Object.values(thread)) past[name] = new ort.Tensor(first.dtype, new empty(size), first.shape);
    for (const step of steps) {
      const feeds = { ...past };
      for (const f of step.inputs) feeds[f.name] = toOrt(loadTensor(path.join(dir, f.file)));
      const label = stepLabel(step);
      const refused = dimsVerdict(manifest, feeds, label);
      if (refused) { // the steps after it thread its outputs: none to thread
        log(refused);
        failed++;
        break;
      }
      const results = await session.run(feeds);
      const verdicts = step.outputs.map((f) => ({ name: f.name, ...compare(results[f.name], loadTensor(path.join(dir, f.file)),
        manifest.tolerance, f.valid_lengths) }));
      const ok = verdicts.every((v) => v.passed);
      const maxAbs = Math.max(...verdicts.map((v) => v.maxAbs));
      const reasons = verdicts.filter((v) => !v.passed).map((v) => `${v.name}: ${v.reason}`).join('; ');
      log(`${ok ? 'PASSED' : 'FAILED'} | onnxruntime-node | ${label} | max_abs=${maxAbs.toPrecision(3)}` +
          (ok ? '' : ` | ${reasons}`));
      if (ok) passed++; else failed++;
      past = {};
      for (const [present, pastName] of Object.entries(thread)) past[pastName] = results[present];
    }
  }
  log(`${passed} passed, ${failed} failed`);
  return failed === 0;
}

if (require.main === module) {
  const dir = process.argv[2];
  if (!dir || process.argv.length > 3) {
    console.error('usage: node verify.js BUNDLE_DIR');
    process.exit(2);
  }
  verify(dir).then(
    (ok) => process.exit(ok ? 0 : 1),
    (err) => {
      console.error(`Error: ${err instanceof BundleError ? err.message : (err.message || err).toString().split('\n')[0]}`);
      process.exit(1);
    },
  );
}

module.exports = { verify };
