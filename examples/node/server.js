#!/usr/bin/env node
'use strict';
// node server.js --bundle DIR --port N [--grpc-port M] [--host 127.0.0.1] [--max-body-bytes N]
//                [--intra-op-threads N] [--spinning on|off]
//
// Serves a bundle's model over the Open Inference Protocol (KServe v2), the protocol Triton serves too, so that
// a client written for it (tritonclient, perf_analyzer, curl) works unchanged here and against a Triton cluster:
//   HTTP/REST on --port: JSON tensors and Triton's binary tensor data extension, the model configuration and
//     statistics extensions (lib/http.js);
//   gRPC on --grpc-port, when given: inference.GRPCInferenceService (lib/grpc.js, proto/).
// A bad request gets a 4xx (or INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED) naming the problem; the service
// keeps serving. SIGTERM answers the requests in flight, over both, then exits 0.

const { loadModel } = require('./lib/model');
const { createHttpServer } = require('./lib/http');
const { MAX_ELEMENTS } = require('./lib/protocol');

const DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024;

// The model and its HTTP server (`server`, not listening yet); a gRPC server too with `grpc: true`.
async function createService({ bundle, maxBodyBytes = DEFAULT_MAX_BODY_BYTES, grpc = false, threads = 0, spinning = false }) {
  const model = await loadModel(bundle, { threads, spinning });
  const rest = createHttpServer(model, { maxBodyBytes });
  const rpc = grpc ? require('./lib/grpc').createGrpcServer(model, { maxBodyBytes }) : null; // loads the .proto
  const drain = () => Promise.all([rest.drain(), rpc && rpc.drain()]);
  return { server: rest.server, grpc: rpc, model, manifest: model.manifest, drain, inFlight: rest.inFlight };
}

function parseArgs(argv) {
  const args = { host: '127.0.0.1', maxBodyBytes: DEFAULT_MAX_BODY_BYTES };
  const port = (flag, value) => {
    const n = Number(value);
    if (!/^\d+$/.test(value) || n > 65535) throw new Error(`${flag} must be a port number, 0 to 65535 (0: a free one)`);
    return n;
  };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`${flag} needs a value`);
    if (flag === '--bundle') args.bundle = value;
    else if (flag === '--port') args.port = port(flag, value);
    else if (flag === '--grpc-port') args.grpcPort = port(flag, value);
    else if (flag === '--host') args.host = value;
    else if (flag === '--max-body-bytes') args.maxBodyBytes = Number(value);
    else if (flag === '--intra-op-threads') args.threads = Number(value);
    else if (flag === '--spinning') {
      if (value !== 'on' && value !== 'off') throw new Error('--spinning takes on or off');
      args.spinning = value === 'on';
    } else throw new Error(`unknown option ${flag}`);
  }
  if (!args.bundle || args.port === undefined) {
    throw new Error('usage: node server.js --bundle DIR --port N [--grpc-port M] [--host 127.0.0.1] [--max-body-bytes N] ' +
      '[--intra-op-threads N] [--spinning on|off]');
  }
  if (args.threads !== undefined && !(Number.isInteger(args.threads) && args.threads >= 0)) {
    throw new Error('--intra-op-threads must be a whole number (0: one per physical core)');
  }
  if (!Number.isInteger(args.maxBodyBytes) || args.maxBodyBytes <= 0) throw new Error('--max-body-bytes must be a positive integer');
  return args;
}

async function main(args) {
  const service = await createService({ ...args, grpc: args.grpcPort !== undefined });
  // In-flight requests are answered and flushed first; then nothing keeps the event loop alive and node
  // exits 0 by itself (calling process.exit at once could cut a large answer still in the socket). The
  // unref'd timer only forces the exit if something else still holds the loop 10 s later. The handlers are in
  // place before the service says it is up: a SIGTERM right after that line must drain, not kill.
  const stop = () => service.drain().then(() => setTimeout(() => process.exit(0), 10000).unref());
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
  main(args).catch((err) => {
    console.error(`Error: ${err.message}`);
    process.exit(1);
  });
}

module.exports = { createService, DEFAULT_MAX_BODY_BYTES, MAX_ELEMENTS };
