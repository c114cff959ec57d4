#!/usr/bin/env node
'use strict';
// node server.js --bundle DIR --port N [options]; node server.js --help for them all.
//
// Serves a bundle's model over the Open Inference Protocol (KServe v2), the protocol Triton serves too, so that
// a client written for it (tritonclient, perf_analyzer, curl) works unchanged here and against a Triton cluster:
//   HTTP/REST on --port: JSON tensors and Triton's binary tensor data extension, the model configuration and
//     statistics extensions (lib/http.js);
//   gRPC on --grpc-port, when given: inference.GRPCInferenceService (lib/grpc.js, proto/).
// A bad request gets a 4xx (or INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED) naming the problem; the service
// keeps serving. Inputs are checked against each other by the model's named dims (lib/dims.js), and a request
// whose estimated peak memory passes --max-request-bytes is refused (413, RESOURCE_EXHAUSTED) before it runs.
// SIGTERM: stop accepting at once; answer the requests in flight, over both, for up to --grace-seconds; then
// close whatever is left (stalled uploads included) and exit 0.
// Before it serves, it verifies: the bundle's min_onnxruntime is not above this onnxruntime-node, and every golden
// set and decode step passes on it (verify.js); else one line naming the set, the runtime and its version, exit 1.
// --no-verify skips the sets (not the version check, nor the sha256s), and says so.

const { loadModel, DEFAULT_MAX_REQUEST_BYTES } = require('./lib/model');
const { createHttpServer } = require('./lib/http');
const { MAX_ELEMENTS } = require('./lib/protocol');
const { readManifest } = require('./lib/bundle');
const { verify } = require('./verify');

const DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024;
const DEFAULT_GRACE_SECONDS = 10;

const USAGE = `usage: node server.js --bundle DIR --port N [options]

  --bundle DIR               the bundle to serve (export-attn --bundle DIR)
  --port N                   HTTP/REST port (0: a free one)
  --grpc-port M              gRPC port too (0: a free one)
  --host H                   the address to listen on (default 127.0.0.1)
  --max-body-bytes N         the largest body, after gzip/deflate inflation (default ${DEFAULT_MAX_BODY_BYTES})
  --max-request-bytes N      the work budget: a request whose estimated peak memory is past it gets 413 /
                             RESOURCE_EXHAUSTED (default ${DEFAULT_MAX_REQUEST_BYTES}, 1 GiB)
  --grace-seconds S          on SIGTERM, how long requests in flight have to finish before what is left is
                             closed (default ${DEFAULT_GRACE_SECONDS})
  --intra-op-threads N       onnxruntime's intra-op threads (0: one per physical core)
  --spinning on|off          let onnxruntime's threads spin-wait between runs (default off)
  --no-verify                serve without first running the bundle's golden sets on this onnxruntime (said in
                             the log); its sha256s and min_onnxruntime are checked all the same
  --help                     this text`;

// The model and its HTTP server (`server`, not listening yet); a gRPC server too with `grpc: true`.
async function createService({
  bundle, maxBodyBytes = DEFAULT_MAX_BODY_BYTES, maxRequestBytes = DEFAULT_MAX_REQUEST_BYTES, grpc = false, threads = 0,
  spinning = false,
}) {
  const model = await loadModel(bundle, { threads, spinning, maxRequestBytes });
  const rest = createHttpServer(model, { maxBodyBytes });
  const rpc = grpc ? require('./lib/grpc').createGrpcServer(model, { maxBodyBytes }) : null; // loads the .proto
  const drain = (graceMs = Infinity) => Promise.all([rest.drain(graceMs), rpc && rpc.drain(graceMs)]);
  return { server: rest.server, grpc: rpc, model, manifest: model.manifest, drain, inFlight: rest.inFlight };
}

class UsageError extends Error {}

// argv -> the options; {help: true} for --help; UsageError (exit 2) for anything amiss.
function parseArgs(argv) {
  const args = { host: '127.0.0.1', maxBodyBytes: DEFAULT_MAX_BODY_BYTES, maxRequestBytes: DEFAULT_MAX_REQUEST_BYTES,
    graceSeconds: DEFAULT_GRACE_SECONDS };
  if (argv.includes('--help') || argv.includes('-h')) return { help: true };
  if (argv.includes('--no-verify')) {
    args.verify = false;
    argv = argv.filter((a) => a !== '--no-verify');
  }
  const port = (flag, value) => {
    const n = Number(value);
    if (!/^\d+$/.test(value) || n > 65535) throw new UsageError(`${flag} must be a port number, 0 to 65535 (0: a free one)`);
    return n;
  };
  const positive = (flag, value) => {
    const n = Number(value);
    if (!Number.isSafeInteger(n) || n <= 0) throw new UsageError(`${flag} must be a positive integer`);
    return n;
  };
  const set = {
    '--bundle': (v) => { args.bundle = v; },
    '--port': (v) => { args.port = port('--port', v); },
    '--grpc-port': (v) => { args.grpcPort = port('--grpc-port', v); },
    '--host': (v) => { args.host = v; },
    '--max-body-bytes': (v) => { args.maxBodyBytes = positive('--max-body-bytes', v); },
    '--max-request-bytes': (v) => { args.maxRequestBytes = positive('--max-request-bytes', v); },
    '--grace-seconds': (v) => {
      const n = Number(v);
      if (v.trim() === '' || !Number.isFinite(n) || n < 0) throw new UsageError('--grace-seconds must be a number of seconds >= 0');
      args.graceSeconds = n;
    },
    '--intra-op-threads': (v) => {
      const n = Number(v);
      if (!(Number.isInteger(n) && n >= 0)) throw new UsageError('--intra-op-threads must be a whole number (0: one per physical core)');
      args.threads = n;
    },
    '--spinning': (v) => {
      if (v !== 'on' && v !== 'off') throw new UsageError('--spinning takes on or off');
      args.spinning = v === 'on';
    },
  };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (!set[flag]) throw new UsageError(`unknown option ${flag} (node server.js --help lists them)`);
    if (value === undefined) throw new UsageError(`${flag} needs a value`);
    set[flag](value);
  }
  if (!args.bundle || args.port === undefined) throw new UsageError(USAGE.split('\n')[0]);
  return args;
}

// The runtime this service runs the model on, as a verdict line names it
function runtimeName() {
  return `onnxruntime-node ${require('onnxruntime-node').env.versions.node}`;
}

const releaseKey = (v) => String(v).split('.').map((p) => Number.parseInt(p, 10) || 0);
function olderThan(a, b) { // a < b, release numbers compared part by part (1.9 < 1.18)
  const [x, y] = [releaseKey(a), releaseKey(b)];
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    if ((x[i] || 0) !== (y[i] || 0)) return (x[i] || 0) < (y[i] || 0);
  }
  return false;
}

// Refuse to serve what this runtime cannot answer right: a bundle that needs a later onnxruntime, or one whose
// golden sets fail here. Returns the line the log gets; throws (exit 1) otherwise.
async function verifyBefore(args) {
  const manifest = readManifest(args.bundle);
  const ours = require('onnxruntime-node').env.versions.node;
  const needs = manifest.model.min_onnxruntime;
  if (needs && olderThan(ours, needs)) {
    throw new Error(`the bundle needs onnxruntime >= ${needs} (its manifest's min_onnxruntime); this service runs ` +
                    `onnxruntime-node ${ours}`);
  }
  if (args.verify === false) return 'verification skipped (--no-verify): the bundle\'s golden sets were not run';
  const started = Date.now();
  const lines = [];
  if (!(await verify(args.bundle, (line) => lines.push(line)))) {
    const failed = lines.find((line) => line.startsWith('FAILED')) || lines[lines.length - 1];
    const [, , label, ...why] = failed.split(' | ');
    throw new Error(`golden set ${label} fails on ${runtimeName()}: ${why.join(' | ')}; not serving (--no-verify ` +
                    'serves anyway)');
  }
  return `verified on ${runtimeName()}: ${lines[lines.length - 1]} (golden sets and decode steps) in ` +
         `${Date.now() - started} ms`;
}

async function main(args) {
  console.error(await verifyBefore(args)); // the log; stdout's first line says where it serves
  const service = await createService({ ...args, grpc: args.grpcPort !== undefined });
  // SIGTERM (or Ctrl-C): stop accepting at once; requests in flight are answered and flushed, for up to
  // --grace-seconds; then what is left is closed (stalled uploads too), nothing keeps the event loop alive and node
  // exits 0 by itself (calling process.exit at once could cut a large answer still in the socket). The unref'd
  // timer, armed at the signal, forces the exit if something else still holds the loop 5 s past the grace. The
  // handlers are in place before the service says it is up: a SIGTERM right after that line must drain, not kill.
  const graceMs = args.graceSeconds * 1000;
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    setTimeout(() => process.exit(0), graceMs + 5000).unref();
    service.drain(graceMs);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  await new Promise((resolve, reject) => {
    service.server.once('error', reject);
    service.server.listen(args.port, args.host, resolve);
  });
  const { port } = service.server.address();
  let line = `serving '${service.model.name}' on http://${args.host}:${port}/v2/models/${service.model.name}`;
  if (service.grpc) line += `, gRPC on ${args.host}:${await service.grpc.listen(args.grpcPort, args.host)}`;
  console.log(line);
}

if (require.main === module) {
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (err) {
    console.error(`Error: ${err.message}`);
    process.exit(2);
  }
  if (args.help) {
    console.log(USAGE);
    process.exit(0);
  }
  main(args).catch((err) => {
    console.error(`Error: ${err.message}`);
    process.exit(1);
  });
}

module.exports = { createService, parseArgs, DEFAULT_GRACE_SECONDS, DEFAULT_MAX_BODY_BYTES, MAX_ELEMENTS };
