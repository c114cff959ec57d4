'use strict';
// The Open Inference Protocol over HTTP/REST (KServe v2), as Triton serves it:
//   GET  /v2/health/live, /v2/health/ready, /v2 (server metadata: name, version, extensions)
//   GET  /v2/models/{name}, /v2/models/{name}/ready                  (also under /versions/1)
//   GET  /v2/models/{name}/config   Triton's model configuration     (also under /versions/1)
//   GET  /v2/models/{name}/stats    Triton's statistics; /v2/models/stats for every model (this one)
//   POST /v2/models/{name}/infer    JSON tensors, and binary tensors (Triton's binary tensor data extension)
//
// Binary tensor data: the body is the JSON request, `Inference-Header-Content-Length` bytes long, followed by
// each binary input's bytes in the order of `inputs`, each input saying its length in
// `parameters.binary_data_size`; JSON and binary inputs may be mixed. An output comes back binary when it is
// requested with `parameters.binary_data: true` (or, with no `outputs` list, when the request's parameters say
// `binary_data_output: true`): its bytes follow the JSON answer in the order of `outputs`, each output saying
// `parameters.binary_data_size`, and the answer carries `Inference-Header-Content-Length`.
//
// A body sent with Content-Encoding gzip or deflate is inflated first (to at most --max-body-bytes). Answers are
// not compressed: a client's Accept-Encoding is a preference, and tritonclient reads either.
//
// A bad request gets a 4xx with {"error": "..."} naming the problem, before anything is allocated for it; the
// service keeps serving.

const http = require('node:http');
const net = require('node:net');
const zlib = require('node:zlib');
const {
  DATATYPES, RequestError, TO_DATATYPE, byteSize, checkOutputs, checkShape, collectFeeds, fromBytes, fromJson,
  toBytes, toJsonData,
} = require('./protocol');

const HEADER = 'inference-header-content-length';
const { version } = require('../package.json');

const SERVER = { name: 'attn-onnx-node', version, extensions: ['binary_tensor_data', 'model_configuration', 'statistics'] };

const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

// A `parameters` member: absent, or an object
function parametersOf(holder, where) {
  const p = holder.parameters;
  if (p === undefined) return {};
  if (!isObject(p)) throw new RequestError(400, `${where}: "parameters" must be an object`);
  return p;
}

function refuseSharedMemory(parameters, where) {
  if (parameters.shared_memory_region !== undefined) {
    throw new RequestError(400, `${where}: shared memory is not supported by this service; send the data in the body`);
  }
}

// The request's JSON part and binary part -> {feeds, wanted, binary}; RequestError for anything amiss.
function decodeRequest(model, body, headerLength) {
  let request;
  try {
    request = JSON.parse((headerLength === null ? body : body.subarray(0, headerLength)).toString('utf8'));
  } catch (err) {
    const hint = headerLength === null && body.includes('binary_data_size')
      ? ' (binary tensor data needs an Inference-Header-Content-Length header)' : '';
    throw new RequestError(400, `the body is not valid JSON: ${err.message}${hint}`);
  }
  if (!isObject(request)) throw new RequestError(400, 'the body must be a JSON object with "inputs"');
  if (!Array.isArray(request.inputs)) throw new RequestError(400, '"inputs" must be a list');
  const parameters = parametersOf(request, 'the request');
  let offset = headerLength === null ? body.length : headerLength; // where the next binary input begins
  const feeds = collectFeeds(model.inputs, request.inputs, (input, spec) => {
    const where = `input '${spec.name}'`;
    const p = parametersOf(input, where);
    refuseSharedMemory(p, where);
    if (p.binary_data_size === undefined) return fromJson(input, spec);
    const size = p.binary_data_size;
    if (!Number.isSafeInteger(size) || size < 0) {
      throw new RequestError(400, `${where}: binary_data_size ${JSON.stringify(size)} is not a non-negative integer`);
    }
    if (headerLength === null) {
      throw new RequestError(400, `${where} has binary_data_size but the request has no Inference-Header-Content-Length header`);
    }
    if (input.data !== undefined) throw new RequestError(400, `${where} has both "data" and binary_data_size`);
    const count = checkShape(input, spec);
    const expected = byteSize(spec, count);
    if (size !== expected) {
      throw new RequestError(400, `${where}: binary_data_size ${size} does not match shape [${input.shape}] of ${spec.datatype}, ` +
        `which takes ${expected} bytes`);
    }
    if (size > body.length - offset) {
      throw new RequestError(400, `${where}: binary_data_size ${size} reaches past the end of the body, which holds ` +
        `${body.length - offset} more bytes`);
    }
    const tensor = fromBytes(input, spec, body.subarray(offset, offset + size));
    offset += size;
    return tensor;
  }, (shapes) => model.checkShapes(shapes));
  if (offset !== body.length) {
    throw new RequestError(400, `${body.length - offset} bytes after the JSON header that no input's binary_data_size accounts for`);
  }
  model.checkValues(feeds); // the inputs' values, by the manifest's `lengths` rules (a static cache's past_len)
  // Which outputs, and which of them binary
  const defaultBinary = parameters.binary_data_output === undefined ? false : parameters.binary_data_output;
  if (typeof defaultBinary !== 'boolean') throw new RequestError(400, 'binary_data_output must be true or false');
  let wanted;
  let binary;
  if (request.outputs === undefined || (Array.isArray(request.outputs) && request.outputs.length === 0)) {
    // no list, or an empty one: every output (as Triton answers `"outputs": []`)
    wanted = model.outputs.map((o) => o.name);
    binary = wanted.map(() => defaultBinary);
  } else {
    if (!Array.isArray(request.outputs)) throw new RequestError(400, '"outputs" must be a list');
    if (!request.outputs.every((o) => isObject(o) && typeof o.name === 'string')) {
      throw new RequestError(400, 'every requested output needs a "name"');
    }
    wanted = checkOutputs(model.outputs, request.outputs.map((o) => o.name));
    binary = request.outputs.map((o) => {
      const where = `output '${o.name}'`;
      const p = parametersOf(o, where);
      refuseSharedMemory(p, where);
      if (p.classification !== undefined) {
        throw new RequestError(400, `${where}: the classification extension is not supported by this service`);
      }
      if (p.binary_data !== undefined && typeof p.binary_data !== 'boolean') {
        throw new RequestError(400, `${where}: binary_data must be true or false`);
      }
      return p.binary_data === true;
    });
  }
  wanted.forEach((name, i) => {
    const spec = model.outputs.find((o) => o.name === name);
    if (!binary[i] && !DATATYPES[spec.datatype].json) {
      throw new RequestError(400,
        `output '${name}' is ${spec.datatype}, which JSON cannot hold (JSON has no float16): request it with binary_data`);
    }
  });
  return { feeds, wanted, binary, id: request.id };
}

// The answer: {head (the JSON bytes), buffers (the binary outputs' bytes, views)}.
function encodeAnswer(model, results, { wanted, binary, id }) {
  const buffers = [];
  const outputs = wanted.map((name, i) => {
    const tensor = results[name];
    const out = { name, datatype: TO_DATATYPE[tensor.type], shape: Array.from(tensor.dims) };
    if (binary[i]) {
      const bytes = toBytes(tensor);
      out.parameters = { binary_data_size: bytes.length };
      if (bytes.length) buffers.push(bytes);
    } else {
      out.data = toJsonData(tensor);
    }
    return out;
  });
  const answer = { model_name: model.name, model_version: model.version, outputs };
  if (id !== undefined) answer.id = id;
  return { head: Buffer.from(JSON.stringify(answer)), buffers };
}

// The Inference-Header-Content-Length header: null when absent; RequestError unless a whole number of bytes
// within the body.
function headerLengthOf(req, bodyLength) {
  const value = req.headers[HEADER];
  if (value === undefined) return null;
  if (!/^\d{1,15}$/.test(value)) {
    throw new RequestError(400, `Inference-Header-Content-Length ${JSON.stringify(value)} is not a whole number of bytes`);
  }
  const length = Number(value);
  if (length > bodyLength) {
    throw new RequestError(400, `Inference-Header-Content-Length ${length} is past the end of the body (${bodyLength} bytes)`);
  }
  return length;
}

// A request body sent with Content-Encoding gzip or deflate (zlib), as tritonclient's
// request_compression_algorithm sends it: inflated as it streams in, and stopped (413) as soon as the inflated
// bytes pass `limit`, so a small body cannot claim memory.
const INFLATE = { gzip: zlib.createGunzip, deflate: zlib.createInflate };

// The chunks of a body in one buffer, placed so that its binary part (after `headerLength` bytes of JSON) starts
// at an offset that is a multiple of 8: typed arrays of any element then view it without a copy.
function assemble(chunks, size, headerLength) {
  const pad = headerLength === null ? 0 : (8 - (headerLength % 8)) % 8;
  const whole = Buffer.allocUnsafeSlow(size + pad); // its own ArrayBuffer, offset 0
  let at = pad;
  for (const chunk of chunks) {
    chunk.copy(whole, at);
    at += chunk.length;
  }
  return whole.subarray(pad);
}

function createHttpServer(model, { maxBodyBytes }) {
  const base = `/v2/models/${encodeURIComponent(model.name)}`;

  function route(method, url) {
    const clean = url.split('?')[0].replace(/\/versions\/1(?=\/|$)/, '');
    const get = (what) => (method === 'GET' ? what : 'method');
    if (clean === '/v2/health/live' || clean === '/v2/health/ready') return get('health');
    if (clean === '/v2') return get('server');
    if (clean === base) return get('metadata');
    if (clean === `${base}/ready`) return get('ready');
    if (clean === `${base}/config`) return get('config');
    if (clean === `${base}/stats` || clean === '/v2/models/stats') return get('stats');
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

  function sendAnswer(res, { head, buffers }) {
    if (!buffers.length) {
      const headers = { 'content-type': 'application/json', 'content-length': head.length };
      if (!server.listening) headers.connection = 'close';
      res.writeHead(200, headers);
      res.end(head);
      return;
    }
    const headers = {
      'content-type': 'application/octet-stream',
      'inference-header-content-length': head.length,
      'content-length': buffers.reduce((n, b) => n + b.length, head.length),
    };
    if (!server.listening) headers.connection = 'close';
    res.writeHead(200, headers);
    res.cork(); // the header and every output in one write (writev) to the socket
    res.write(head);
    for (const b of buffers) res.write(b);
    res.end();
    res.uncork();
  }

  // A refusal on the model's route, before the model saw the request (415, 413): counted as a failure in the
  // statistics, as every 4xx on the route is.
  function refuse(req, res, status, error, started) {
    model.stats.fail(process.hrtime.bigint() - started);
    send(res, status, { error });
  }

  function infer(req, res) {
    const arrived = process.hrtime.bigint();
    const encoding = (req.headers['content-encoding'] || 'identity').trim().toLowerCase();
    if (!INFLATE[encoding] && encoding !== 'identity') {
      refuse(req, res, 415, `Content-Encoding ${encoding} is not supported; send identity, gzip or deflate`, arrived);
      req.resume();
      return;
    }
    const declared = Number(req.headers['content-length']);
    if (declared > maxBodyBytes) {
      refuse(req, res, 413, `the body is ${declared} bytes; this service takes at most ${maxBodyBytes}`, arrived);
      req.resume();
      return;
    }
    const chunks = []; // the body's bytes, inflated where it was compressed
    let size = 0; // of chunks
    let received = 0; // bytes off the wire
    let refused = false;
    let ended = false; // the request's body was read to its end
    let pending = null; // a refusal kept until the client has sent its (compressed, bounded) body: see take()
    const stop = (status, error) => {
      refused = true;
      pending = null;
      chunks.length = 0;
      refuse(req, res, status, error, arrived);
    };
    const take = (chunk) => {
      if (refused) return;
      size += chunk.length;
      if (size > maxBodyBytes) {
        refused = true;
        chunks.length = 0;
        if (inflater) { // inflation stops here; the 413 goes once the compressed rest (itself bounded) is read,
          inflater.destroy(); // so that a client still sending it reads the answer, not a broken pipe
          pending = [413, `the body inflates past ${maxBodyBytes} bytes, the most this service takes`];
          if (ended) stop(...pending); // the whole body was read already: answer now
        } else {
          stop(413, `the body is over ${maxBodyBytes} bytes, the most this service takes`);
        }
        return;
      }
      chunks.push(chunk);
    };
    const whole = () => {
      if (refused) return;
      const started = process.hrtime.bigint();
      model.infer(started, () => {
        const [parts, length] = [chunks.splice(0), size]; // Inference-Header-Content-Length counts inflated bytes
        const headerLength = headerLengthOf(req, length);
        const body = headerLength === null ? Buffer.concat(parts, length) : assemble(parts, length, headerLength);
        return decodeRequest(model, body, headerLength);
      }, (results, decoded) => encodeAnswer(model, results, decoded)).then(
        (answer) => sendAnswer(res, answer),
        (err) => send(res, err instanceof RequestError ? err.status : 500, { error: err.message }),
      );
    };
    const inflater = encoding === 'identity' ? null : INFLATE[encoding]();
    if (inflater) {
      inflater.on('data', take);
      inflater.on('end', whole);
      inflater.on('error', (err) => {
        if (!refused) stop(400, `the body is not valid ${encoding} data: ${err.message}`);
      });
    }
    req.on('data', (chunk) => {
      if (refused && !pending) return;
      received += chunk.length;
      if (received > maxBodyBytes) {
        stop(413, `the body is over ${maxBodyBytes} bytes, the most this service takes`);
        if (inflater) inflater.destroy();
        return;
      }
      if (refused) return;
      if (inflater) inflater.write(chunk);
      else take(chunk);
    });
    req.on('end', () => {
      ended = true;
      if (pending) stop(...pending);
      if (refused) return;
      if (inflater) inflater.end();
      else whole();
    });
  }

  let inFlight = 0;
  let draining = false;
  const waiting = [];

  const server = http.createServer((req, res) => {
    inFlight++;
    res.on('close', () => { // the answer was handed to the OS, or the client went away
      inFlight--;
      if (draining && inFlight === 0) drained();
    });
    const what = route(req.method, req.url);
    if (what === 'infer') return infer(req, res);
    req.resume(); // a GET's body, if any, is not read
    if (what === 'health') return send(res, 200, { live: true, ready: !draining });
    if (what === 'server') return send(res, 200, SERVER);
    if (what === 'metadata') return send(res, 200, model.metadata());
    if (what === 'ready') return send(res, 200, { name: model.name, ready: true });
    if (what === 'config') return send(res, 200, model.config());
    if (what === 'stats') return send(res, 200, { model_stats: [model.stats.toJSON()] });
    if (what === 'method') return send(res, 405, { error: `${req.method} is not allowed on ${req.url}` });
    if (what === 'model-unknown') return send(res, 404, { error: `no model at ${req.url}; this service serves '${model.name}' version 1` });
    return send(res, 404, { error: `no route ${req.method} ${req.url}` });
  });

  // Stop taking connections, let every request in flight be answered and flushed, then resolve. After `graceMs`
  // (when finite) whatever is left is closed: requests still running, answers still in the socket, and uploads
  // that stalled (a client that sent its headers and part of its body, then nothing); then resolve.
  //
  // Not http's server.close() at once: since Node 19 it also destroys the connections it deems idle, and it
  // deems a connection idle as soon as its answer was end()ed, although a large answer may still sit in
  // the socket's queue. Destroying it then cuts the answer short (the client reads a clean EOF after a few
  // MB). So: stop listening with net's close alone, and only once every answer has left the process
  // (inFlight counts until 'close' of the response) let http's close() sweep the idle keep-alive ones.
  let grace = null;
  function drain(graceMs = Infinity) {
    if (!draining) {
      draining = true;
      if (server.listening) net.Server.prototype.close.call(server);
      if (Number.isFinite(graceMs)) {
        grace = setTimeout(() => {
          server.closeAllConnections(); // the grace is over: cut what is left
          drained();
        }, graceMs);
        grace.unref();
      }
    }
    const done = new Promise((resolve) => waiting.push(resolve));
    if (inFlight === 0) drained();
    return done;
  }

  function drained() {
    if (grace) clearTimeout(grace);
    server.close(); // sweeps idle keep-alive connections; nothing is left unflushed now
    waiting.splice(0).forEach((resolve) => resolve());
  }

  return { server, drain, inFlight: () => inFlight };
}

module.exports = { SERVER, createHttpServer, decodeRequest, encodeAnswer };
