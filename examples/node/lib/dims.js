'use strict';
// The model's named dims, checked across a request's inputs (HTTP JSON, HTTP binary, gRPC, and verify.js's golden
// sets), and the work a request's shapes would take: one rule, in one place.
//
// A manifest lists each input's axes in `inputs[i].dims`, as a name ("batch", "q_len", "kv_len", ...) or a number.
// Every axis with the same name must have one value across the request's inputs. Then the manifest's top-level
// `dims` field, one entry per name, may constrain a name further:
//   {"is": "q_len", "or_one": true}       this dim equals that one (or is 1, with or_one)
//   {"sum": ["past_len", "q_len"]}        this dim is their sum
//   {"description": "..."}                a plain name
// A manifest without `dims` (bundles written before it) gets FALLBACK_DIMS: mask_q_len is 1 or q_len.
//
// Each input is checked alone against its own shape first (protocol.js's checkShape): rank, fixed dims, datatype.
// Without this cross-check a mask (2, 3, 1) with 4 keys broadcasts over the keys and padding never applies, and
// a query of batch 2 with keys of batch 1 reshapes one sequence into two: onnxruntime answers both, wrongly.

const FALLBACK_DIMS = { mask_q_len: { is: 'q_len', or_one: true } };

// {name: {value, input, axis}}: each named axis's value, from the first input (in the manifest's order) that has
// it; or the first disagreement as a problem string. `shapes`: {input name: [int, ...]} (inputs may be missing).
function namedDims(specs, shapes) {
  const seen = {};
  for (const spec of specs) {
    const shape = shapes[spec.name];
    if (!shape || !Array.isArray(spec.dims)) continue;
    for (let axis = 0; axis < spec.dims.length; axis++) {
      const name = spec.dims[axis];
      if (typeof name !== 'string' || axis >= shape.length) continue;
      const first = seen[name];
      if (!first) seen[name] = { value: shape[axis], input: spec.name, axis };
      else if (first.value !== shape[axis]) {
        return { problem: `input '${spec.name}' dim ${axis} (${name}) is ${shape[axis]}, but input '${first.input}' dim ` +
          `${first.axis} (${name}) is ${first.value}: the inputs must agree on ${name}` };
      }
    }
  }
  return { seen };
}

const where = (d) => `input '${d.input}' dim ${d.axis}`;

// The first way the request's input shapes break the model's named dims, as one sentence naming both inputs and
// the dim; or null. `manifest`: a bundle manifest (inputs[i].dims, and `dims` where it has one).
function dimsProblem(manifest, shapes) {
  const { seen, problem } = namedDims(manifest.inputs, shapes);
  if (problem) return problem;
  const rules = manifest.dims && typeof manifest.dims === 'object' ? manifest.dims : FALLBACK_DIMS;
  for (const [name, rule] of Object.entries(rules)) {
    const dim = seen[name];
    if (!dim || !rule || typeof rule !== 'object') continue;
    if (typeof rule.is === 'string' && seen[rule.is]) {
      const other = seen[rule.is];
      if (dim.value !== other.value && !(rule.or_one === true && dim.value === 1)) {
        return `${where(dim)} (${name}) is ${dim.value}, but ${where(other)} (${rule.is}) is ${other.value}: ` +
          `${name} must equal ${rule.is}${rule.or_one === true ? ' or be 1' : ''}`;
      }
    }
    if (Array.isArray(rule.sum) && rule.sum.every((n) => seen[n])) {
      const parts = rule.sum.map((n) => seen[n]);
      const total = parts.reduce((a, p) => a + p.value, 0);
      if (dim.value !== total) {
        return `${where(dim)} (${name}) is ${dim.value}, but ${rule.sum.map((n, k) => `${where(parts[k])} (${n}) ` +
          `${parts[k].value}`).join(' + ')} is ${total}: ${name} must be ${rule.sum.join(' + ')}`;
      }
    }
  }
  return null;
}

// The first value of the request's inputs that breaks the manifest's top-level `lengths` rules, as one sentence;
// or null. A rule rules an integer input's values (one per sequence), not a shape:
//   "lengths": {"past_len": {"at_least": 0, "plus": "q_len", "at_most": 32, "limit": "the cache's max_len",
//                            "past_limit": "the cache is full (...)", "description": "..."}}
// each value v is at least `at_least`, and v + the request's `plus` dim at most `at_most` (unchecked where that dim
// is unknown). A static cache's past_len out of the cache fails inside onnxruntime with its own words (or writes
// where it should not); refused here first. The words are Python's attn_onnx.exporter.kinds.dims.values_problem's
// and the Triton model's, held to them by tests/deploy/test_corpus.py. `feeds`: {name: tensor with .dims and .data}
// (onnxruntime-node's Tensors); call after dimsProblem found nothing. Values are compared as BigInt: exact.
function valuesProblem(manifest, feeds) {
  const rules = manifest.lengths && typeof manifest.lengths === 'object' ? manifest.lengths : {};
  if (!Object.keys(rules).length) return null;
  const shapes = {};
  for (const [name, tensor] of Object.entries(feeds)) shapes[name] = Array.from(tensor.dims, Number);
  const sizes = resolve(manifest, shapes);
  for (const [name, rule] of Object.entries(rules)) {
    const tensor = feeds[name];
    if (!tensor || !rule || typeof rule !== 'object') continue;
    const low = Number.isInteger(rule.at_least) ? BigInt(rule.at_least) : null;
    const high = Number.isInteger(rule.at_most) ? BigInt(rule.at_most) : null;
    const plus = typeof rule.plus === 'string' && rule.plus ? rule.plus : null;
    const extra = plus ? (sizes[plus] === undefined ? null : BigInt(sizes[plus])) : 0n;
    for (let i = 0; i < tensor.data.length; i++) {
      const element = tensor.data[i]; // a BigInt (INT64), or a number: truncated, as Python's int() does
      if (typeof element !== 'bigint' && !Number.isFinite(element)) continue;
      const value = typeof element === 'bigint' ? element : BigInt(Math.trunc(Number(element)));
      if (low !== null && value < low) return `input '${name}' is ${value} for sequence ${i}: a length is at least ${low}`;
      if (high !== null && extra !== null && value + extra > high) {
        const sum = plus ? `, and ${value} + ${plus} ${extra} is ${value + extra}` : '';
        const limit = typeof rule.limit === 'string' && rule.limit ? rule.limit : "the model's limit";
        const after = typeof rule.past_limit === 'string' && rule.past_limit ? `: ${rule.past_limit}` : '';
        return `input '${name}' is ${value} for sequence ${i}${sum}, past ${limit} ${high}${after}`;
      }
    }
  }
  return null;
}

// {dim name: size}: every named dim the request's shapes set (the first input's, in the manifest's order), and the
// dims that are a `sum` of those
function resolve(manifest, shapes) {
  const { seen } = namedDims(manifest.inputs, shapes);
  const sizes = {};
  for (const [name, d] of Object.entries(seen || {})) sizes[name] = d.value;
  const rules = manifest.dims && typeof manifest.dims === 'object' ? manifest.dims : {};
  for (const [name, rule] of Object.entries(rules)) {
    if (sizes[name] === undefined && rule && Array.isArray(rule.sum) && rule.sum.every((n) => sizes[n] !== undefined)) {
      sizes[name] = rule.sum.reduce((a, n) => a + sizes[n], 0);
    }
  }
  return sizes;
}

// The bytes a request of these shapes takes at its peak, estimated before anything is allocated:
//   4 x (2 x batch x heads x q_len x kv_len   the attention scores and probabilities
//        + the elements of every input and every output)
// heads from the manifest's metadata (attn_onnx.heads, 1 where absent); kv_len is kv_len, or total_len for a
// model with a KV cache. Call after dimsProblem found nothing: the named dims then have one value each.
function workEstimate(manifest, shapes) {
  const { seen } = namedDims(manifest.inputs, shapes);
  const value = (name) => (seen && seen[name] ? seen[name].value : 1);
  const heads = Number((manifest.metadata || {})['attn_onnx.heads']) || 1;
  const keys = seen && (seen.kv_len || seen.total_len) ? (seen.kv_len || seen.total_len).value : 1;
  let elements = 2 * value('batch') * heads * value('q_len') * keys;
  for (const shape of Object.values(shapes)) elements += shape.reduce((a, b) => a * b, 1);
  for (const out of manifest.outputs) {
    if (!Array.isArray(out.dims)) continue;
    elements += out.dims.reduce((a, d) => a * (typeof d === 'number' ? d : value(d)), 1);
  }
  return 4 * elements;
}

module.exports = { FALLBACK_DIMS, dimsProblem, valuesProblem, workEstimate };
