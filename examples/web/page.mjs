// The page: verify the bundle at ?bundle= (default /bundle/, where serve.js mounts it) in onnxruntime-web's
// WASM backend, one line per set as examples/node/verify.js prints them, draw a chosen set, and POST the
// results to ?report= (default /results). Other parameters: set (its index in the list; default the last
// golden set), example (default the last in its batch: the padded one), head (default 0), threads (WASM
// threads; default onnxruntime-web's choice, more than one only where the page is cross-origin isolated).
// With ?corpus=URL (a folder holding index.json: {"bundles": [names], "tensors": [files]}, as serve.js --corpus
// serves it) it verifies every bundle listed and decodes every tensor file instead, in one page load, and posts
// each one's verdict; nothing is drawn.

import * as ort from '/node_modules/onnxruntime-web/dist/ort.wasm.min.mjs';
import {
  BundleError, checkOutputs, compare, fetchSchema, fetchVerified, loadTensor, numbers, readManifest, stepLabel,
} from './lib/bundle.mjs';
import { errorBars, heatmap } from './lib/draw.mjs';

const RUNTIME = 'onnxruntime-web';
const params = new URLSearchParams(window.location.search);
const base = new URL(params.get('bundle') || '/bundle/', window.location.href);
if (!base.pathname.endsWith('/')) base.pathname += '/';
const BASE = base.href;
const SCHEMA = new URL('/manifest.schema.json', window.location.href).href; // serve.js serves deploy/'s

const logElement = document.getElementById('log');
const lines = [];
function log(line) {
  lines.push(line);
  const span = document.createElement('span');
  span.className = line.split(' ')[0].replace(':', '');
  span.textContent = `${line}\n`;
  logElement.append(span);
}

function verdictLine(label, verdicts) {
  const ok = verdicts.every((v) => v.passed);
  const maxAbs = Math.max(...verdicts.map((v) => v.maxAbs));
  const reasons = verdicts.filter((v) => !v.passed).map((v) => `${v.name}: ${v.reason}`).join('; ');
  return { ok, maxAbs, reasons, line: `${ok ? 'PASSED' : 'FAILED'} | ${RUNTIME} | ${label} | max_abs=${maxAbs.toPrecision(3)}` + (ok ? '' : ` | ${reasons}`) };
}

// Verify the bundle at `base`, one line per set or step to `log`: the manifest, every sha256, every set's outputs
// against the model's, then every set and decode step run and compared.
async function verify(base, log) {
  const manifest = await readManifest(base, await fetchSchema(SCHEMA));
  const files = await fetchVerified(base, manifest);
  const tolerance = { atol: Number(manifest.tolerance.atol), rtol: Number(manifest.tolerance.rtol) };
  log(`bundle ${base} (model sha256 ${manifest.model.sha256.slice(0, 16)}): ${files.size} files, every sha256 as in its manifest`);
  if (manifest.description) log(manifest.description);
  const tensor = (f) => loadTensor(files.get(f.file), f.file);
  const toOrt = (t) => new ort.Tensor(t.type, t.data, t.dims);
  const options = { executionProviders: ['wasm'] };
  if (manifest.model.data) {
    options.externalData = [{ path: manifest.model.data.file, data: files.get(manifest.model.data.file) }];
  }
  const session = await ort.InferenceSession.create(files.get(manifest.model.file), options);
  checkOutputs(manifest, session.outputNames); // every set and step compares every output of the model
  const threads = ort.env.wasm.numThreads;
  log(`onnxruntime-web ${ort.env.versions.web}, wasm backend, ${threads} thread${threads === 1 ? '' : 's'}, ` +
      `cross-origin isolated: ${window.crossOriginIsolated ? 'yes' : 'no'}; tolerance atol=${tolerance.atol}, ` +
      `rtol=${tolerance.rtol} (the manifest's)`);

  const results = [];
  async function check(label, inputs, expectedFiles, past = {}) {
    const feeds = { ...past };
    const decoded = {};
    for (const f of inputs) feeds[f.name] = toOrt((decoded[f.name] = tensor(f)));
    const outputs = await session.run(feeds);
    const expected = {};
    const verdicts = expectedFiles.map((f) => {
      expected[f.name] = tensor(f);
      return { name: f.name, ...compare(outputs[f.name], expected[f.name], tolerance, f.valid_lengths) };
    });
    const verdict = verdictLine(label, verdicts);
    log(verdict.line);
    results.push({ label, ...verdict, inputs: decoded, outputs, expected, verdicts });
    return outputs;
  }
  for (const set of manifest.test_data_sets) await check(`${set.folder} (${set.case})`, set.inputs, set.outputs);
  if (manifest.decode) { // a model with a KV cache: decode step by step, threading present_* into past_*
    const { thread, first_past: first, steps } = manifest.decode;
    let past = {};
    const empty = { float32: Float32Array, float16: Uint16Array }[first.dtype || 'float32'];
    if (!empty) throw new BundleError(`decode.first_past.dtype ${JSON.stringify(first.dtype)}: this verifier takes float32 or float16`);
    const size = first.shape.reduce((a, b) => a * b, 1); // zeros: none for a growing cache, the buffers for a static one
    for (const name of Object.values(thread)) past[name] = new ort.Tensor(first.dtype || 'float32', new empty(size), first.shape);
    for (const step of steps) {
      const outputs = await check(stepLabel(step), step.inputs, step.outputs, past);
      past = {};
      for (const [present, pastName] of Object.entries(thread)) past[pastName] = outputs[present];
    }
  }
  const passed = results.filter((r) => r.ok).length;
  log(`${passed} passed, ${results.length - passed} failed`);
  return { manifest, tolerance, results };
}

// --- pictures ---------------------------------------------------------------------------------------------

// Example `e` of a tensor whose first axis is the batch, as (rows, cols) numbers: its last two axes (a
// (batch, 1, kv) mask gives one row, broadcast later).
function slice2d(t, e, lead = []) {
  const dims = t.dims;
  const cols = dims[dims.length - 1];
  const rows = dims.length >= 3 ? dims[dims.length - 2] : 1;
  let offset = e;
  for (let k = 1; k < dims.length - 2; k++) offset = offset * dims[k] + (lead[k - 1] || 0);
  const values = numbers(t).subarray(offset * rows * cols, (offset + 1) * rows * cols);
  return { values, rows, cols };
}

function figure(caption) {
  const fig = document.createElement('figure');
  const canvas = document.createElement('canvas');
  const text = document.createElement('figcaption');
  text.textContent = caption;
  fig.append(canvas, text);
  document.getElementById('pictures').append(fig);
  return canvas;
}

function draw(state) {
  const { manifest, tolerance, results } = state;
  const result = results[Number(document.getElementById('set').value)];
  const e = Number(document.getElementById('example').value);
  const head = Number(document.getElementById('head').value || 0);
  document.getElementById('pictures').replaceChildren();
  const main = manifest.outputs.find((o) => o.name !== 'attn_probs' && result.expected[o.name]) || manifest.outputs[0];
  const probs = result.expected.attn_probs ? 'attn_probs' : null;
  const q = probs ? result.expected.attn_probs.dims[2] : null;
  if (result.inputs.mask) {
    let { values, rows, cols } = slice2d(result.inputs.mask, e);
    if (rows === 1 && q > 1) { // a (batch, 1, kv) key mask: the same row for every query
      values = Float64Array.from({ length: q * cols }, (_, i) => values[i % cols]);
      rows = q;
    }
    heatmap(figure(`mask of ${result.label}, example ${e}: yellow = may attend, purple = masked`), values, rows,
      cols, { title: 'mask (input)' });
  } else {
    const note = document.createElement('figcaption');
    note.textContent = `the mask: ${manifest.mask_convention}`;
    document.getElementById('pictures').append(note);
  }
  if (probs) {
    const actual = result.outputs.attn_probs;
    const { values, rows, cols } = slice2d(actual, e, [head]);
    heatmap(figure(`attention probabilities from onnxruntime-web, example ${e}, head ${head}: each row sums to 1`),
      values, rows, cols, { title: `attn_probs, head ${head}` });
    const verdict = result.verdicts.find((v) => v.name === 'attn_probs');
    if (verdict.errors) {
      const expected = slice2d(result.expected.attn_probs, e, [head]).values;
      const error = Float64Array.from(values, (v, i) => Math.abs(v - expected[i]));
      heatmap(figure(`|onnxruntime-web - float64 PyTorch| of those probabilities (log scale); max ${Math.max(...error).toPrecision(3)}`),
        error, rows, cols, { title: '|error| of attn_probs', lo: -10, hi: -4, log: true });
    }
    return;
  }
  const verdict = result.verdicts.find((v) => v.name === main.name);
  if (!verdict.errors) return; // a shape or type mismatch: the line says so
  const dims = result.expected[main.name].dims;
  const positions = dims.length >= 2 ? dims[1] : dims[0];
  const per = dims.slice(2).reduce((a, b) => a * b, 1);
  const errors = Float64Array.from({ length: positions }, (_, p) => {
    let worst = 0;
    for (let k = 0; k < per; k++) worst = Math.max(worst, verdict.errors[(e * positions + p) * per + k]);
    return worst;
  });
  errorBars(figure(`largest |onnxruntime-web - float64 PyTorch| of '${main.name}' at each position of example ${e} ` +
    `(log scale; the dashed line is the manifest's atol, rtol=${tolerance.rtol} also allowed)`), errors,
  { title: `error of ${main.name} per position`, atol: tolerance.atol });
}

function controls(state, chosen) {
  const options = (select, labels, value) => {
    select.replaceChildren(...labels.map((label, i) => new Option(label, String(i))));
    select.value = String(Math.min(Math.max(value, 0), labels.length - 1));
  };
  const setSelect = document.getElementById('set');
  const exampleSelect = document.getElementById('example');
  const headSelect = document.getElementById('head');
  const refill = (setIndex, example) => {
    const result = state.results[setIndex];
    const first = Object.values(result.expected)[0];
    options(exampleSelect, Array.from({ length: first.dims[0] }, (_, i) => String(i)), example ?? first.dims[0] - 1);
    const probs = result.expected.attn_probs;
    document.getElementById('head-control').hidden = !probs;
    options(headSelect, Array.from({ length: probs ? probs.dims[1] : 1 }, (_, i) => String(i)), chosen.head);
  };
  options(setSelect, state.results.map((r) => r.label), chosen.set);
  refill(Number(setSelect.value), chosen.example);
  setSelect.onchange = () => { refill(Number(setSelect.value)); draw(state); };
  exampleSelect.onchange = () => draw(state);
  headSelect.onchange = () => draw(state);
  document.getElementById('controls').hidden = false;
}

async function report(body) {
  try {
    await fetch(params.get('report') || '/results', {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
    });
  } catch (err) {
    log(`(could not post the results: ${err.message})`);
  }
}

// ?corpus=: every bundle and tensor file the corpus lists, each one's verdict; posted as one report
async function verifyCorpus(about) {
  const root = new URL(params.get('corpus'), window.location.href);
  if (!root.pathname.endsWith('/')) root.pathname += '/';
  const index = await (await fetch(new URL('index.json', root))).json();
  const bundles = [];
  for (const name of index.bundles) {
    const own = [];
    let error = null;
    let kind = null;
    let results = [];
    try {
      ({ results } = await verify(new URL(`${name}/`, root).href, (line) => own.push(line)));
    } catch (err) {
      kind = err instanceof BundleError ? 'bundle' : 'unexpected';
      error = kind === 'bundle' ? err.message : String(err.message || err).split('\n')[0];
    }
    const passed = results.filter((r) => r.ok).length;
    bundles.push({ name, error, kind, passed, failed: results.length - passed, lines: own,
      failed_sets: results.filter((r) => !r.ok).map((r) => r.label) });
    log(`${name}: ${error ? `Error: ${error}` : `${passed} passed, ${results.length - passed} failed`}`);
  }
  const tensors = [];
  for (const file of index.tensors) {
    try {
      const bytes = new Uint8Array(await (await fetch(new URL(file, root))).arrayBuffer());
      const t = loadTensor(bytes, file);
      const values = Array.from(numbers(t), (v) => (Number.isFinite(v) ? v : String(v)));
      tensors.push({ file, name: t.name, type: t.type, dims: t.dims, values });
    } catch (err) {
      tensors.push({ file, error: err instanceof BundleError ? err.message : `unexpected: ${err.message || err}` });
    }
  }
  document.body.dataset.status = 'done';
  await report({ ...about, corpus: true, bundles, tensors, lines });
}

async function main() {
  ort.env.wasm.wasmPaths = new URL('/node_modules/onnxruntime-web/dist/', window.location.href).href;
  if (params.has('threads')) ort.env.wasm.numThreads = Number(params.get('threads'));
  const about = { runtime: RUNTIME, backend: 'wasm', version: ort.env.versions.web, bundle: BASE,
    cross_origin_isolated: window.crossOriginIsolated };
  if (params.has('corpus')) return verifyCorpus(about);
  let state;
  try {
    state = await verify(BASE, log);
  } catch (err) {
    const message = err instanceof BundleError ? err.message : String(err.message || err).split('\n')[0];
    log(`Error: ${message}`);
    document.body.dataset.status = 'error';
    await report({ ...about, error: message, passed: 0, failed: 0, lines });
    return;
  }
  const { manifest, results } = state;
  const goldenSets = manifest.test_data_sets.length;
  controls(state, { set: params.has('set') ? Number(params.get('set')) : goldenSets - 1,
    example: params.has('example') ? Number(params.get('example')) : undefined,
    head: Number(params.get('head') || 0) });
  draw(state);
  const passed = results.filter((r) => r.ok).length;
  document.body.dataset.status = passed === results.length ? 'passed' : 'failed';
  await report({ ...about, threads: ort.env.wasm.numThreads, tolerance: state.tolerance, error: null, passed,
    failed: results.length - passed, lines,
    sets: results.map((r) => ({ label: r.label, passed: r.ok, max_abs: Number.isFinite(r.maxAbs) ? r.maxAbs : null,
      reasons: r.reasons })) });
}

main();
