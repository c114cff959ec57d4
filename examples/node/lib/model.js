'use strict';
// The one model a service serves: its onnxruntime-node session (created once, shared), what the protocol says
// about it (metadata, Triton's model configuration), its statistics, and the path every request takes through it,
// whichever protocol brought it: decode -> queue -> run -> encode, each part timed.

const path = require('node:path');
const ort = require('onnxruntime-node');
const { BundleError, changedFiles, readManifest } = require('./bundle');
const { dimsProblem, valuesProblem, workEstimate } = require('./dims');
const { RequestError } = require('./protocol');
const { Statistics } = require('./stats');

const VERSION = '1';
const DEFAULT_MAX_REQUEST_BYTES = 1024 ** 3; // the work budget: 1 GiB, for a 2-core service with 24 GiB (docs/serving-node.md)
const PLATFORM = 'onnxruntime_onnx';
const CONFIG_TYPES = {
  FP16: 'TYPE_FP16', FP32: 'TYPE_FP32', FP64: 'TYPE_FP64', BOOL: 'TYPE_BOOL', UINT8: 'TYPE_UINT8', INT64: 'TYPE_INT64',
};

const now = () => process.hrtime.bigint();

class Model {
  constructor(manifest, session, file, { maxRequestBytes = DEFAULT_MAX_REQUEST_BYTES } = {}) {
    this.manifest = manifest;
    this.maxRequestBytes = maxRequestBytes;
    this.session = session;
    this.file = file;
    this.name = manifest.name;
    this.version = VERSION;
    this.inputs = manifest.inputs.map((i) => ({ name: i.name, datatype: i.datatype, shape: i.shape }));
    this.outputs = manifest.outputs.map((o) => ({ name: o.name, datatype: o.datatype, shape: o.shape }));
    this.stats = new Statistics(this.name, VERSION);
    this.tail = Promise.resolve(); // the run queue: one session.run at a time
  }

  metadata() {
    return { name: this.name, versions: [VERSION], platform: PLATFORM, inputs: this.inputs, outputs: this.outputs };
  }

  // A request's declared input shapes ({name: [int, ...]}, each already checked alone), checked together before
  // any tensor is made: the model's named dims (lib/dims.js), then the work budget. RequestError: 400 naming both
  // inputs and the dim; 413 (RESOURCE_EXHAUSTED) naming the estimate and the budget.
  checkShapes(shapes) {
    const problem = dimsProblem(this.manifest, shapes);
    if (problem) throw new RequestError(400, problem);
    const estimate = workEstimate(this.manifest, shapes);
    if (estimate > this.maxRequestBytes) {
      throw new RequestError(413, `this request would take about ${estimate} bytes at its peak (4 bytes x (2 x batch x heads ` +
        `x q_len x kv_len + every input's and output's elements)), past this service's budget of ${this.maxRequestBytes} ` +
        'bytes (--max-request-bytes)', 'RESOURCE_EXHAUSTED');
    }
  }

  // A request's input tensors, once made (after checkShapes), checked by their values against the manifest's
  // `lengths` rules (lib/dims.js valuesProblem: a static cache's past_len[b] at least 0, and past_len[b] + q_len at
  // most max_len).
  // RequestError: 400 naming the input, the sequence and the limit, before anything runs.
  checkValues(feeds) {
    const problem = valuesProblem(this.manifest, feeds);
    if (problem) throw new RequestError(400, problem);
  }

  // Triton's model configuration (GET /v2/models/NAME/config, gRPC ModelConfig). max_batch_size 0: the service
  // does no batching of its own, so every dim is given in full, -1 where it is free (batch too).
  config() {
    const tensor = (t) => ({ name: t.name, data_type: CONFIG_TYPES[t.datatype], dims: t.shape });
    return {
      name: this.name,
      platform: PLATFORM,
      backend: 'onnxruntime',
      runtime: '',
      version_policy: { latest: { num_versions: 1 } },
      max_batch_size: 0,
      input: this.inputs.map((t) => ({ ...tensor(t), format: 'FORMAT_NONE', is_shape_tensor: false, allow_ragged_batch: false,
        optional: false, is_non_linear_format_io: false })),
      output: this.outputs.map((t) => ({ ...tensor(t), label_filename: '', is_shape_tensor: false, is_non_linear_format_io: false })),
      batch_input: [],
      batch_output: [],
      instance_group: [{ name: this.name, kind: 'KIND_CPU', count: 1, gpus: [], secondary_devices: [], profile: [],
        passive: false, host_policy: '' }],
      default_model_filename: path.basename(this.file),
      cc_model_filenames: {},
      metric_tags: {},
      parameters: {},
      model_warmup: [],
    };
  }

  // One session.run at a time, in arrival order; the wait is the queue time, the run the compute_infer time.
  run(feeds, wanted) {
    const queued = now();
    const turn = this.tail.then(async () => {
      const start = now();
      let results;
      try {
        results = await this.session.run(feeds, wanted);
      } catch (err) {
        throw new RequestError(400, `onnxruntime could not run these inputs: ${String(err.message || err).split('\n')[0]}`);
      }
      return { results, queue: start - queued, infer: now() - start };
    });
    this.tail = turn.catch(() => {});
    return turn;
  }

  // A request's whole path. `decode()` -> {feeds, wanted, ...}; `encode(results, decoded)` -> the answer.
  // `started`: when the request was whole (its last byte, or its decoded message); `extraInput`: ns of decoding
  // already spent before (gRPC's protobuf parse). Records the statistics; rethrows RequestError.
  async infer(started, decode, encode, extraInput = 0n) {
    try {
      const t0 = now();
      const decoded = decode();
      const input = now() - t0 + extraInput;
      const { results, queue, infer } = await this.run(decoded.feeds, decoded.wanted);
      const t1 = now();
      const answer = encode(results, decoded);
      const t2 = now();
      this.stats.success({ queue, input, infer, output: t2 - t1, total: t2 - started + extraInput });
      return answer;
    } catch (err) {
      this.stats.fail(now() - started + extraInput);
      throw err;
    }
  }
}

// onnxruntime's session options for a service. Its intra-op threads spin-wait after each run by default; here they
// sleep unless `spinning`: a spinning thread holds a core while the main thread answers the request and the
// client reads it (on a 2-core machine, spinning put perf_analyzer's p50 at 3x the run, without it 1.2x;
// docs/serving-node.md). `threads` 0: onnxruntime's choice (one per physical core).
//
// enableCpuMemArena false: with onnxruntime's CPU arena, the largest request ever run leaves its peak resident for
// good (a 4096-long query took RSS from 105 to 1842 MiB, and it stayed); without it, each run's buffers go back to
// the allocator and RSS comes back near its level before (measured figures: docs/serving-node.md).
function sessionOptions({ threads = 0, spinning = false } = {}) {
  const options = { enableCpuMemArena: false, extra: { session: { intra_op: { allow_spinning: spinning ? '1' : '0' } } } };
  if (threads) options.intraOpNumThreads = threads;
  return options;
}

async function loadModel(bundle, runtime = {}) {
  const manifest = readManifest(bundle);
  const changed = changedFiles(bundle, manifest).filter((f) => f.startsWith(manifest.model.file));
  if (changed.length) throw new BundleError(`the bundle's model was changed: ${changed.join('; ')}`);
  const unknown = [...manifest.inputs, ...manifest.outputs].filter((t) => !CONFIG_TYPES[t.datatype]);
  if (unknown.length) {
    throw new BundleError(`this service cannot serve ${unknown.map((t) => `${t.name} (${t.datatype})`).join(', ')}; ` +
      `it takes ${Object.keys(CONFIG_TYPES).join(', ')}`);
  }
  const file = path.join(bundle, manifest.model.file);
  const session = await ort.InferenceSession.create(file, sessionOptions(runtime)); // once, shared
  return new Model(manifest, session, file, runtime);
}

module.exports = { DEFAULT_MAX_REQUEST_BYTES, Model, VERSION, loadModel };
