'use strict';
// The Open Inference Protocol over gRPC: `inference.GRPCInferenceService` (proto/grpc_service.proto) with
// @grpc/grpc-js. Inputs come as raw_input_contents (bytes, one entry per input: typed-array views, no
// per-element work) or as typed contents (fp32_contents, bool_contents, ...); outputs go back as
// raw_output_contents, as Triton sends them. A bad request gets INVALID_ARGUMENT (NOT_FOUND for another model,
// RESOURCE_EXHAUSTED for a message over the size limit) naming the problem; the service keeps serving.

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const loader = require('@grpc/proto-loader');
const {
  DATATYPES, RequestError, TO_DATATYPE, byteSize, checkOutputs, checkShape, collectFeeds, fromBytes, fromValues, toBytes,
} = require('./protocol');
const { SERVER } = require('./http');

const PROTO_DIR = path.join(__dirname, '..', 'proto');
// int64/uint64 as decimal strings (exact), enums by name, unset fields as their defaults
const definition = loader.loadSync(path.join(PROTO_DIR, 'grpc_service.proto'), {
  keepCase: true, longs: String, enums: String, defaults: true, oneofs: true, includeDirs: [PROTO_DIR],
});
const SERVICE = grpc.loadPackageDefinition(definition).inference.GRPCInferenceService.service;

// A gRPC typed-contents element -> the typed array's element (int64 arrive as decimal strings)
const CONTENTS_ELEMENT = {
  FP32: DATATYPES.FP32.json,
  FP64: DATATYPES.FP64.json,
  BOOL: DATATYPES.BOOL.json,
  UINT8: DATATYPES.UINT8.json,
  INT64: (v) => (typeof v === 'string' && /^-?\d+$/.test(v) ? BigInt(v) : undefined),
};

const DECODE_NS = Symbol('decodeNs');
const now = () => process.hrtime.bigint();

function checkModel(model, name, version) {
  if (name !== model.name) throw new RequestError(404, `no model '${name}'; this service serves '${model.name}'`);
  if (version !== '' && version !== model.version) {
    throw new RequestError(404, `model '${name}' has no version '${version}'; this service serves version ${model.version}`);
  }
}

function decodeInfer(model, request) {
  checkModel(model, request.model_name, request.model_version);
  const raw = request.raw_input_contents;
  if (raw.length && raw.length !== request.inputs.length) {
    throw new RequestError(400,
      `raw_input_contents holds ${raw.length} entries for ${request.inputs.length} inputs; give one per input, or none`);
  }
  const feeds = collectFeeds(model.inputs, request.inputs, (input, spec) => {
    const where = `input '${spec.name}'`;
    if (input.parameters.shared_memory_region) throw new RequestError(400, `${where}: shared memory is not supported by this service`);
    const shape = input.shape.map(Number);
    const count = checkShape({ datatype: input.datatype, shape }, spec);
    const kind = DATATYPES[spec.datatype];
    const contents = input.contents ? Object.values(input.contents).filter((list) => list.length) : [];
    if (raw.length) {
      if (contents.length) {
        throw new RequestError(400, `${where} has contents, but the request gives raw_input_contents: use one or the other`);
      }
      const bytes = raw[request.inputs.indexOf(input)];
      const expected = byteSize(spec, count);
      if (bytes.length !== expected) {
        throw new RequestError(400,
          `${where}: raw_input_contents holds ${bytes.length} bytes; shape [${shape}] of ${spec.datatype} takes ${expected}`);
      }
      return fromBytes({ shape }, spec, bytes);
    }
    if (!kind.contents) throw new RequestError(400, `${where}: ${spec.datatype} has no typed contents; send it in raw_input_contents`);
    const values = input.contents ? input.contents[kind.contents] : [];
    if (contents.length > 1 || (contents.length === 1 && contents[0] !== values)) {
      throw new RequestError(400, `${where}: ${spec.datatype} values go in contents.${kind.contents}, and only there`);
    }
    return fromValues({ shape }, spec, values, count, CONTENTS_ELEMENT[spec.datatype]);
  }, (shapes) => model.checkShapes(shapes), (input) => input.shape.map(Number));
  model.checkValues(feeds); // the inputs' values, by the manifest's `lengths` rules (a static cache's past_len)
  let wanted = model.outputs.map((o) => o.name); // no outputs listed: every output
  if (request.outputs.length) {
    for (const o of request.outputs) {
      if (o.parameters.classification) {
        throw new RequestError(400, `output '${o.name}': the classification extension is not supported by this service`);
      }
      if (o.parameters.shared_memory_region) {
        throw new RequestError(400, `output '${o.name}': shared memory is not supported by this service`);
      }
    }
    wanted = checkOutputs(model.outputs, request.outputs.map((o) => o.name));
  }
  return { feeds, wanted, id: request.id };
}

function encodeInfer(model, results, { wanted, id }, serialize) {
  const outputs = [];
  const raw = [];
  for (const name of wanted) {
    const tensor = results[name];
    outputs.push({ name, datatype: TO_DATATYPE[tensor.type], shape: Array.from(tensor.dims, String) });
    raw.push(toBytes(tensor));
  }
  return serialize({ model_name: model.name, model_version: model.version, id, outputs, raw_output_contents: raw });
}

function fail(callback, err) {
  if (err instanceof RequestError) callback({ code: grpc.status[err.grpc], details: err.message });
  else callback({ code: grpc.status.INTERNAL, details: String(err.message || err) });
}

// A unary handler from a function of the request: its value, or its RequestError as the gRPC status
function unary(fn) {
  return (call, callback) => {
    let value;
    try {
      value = fn(call.request);
    } catch (err) {
      fail(callback, err);
      return;
    }
    callback(null, value);
  };
}

function createGrpcServer(model, { maxBodyBytes }) {
  let draining = false;
  // ModelInfer's messages: the request's protobuf decode is timed (compute_input); the response is serialized
  // inside the request's path (compute_output) and handed to grpc-js as bytes.
  const infer = SERVICE.ModelInfer;
  const service = {
    ...SERVICE,
    ModelInfer: {
      ...infer,
      requestDeserialize: (bytes) => {
        const t0 = now();
        const message = infer.requestDeserialize(bytes);
        message[DECODE_NS] = now() - t0;
        return message;
      },
      responseSerialize: (value) => (Buffer.isBuffer(value) ? value : infer.responseSerialize(value)),
    },
  };

  const server = new grpc.Server({
    'grpc.max_receive_message_length': maxBodyBytes,
    'grpc.max_send_message_length': -1,
  });
  server.addService(service, {
    ServerLive: unary(() => ({ live: true })),
    ServerReady: unary(() => ({ ready: !draining })),
    ModelReady: unary((r) => ({ ready: r.name === model.name && (r.version === '' || r.version === model.version) })),
    ServerMetadata: unary(() => SERVER),
    ModelMetadata: unary((r) => {
      checkModel(model, r.name, r.version);
      return model.metadata();
    }),
    ModelConfig: unary((r) => {
      checkModel(model, r.name, r.version);
      return { config: model.config() };
    }),
    ModelStatistics: unary((r) => {
      if (r.name !== '') checkModel(model, r.name, r.version);
      return { model_stats: [model.stats.toProto()] };
    }),
    ModelInfer: (call, callback) => {
      const started = now();
      const request = call.request;
      model.infer(started, () => decodeInfer(model, request),
        (results, decoded) => encodeInfer(model, results, decoded, infer.responseSerialize), request[DECODE_NS])
        .then((bytes) => callback(null, bytes), (err) => fail(callback, err));
    },
  });

  // Bind to host:port (0: a free one); resolves to the port.
  function listen(port, host) {
    return new Promise((resolve, reject) => {
      server.bindAsync(`${host}:${port}`, grpc.ServerCredentials.createInsecure(), (err, bound) => (err ? reject(err) : resolve(bound)));
    });
  }

  // Stop taking calls; resolve once every call in flight has been answered, or, after `graceMs` (when finite),
  // once the calls still open are cancelled (forceShutdown: the client gets CANCELLED/UNAVAILABLE).
  function drain(graceMs = Infinity) {
    draining = true;
    return new Promise((resolve) => {
      let timer = null;
      if (Number.isFinite(graceMs)) {
        timer = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, graceMs);
        timer.unref();
      }
      server.tryShutdown(() => {
        if (timer) clearTimeout(timer);
        resolve();
      });
    });
  }

  return { server, listen, drain };
}

module.exports = { createGrpcServer };
