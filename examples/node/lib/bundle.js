'use strict';
// Reading an attn-onnx bundle in Node: the manifest, its sha256s, the golden vectors (ONNX TensorProto
// files, decoded here without a protobuf library), and the comparison rule the manifest states.

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const ort = require('onnxruntime-node');

const FORMAT = 'attn-onnx-bundle/1';

// ONNX TensorProto.DataType -> the onnxruntime-node tensor type and the typed array that holds it. float16 is
// held as its IEEE half bit patterns in a Uint16Array (what onnxruntime-node takes where Node has no
// Float16Array); `numbers` turns them into numbers.
const ONNX_TYPES = {
  1: { type: 'float32', array: Float32Array, bytes: 4 },
  2: { type: 'uint8', array: Uint8Array, bytes: 1 },
  7: { type: 'int64', array: BigInt64Array, bytes: 8 },
  9: { type: 'bool', array: Uint8Array, bytes: 1 }, // bool is one byte per element, 0 or 1
  10: { type: 'float16', array: Uint16Array, bytes: 2 },
  11: { type: 'float64', array: Float64Array, bytes: 8 },
};
// The element types ONNX knows but this reader refuses, by name, for a clear message
const ONNX_TYPE_NAMES = { 3: 'int8', 4: 'uint16', 5: 'int16', 6: 'int32', 8: 'string', 12: 'uint32', 13: 'uint64',
  14: 'complex64', 15: 'complex128', 16: 'bfloat16', 17: 'float8e4m3fn', 18: 'float8e4m3fnuz', 19: 'float8e5m2',
  20: 'float8e5m2fnuz', 21: 'uint4', 22: 'int4', 23: 'float4e2m1' };

class BundleError extends Error {}

function sha256(file) { // in 16 MiB chunks: external weights may pass Node's largest Buffer
  const hash = crypto.createHash('sha256');
  const chunk = Buffer.alloc(16 * 1024 * 1024);
  const fd = fs.openSync(file, 'r');
  try {
    for (let n; (n = fs.readSync(fd, chunk, 0, chunk.length, null)) > 0;) hash.update(chunk.subarray(0, n));
  } finally {
    fs.closeSync(fd);
  }
  return hash.digest('hex');
}

function readManifest(dir) {
  const file = path.join(dir, 'manifest.json');
  if (!fs.existsSync(file)) throw new BundleError(`${dir} is not a bundle: it has no manifest.json`);
  let manifest;
  try {
    manifest = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new BundleError(`${file} is not valid JSON: ${err.message}`);
  }
  if (!manifest || manifest.format !== FORMAT) {
    throw new BundleError(`${file} is not an attn-onnx bundle manifest (format is not ${FORMAT})`);
  }
  const problem = manifestProblem(manifest);
  if (problem) throw new BundleError(`${file} is malformed: ${problem}`);
  return manifest;
}

// The bundle format's JSON Schema, the one Python's read_manifest validates against too (deploy/ in the
// repository; ATTN_ONNX_MANIFEST_SCHEMA points at a copy where this example was moved out of it).
const SCHEMA_FILE = process.env.ATTN_ONNX_MANIFEST_SCHEMA
  || path.join(__dirname, '..', '..', '..', 'deploy', 'manifest.schema.json');
let validate;

// The first way the manifest breaks the schema, worded as Python's reader words it
// (decode.steps[1] lacks 'inputs'), or null.
function manifestProblem(manifest) {
  if (!validate) {
    const Ajv2020 = require('ajv/dist/2020');
    validate = new Ajv2020({ allErrors: true, strict: false }).compile(JSON.parse(fs.readFileSync(SCHEMA_FILE, 'utf8')));
  }
  if (validate(manifest)) return null;
  const depth = (e) => (e.instancePath.match(/\//g) || []).length;
  const error = [...validate.errors].sort((a, b) => depth(a) - depth(b) || (a.instancePath < b.instancePath ? -1 : 1))[0];
  const where = error.instancePath.split('/').slice(1)
    .map((p) => (/^\d+$/.test(p) ? `[${p}]` : `.${p}`)).join('').replace(/^\./, '') || 'the manifest';
  if (error.keyword === 'required') return `${where} lacks '${error.params.missingProperty}'`;
  if (error.keyword === 'type') {
    const kinds = { array: 'a list', object: 'an object', number: 'a number', integer: 'an integer', string: 'a string' };
    return `${where} is not ${[].concat(error.params.type).map((t) => kinds[t] || t).join(' or ')}`;
  }
  return `${where}: ${error.message}`;
}

// Every file the manifest names, with its sha256: the model, its external weights, every vector set and every
// decode step's vectors. The names of those that are missing or differ.
function changedFiles(dir, manifest) {
  const files = [[manifest.model.file, manifest.model.sha256]];
  if (manifest.model.data) files.push([manifest.model.data.file, manifest.model.data.sha256]); // external weights
  const vectorSets = [...manifest.test_data_sets, ...((manifest.decode && manifest.decode.steps) || [])];
  for (const set of vectorSets) {
    for (const f of [...set.inputs, ...set.outputs]) files.push([f.file, f.sha256]);
  }
  const root = path.resolve(dir);
  const changed = [];
  for (const [relative, expected] of files) {
    const file = path.resolve(root, relative);
    if (!file.startsWith(root + path.sep)) changed.push(`${relative} (outside the bundle)`);
    else if (!fs.existsSync(file)) changed.push(`${relative} (missing)`);
    else {
      const actual = sha256(file);
      if (actual !== expected) {
        changed.push(`${relative} (sha256 ${actual.slice(0, 12)}..., the manifest says ${expected.slice(0, 12)}...)`);
      }
    }
  }
  return changed;
}

// --- TensorProto, decoded without a protobuf library. The fields read: dims (1), data_type (2), float_data (4),
// int32_data (5), int64_data (7), name (8), raw_data (9), double_data (10), each repeated field packed or not.
// Where the values live, as ONNX stores them:
//   raw_data                          any type: little-endian elements (what numpy_helper.from_array writes,
//                                     and so what a bundle's vectors use)
//   float_data                        float32
//   double_data                       float64
//   int64_data                        int64
//   int32_data                        bool, uint8, and float16 as its 16-bit patterns (onnx.helper.make_tensor)
// Refused with a message naming the tensor: segments (3), external data (13, 14), any other element type.

function readVarint(buf, pos) {
  let result = 0n;
  let shift = 0n;
  for (;;) {
    if (pos >= buf.length) throw new BundleError('truncated TensorProto');
    const byte = buf[pos++];
    result |= BigInt(byte & 0x7f) << shift;
    if ((byte & 0x80) === 0) return [result, pos];
    shift += 7n;
    if (shift > 63n) throw new BundleError('malformed TensorProto: a varint longer than 10 bytes');
  }
}

// The values of a repeated varint field, packed (wire type 2) or one at a time (wire type 0)
function readVarints(bytes, out, convert) {
  for (let p = 0; p < bytes.length;) {
    let v;
    [v, p] = readVarint(bytes, p);
    out.push(convert(v));
  }
}

// The field that holds each element type's values when raw_data is absent, and the range int32_data may hold
const TYPED_FIELDS = {
  float32: 'float_data', float64: 'double_data', int64: 'int64_data',
  bool: 'int32_data', uint8: 'int32_data', float16: 'int32_data',
};
const INT32_RANGE = { bool: [0, 1], uint8: [0, 255], float16: [0, 0xffff] };

function decodeTensor(buf) {
  const dims = [];
  const fields = { float_data: [], int32_data: [], int64_data: [], double_data: [] };
  let dataType = 0;
  let name = '';
  let raw = null;
  let pos = 0;
  const asInt32 = (v) => Number(BigInt.asIntN(32, v));
  const asInt64 = (v) => BigInt.asIntN(64, v);
  while (pos < buf.length) {
    let key;
    [key, pos] = readVarint(buf, pos);
    const field = Number(key >> 3n);
    const wire = Number(key & 7n);
    if (field === 3) throw new BundleError(`tensor ${name || '?'}: stored in segments, which this reader does not take`);
    if (field === 13 || field === 14) {
      throw new BundleError(`tensor ${name || '?'}: stored in external data, which this reader does not take`);
    }
    if (wire === 0) {
      let value;
      [value, pos] = readVarint(buf, pos);
      if (field === 1) dims.push(asInt64(value));
      else if (field === 2) dataType = Number(value);
      else if (field === 5) fields.int32_data.push(asInt32(value));
      else if (field === 7) fields.int64_data.push(asInt64(value));
    } else if (wire === 2) {
      let length;
      [length, pos] = readVarint(buf, pos);
      const end = pos + Number(length);
      if (end > buf.length) throw new BundleError('truncated TensorProto');
      const bytes = buf.subarray(pos, end);
      if (field === 8) name = bytes.toString('utf8');
      else if (field === 9) raw = bytes;
      else if (field === 1) readVarints(bytes, dims, asInt64);
      else if (field === 5) readVarints(bytes, fields.int32_data, asInt32);
      else if (field === 7) readVarints(bytes, fields.int64_data, asInt64);
      else if (field === 4) {
        for (let p = 0; p + 4 <= bytes.length; p += 4) fields.float_data.push(bytes.readFloatLE(p));
      } else if (field === 10) {
        for (let p = 0; p + 8 <= bytes.length; p += 8) fields.double_data.push(bytes.readDoubleLE(p));
      }
      pos = end;
    } else if (wire === 5) {
      if (pos + 4 > buf.length) throw new BundleError('truncated TensorProto');
      if (field === 4) fields.float_data.push(buf.readFloatLE(pos));
      pos += 4;
    } else if (wire === 1) {
      if (pos + 8 > buf.length) throw new BundleError('truncated TensorProto');
      if (field === 10) fields.double_data.push(buf.readDoubleLE(pos));
      pos += 8;
    } else {
      throw new BundleError(`unsupported protobuf wire type ${wire} in a TensorProto`);
    }
  }
  const info = ONNX_TYPES[dataType];
  if (!info) {
    const known = ONNX_TYPE_NAMES[dataType] ? ` (${ONNX_TYPE_NAMES[dataType]})` : '';
    throw new BundleError(`tensor ${name}: unsupported ONNX data type ${dataType}${known}; this reader takes ` +
      `${Object.values(ONNX_TYPES).map((t) => t.type).join(', ')}`);
  }
  const shape = dims.map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  const typed = TYPED_FIELDS[info.type];
  const stray = Object.keys(fields).filter((f) => f !== typed && fields[f].length);
  if (stray.length) throw new BundleError(`tensor ${name}: ${info.type} values in ${stray.join(', ')}`);
  const values = fields[typed];
  let data;
  if (raw && values.length) throw new BundleError(`tensor ${name}: values in both raw_data and ${typed}`);
  if (raw) {
    if (raw.length % info.bytes) {
      throw new BundleError(`tensor ${name}: raw_data of ${raw.length} bytes is not whole ${info.type} elements`);
    }
    const copy = new ArrayBuffer(raw.length); // aligned for the typed array
    new Uint8Array(copy).set(raw);
    data = new info.array(copy);
  } else if (typed === 'int32_data') {
    const [low, high] = INT32_RANGE[info.type];
    const bad = values.findIndex((v) => v < low || v > high);
    if (bad >= 0) throw new BundleError(`tensor ${name}: int32_data[${bad}] = ${values[bad]} is not a ${info.type} value`);
    data = info.array.from(values);
  } else {
    data = info.array.from(values);
  }
  if (data.length !== count) throw new BundleError(`tensor ${name}: ${data.length} values for shape [${shape}]`);
  return { name, type: info.type, dims: shape, data };
}

function loadTensor(file) {
  return decodeTensor(fs.readFileSync(file));
}

function toOrt(t) {
  return new ort.Tensor(t.type, t.data, t.dims);
}

// IEEE 754 half precision bits -> the number they stand for
function halfToNumber(bits) {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24; // subnormal, or zero
  if (exponent === 0x1f) return fraction ? NaN : sign * Infinity;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}

// A tensor's values as numbers: float16 bit patterns decoded (a Float16Array, where Node has one, read through
// its bits too), int64 through Number.
function numbers(t) {
  if (t.type === 'float16') {
    const bits = new Uint16Array(t.data.buffer, t.data.byteOffset, t.data.length);
    return Float64Array.from(bits, halfToNumber);
  }
  if (t.type === 'int64') return Float64Array.from(t.data, Number);
  return t.data;
}

// The manifest's rule: |actual - expected| <= atol + rtol * |expected| everywhere, no NaN or Inf, same shape.
// float16 values are compared as the numbers they stand for, in float64.
function compare(actual, expected, tolerance) {
  const shape = Array.from(actual.dims);
  if (shape.join(',') !== expected.dims.join(',')) {
    return { passed: false, maxAbs: Infinity, reason: `shape [${shape}] != [${expected.dims}]` };
  }
  if (actual.type !== expected.type) {
    return { passed: false, maxAbs: Infinity, reason: `type ${actual.type} != ${expected.type}` };
  }
  const a = numbers(actual);
  const e = numbers(expected);
  let maxAbs = 0;
  let needed = 0;
  let nonfinite = 0;
  for (let i = 0; i < e.length; i++) {
    if (!Number.isFinite(a[i])) { nonfinite++; continue; }
    const diff = Math.abs(a[i] - e[i]);
    maxAbs = Math.max(maxAbs, diff);
    needed = Math.max(needed, diff - tolerance.rtol * Math.abs(e[i]));
  }
  if (nonfinite) return { passed: false, maxAbs: Infinity, reason: `${nonfinite} NaN/Inf values` };
  const passed = needed <= tolerance.atol;
  return { passed, maxAbs, reason: passed ? '' : `max_abs=${maxAbs.toPrecision(3)} beyond atol=${tolerance.atol}, rtol=${tolerance.rtol}` };
}

module.exports = {
  BundleError, FORMAT, changedFiles, compare, decodeTensor, halfToNumber, loadTensor, numbers, readManifest, sha256, toOrt,
};
