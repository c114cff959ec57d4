'use strict';
// The Open Inference Protocol's tensors (KServe v2, as Triton serves it): a request's inputs, from JSON values or
// from binary data, into onnxruntime-node tensors; a model's outputs back into JSON values or binary data. Shared
// by the HTTP service (JSON, and Triton's binary tensor data extension) and the gRPC service (typed contents,
// and raw_input_contents / raw_output_contents).
//
// Binary data is little-endian, row-major, without padding; BOOL is one byte, 0 or 1 (not checked: onnxruntime
// takes any nonzero byte as true); FP16 is IEEE half precision and travels as binary only, since JSON has none.
// A binary tensor becomes a typed-array view over the bytes it arrived in, with no per-element work; the bytes
// are copied (one memcpy) only where their offset is not a multiple of the element size.

const ort = require('onnxruntime-node');

const MAX_ELEMENTS = 1 << 27; // per input: 512 MiB of float32; a larger declared shape is refused before any allocation

class RequestError extends Error {
  // status: the HTTP status; grpc: the gRPC status name (INVALID_ARGUMENT, NOT_FOUND, ...)
  constructor(status, message, grpc = status === 404 ? 'NOT_FOUND' : 'INVALID_ARGUMENT') {
    super(message);
    this.status = status;
    this.grpc = grpc;
  }
}

const isNumber = (v) => (typeof v === 'number' ? v : undefined);

// KServe datatype -> onnxruntime-node type, the typed array that holds it, its size, and how a JSON value (HTTP) or
// a gRPC typed-contents field holds its elements. FP16 has neither: binary only.
const DATATYPES = {
  FP32: { type: 'float32', array: Float32Array, bytes: 4, json: isNumber, contents: 'fp32_contents' },
  FP64: { type: 'float64', array: Float64Array, bytes: 8, json: isNumber, contents: 'fp64_contents' },
  FP16: { type: 'float16', array: Uint16Array, bytes: 2, json: null, contents: null },
  BOOL: { type: 'bool', array: Uint8Array, bytes: 1, json: (v) => (typeof v === 'boolean' ? +v : undefined),
    contents: 'bool_contents' },
  UINT8: { type: 'uint8', array: Uint8Array, bytes: 1, json: (v) => (Number.isInteger(v) && v >= 0 && v <= 255 ? v : undefined),
    contents: 'uint_contents' },
  INT64: { type: 'int64', array: BigInt64Array, bytes: 8, json: (v) => (Number.isSafeInteger(v) ? BigInt(v) : undefined),
    contents: 'int64_contents' },
};
const TO_DATATYPE = Object.fromEntries(Object.entries(DATATYPES).map(([k, v]) => [v.type, k]));

// Row-major values of `data`, flat or nested, never deeper than the tensor's rank (iterative: a hostile
// nesting depth cannot overflow the stack), stopping as soon as more values than `limit` appear.
function flatten(data, rank, limit, where) {
  const out = [];
  const stack = [[data, 0, 1]]; // [array, next index, depth]
  while (stack.length) {
    const top = stack[stack.length - 1];
    if (top[1] >= top[0].length) { stack.pop(); continue; }
    const v = top[0][top[1]++];
    if (Array.isArray(v)) {
      if (top[2] + 1 > Math.max(rank, 1)) throw new RequestError(400, `${where}: data is nested deeper than its rank ${rank}`);
      stack.push([v, 0, top[2] + 1]);
    } else {
      out.push(v);
      if (out.length > limit) break;
    }
  }
  return out;
}

// The element count of a request input's declared shape, checked against the model's input (`spec`), before
// anything is allocated. RequestError naming what is wrong.
function checkShape(input, spec) {
  const where = `input '${spec.name}'`;
  if (input.datatype !== spec.datatype) {
    throw new RequestError(400, `${where}: datatype ${JSON.stringify(input.datatype)}, the model takes ${spec.datatype}`);
  }
  const shape = input.shape;
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new RequestError(400, `${where}: shape must be a list of non-negative integers`);
  }
  if (shape.length !== spec.shape.length) {
    throw new RequestError(400,
      `${where}: shape [${shape}] has rank ${shape.length}, the model takes rank ${spec.shape.length} [${spec.shape}]`);
  }
  spec.shape.forEach((d, i) => {
    if (d !== -1 && shape[i] !== d) throw new RequestError(400, `${where}: dim ${i} is ${shape[i]}, the model takes ${d}`);
  });
  const count = shape.reduce((a, b) => a * b, 1);
  if (count > MAX_ELEMENTS) {
    throw new RequestError(400, `${where}: shape [${shape}] holds ${count} elements, more than this service takes (${MAX_ELEMENTS})`);
  }
  return count;
}

// Values from JSON (or a gRPC typed-contents list) -> an ort.Tensor; `element` turns each value into the typed
// array's element, or undefined for a value of the wrong kind.
function fromValues(input, spec, values, count, element = DATATYPES[spec.datatype].json) {
  const where = `input '${spec.name}'`;
  const kind = DATATYPES[spec.datatype];
  if (values.length !== count) {
    const many = values.length > count ? `more than ${count}` : `${values.length}`;
    throw new RequestError(400, `${where}: ${many} data values for shape [${input.shape}] (${count} elements)`);
  }
  const array = new kind.array(count);
  for (let i = 0; i < count; i++) {
    const value = element(values[i]);
    if (value === undefined) {
      throw new RequestError(400, `${where}: data[${i}] = ${JSON.stringify(values[i])} is not a ${spec.datatype} value`);
    }
    array[i] = value;
  }
  return new ort.Tensor(kind.type, array, input.shape);
}

// A JSON request input ({name, shape, datatype, data}) -> an ort.Tensor.
function fromJson(input, spec) {
  const count = checkShape(input, spec);
  const where = `input '${spec.name}'`;
  if (!DATATYPES[spec.datatype].json) {
    throw new RequestError(400, `${where}: ${spec.datatype} cannot travel as JSON (JSON has no float16): send it as binary data`);
  }
  if (!Array.isArray(input.data)) throw new RequestError(400, `${where}: data must be a list`);
  return fromValues(input, spec, flatten(input.data, input.shape.length, count, where), count);
}

// The byte size a binary input of this shape must have (checkShape first).
function byteSize(spec, count) {
  return count * DATATYPES[spec.datatype].bytes;
}

// Binary tensor data (a Buffer view) -> an ort.Tensor over the same bytes; copied once if misaligned.
function fromBytes(input, spec, bytes) {
  const kind = DATATYPES[spec.datatype];
  const count = bytes.length / kind.bytes;
  let data;
  if (bytes.byteOffset % kind.bytes === 0) data = new kind.array(bytes.buffer, bytes.byteOffset, count);
  else {
    data = new kind.array(count);
    new Uint8Array(data.buffer).set(bytes);
  }
  return new ort.Tensor(kind.type, data, input.shape);
}

// An output tensor's bytes, as they lie in its typed array: no copy.
function toBytes(tensor) {
  const data = tensor.data;
  return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

// An output tensor's values as JSON: numbers, booleans for BOOL, numbers for INT64 (exact to 2^53).
function toJsonData(tensor) {
  if (tensor.type === 'int64') return Array.from(tensor.data, Number);
  if (tensor.type === 'bool') return Array.from(tensor.data, (v) => v !== 0);
  return Array.from(tensor.data);
}

// A request's inputs -> {name: ort.Tensor}, each made by `tensorOf(input, spec)`; every model input exactly once.
// With `check`: every input's declared shape (`shapeOf(input)`) is checked alone first (checkShape), then
// `check({name: shape})` sees them all together (the model's named dims, its work budget), and only then is any
// tensor made. (A request missing an input is not checked together: it is refused for the missing input.)
function collectFeeds(specs, inputs, tensorOf, check = null, shapeOf = (input) => input.shape) {
  const pairs = [];
  for (const input of inputs) {
    if (!input || typeof input !== 'object' || typeof input.name !== 'string') throw new RequestError(400, 'every input needs a "name"');
    const spec = specs.find((i) => i.name === input.name);
    if (!spec) throw new RequestError(400, `unknown input '${input.name}'; the model takes ${specs.map((i) => i.name).join(', ')}`);
    if (pairs.some(([other]) => other.name === input.name)) throw new RequestError(400, `input '${input.name}' is given twice`);
    pairs.push([input, spec]);
  }
  const missing = specs.filter((i) => !pairs.some(([input]) => input.name === i.name)).map((i) => i.name);
  if (check && !missing.length) { // with an input missing, each input's own problem is named first, as before
    const shapes = {};
    for (const [input, spec] of pairs) {
      const shape = shapeOf(input);
      checkShape({ datatype: input.datatype, shape }, spec);
      shapes[spec.name] = shape;
    }
    check(shapes);
  }
  const feeds = {};
  for (const [input, spec] of pairs) feeds[input.name] = tensorOf(input, spec);
  if (missing.length) throw new RequestError(400, `missing input(s): ${missing.join(', ')}`);
  return feeds;
}

// Requested output names: each one the model's, none twice.
function checkOutputs(specs, names) {
  const unknown = names.filter((n) => !specs.some((o) => o.name === n));
  if (unknown.length) {
    throw new RequestError(400, `unknown output(s): ${unknown.join(', ')}; the model gives ${specs.map((o) => o.name).join(', ')}`);
  }
  const twice = names.filter((n, i) => names.indexOf(n) !== i);
  if (twice.length) throw new RequestError(400, `output(s) requested twice: ${twice.join(', ')}`);
  return names;
}

module.exports = {
  DATATYPES, MAX_ELEMENTS, RequestError, TO_DATATYPE, byteSize, checkOutputs, checkShape, collectFeeds, flatten, fromBytes,
  fromJson, fromValues, toBytes, toJsonData,
};
