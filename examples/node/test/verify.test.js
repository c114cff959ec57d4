'use strict';
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const { test } = require('node:test');
const { BUNDLE, SKIP, copyBundle } = require('./helpers');
const { decodeTensor, loadTensor, readManifest } = require('../lib/bundle');

const VERIFY = path.join(__dirname, '..', 'verify.js');
const run = (dir) => spawnSync(process.execPath, [VERIFY, dir], { encoding: 'utf8' });

test('every vector set of the bundle passes', { skip: SKIP }, () => {
  const result = run(BUNDLE);
  assert.equal(result.status, 0, result.stdout + result.stderr);
  const sets = readManifest(BUNDLE).test_data_sets.length;
  const lines = result.stdout.trim().split('\n');
  assert.equal(lines.filter((l) => l.startsWith('PASSED | onnxruntime-node | test_data_set_')).length, sets);
  assert.equal(lines.at(-1), `${sets} passed, 0 failed`);
});

test('a flipped model byte exits 1, naming the model', { skip: SKIP }, () => {
  const dir = copyBundle();
  const file = path.join(dir, 'model.onnx');
  const bytes = fs.readFileSync(file);
  bytes[bytes.length >> 1] ^= 1;
  fs.writeFileSync(file, bytes);
  const result = run(dir);
  assert.equal(result.status, 1);
  assert.match(result.stderr, /^Error: the bundle was changed after it was written: model\.onnx \(sha256 /);
});

test('a changed vector exits 1, naming the vector', { skip: SKIP }, () => {
  const dir = copyBundle();
  const file = path.join(dir, 'test_data_set_1', 'output_0.pb');
  const bytes = fs.readFileSync(file);
  bytes[bytes.length - 3] ^= 0x10;
  fs.writeFileSync(file, bytes);
  const result = run(dir);
  assert.equal(result.status, 1);
  assert.match(result.stderr, /test_data_set_1\/output_0\.pb \(sha256 /);
});

test('a changed vector with its hash updated fails on the numbers', { skip: SKIP }, () => {
  const dir = copyBundle();
  const manifestFile = path.join(dir, 'manifest.json');
  const manifest = JSON.parse(fs.readFileSync(manifestFile, 'utf8'));
  const entry = manifest.test_data_sets[0].outputs[0];
  const file = path.join(dir, entry.file);
  const bytes = fs.readFileSync(file);
  bytes.writeFloatLE(bytes.readFloatLE(bytes.length - 4) + 0.5, bytes.length - 4); // the last float of raw_data
  fs.writeFileSync(file, bytes);
  entry.sha256 = require('../lib/bundle').sha256(file);
  fs.writeFileSync(manifestFile, JSON.stringify(manifest));
  const result = run(dir);
  assert.equal(result.status, 1);
  assert.match(result.stdout, /^FAILED \| onnxruntime-node \| test_data_set_0 .*beyond atol=/m);
});

test('TensorProto decoding keeps names, dims, types and values', { skip: SKIP }, () => {
  const manifest = readManifest(BUNDLE);
  for (const f of manifest.test_data_sets[1].inputs) {
    const t = loadTensor(path.join(BUNDLE, f.file));
    assert.equal(t.name, f.name);
    assert.deepEqual(t.dims, f.shape);
    assert.equal(t.type, f.dtype);
    assert.equal(t.data.length, f.shape.reduce((a, b) => a * b, 1));
  }
  assert.throws(() => decodeTensor(Buffer.from([0x08])), /truncated TensorProto/);
});
