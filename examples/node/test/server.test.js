'use strict';
const assert = require('node:assert/strict');
const path = require('node:path');
const { after, before, test } = require('node:test');
const { BUNDLE, SKIP } = require('./helpers');
const { compare, loadTensor, readManifest } = require('../lib/bundle');
const { createService } = require('../server');

let service;
let base;
let manifest;

before(async () => {
  if (SKIP) return;
  service = await createService({ bundle: BUNDLE, maxBodyBytes: 1 << 20 });
  await new Promise((resolve) => service.server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${service.server.address().port}`;
  manifest = readManifest(BUNDLE);
});
after(() => service && service.server.close());

const DATATYPE = { float32: 'FP32', bool: 'BOOL', uint8: 'UINT8', int64: 'INT64' };

// A vector set's inputs as a KServe v2 JSON request
function request(set) {
  return {
    id: set.folder,
    inputs: set.inputs.map((f) => {
      const t = loadTensor(path.join(BUNDLE, f.file));
      const data = t.type === 'bool' ? Array.from(t.data, (v) => v !== 0) : Array.from(t.data, Number);
      return { name: f.name, shape: t.dims, datatype: DATATYPE[t.type], data };
    }),
  };
}

async function post(body, raw = false) {
  const response = await fetch(`${base}/v2/models/${manifest.name}/infer`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: raw ? body : JSON.stringify(body),
  });
  return { status: response.status, body: await response.json() };
}

async function assertServing() {
  const set = manifest.test_data_sets[0];
  const { status, body } = await post(request(set));
  assert.equal(status, 200, JSON.stringify(body));
  const expected = loadTensor(path.join(BUNDLE, set.outputs[0].file));
  const out = body.outputs[0];
  const verdict = compare({ dims: out.shape, type: expected.type, data: out.data }, expected, manifest.tolerance);
  assert.ok(verdict.passed, verdict.reason);
}

test('health, metadata and readiness', { skip: SKIP }, async () => {
  for (const url of ['/v2/health/live', '/v2/health/ready', `/v2/models/${manifest.name}/ready`]) {
    assert.equal((await fetch(base + url)).status, 200, url);
  }
  const meta = await (await fetch(`${base}/v2/models/${manifest.name}`)).json();
  assert.equal(meta.name, manifest.name);
  assert.deepEqual(meta.inputs, manifest.inputs.map((i) => ({ name: i.name, datatype: i.datatype, shape: i.shape })));
  assert.ok(meta.inputs.every((i) => i.shape.includes(-1)));
  assert.equal((await fetch(`${base}/v2/models/other`)).status, 404);
});

test('every vector set is answered within the manifest tolerance', { skip: SKIP }, async () => {
  for (const set of manifest.test_data_sets) {
    const { status, body } = await post({ ...request(set), parameters: { unknown: 'ignored' } });
    assert.equal(status, 200, JSON.stringify(body));
    assert.equal(body.id, set.folder);
    for (const f of set.outputs) {
      const expected = loadTensor(path.join(BUNDLE, f.file));
      const out = body.outputs.find((o) => o.name === f.name);
      const verdict = compare({ dims: out.shape, type: expected.type, data: out.data }, expected, manifest.tolerance);
      assert.ok(verdict.passed, `${set.folder} ${f.name}: ${verdict.reason}`);
    }
  }
});

test('bad requests get a 4xx naming the problem, and the service keeps serving', { skip: SKIP }, async () => {
  const good = request(manifest.test_data_sets[1]);
  const first = good.inputs[0];
  const cases = [
    ['{"inputs": [', 400, /not valid JSON/],
    [JSON.stringify({ inputs: {} }), 400, /"inputs" must be a list/],
    [JSON.stringify({ inputs: good.inputs.slice(1) }), 400, new RegExp(`missing input\\(s\\): ${first.name}`)],
    [JSON.stringify({ inputs: [{ ...first, name: 'nope' }, ...good.inputs.slice(1)] }), 400, /unknown input 'nope'/],
    [JSON.stringify({ inputs: [{ ...first, datatype: 'INT64' }, ...good.inputs.slice(1)] }), 400, /datatype "INT64", the model takes FP32/],
    [JSON.stringify({ inputs: [{ ...first, data: first.data.slice(1) }, ...good.inputs.slice(1)] }), 400, /data values for shape/],
    [JSON.stringify({ inputs: [{ ...first, shape: [...first.shape.slice(0, -1), 3] }, ...good.inputs.slice(1)] }), 400, /dim 2 is 3, the model takes/],
    [JSON.stringify({ inputs: [{ ...first, shape: [100000, 100000, first.shape[2]] }, ...good.inputs.slice(1)] }), 400, /more than this service takes/],
    [JSON.stringify({ inputs: [{ ...first, data: ['x', ...first.data.slice(1)] }, ...good.inputs.slice(1)] }), 400, /data\[0\] = "x" is not a FP32 value/],
    ['x'.repeat((1 << 20) + 1), 413, /at most|over/],
  ];
  for (const [body, status, message] of cases) {
    const answer = await post(body, true);
    assert.equal(answer.status, status, `${body.slice(0, 80)} -> ${JSON.stringify(answer.body)}`);
    assert.match(answer.body.error, message);
    await assertServing();
  }
});

test('concurrent requests are all answered correctly', { skip: SKIP }, async () => {
  await Promise.all(Array.from({ length: 16 }, () => assertServing()));
});

test('hostile nesting and sizes are refused without harm', { skip: SKIP }, async () => {
  const good = request(manifest.test_data_sets[1]);
  const first = good.inputs[0];
  const deep = `{"inputs": [{"name": "${first.name}", "shape": [1, 1, ${first.shape[2]}], "datatype": "FP32", "data": ${'['.repeat(200000)}1${']'.repeat(200000)}}]}`;
  let answer = await post(deep, true);
  assert.equal(answer.status, 400);
  assert.match(answer.body.error, /nested deeper than its rank/);
  answer = await post({ inputs: [{ ...first, data: [...first.data, 1] }, ...good.inputs.slice(1)] });
  assert.equal(answer.status, 400);
  assert.match(answer.body.error, /more than \d+ data values/);
  answer = await post({ inputs: [{ ...first, shape: [2 ** 40, 1, first.shape[2]] }, ...good.inputs.slice(1)] });
  assert.equal(answer.status, 400);
  assert.match(answer.body.error, /more than this service takes/);
  answer = await post({ inputs: [{ ...first, shape: [-1, 1, first.shape[2]] }, ...good.inputs.slice(1)] });
  assert.equal(answer.status, 400);
  assert.match(answer.body.error, /shape must be a list of non-negative integers/);
  await assertServing();
});
