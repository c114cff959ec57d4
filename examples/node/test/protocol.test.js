'use strict';
// The protocol's tensors (lib/protocol.js) and the service's binary, configuration, statistics and gRPC parts,
// against the bundle in ATTN_ONNX_BUNDLE.
const assert = require('node:assert/strict');
const path = require('node:path');
const { after, before, test } = require('node:test');
const grpc = require('@grpc/grpc-js');
const loader = require('@grpc/proto-loader');
const { BUNDLE, SKIP } = require('./helpers');
const { compare, loadTensor, readManifest } = require('../lib/bundle');
const { fromBytes, toBytes } = require('../lib/protocol');
const { createService } = require('../server');

const FP32 = { name: 'x', datatype: 'FP32', shape: [-1, 4] };
const INT64 = { name: 'i', datatype: 'INT64', shape: [-1] };

test('a binary tensor is a view over the bytes it came in when they are aligned', () => {
  const body = Buffer.alloc(64);
  body.writeFloatLE(1.5, 16);
  const tensor = fromBytes({ shape: [1, 4] }, FP32, body.subarray(16, 32));
  assert.equal(tensor.data.buffer, body.buffer); // no copy
  assert.equal(tensor.data.byteOffset, body.byteOffset + 16);
  assert.equal(tensor.data[0], 1.5);
  assert.equal(toBytes(tensor).buffer, body.buffer); // and back out, no copy either
});

test('a binary tensor at an offset its element size does not divide is copied once, whole', () => {
  const body = Buffer.alloc(64);
  body.writeBigInt64LE(-7n, 3);
  body.writeBigInt64LE(2n ** 40n, 11);
  const tensor = fromBytes({ shape: [2] }, INT64, body.subarray(3, 19));
  assert.notEqual(tensor.data.buffer, body.buffer);
  assert.deepEqual(Array.from(tensor.data), [-7n, 2n ** 40n]);
});

let service;
let base;
let manifest;
let client;

const DATATYPE = { float32: 'FP32', bool: 'BOOL' };

before(async () => {
  if (SKIP) return;
  service = await createService({ bundle: BUNDLE, maxBodyBytes: 1 << 20, grpc: true });
  await new Promise((resolve) => service.server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${service.server.address().port}`;
  const port = await service.grpc.listen(0, '127.0.0.1');
  const proto = path.join(__dirname, '..', 'proto');
  const definition = loader.loadSync(path.join(proto, 'grpc_service.proto'), {
    keepCase: true, longs: String, enums: String, defaults: true, includeDirs: [proto],
  });
  const Service = grpc.loadPackageDefinition(definition).inference.GRPCInferenceService;
  client = new Service(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  manifest = readManifest(BUNDLE);
});
after(async () => {
  if (client) client.close();
  if (service) await service.drain();
});

const call = (method, request) => new Promise((resolve, reject) => {
  client[method](request, (err, answer) => (err ? reject(err) : resolve(answer)));
});

// A vector set's inputs and expected outputs
function vectors(set) {
  const inputs = set.inputs.map((f) => ({ name: f.name, tensor: loadTensor(path.join(BUNDLE, f.file)) }));
  const expected = Object.fromEntries(set.outputs.map((f) => [f.name, loadTensor(path.join(BUNDLE, f.file))]));
  return { inputs, expected };
}

// A binary request: the JSON header with `pad` spaces (to move the binary part off alignment), then the bytes
function binaryRequest(inputs, pad = 0) {
  const head = Buffer.from(JSON.stringify({
    inputs: inputs.map(({ name, tensor }) => ({ name, shape: tensor.dims, datatype: DATATYPE[tensor.type],
      parameters: { binary_data_size: tensor.data.byteLength } })),
    outputs: [{ name: 'output', parameters: { binary_data: true } }],
  }) + ' '.repeat(pad));
  const bytes = inputs.map(({ tensor }) => Buffer.from(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength));
  return { head, body: Buffer.concat([head, ...bytes]) };
}

test('binary requests at every alignment of the binary part are answered in binary within tolerance', { skip: SKIP }, async () => {
  const { inputs, expected } = vectors(manifest.test_data_sets[1]);
  for (const pad of [0, 1, 2, 3, 5]) {
    const { head, body } = binaryRequest(inputs, pad);
    const response = await fetch(`${base}/v2/models/${manifest.name}/infer`, {
      method: 'POST', body, headers: { 'inference-header-content-length': String(head.length) },
    });
    assert.equal(response.status, 200);
    const answer = Buffer.from(await response.arrayBuffer());
    const length = Number(response.headers.get('inference-header-content-length'));
    const meta = JSON.parse(answer.subarray(0, length).toString());
    const out = meta.outputs[0];
    assert.equal(out.parameters.binary_data_size, answer.length - length);
    const data = new Float32Array(answer.buffer.slice(answer.byteOffset + length, answer.byteOffset + answer.length));
    const verdict = compare({ dims: out.shape, type: 'float32', data }, expected.output, manifest.tolerance);
    assert.ok(verdict.passed, `pad ${pad}: ${verdict.reason}`);
  }
});

test('the configuration and the statistics', { skip: SKIP }, async () => {
  const config = await (await fetch(`${base}/v2/models/${manifest.name}/config`)).json();
  assert.equal(config.max_batch_size, 0);
  assert.deepEqual(config.input.map((i) => [i.name, i.dims]), manifest.inputs.map((i) => [i.name, i.shape]));
  const stats = async () => (await (await fetch(`${base}/v2/models/${manifest.name}/stats`)).json()).model_stats[0];
  const before = await stats();
  const { inputs } = vectors(manifest.test_data_sets[0]);
  const { head, body } = binaryRequest(inputs);
  await fetch(`${base}/v2/models/${manifest.name}/infer`, { method: 'POST', body, headers: { 'inference-header-content-length': String(head.length) } });
  const later = await stats();
  assert.equal(later.inference_count - before.inference_count, 1);
  assert.equal(later.inference_stats.compute_infer.count - before.inference_stats.compute_infer.count, 1);
  assert.ok(later.inference_stats.compute_infer.ns > before.inference_stats.compute_infer.ns);
});

test('gRPC: raw and typed contents are both answered within tolerance, in raw_output_contents', { skip: SKIP }, async () => {
  assert.deepEqual(await call('ServerLive', {}), { live: true });
  const { inputs, expected } = vectors(manifest.test_data_sets[2]);
  const tensors = inputs.map(({ name, tensor }) => ({ name, datatype: DATATYPE[tensor.type], shape: tensor.dims.map(String) }));
  const raw = inputs.map(({ tensor }) => Buffer.from(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength));
  const typed = inputs.map(({ tensor }, i) => ({ ...tensors[i],
    contents: tensor.type === 'bool' ? { bool_contents: Array.from(tensor.data, (v) => v !== 0) } : { fp32_contents: Array.from(tensor.data) } }));
  for (const request of [{ inputs: tensors, raw_input_contents: raw }, { inputs: typed }]) {
    const answer = await call('ModelInfer', { model_name: manifest.name, id: 'x', ...request });
    assert.equal(answer.id, 'x');
    const bytes = answer.raw_output_contents[0];
    const data = new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
    const verdict = compare({ dims: answer.outputs[0].shape.map(Number), type: 'float32', data }, expected.output, manifest.tolerance);
    assert.ok(verdict.passed, verdict.reason);
  }
  await assert.rejects(call('ModelInfer', { model_name: 'other' }), (err) => err.code === grpc.status.NOT_FOUND);
  const config = await call('ModelConfig', { name: manifest.name });
  assert.equal(config.config.input[0].data_type, 'TYPE_FP32');
});
