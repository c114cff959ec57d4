'use strict';
// lib/bundle.js's TensorProto reader on hand-built messages: every field it reads, packed and not, and the
// ones it refuses. Needs no bundle.
const assert = require('node:assert/strict');
const { test } = require('node:test');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { decodeTensor, halfToNumber, numbers, readManifest } = require('../lib/bundle');

// --- a tiny protobuf writer, enough for TensorProto
const varint = (n) => {
  let v = BigInt.asUintN(64, BigInt(n));
  const out = [];
  do {
    const byte = Number(v & 0x7fn);
    v >>= 7n;
    out.push(v ? byte | 0x80 : byte);
  } while (v);
  return out;
};
const key = (field, wire) => varint((field << 3) | wire);
const bytesField = (field, bytes) => [...key(field, 2), ...varint(bytes.length), ...bytes];
const tensor = (...parts) => Buffer.from(parts.flat());
const dims = (...ds) => ds.map((d) => [...key(1, 0), ...varint(d)]).flat();
const type = (t) => [...key(2, 0), ...varint(t)];
const name = (s) => bytesField(8, [...Buffer.from(s)]);
const f32 = (x) => { const b = Buffer.alloc(4); b.writeFloatLE(x); return [...b]; };
const f64 = (x) => { const b = Buffer.alloc(8); b.writeDoubleLE(x); return [...b]; };

const CASES = [
  ['bool in int32_data, one value per field', tensor(dims(3), type(9), name('m'), [1, 0, 1].map((v) => [...key(5, 0), ...varint(v)]).flat()), 'bool', [1, 0, 1]],
  ['bool in int32_data, packed', tensor(dims(3), type(9), name('m'), bytesField(5, [1, 1, 0])), 'bool', [1, 1, 0]],
  ['uint8 in int32_data, packed', tensor(dims(2, 2), type(2), name('u'), bytesField(5, [0, 1, ...varint(200), ...varint(255)])), 'uint8', [0, 1, 200, 255]],
  ['float16 bits in int32_data', tensor(dims(4), type(10), name('h'), bytesField(5, [0x3c00, 0xc000, 0x0001, 0x7bff].map(varint).flat())), 'float16', [1, -2, 2 ** -24, 65504]],
  ['float32 in float_data, one value per field', tensor(dims(2), type(1), name('f'), [1.5, -0.25].map((x) => [...key(4, 5), ...f32(x)]).flat()), 'float32', [1.5, -0.25]],
  ['float32 in float_data, packed', tensor(dims(2), type(1), name('f'), bytesField(4, [...f32(3), ...f32(-4)])), 'float32', [3, -4]],
  ['int64 in int64_data, one value per field', tensor(dims(2), type(7), name('i'), [-5, 2 ** 40].map((v) => [...key(7, 0), ...varint(v)]).flat()), 'int64', [-5, 2 ** 40]],
  ['int64 in int64_data, packed', tensor(dims(2), type(7), name('i'), bytesField(7, [...varint(-1), ...varint(7)])), 'int64', [-1, 7]],
  ['float64 in double_data, packed', tensor(dims(2), type(11), name('d'), bytesField(10, [...f64(0.1), ...f64(-2)])), 'float64', [0.1, -2]],
  ['float64 in double_data, one value per field', tensor(dims(1), type(11), name('d'), [...key(10, 1), ...f64(1e-300)]), 'float64', [1e-300]],
  ['float16 in raw_data', tensor(dims(2), type(10), name('h'), bytesField(9, [0x00, 0x3c, 0x00, 0xbc])), 'float16', [1, -1]],
  ['dims packed, no values: an empty tensor', tensor(bytesField(1, [2, 0]), type(1), name('e')), 'float32', []],
];

for (const [what, buf, expectedType, expected] of CASES) {
  test(`TensorProto: ${what}`, () => {
    const t = decodeTensor(buf);
    assert.equal(t.type, expectedType);
    assert.deepEqual(Array.from(numbers(t)), expected);
  });
}

const REFUSED = [
  ['int32 (an element type no bundle uses)', tensor(dims(1), type(6), name('x'), bytesField(5, [1])), /tensor x: unsupported ONNX data type 6 \(int32\); this reader takes/],
  ['bfloat16', tensor(dims(1), type(16), name('x'), bytesField(5, [1])), /unsupported ONNX data type 16 \(bfloat16\)/],
  ['a bool of 2', tensor(dims(1), type(9), name('m'), bytesField(5, [2])), /tensor m: int32_data\[0\] = 2 is not a bool value/],
  ['a uint8 of 256', tensor(dims(1), type(2), name('u'), bytesField(5, varint(256))), /int32_data\[0\] = 256 is not a uint8 value/],
  ['int64 values in float_data', tensor(dims(1), type(7), name('i'), bytesField(4, f32(1))), /tensor i: int64 values in float_data/],
  ['values in raw_data and a typed field', tensor(dims(1), type(1), name('f'), bytesField(9, f32(1)), bytesField(4, f32(1))), /values in both raw_data and float_data/],
  ['external data', tensor(dims(1), type(1), name('f'), [...key(14, 0), 1]), /tensor f: stored in external data/],
  ['segments', tensor(dims(1), type(1), name('f'), bytesField(3, [8, 0])), /stored in segments/],
  ['too few values', tensor(dims(3), type(1), name('f'), bytesField(4, f32(1))), /tensor f: 1 values for shape \[3\]/],
  ['raw_data of a part of an element', tensor(dims(1), type(1), name('f'), bytesField(9, [1, 2, 3])), /raw_data of 3 bytes is not whole float32 elements/],
  ['a length past the end', Buffer.from([...key(9, 2), 50, 1, 2]), /truncated TensorProto/],
];

for (const [what, buf, message] of REFUSED) {
  test(`TensorProto refused: ${what}`, () => assert.throws(() => decodeTensor(buf), message));
}

test('half precision bits decode to the numbers they stand for', () => {
  const cases = [[0x0000, 0], [0x3c00, 1], [0xc000, -2], [0x3555, 0.333251953125], [0x7bff, 65504], [0x0400, 2 ** -14],
    [0x03ff, 1023 * 2 ** -24], [0x7c00, Infinity], [0xfc00, -Infinity]];
  for (const [bits, value] of cases) assert.equal(halfToNumber(bits), value, bits.toString(16));
  assert.ok(Object.is(halfToNumber(0x8000), -0));
  assert.ok(Number.isNaN(halfToNumber(0x7e00)));
});

test('a manifest the schema refuses is one error naming the first thing wrong, as Python words it', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'attn-manifest-'));
  const sha = '0'.repeat(64);
  const entry = { file: 'a.pb', sha256: sha, name: 'query' };
  const io = { name: 'output', dtype: 'float32', datatype: 'FP32', dims: ['batch'], shape: [-1] };
  const step = (k) => ({ folder: `decode/step_${k}`, new_tokens: 1, past_len: k, inputs: [entry], outputs: [entry] });
  const good = {
    format: 'attn-onnx-bundle/1', name: 'm', model: { file: 'model.onnx', sha256: sha }, inputs: [io], outputs: [io],
    mask_convention: 'nonzero = attend', tolerance: { atol: 1e-5, rtol: 1e-4 },
    test_data_sets: [{ folder: 'test_data_set_0', case: 'c', inputs: [entry], outputs: [entry] }],
    decode: { thread: {}, first_past: { shape: [1, 2, 0, 8] }, steps: [step(0), step(1)] },
  };
  const without = (object, key) => Object.fromEntries(Object.entries(object).filter(([k]) => k !== key));
  const cases = [
    [{ ...good, decode: { ...good.decode, steps: [step(0), without(step(1), 'inputs')] } },
      /manifest\.json is malformed: decode\.steps\[1\] lacks 'inputs'$/],
    [{ ...good, test_data_sets: [{ folder: 'a', case: 'c', inputs: [without(entry, 'sha256')], outputs: [entry] }] },
      /is malformed: test_data_sets\[0\]\.inputs\[0\] lacks 'sha256'$/],
    [{ ...good, test_data_sets: [{ folder: 'a', case: 'c', inputs: [entry], outputs: [] }] },
      /is malformed: test_data_sets\[0\]\.outputs: /],
    [{ ...good, test_data_sets: [] }, /is malformed: test_data_sets: /],
    [{ ...good, test_data_sets: [{ inputs: [entry], outputs: [entry] }] }, /is malformed: test_data_sets\[0\] lacks 'folder'$/],
    [{ ...good, decode: { ...good.decode, steps: [step(0), step(0)] } },
      /is malformed: decode\.steps\[1\]\.folder 'decode\/step_0' is also decode\.steps\[0\]'s$/],
    [{ ...good, tolerance: { atol: 'OVERFLOW', rtol: 0 } }, /is malformed: tolerance\.atol: /], // 1e999: Infinity
    [{ ...good, tolerance: { rtol: 1e-4 } }, /is malformed: tolerance lacks 'atol'$/],
    [{ ...good, decode: { ...good.decode, steps: {} } }, /is malformed: decode\.steps is not a list$/],
  ];
  for (const [manifest, message] of cases) {
    fs.writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify(manifest).replace('"OVERFLOW"', '1e999'));
    assert.throws(() => readManifest(dir), message);
  }
  fs.writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify(good));
  assert.equal(readManifest(dir).decode.steps.length, 2);
});
