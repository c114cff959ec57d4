'use strict';
// Reading an attn-onnx bundle in Node: the manifest, its sha256s, the golden vectors (ONNX TensorProto
// files, decoded here without a protobuf library), and the comparison rule the manifest states.

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const ort = require('onnxruntime-node');

const FORMAT = 'attn-onnx-bundle/1';

// ONNX TensorProto.DataType -> the onnxruntime-node tensor type and the typed array that holds it
const ONNX_TYPES = {
  1: { type: 'float32', array: Float32Array, bytes: 4 },
  2: { type: 'uint8', array: Uint8Array, bytes: 1 },
  7: { type: 'int64', array: BigInt64Array, bytes: 8 },
  9: { type: 'bool', array: Uint8Array, bytes: 1 }, // bool is one byte per element, 0 or 1
  11: { type: 'float64', array: Float64Array, bytes: 8 },
};

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
  return manifest;
}

// Every file the manifest names, with its sha256; the names of those that are missing or differ.
function changedFiles(dir, manifest) {
  const files = [[manifest.model.file, manifest.model.sha256]];
  if (manifest.model.data) files.push([manifest.model.data.file, manifest.model.data.sha256]); // external weights
  for (const set of manifest.test_data_sets) {
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

// --- TensorProto: dims (1), data_type (2), float_data (4), int32_data (5), int64_data (7), name (8), raw_data (9)

function readVarint(buf, pos) {
  let result = 0n;
  let shift = 0n;
  for (;;) {
    if (pos >= buf.length) throw new BundleError('truncated TensorProto');
    const byte = buf[pos++];
    result |= BigInt(byte & 0x7f) << shift;
    if ((byte & 0x80) === 0) return [result, pos];
    shift += 7n;
  }
}

function decodeTensor(buf) {
  const dims = [];
  const int64s = [];
  const floats = [];
  let dataType = 0;
  let name = '';
  let raw = null;
  let pos = 0;
  while (pos < buf.length) {
    let key;
    [key, pos] = readVarint(buf, pos);
    const field = Number(key >> 3n);
    const wire = Number(key & 7n);
    if (wire === 0) {
      let value;
      [value, pos] = readVarint(buf, pos);
      if (field === 1) dims.push(BigInt.asIntN(64, value));
      else if (field === 2) dataType = Number(value);
      else if (field === 7) int64s.push(BigInt.asIntN(64, value));
    } else if (wire === 2) {
      let length;
      [length, pos] = readVarint(buf, pos);
      const end = pos + Number(length);
      const bytes = buf.subarray(pos, end);
      if (field === 8) name = bytes.toString('utf8');
      else if (field === 9) raw = bytes;
      else if (field === 1 || field === 7) { // packed int64s
        let p = 0;
        while (p < bytes.length) {
          let v;
          [v, p] = readVarint(bytes, p);
          (field === 1 ? dims : int64s).push(BigInt.asIntN(64, v));
        }
      } else if (field === 4) {
        for (let p = 0; p + 4 <= bytes.length; p += 4) floats.push(bytes.readFloatLE(p));
      }
      pos = end;
    } else if (wire === 5) {
      if (field === 4) floats.push(buf.readFloatLE(pos));
      pos += 4;
    } else if (wire === 1) {
      pos += 8;
    } else {
      throw new BundleError(`unsupported protobuf wire type ${wire} in a TensorProto`);
    }
  }
  const info = ONNX_TYPES[dataType];
  if (!info) throw new BundleError(`tensor ${name}: unsupported ONNX data type ${dataType}`);
  const shape = dims.map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  let data;
  if (raw) {
    const copy = new ArrayBuffer(raw.length); // aligned for the typed array
    new Uint8Array(copy).set(raw);
    data = new info.array(copy);
  } else if (info.type === 'float32') data = Float32Array.from(floats);
  else if (info.type === 'int64') data = BigInt64Array.from(int64s);
  else throw new BundleError(`tensor ${name}: no raw_data`);
  if (data.length !== count) throw new BundleError(`tensor ${name}: ${data.length} values for shape [${shape}]`);
  return { name, type: info.type, dims: shape, data };
}

function loadTensor(file) {
  return decodeTensor(fs.readFileSync(file));
}

function toOrt(t) {
  return new ort.Tensor(t.type, t.data, t.dims);
}

// The manifest's rule: |actual - expected| <= atol + rtol * |expected| everywhere, no NaN or Inf, same shape.
function compare(actual, expected, tolerance) {
  const shape = Array.from(actual.dims);
  if (shape.join(',') !== expected.dims.join(',')) {
    return { passed: false, maxAbs: Infinity, reason: `shape [${shape}] != [${expected.dims}]` };
  }
  if (actual.type !== expected.type) {
    return { passed: false, maxAbs: Infinity, reason: `type ${actual.type} != ${expected.type}` };
  }
  let maxAbs = 0;
  let needed = 0;
  let nonfinite = 0;
  for (let i = 0; i < expected.data.length; i++) {
    const a = Number(actual.data[i]);
    const e = Number(expected.data[i]);
    if (!Number.isFinite(a)) { nonfinite++; continue; }
    const diff = Math.abs(a - e);
    maxAbs = Math.max(maxAbs, diff);
    needed = Math.max(needed, diff - tolerance.rtol * Math.abs(e));
  }
  if (nonfinite) return { passed: false, maxAbs: Infinity, reason: `${nonfinite} NaN/Inf values` };
  const passed = needed <= tolerance.atol;
  return { passed, maxAbs, reason: passed ? '' : `max_abs=${maxAbs.toPrecision(3)} beyond atol=${tolerance.atol}, rtol=${tolerance.rtol}` };
}

module.exports = { BundleError, FORMAT, changedFiles, compare, decodeTensor, loadTensor, readManifest, sha256, toOrt };
