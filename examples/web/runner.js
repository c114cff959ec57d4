#!/usr/bin/env node
'use strict';
// The Node side of `check-attn --runtimes web` (runtime_check/runners/web_runner.py): one long-lived process
// per check that loads one model into onnxruntime-web's WASM backend and runs the check's cases on it.
//
// Protocol, on stdin (requests) and stdout (replies), strictly one reply per request, in order. Every message
// is a frame: a 4-byte little-endian length, a JSON header of that many bytes, then the binary payload the
// header declares (tensor data little-endian, as numpy holds it; never numbers in JSON). Every reply's header
// says its payload's length in `bytes`:
//   hello (sent once, unasked)  {"ok": true, "web": "1.30.0", "backend": "wasm", "threads": N}
//   {"op": "load", "model": BYTES, "external": [{"path": NAME, "bytes": BYTES}, ...]} + model + data files
//       -> {"ok": true, "inputs": [...], "outputs": [...]}
//   {"op": "run", "inputs": [{"name", "type", "dims", "bytes"}, ...]} + each input's bytes, in order
//       -> {"ok": true, "outputs": [{"name", "type", "dims", "bytes"}, ...]} + each output's bytes
//   {"op": "time", "runs": R, "inputs": [...]} + the inputs' bytes: one untimed run, then R timed ones
//       -> {"ok": true, "seconds": [t1, ..., tR]}   (session.run alone, timed in Node: no pipe in the figure)
//   any failure -> {"ok": false, "error": "one line"}; the process carries on. EOF on stdin ends it.
// Usage: node runner.js [--threads N]   (N WASM threads; 1 by default, the same answers every run)

// Nothing but frames may reach stdout: whatever onnxruntime-web (or emscripten) logs goes to stderr.
for (const level of ['log', 'info', 'warn', 'debug', 'trace']) console[level] = console.error;

const ort = require('onnxruntime-web');

// onnxruntime-web's tensor types -> the typed array that carries their bytes (float16 as its bits)
const ARRAYS = {
  float32: Float32Array, float64: Float64Array, float16: Uint16Array, int8: Int8Array, uint8: Uint8Array,
  int32: Int32Array, int64: BigInt64Array, bool: Uint8Array,
};

function frame(header, payloads = []) {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const length = Buffer.alloc(4);
  length.writeUInt32LE(json.length);
  return Buffer.concat([length, json, ...payloads]);
}

function reply(header, payloads = []) { // `bytes`: the length of the payload after the header
  const bytes = payloads.reduce((n, p) => n + p.length, 0);
  process.stdout.write(frame({ ...header, bytes }, payloads)); // synchronous for a pipe on Linux
}

function tensorOf(spec, bytes) {
  const Array_ = ARRAYS[spec.type];
  if (!Array_) throw new Error(`onnxruntime-web has no tensor type ${spec.type}`);
  const copy = new ArrayBuffer(bytes.length); // aligned for the typed array
  new Uint8Array(copy).set(bytes);
  return new ort.Tensor(spec.type, new Array_(copy), spec.dims);
}

function oneLine(err) {
  const text = String((err && err.message) || err).trim();
  return text.split('\n')[0] || 'unknown error';
}

let session = null;

async function handle(header, payload) {
  let at = 0;
  const take = (n) => payload.subarray(at, (at += n));
  if (header.op === 'load') {
    const model = take(header.model);
    const externalData = (header.external || []).map((f) => ({ path: f.path, data: take(f.bytes) }));
    if (session) await session.release();
    session = null;
    session = await ort.InferenceSession.create(model, {
      executionProviders: ['wasm'], graphOptimizationLevel: 'all', externalData, logSeverityLevel: 3,
    });
    return [{ ok: true, inputs: session.inputNames, outputs: session.outputNames }, []];
  }
  if (header.op === 'run') {
    if (!session) throw new Error('no model loaded');
    const feeds = {};
    for (const spec of header.inputs) feeds[spec.name] = tensorOf(spec, take(spec.bytes));
    const results = await session.run(feeds);
    const outputs = [];
    const payloads = [];
    for (const name of session.outputNames) {
      const t = results[name];
      const bytes = Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
      outputs.push({ name, type: t.type, dims: Array.from(t.dims), bytes: bytes.length });
      payloads.push(bytes);
    }
    return [{ ok: true, outputs }, payloads];
  }
  if (header.op === 'time') {
    if (!session) throw new Error('no model loaded');
    const feeds = {};
    for (const spec of header.inputs) feeds[spec.name] = tensorOf(spec, take(spec.bytes));
    await session.run(feeds); // warm-up
    const seconds = [];
    for (let i = 0; i < header.runs; i++) {
      const start = process.hrtime.bigint();
      await session.run(feeds);
      seconds.push(Number(process.hrtime.bigint() - start) / 1e9);
    }
    return [{ ok: true, seconds }, []];
  }
  throw new Error(`unknown op ${JSON.stringify(header.op)}`);
}

function main() {
  const i = process.argv.indexOf('--threads');
  ort.env.wasm.numThreads = i > 0 ? Number(process.argv[i + 1]) : 1;
  ort.env.logLevel = 'error';
  reply({ ok: true, web: ort.env.versions.web, backend: 'wasm', threads: ort.env.wasm.numThreads });

  let chunks = [];
  let have = 0;
  let header = null; // the frame being read: its header once that has arrived
  let wanted = 4; // bytes needed before the next step: the length, then the header, then the payload
  let busy = Promise.resolve();
  const take = (n) => { // the first n buffered bytes (one concat per frame part, not one per chunk)
    const all = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks);
    chunks = all.length > n ? [all.subarray(n)] : [];
    have -= n;
    return all.subarray(0, n);
  };
  process.stdin.on('data', (chunk) => {
    chunks.push(chunk);
    have += chunk.length;
    while (have >= wanted) {
      if (header === null && wanted === 4) {
        wanted = take(4).readUInt32LE(0);
        header = undefined;
      } else if (header === undefined) {
        try {
          header = JSON.parse(take(wanted).toString('utf8'));
        } catch (err) {
          console.error(`Error: a request header is not JSON: ${oneLine(err)}`);
          process.exit(2);
        }
        wanted = header.op === 'load'
          ? header.model + (header.external || []).reduce((n, f) => n + f.bytes, 0)
          : (header.inputs || []).reduce((n, spec) => n + spec.bytes, 0);
      } else {
        const request = header;
        const payload = take(wanted);
        header = null;
        wanted = 4;
        busy = busy.then(() => handle(request, payload)).then(
          ([answer, payloads]) => reply(answer, payloads),
          (err) => reply({ ok: false, error: oneLine(err) }),
        );
      }
    }
  });
  process.stdin.on('end', () => busy.then(() => process.exit(0)));
}

main();
