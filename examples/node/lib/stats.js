'use strict';
// Triton's statistics extension for the one model this service serves: counts and cumulative nanoseconds, taken
// with process.hrtime.bigint(). What each duration covers here:
//   success / fail   a request from its last body byte (HTTP) or its decoded message (gRPC) to its answer
//                    handed to the socket: the service's whole time
//   queue            waiting for the session, which runs one request at a time (onnxruntime-node runs on the
//                    main thread, so runs never overlap anyway; queueing them keeps compute_infer the run alone)
//   compute_input    the request's tensors made: JSON parsed and converted, or binary views taken
//   compute_infer    session.run: the model's own time
//   compute_output   the answer encoded: JSON values, or the binary header and views
// The service does no batching (max_batch_size 0): every request is one inference and one execution, and Triton
// reports such a model's executions under batch_size 1.

const DURATIONS = ['success', 'fail', 'queue', 'compute_input', 'compute_infer', 'compute_output', 'cache_hit', 'cache_miss'];
const BATCH_DURATIONS = ['compute_input', 'compute_infer', 'compute_output'];

const zero = () => ({ count: 0n, ns: 0n });

class Statistics {
  constructor(name, version) {
    this.name = name;
    this.version = version;
    this.lastInference = 0; // ms since the epoch
    this.inferenceCount = 0n;
    this.executionCount = 0n;
    this.inference = Object.fromEntries(DURATIONS.map((d) => [d, zero()]));
    this.batch = Object.fromEntries(BATCH_DURATIONS.map((d) => [d, zero()]));
  }

  // A request answered: times in ns (BigInt) of each part, and the whole.
  success({ queue, input, infer, output, total }) {
    const add = (stat, ns) => { stat.count += 1n; stat.ns += ns; };
    add(this.inference.success, total);
    add(this.inference.queue, queue);
    add(this.inference.compute_input, input);
    add(this.inference.compute_infer, infer);
    add(this.inference.compute_output, output);
    add(this.batch.compute_input, input);
    add(this.batch.compute_infer, infer);
    add(this.batch.compute_output, output);
    this.inferenceCount += 1n;
    this.executionCount += 1n;
    this.lastInference = Date.now();
  }

  // A request refused or failed on the model's infer route: every 4xx, 413 and 415 included (refused before the
  // body was read: lib/http.js's refuse), and every gRPC error of ModelInfer
  fail(total) {
    this.inference.fail.count += 1n;
    this.inference.fail.ns += total;
  }

  // The model_stats entry of Triton's JSON (numbers, exact below 2^53 ns: 104 days of cumulative time)
  toJSON() {
    const durations = (stats) => Object.fromEntries(Object.entries(stats)
      .map(([k, v]) => [k, { count: Number(v.count), ns: Number(v.ns) }]));
    return {
      name: this.name,
      version: this.version,
      last_inference: this.lastInference,
      inference_count: Number(this.inferenceCount),
      execution_count: Number(this.executionCount),
      inference_stats: durations(this.inference),
      response_stats: {},
      batch_stats: this.executionCount ? [{ batch_size: 1, ...durations(this.batch) }] : [],
      memory_usage: [],
    };
  }

  // The same as a gRPC ModelStatistics message (uint64 as decimal strings, exact)
  toProto() {
    const durations = (stats) => Object.fromEntries(Object.entries(stats)
      .map(([k, v]) => [k, { count: v.count.toString(), ns: v.ns.toString() }]));
    return {
      name: this.name,
      version: this.version,
      last_inference: String(this.lastInference),
      inference_count: this.inferenceCount.toString(),
      execution_count: this.executionCount.toString(),
      inference_stats: durations(this.inference),
      batch_stats: this.executionCount ? [{ batch_size: '1', ...durations(this.batch) }] : [],
      memory_usage: [],
    };
  }
}

module.exports = { Statistics };
