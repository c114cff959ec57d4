#!/usr/bin/env node
'use strict';
// node server.js --bundle DIR --port N [--host 127.0.0.1] [--max-body-bytes N]
//
// Serves a bundle's model over the Open Inference Protocol (KServe v2 REST, JSON tensors), the protocol
// Triton serves too: a client written for it works unchanged here and against a Triton cluster.
//   GET  /v2/health/live, /v2/health/ready, /v2
//   GET  /v2/models/{name}, /v2/models/{name}/ready        (also under /versions/1)
//   POST /v2/models/{name}/infer                           (also under /versions/1)
// A bad request gets a 4xx with {"error": "..."} naming the problem; the service keeps serving.

const http = require('node:http');
const net = require('node:net');
const path = require('node:path');
const ort = require('onnxruntime-node');
const { BundleError, changedFiles, readManifest } = require('./lib/bundle');

const DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024;
const MAX_ELEMENTS = 1 << 27; // per input: 512 MiB of float32; a larger declared shape is refused before any allocation
const VERSION = '1';

// KServe datatype -> onnxruntime-node tensor type, the typed array, and how a JSON value becomes an element
const DATATYPES = {
  FP32: { type: 'float32', array: Float32Array, element: (v) => (typeof v === 'number' ? v : undefined) },
  BOOL: { type: 'bool', array: Uint8Array, element: (v) => (typeof v === 'boolean' ? (v ? 1 : 0) : undefined) },
  UINT8: { type: 'uint8', array: Uint8Array, element: (v) => (Number.isInteger(v) && v >= 0 && v <= 255 ? v : undefined) },
  INT64: { type: 'int64', array: BigInt64Array, element: (v) => (Number.isSafeInteger(v) ? BigInt(v) : undefined) },
};
const TO_DATATYPE = { float32: 'FP32', bool: 'BOOL', uint8: 'UINT8', int64: 'INT64' };

class RequestError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

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

// One request input -> an ort.Tensor, or RequestError naming what is wrong with it.
function toTensor(input, spec) {
  const where = `input '${spec.name}'`;
  if (input.datatype !== spec.datatype) {
    throw new RequestError(400, `${where}: datatype ${JSON.stringify(input.datatype)}, the model takes ${spec.datatype}`);
  }
  const shape = input.shape;
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new RequestError(400, `${where}: shape must be a list of non-negative integers`);
  }
  if (shape.length !== spec.shape.length) {
    throw new RequestError(400, `${where}: shape [${shape}] has rank ${shape.length}, the model takes rank ${spec.shape.length} [${spec.shape}]`);
  }
  spec.shape.forEach((d, i) => {
    if (d !== -1 && shape[i] !== d) {
      throw new RequestError(400, `${where}: dim ${i} is ${shape[i]}, the model takes ${d}`);
    }
  });
  const count = shape.reduce((a, b) => a * b, 1);
  if (count > MAX_ELEMENTS) {
    throw new RequestError(400, `${where}: shape [${shape}] holds ${count} elements, more than this service takes (${MAX_ELEMENTS})`);
  }
  if (!Array.isArray(input.data)) throw new RequestError(400, `${where}: data must be a list`);
  const values = flatten(input.data, shape.length, count, where);
  if (values.length !== count) {
    const many = values.length > count ? `more than ${count}` : `${values.length}`;
    throw new RequestError(400, `${where}: ${many} data values for shape [${shape}] (${count} elements)`);
  }
  const kind = DATATYPES[spec.datatype];
  const array = new kind.array(count);
  for (let i = 0; i < count; i++) {
    const element = kind.element(values[i]);
    if (element === undefined) {
      throw new RequestError(400, `${where}: data[${i}] = ${JSON.stringify(values[i])} is not a ${spec.datatype} value`);
    }
    array[i] = element;
  }
  return new ort.Tensor(kind.type, array, shape);
}

function fromTensor(name, tensor) {
  const data = tensor.type === 'int64' ? Array.from(tensor.data, Number)
    : tensor.type === 'bool' ? Array.from(tensor.data, (v) => v !== 0) : Array.from(tensor.data);
  return { name, datatype: TO_DATATYPE[tensor.type], shape: Array.from(tensor.dims), data };
}

async function createService({ bundle, maxBodyBytes = DEFAULT_MAX_BODY_BYTES }) {
  const manifest = readManifest(bundle);
  const changed = changedFiles(bundle, manifest).filter((f) => f.startsWith(manifest.model.file));
  if (changed.length) throw new BundleError(`the bundle's model was changed: ${changed.join('; ')}`);
  const session = await ort.InferenceSession.create(path.join(bundle, manifest.model.file)); // once, shared
  const name = manifest.name;
  const inputs = manifest.inputs.map((i) => ({ name: i.name, datatype: i.datatype, shape: i.shape }));
  const outputs = manifest.outputs.map((o) => ({ name: o.name, datatype: o.datatype, shape: o.shape }));
  const metadata = { name, versions: [VERSION], platform: 'onnxruntime_onnx', inputs, outputs };
  let inFlight = 0;

  async function infer(body) {
    let request;
    try {
      request = JSON.parse(body);
    } catch (err) {
      throw new RequestError(400, `the body is not valid JSON: ${err.message}`);
    }
    if (!request || typeof request !== 'object' || Array.isArray(request)) {
      throw new RequestError(400, 'the body must be a JSON object with "inputs"');
    }
    if (!Array.isArray(request.inputs)) throw new RequestError(400, '"inputs" must be a list');
    const feeds = {};
    for (const input of request.inputs) {
      if (!input || typeof input !== 'object' || typeof input.name !== 'string') {
        throw new RequestError(400, 'every input needs a "name"');
      }
      const spec = inputs.find((i) => i.name === input.name);
      if (!spec) throw new RequestError(400, `unknown input '${input.name}'; the model takes ${inputs.map((i) => i.name).join(', ')}`);
      if (feeds[input.name]) throw new RequestError(400, `input '${input.name}' is given twice`);
      feeds[input.name] = toTensor(input, spec);
    }
    const missing = inputs.filter((i) => !feeds[i.name]).map((i) => i.name);
    if (missing.length) throw new RequestError(400, `missing input(s): ${missing.join(', ')}`);
    let wanted = outputs.map((o) => o.name);
    if (request.outputs !== undefined) {
      if (!Array.isArray(request.outputs)) throw new RequestError(400, '"outputs" must be a list');
      wanted = request.outputs.map((o) => o && o.name);
      const unknown = wanted.filter((n) => !outputs.some((o) => o.name === n));
      if (unknown.length) throw new RequestError(400, `unknown output(s): ${unknown.join(', ')}`);
    }
    let results;
    try {
      results = await session.run(feeds, wanted);
    } catch (err) {
      throw new RequestError(400, `onnxruntime could not run these inputs: ${String(err.message || err).split('\n')[0]}`);
    }
    const answer = { model_name: name, model_version: VERSION, outputs: wanted.map((n) => fromTensor(n, results[n])) };
    if (request.id !== undefined) answer.id = request.id;
    return answer;
  }

  function route(method, url) {
    const base = `/v2/models/${encodeURIComponent(name)}`;
    const clean = url.split('?')[0].replace(/\/versions\/1(?=\/|$)/, '');
    if (clean === '/v2/health/live' || clean === '/v2/health/ready') return method === 'GET' ? 'health' : 'method';
    if (clean === '/v2') return method === 'GET' ? 'server' : 'method';
    if (clean === base) return method === 'GET' ? 'metadata' : 'method';
    if (clean === `${base}/ready`) return method === 'GET' ? 'ready' : 'method';
    if (clean === `${base}/infer`) return method === 'POST' ? 'infer' : 'method';
    if (clean.startsWith('/v2/models/')) return 'model-unknown';
    return 'unknown';
  }

  function send(res, status, body) {
    const text = JSON.stringify(body);
    const headers = { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) };
    if (!server.listening) headers.connection = 'close'; // draining: no keep-alive
    res.writeHead(status, headers);
    res.end(text);
  }

  const server = http.createServer((req, res) => {
    inFlight++;
    res.on('close', () => { // the answer was handed to the OS, or the client went away
      inFlight--;
      if (draining && inFlight === 0) drained();
    });
    const what = route(req.method, req.url);
    if (what === 'health') return send(res, 200, { live: true, ready: true });
    if (what === 'server') return send(res, 200, { name: 'attn-onnx-node', version: '0.2.0', extensions: [] });
    if (what === 'metadata') return send(res, 200, metadata);
    if (what === 'ready') return send(res, 200, { name, ready: true });
    if (what === 'method') return send(res, 405, { error: `${req.method} is not allowed on ${req.url}` });
    if (what === 'model-unknown') return send(res, 404, { error: `no model at ${req.url}; this service serves '${name}'` });
    if (what === 'unknown') return send(res, 404, { error: `no route ${req.method} ${req.url}` });
    const declared = Number(req.headers['content-length']);
    if (declared > maxBodyBytes) {
      send(res, 413, { error: `the body is ${declared} bytes; this service takes at most ${maxBodyBytes}` });
      req.resume();
      return undefined;
    }
    const chunks = [];
    let size = 0;
    let refused = false;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > maxBodyBytes && !refused) {
        refused = true;
        send(res, 413, { error: `the body is over ${maxBodyBytes} bytes, the most this service takes` });
      }
      if (!refused) chunks.push(chunk);
    });
    req.on('end', () => {
      if (refused) return;
      infer(Buffer.concat(chunks).toString('utf8')).then(
        (answer) => send(res, 200, answer),
        (err) => send(res, err instanceof RequestError ? err.status : 500, { error: err.message }),
      );
    });
    return undefined;
  });

  let draining = false;
  const waiting = [];
  // Stop taking connections, let every request in flight be answered and flushed, then resolve.
  //
  // Not http's server.close() at once: since Node 19 it also destroys the connections it deems idle, and it
  // deems a connection idle as soon as its answer was end()ed, although a large answer may still sit in
  // the socket's queue. Destroying it then cuts the answer short (the client reads a clean EOF after a few
  // MB). So: stop listening with net's close alone, and only once every answer has left the process
  // (inFlight counts until 'close' of the response) let http's close() sweep the idle keep-alive ones.
  function drain() {
    if (!draining) {
      draining = true;
      if (server.listening) net.Server.prototype.close.call(server);
    }
    const done = new Promise((resolve) => waiting.push(resolve));
    if (inFlight === 0) drained();
    return done;
  }

  function drained() {
    server.close(); // sweeps idle keep-alive connections; nothing is left unflushed now
    waiting.splice(0).forEach((resolve) => resolve());
  }

  return { server, manifest, drain, inFlight: () => inFlight };
}

function parseArgs(argv) {
  const args = { host: '127.0.0.1', maxBodyBytes: DEFAULT_MAX_BODY_BYTES };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`${flag} needs a value`);
    if (flag === '--bundle') args.bundle = value;
    else if (flag === '--port') args.port = Number(value);
    else if (flag === '--host') args.host = value;
    else if (flag === '--max-body-bytes') args.maxBodyBytes = Number(value);
    else throw new Error(`unknown option ${flag}`);
  }
  if (!args.bundle || !Number.isInteger(args.port) || args.port < 0 || args.port > 65535) {
    throw new Error('usage: node server.js --bundle DIR --port N [--host 127.0.0.1] [--max-body-bytes N]');
  }
  if (!Number.isInteger(args.maxBodyBytes) || args.maxBodyBytes <= 0) throw new Error('--max-body-bytes must be a positive integer');
  return args;
}

if (require.main === module) {
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (err) {
    console.error(`Error: ${err.message}`);
    process.exit(2);
  }
  createService(args).then(({ server, manifest, drain }) => {
    server.listen(args.port, args.host, () => {
      const { port } = server.address();
      console.log(`serving '${manifest.name}' on http://${args.host}:${port}/v2/models/${manifest.name}`);
    });
    // In-flight requests are answered and flushed first; then nothing keeps the event loop alive and node
    // exits 0 by itself (calling process.exit at once could cut a large answer still in the socket). The
    // unref'd timer only forces the exit if something else still holds the loop 10 s later.
    const stop = () => drain().then(() => setTimeout(() => process.exit(0), 10000).unref());
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
  }, (err) => {
    console.error(`Error: ${err.message}`);
    process.exit(1);
  });
}

module.exports = { createService, DEFAULT_MAX_BODY_BYTES, MAX_ELEMENTS };
