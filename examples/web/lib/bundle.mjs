// Reading an attn-onnx bundle in the browser: the manifest, its sha256s (WebCrypto), the golden vectors (ONNX
// TensorProto files, decoded here without a protobuf library) and the comparison rule the manifest states.
// The same rules as examples/node/lib/bundle.js and deploy/bundle.py, with fetch and DataView for fs and Buffer.

export const FORMAT = 'attn-onnx-bundle/1';

export class BundleError extends Error {}

// ONNX TensorProto.DataType -> onnxruntime-web's tensor type and the typed array that holds it
const ONNX_TYPES = {
  1: { type: 'float32', array: Float32Array },
  2: { type: 'uint8', array: Uint8Array },
  7: { type: 'int64', array: BigInt64Array },
  9: { type: 'bool', array: Uint8Array }, // one byte per element, 0 or 1
  10: { type: 'float16', array: Uint16Array }, // the bits; onnxruntime-web takes float16 so
  11: { type: 'float64', array: Float64Array },
};

// Fetch `relative` inside the bundle at `base` (a URL ending in /); BundleError when it is missing.
export async function fetchBytes(base, relative) {
  if (relative.split('/').includes('..') || relative.startsWith('/')) {
    throw new BundleError(`${relative} (outside the bundle)`);
  }
  const response = await fetch(new URL(relative, base));
  if (!response.ok) throw new BundleError(`${relative} (missing: HTTP ${response.status})`);
  return new Uint8Array(await response.arrayBuffer());
}

export async function readManifest(base) {
  let response;
  try {
    response = await fetch(new URL('manifest.json', base));
  } catch (err) {
    throw new BundleError(`cannot fetch ${base}manifest.json: ${err.message}`);
  }
  if (!response.ok) throw new BundleError(`${base} is not a bundle: manifest.json is missing (HTTP ${response.status})`);
  let manifest;
  try {
    manifest = JSON.parse(await response.text());
  } catch (err) {
    throw new BundleError(`manifest.json is not valid JSON: ${err.message}`);
  }
  if (!manifest || manifest.format !== FORMAT) {
    throw new BundleError(`manifest.json is not an attn-onnx bundle manifest (format is not ${FORMAT})`);
  }
  return manifest;
}

// Every file the manifest names (model, external weights, vectors, decode steps) with its sha256.
export function manifestFiles(manifest) {
  const files = [[manifest.model.file, manifest.model.sha256]];
  if (manifest.model.data) files.push([manifest.model.data.file, manifest.model.data.sha256]);
  const sets = [...manifest.test_data_sets, ...((manifest.decode && manifest.decode.steps) || [])];
  for (const set of sets) for (const f of [...set.inputs, ...set.outputs]) files.push([f.file, f.sha256]);
  return files;
}

export async function sha256(bytes) {
  const digest = await crypto.subtle.digest('SHA-256', bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

// Fetch and hash every file; throws BundleError naming each one that is missing or differs, else returns
// the bytes by relative path (so nothing is fetched twice, and what runs is what was hashed).
export async function fetchVerified(base, manifest) {
  const bytes = new Map();
  const changed = [];
  for (const [relative, expected] of manifestFiles(manifest)) {
    let data;
    try {
      data = await fetchBytes(base, relative);
    } catch (err) {
      if (!(err instanceof BundleError)) throw err;
      changed.push(err.message);
      continue;
    }
    const actual = await sha256(data);
    if (actual !== expected) {
      changed.push(`${relative} (sha256 ${actual.slice(0, 12)}..., the manifest says ${expected.slice(0, 12)}...)`);
    }
    bytes.set(relative, data);
  }
  if (changed.length) throw new BundleError(`the bundle was changed after it was written: ${changed.join('; ')}`);
  return bytes;
}

// --- TensorProto: dims (1), data_type (2), float_data (4), int64_data (7), name (8), raw_data (9)

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

export function decodeTensor(buf, file = 'tensor') {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
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
      if (end > buf.length) throw new BundleError(`${file}: truncated TensorProto`);
      const bytes = buf.subarray(pos, end);
      if (field === 8) name = new TextDecoder().decode(bytes);
      else if (field === 9) raw = bytes;
      else if (field === 1 || field === 7) { // packed int64s
        let p = 0;
        while (p < bytes.length) {
          let v;
          [v, p] = readVarint(bytes, p);
          (field === 1 ? dims : int64s).push(BigInt.asIntN(64, v));
        }
      } else if (field === 4) {
        for (let p = 0; p + 4 <= bytes.length; p += 4) floats.push(view.getFloat32(pos + p, true));
      }
      pos = end;
    } else if (wire === 5) {
      if (field === 4) floats.push(view.getFloat32(pos, true));
      pos += 4;
    } else if (wire === 1) {
      pos += 8;
    } else {
      throw new BundleError(`${file}: unsupported protobuf wire type ${wire} in a TensorProto`);
    }
  }
  const info = ONNX_TYPES[dataType];
  if (!info) {
    throw new BundleError(`${file}: onnxruntime-web cannot take ONNX data type ${dataType}` +
                          (dataType === 16 ? ' (bfloat16: it has no such tensor type)' : ''));
  }
  const shape = dims.map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  let data;
  if (raw) {
    const copy = new ArrayBuffer(raw.length); // aligned for the typed array
    new Uint8Array(copy).set(raw);
    data = new info.array(copy);
  } else if (info.type === 'float32') data = Float32Array.from(floats);
  else if (info.type === 'int64') data = BigInt64Array.from(int64s);
  else throw new BundleError(`${file}: tensor ${name} has no raw_data`);
  if (data.length !== count) throw new BundleError(`${file}: ${data.length} values for shape [${shape}]`);
  return { name, type: info.type, dims: shape, data };
}

// A float16's bits as a number
export function halfToFloat(bits) {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

// A tensor's elements as numbers (float16 from its bits, where it comes as a Uint16Array)
export function numbers(tensor) {
  const { type, data } = tensor;
  if (type === 'float16' && data instanceof Uint16Array) return Float64Array.from(data, halfToFloat);
  return Float64Array.from(data, Number);
}

// The manifest's rule: |actual - expected| <= atol + rtol * |expected| everywhere, no NaN or Inf, same shape.
// Also the largest |actual - expected| at each position of the output's second axis (for the error picture).
export function compare(actual, expected, tolerance) {
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
  const errors = new Float64Array(a.length);
  for (let i = 0; i < e.length; i++) {
    if (!Number.isFinite(a[i])) { nonfinite++; errors[i] = Infinity; continue; }
    const diff = Math.abs(a[i] - e[i]);
    errors[i] = diff;
    maxAbs = Math.max(maxAbs, diff);
    needed = Math.max(needed, diff - tolerance.rtol * Math.abs(e[i]));
  }
  if (nonfinite) return { passed: false, maxAbs: Infinity, errors, reason: `${nonfinite} NaN/Inf values` };
  const passed = needed <= tolerance.atol;
  return {
    passed, maxAbs, errors,
    reason: passed ? '' : `max_abs=${maxAbs.toPrecision(3)} beyond atol=${tolerance.atol}, rtol=${tolerance.rtol}`,
  };
}
