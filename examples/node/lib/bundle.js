'use strict';
// Reading an attn-onnx bundle in Node: the manifest, its sha256s, the golden vectors (ONNX TensorProto
// files, decoded here without a protobuf library), and the comparison rule the manifest states.

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const ort = require('onnxruntime-node');

const FORMAT = 'attn-onnx-bundle/1';

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

// The file a manifest path names inside the bundle `root` (a real path), symlinks resolved; null unless the path
// is plain (see plainPath) and its target lies inside the bundle. A target that does not exist is where the path
// would be (the caller finds it missing).
function inside(root, relative) {
  if (!plainPath(relative)) return null;
  let file = path.join(root, relative);
  try {
    file = fs.realpathSync(file);
  } catch {
    // absent: the lexical path
  }
  return file.startsWith(root + path.sep) ? file : null;
}

function readManifest(dir) {
  const file = path.join(dir, 'manifest.json');
  if (!fs.existsSync(file)) throw new BundleError(`${dir} is not a bundle: it has no manifest.json`);
  if (!inside(fs.realpathSync(dir), 'manifest.json')) {
    throw new BundleError(`${file} is outside the bundle: a symlink whose target leaves it`);
  }
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
  if (validate(manifest)) return beyondSchema(manifest);
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

// BundleError naming the manifest unless every set and decode step compares every output of the model
function checkOutputs(dir, manifest, outputs) {
  const problem = outputsProblem(manifest, outputs);
  if (problem) throw new BundleError(`${path.join(dir, 'manifest.json')} is malformed: ${problem}`);
}

// Every file the manifest names, with its sha256: the model, its external weights, every vector set and every
// decode step's vectors. The names of those that are missing or differ.
function changedFiles(dir, manifest) {
  const files = [[manifest.model.file, manifest.model.sha256]];
  if (manifest.model.data) files.push([manifest.model.data.file, manifest.model.data.sha256]); // external weights
  for (const [, set] of vectorSets(manifest)) {
    for (const f of [...set.inputs, ...set.outputs]) files.push([f.file, f.sha256]);
  }
  const root = fs.realpathSync(dir);
  const changed = [];
  for (const [relative, expected] of files) {
    const file = inside(root, relative);
    if (!file) changed.push(`${relative} (outside the bundle)`);
    else if (!fs.existsSync(file) || !fs.statSync(file).isFile()) changed.push(`${relative} (missing)`);
    else {
      const actual = sha256(file);
      if (actual !== expected) {
        changed.push(`${relative} (sha256 ${actual.slice(0, 12)}..., the manifest says ${expected.slice(0, 12)}...)`);
      }
    }
  }
  return changed;
}

// ---- shared: from here to the end mark, this file and examples/web/lib/bundle.mjs hold the same text (the
// rules every verifier applies, docs/bundle-format.md; tests/deploy/test_corpus.py holds them equal) ----------

// A path in the manifest is plain: relative, / between its parts, none of them empty, . or .., no backslash or NUL
function plainPath(relative) {
  const parts = relative.split('/');
  return !relative.includes('\\') && !relative.includes('\0') && parts.every((p) => !['', '.', '..'].includes(p));
}

// The rules the schema cannot state: finite tolerances, and a folder of its own for every set and decode step.
function beyondSchema(manifest) {
  for (const key of ['atol', 'rtol']) {
    if (!Number.isFinite(manifest.tolerance[key])) return `tolerance.${key} is not a finite number`;
  }
  const seen = new Map();
  for (const [where, entry] of vectorSets(manifest)) {
    if (seen.has(entry.folder)) return `${where}.folder '${entry.folder}' is also ${seen.get(entry.folder)}'s`;
    seen.set(entry.folder, where);
  }
  return null;
}

// Every test set and decode step, with where it is in the manifest (test_data_sets[2])
function vectorSets(manifest) {
  return [...manifest.test_data_sets.map((s, k) => [`test_data_sets[${k}]`, s]),
    ...((manifest.decode && manifest.decode.steps) || []).map((s, k) => [`decode.steps[${k}]`, s])];
}

// How the manifest fails to compare every output of the model (`outputs`, its names in order), or null: its
// outputs list names them in order, and every set and decode step names each once and nothing else; the decode
// thread takes its present_* from them.
function outputsProblem(manifest, outputs) {
  const listed = manifest.outputs.map((o) => o.name);
  const quoted = (names) => names.map((n) => `'${n}'`).join(', ');
  if (listed.length !== outputs.length || listed.some((n, k) => n !== outputs[k])) {
    return `outputs names ${quoted(listed)}; the model gives ${quoted(outputs)}`;
  }
  for (const [where, entry] of vectorSets(manifest)) {
    const names = entry.outputs.map((f) => f.name);
    for (const name of outputs) {
      if (!names.includes(name)) return `${where}.outputs lacks the model's output '${name}'`;
    }
    for (const name of names) {
      if (!outputs.includes(name)) return `${where}.outputs names '${name}', which the model does not give`;
      if (names.indexOf(name) !== names.lastIndexOf(name)) return `${where}.outputs names '${name}' more than once`;
    }
  }
  for (const present of Object.keys((manifest.decode && manifest.decode.thread) || {})) {
    if (!outputs.includes(present)) return `decode.thread names '${present}', which the model does not give`;
  }
  return null;
}

// A decode step as every verifier names it: decode/step_1 (1 new, past 4); a static cache's past_len, one per
// sequence, as past [4, 0]
function stepLabel(step) {
  const past = Array.isArray(step.past_len) ? `[${step.past_len.join(', ')}]` : step.past_len;
  return `${step.folder} (${step.new_tokens} new, past ${past})`;
}

// An output's valid_lengths (a static cache's presents): only [b, :, :lengths[b], ...] of each batch row b is
// compared (axis 2), the rest is unspecified. Why the lengths do not fit the expected tensor's dims, or null.
function validLengthsProblem(lengths, dims) {
  if (dims.length < 3 || dims[0] !== lengths.length || lengths.some((n) => n > dims[2])) {
    return `valid_lengths [${lengths.join(',')}] do not fit shape [${dims.join(',')}]`;
  }
  return null;
}

// Whether element i (row-major) of a tensor of `dims` is compared: every one without lengths; with them, those
// whose position on axis 2 is below their batch row's length
function comparedAt(dims, lengths) {
  if (!lengths) return () => true;
  const inner = dims.slice(3).reduce((a, b) => a * b, 1);
  const row = dims.slice(1).reduce((a, b) => a * b, 1);
  return (i) => Math.floor(i / inner) % dims[2] < lengths[Math.floor(i / row)];
}

// ONNX TensorProto.DataType -> onnxruntime's tensor type, the typed array that holds it, its size, the field that
// holds its values where raw_data does not, and the range int32_data may hold. float16 is held as its IEEE half bit
// patterns in a Uint16Array (what onnxruntime takes in JavaScript, which has no Float16Array everywhere);
// `numbers` turns them into numbers.
const ONNX_TYPES = {
  1: { type: 'float32', array: Float32Array, bytes: 4, field: 'float_data' },
  2: { type: 'uint8', array: Uint8Array, bytes: 1, field: 'int32_data', range: [0, 255] },
  7: { type: 'int64', array: BigInt64Array, bytes: 8, field: 'int64_data' },
  9: { type: 'bool', array: Uint8Array, bytes: 1, field: 'int32_data', range: [0, 1] }, // one byte, 0 or 1
  10: { type: 'float16', array: Uint16Array, bytes: 2, field: 'int32_data', range: [0, 0xffff] },
  11: { type: 'float64', array: Float64Array, bytes: 8, field: 'double_data' },
};
// The element types ONNX knows but this reader refuses, by name, for a clear message
const ONNX_TYPE_NAMES = { 3: 'int8', 4: 'uint16', 5: 'int16', 6: 'int32', 8: 'string', 12: 'uint32', 13: 'uint64',
  14: 'complex64', 15: 'complex128', 16: 'bfloat16', 17: 'float8e4m3fn', 18: 'float8e4m3fnuz', 19: 'float8e5m2',
  20: 'float8e5m2fnuz', 21: 'uint4', 22: 'int4', 23: 'float4e2m1' };

// --- TensorProto, decoded without a protobuf library, by the rules every verifier applies. The fields read:
// dims (1), data_type (2), segment (3), float_data (4), int32_data (5), string_data (6), int64_data (7), name (8),
// raw_data (9), double_data (10), uint64_data (11), external_data (13), data_location (14); each repeated field
// packed or not. Where the values live, as ONNX stores them:
//   raw_data                          any type: little-endian elements (what numpy_helper.from_array writes,
//                                     and so what a bundle's vectors use)
//   float_data                        float32
//   double_data                       float64
//   int64_data                        int64
//   int32_data                        bool (0..1), uint8 (0..255), and float16 as its 16-bit patterns (0..65535),
//                                     each value read as protobuf reads an int32 (its low 32 bits)
// Refused with a message naming the tensor: segments, external data, any other element type, a negative dim, dims
// whose product passes 2^63-1, values in a field that is not the type's, in raw_data and a typed field both, a
// bool byte other than 0 or 1, a count of values that is not the product of the dims.

const MAX_ELEMENTS = 2n ** 63n - 1n;
const VALUE_FIELDS = ['float_data', 'int32_data', 'string_data', 'int64_data', 'double_data', 'uint64_data'];

function readVarint(buf, pos) {
  let result = 0n;
  let shift = 0n;
  for (;;) {
    if (pos >= buf.length) throw new BundleError('truncated TensorProto');
    const byte = buf[pos++];
    result |= BigInt(byte & 0x7f) << shift;
    if ((byte & 0x80) === 0) return [BigInt.asUintN(64, result), pos];
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

// The values of a packed fixed-width field: whole elements only
function readFixed(view, start, length, width, read, out, field) {
  if (length % width) throw new BundleError(`malformed TensorProto: packed ${field} of ${length} bytes`);
  for (let p = 0; p < length; p += width) out.push(read(view, start + p));
}
const float32At = (view, p) => view.getFloat32(p, true);
const float64At = (view, p) => view.getFloat64(p, true);

function decodeTensor(buf) {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const dims = [];
  const fields = Object.fromEntries(VALUE_FIELDS.map((f) => [f, []]));
  let dataType = 0;
  let name = '';
  let raw = null;
  let segments = false;
  let external = false; // external_data (13)
  let location = 0n; // data_location (14): 1 is EXTERNAL
  let pos = 0;
  const asInt32 = (v) => Number(BigInt.asIntN(32, v));
  const asInt64 = (v) => BigInt.asIntN(64, v);
  while (pos < buf.length) {
    let key;
    [key, pos] = readVarint(buf, pos);
    const field = Number(key >> 3n);
    const wire = Number(key & 7n);
    if (wire === 0) {
      let value;
      [value, pos] = readVarint(buf, pos);
      if (field === 1) dims.push(asInt64(value));
      else if (field === 2) dataType = asInt32(value);
      else if (field === 5) fields.int32_data.push(asInt32(value));
      else if (field === 7) fields.int64_data.push(asInt64(value));
      else if (field === 11) fields.uint64_data.push(value);
      else if (field === 14) location = value;
    } else if (wire === 2) {
      let length;
      [length, pos] = readVarint(buf, pos);
      if (length > BigInt(buf.length - pos)) throw new BundleError('truncated TensorProto');
      const end = pos + Number(length);
      const bytes = buf.subarray(pos, end);
      if (field === 8) name = new TextDecoder().decode(bytes);
      else if (field === 9) raw = bytes;
      else if (field === 3) segments = true;
      else if (field === 13) external = true;
      else if (field === 6) fields.string_data.push(bytes);
      else if (field === 1) readVarints(bytes, dims, asInt64);
      else if (field === 5) readVarints(bytes, fields.int32_data, asInt32);
      else if (field === 7) readVarints(bytes, fields.int64_data, asInt64);
      else if (field === 11) readVarints(bytes, fields.uint64_data, (v) => v);
      else if (field === 4) readFixed(view, pos, bytes.length, 4, float32At, fields.float_data, 'float_data');
      else if (field === 10) readFixed(view, pos, bytes.length, 8, float64At, fields.double_data, 'double_data');
      pos = end;
    } else if (wire === 5) {
      if (pos + 4 > buf.length) throw new BundleError('truncated TensorProto');
      if (field === 4) fields.float_data.push(float32At(view, pos));
      pos += 4;
    } else if (wire === 1) {
      if (pos + 8 > buf.length) throw new BundleError('truncated TensorProto');
      if (field === 10) fields.double_data.push(float64At(view, pos));
      pos += 8;
    } else {
      throw new BundleError(`unsupported protobuf wire type ${wire} in a TensorProto`);
    }
  }
  const refuse = (why) => new BundleError(`tensor ${name}: ${why}`);
  if (segments) throw refuse('stored in segments, which this reader does not take');
  if (external || location === 1n) throw refuse('stored in external data, which this reader does not take');
  const info = ONNX_TYPES[dataType];
  if (!info) {
    const known = ONNX_TYPE_NAMES[dataType] ? ` (${ONNX_TYPE_NAMES[dataType]})` : '';
    throw refuse(`unsupported ONNX data type ${dataType}${known}; this reader takes ` +
      `${Object.values(ONNX_TYPES).map((t) => t.type).join(', ')}`);
  }
  let count = 1n; // each dim, and the product in order, before anything is allocated
  for (let k = 0; k < dims.length; k++) {
    if (dims[k] < 0n) throw refuse(`dims[${k}] = ${dims[k]} is negative`);
    count *= dims[k];
    if (count > MAX_ELEMENTS) throw refuse(`dims [${dims.join(',')}] hold more than 2^63-1 elements`);
  }
  const typed = info.field;
  const stray = VALUE_FIELDS.filter((f) => f !== typed && fields[f].length);
  if (stray.length) throw refuse(`${info.type} values in ${stray.join(', ')}`);
  const values = fields[typed];
  let found;
  if (raw) {
    if (values.length) throw refuse(`values in both raw_data and ${typed}`);
    if (raw.length % info.bytes) throw refuse(`raw_data of ${raw.length} bytes is not whole ${info.type} elements`);
    found = raw.length / info.bytes;
    if (info.type === 'bool') {
      const bad = raw.findIndex((b) => b > 1);
      if (bad >= 0) throw refuse(`raw_data[${bad}] = ${raw[bad]} is not a bool value`);
    }
  } else {
    if (info.range) {
      const [low, high] = info.range;
      const bad = values.findIndex((v) => v < low || v > high);
      if (bad >= 0) throw refuse(`int32_data[${bad}] = ${values[bad]} is not a ${info.type} value`);
    }
    found = values.length;
  }
  if (BigInt(found) !== count) throw refuse(`${found} values for shape [${dims.join(',')}]`);
  let data;
  if (raw) {
    const copy = new ArrayBuffer(raw.length); // aligned for the typed array
    new Uint8Array(copy).set(raw);
    data = new info.array(copy);
  } else {
    data = info.array.from(values);
  }
  return { name, type: info.type, dims: dims.map(Number), data };
}

// ---- shared: end -----------------------------------------------------------------------------------------------

// A golden vector file, decoded; BundleError naming the file for anything the rules refuse
function loadTensor(file) {
  try {
    return decodeTensor(fs.readFileSync(file));
  } catch (err) {
    if (err instanceof BundleError) throw new BundleError(`${file}: ${err.message}`);
    throw err;
  }
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
// float16 values are compared as the numbers they stand for, in float64. With `lengths` (the output's
// valid_lengths), only each batch row's valid part is compared.
function compare(actual, expected, tolerance, lengths = null) {
  const shape = Array.from(actual.dims);
  if (shape.join(',') !== expected.dims.join(',')) {
    return { passed: false, maxAbs: Infinity, reason: `shape [${shape}] != [${expected.dims}]` };
  }
  if (actual.type !== expected.type) {
    return { passed: false, maxAbs: Infinity, reason: `type ${actual.type} != ${expected.type}` };
  }
  const misfit = lengths && validLengthsProblem(lengths, expected.dims);
  if (misfit) return { passed: false, maxAbs: Infinity, reason: misfit };
  const compared = comparedAt(expected.dims, lengths);
  const a = numbers(actual);
  const e = numbers(expected);
  let maxAbs = 0;
  let needed = 0;
  let nonfinite = 0;
  for (let i = 0; i < e.length; i++) {
    if (!compared(i)) continue; // beyond the row's valid length: unspecified
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
  BundleError, FORMAT, changedFiles, checkOutputs, compare, comparedAt, decodeTensor, halfToNumber, inside, loadTensor,
  numbers, outputsProblem, readManifest, sha256, stepLabel, toOrt, validLengthsProblem,
};
