"""A static cache (export-attn --kv-cache --max-len N) decoded in place by the Node and C++ consumers:
examples/node/decode_static.js (lib/static_cache.js: the buffers fed as past and pre-allocated as present in
session.run) and examples/cpp/decode_static (static_cache.cc: Ort::IoBinding of one Ort::Value as both). Both take
the same plan and write the same files; every step's output and each slot's valid cache at the end are compared
with the float64 module run on the whole sequence (runtime_check.decode.whole_sequence_golden), at the FLOAT32
profile check-attn holds onnxruntime's float32 to (runtime_check/compare.py: atol 1e-5, rtol 1e-4, about 10x the
worst error measured on this module). The buffers start filled with one value, and every position no step wrote
must keep it: the step neither reads nor writes them, and no runtime replaced the buffer with one of its own
(test_a_step_not_in_place_is_seen shows that check, and onnxruntime's TensorScatter warning, catching a step that
was not in place).

Skipped, visibly, where node and examples/node/node_modules, or the C++ toolchain and onnxruntime's headers
(scripts/setup/cpp.sh), are absent. The C++ example is built here into a folder of its own
(.deps/cpp/build-static, the decode_static target only), so that it never races test_cpp.py's build of
.deps/cpp/build in another worker."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper

from attn_onnx.cli.export_attn import main as export
from attn_onnx.runtime_check.compare import FLOAT32, OutputComparison
from attn_onnx.runtime_check.decode import whole_sequence_golden
from attn_onnx.runtime_check.model import load_model
from attn_onnx.runtime_check.reference import reference_module

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "examples" / "node"
DEPS = ROOT / ".deps" / "cpp"
INCLUDE = DEPS / "include" / "onnxruntime"
BUILD = DEPS / "build-static"
HEADS, WIDTH, MAX_LEN = 2, 16, 32
BATCH, LENGTH = 2, 11  # two slots; sequences of 11 tokens, self-attention
SEQUENCES = 3  # the third takes a slot another one freed (reset)
FILL = -7.25  # every float of both buffers before the first step: what positions beyond a slot's length keep
IMPLS = ("ort-gqa", "onnx-attention")

NODE_MISSING = shutil.which("node") is None or not (NODE_DIR / "node_modules" / "onnxruntime-node").is_dir()
NODE_REASON = "node or examples/node/node_modules is absent: run `npm ci --ignore-scripts --prefix examples/node`"
CPP_MISSING = [
    reason
    for missing, reason in (
        (shutil.which("g++") is None, "g++ is not installed: run scripts/setup/cpp.sh"),
        (shutil.which("cmake") is None, "cmake is not installed: run scripts/setup/cpp.sh"),
        (
            not (INCLUDE / "onnxruntime_cxx_api.h").is_file(),
            "onnxruntime's C++ headers are not in .deps/cpp: run scripts/setup/cpp.sh",
        ),
        (
            not Path("/usr/include/nlohmann/json.hpp").is_file() or not Path("/usr/include/openssl/evp.h").is_file(),
            "nlohmann-json3-dev or libssl-dev is not installed: run scripts/setup/cpp.sh",
        ),
    )
    if missing
]
RUNTIMES = [
    pytest.param(
        "node",
        marks=pytest.mark.skipif(NODE_MISSING, reason=NODE_REASON),
        id="node",
    ),
    pytest.param(
        "cpp",
        marks=pytest.mark.skipif(bool(CPP_MISSING), reason="; ".join(CPP_MISSING) or "-"),
        id="cpp",
    ),
]


# --- the models, the sequence and its golden -------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """impl -> (model path, the module it was exported from): export-attn's random weights of seed 0."""
    folder = tmp_path_factory.mktemp("static")
    made = {}
    for impl in IMPLS:
        path = folder / f"{impl}.onnx"
        args = ["--heads", str(HEADS), "--embedding-dim", str(WIDTH), "--kv-cache", "--max-len", str(MAX_LEN)]
        result = CliRunner().invoke(export, [*args, "--attention-impl", impl, "--no-check", "--out", str(path)])
        assert result.exit_code == 0, result.output
        spec = load_model(path).spec
        made[impl] = (path, spec.kind.build_module(spec, seed=0))
    return made


def test_the_module_of_seed_0_is_the_one_in_the_file(models):
    """The golden's module (build_module with seed 0) holds the weights export-attn wrote: read back from the
    file's initializers, every tensor is equal."""
    for path, module in models.values():
        loaded = load_model(path)
        from_file, _ = reference_module(loaded.proto, loaded.spec)
        ours, theirs = module.state_dict(), from_file.state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.fixture(scope="module")
def sequence():
    return np.random.default_rng(29).standard_normal((SEQUENCES, LENGTH, WIDTH), dtype=np.float32)


# --- plans: which tokens of which sequence each step feeds to which slots ---------------------------------------
# A step is (slots, [(sequence, start, stop) per slot], reset): the slots reset before it, then each slot of the
# contiguous run `slots` takes tokens start:stop of its sequence.


def _together(sizes, starts=(0, 0)):
    """Both slots, the same number of new tokens a step: `sizes` in turn, from each slot's `starts`."""
    steps, done = [], list(starts)
    for size in sizes:
        steps.append(([0, 1], [(b, done[b], done[b] + size) for b in range(BATCH)], []))
        done = [d + size for d in done]
    return steps


CASES = {
    # a prefill of 5 tokens, then one token at a time: how a decoder generates (GroupQueryAttention throughout)
    "prefill5+1x6": _together([5] + [1] * 6),
    # slot 0 prefilled alone with 5 tokens, slot 1 alone with 2 (a batch-1 step on the slot's part of the
    # buffers), then both one token a step, at unequal lengths: 11 and 8 at the end
    "unequal": [([0], [(0, 0, 5)], []), ([1], [(1, 0, 2)], [])] + _together([1] * 6, starts=(5, 2)),
    # several tokens into a batch of caches: ort-gqa's If takes the standard step (TensorScatter, Attention)
    "chunks2+3+1+4+1": _together([2, 3, 1, 4, 1]),
    # continuous batching: sequence 1 finishes after 5 tokens, slot 1 is reset and sequence 2 starts there (its
    # prompt alone), its keys over sequence 1's, then both slots step on
    "reset": [([0], [(0, 0, 5)], []), ([1], [(1, 0, 3)], [])]
    + _together([1, 1], starts=(5, 3))
    + [([1], [(2, 0, 4)], [1]), ([0, 1], [(0, 7, 8), (2, 4, 5)], []), ([0, 1], [(0, 8, 10), (2, 5, 7)], [])],
}


def expected_state(steps):
    """Per slot after the plan: its length, the sequence it holds, and the most positions any step wrote there."""
    lengths, holds, written = [0] * BATCH, [None] * BATCH, [0] * BATCH
    for slots, rows, reset in steps:
        for slot in reset:
            lengths[slot] = 0
        for slot, (seq, start, stop) in zip(slots, rows, strict=True):
            assert start == lengths[slot] if holds[slot] == seq else start == 0, "a plan feeds each sequence in order"
            lengths[slot], holds[slot] = stop, seq
            written[slot] = max(written[slot], stop)
    return lengths, holds, written


def write_plan(folder: Path, x: np.ndarray, steps, fill=FILL) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (slots, rows, reset) in enumerate(steps):
        query = np.stack([x[seq, start:stop] for seq, start, stop in rows]).astype("<f4")
        query.tofile(folder / f"step_{i}.f32")
        entry = {"q_len": query.shape[1], "query": f"step_{i}.f32", "slots": slots}
        if reset:
            entry["reset"] = reset
        entries.append(entry)
    plan = folder / "plan.json"
    plan.write_text(json.dumps({"batch": BATCH, "fill": fill, "steps": entries}))
    return plan


@pytest.fixture(scope="module")
def cpp_build():
    """examples/cpp's decode_static, configured and built against the onnxruntime this interpreter imports."""
    if CPP_MISSING:
        pytest.skip("; ".join(CPP_MISSING))
    import onnxruntime

    lib_dir = Path(onnxruntime.__file__).parent / "capi"
    for command in (
        ["cmake", "-S", ROOT / "examples" / "cpp", "-B", BUILD, f"-DONNXRUNTIME_INCLUDE_DIR={INCLUDE}"]
        + [f"-DONNXRUNTIME_LIB_DIR={lib_dir}"],
        ["cmake", "--build", BUILD, "--target", "decode_static", "-j", str(os.cpu_count() or 1)],
    ):
        result = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return BUILD / "decode_static"


@pytest.fixture
def decoder(request):
    """decoder(runtime) -> run(model, plan, out) -> CompletedProcess."""

    def get(runtime):
        if runtime == "node":
            command = ["node", str(NODE_DIR / "decode_static.js")]
        else:
            command = [str(request.getfixturevalue("cpp_build"))]

        def run(model, plan, out):
            return subprocess.run(
                [*command, str(model), str(plan), str(out)], capture_output=True, text=True, timeout=120
            )

        return run

    return get


def read_run(out: Path, steps, width=WIDTH):
    """What a decoder wrote: each sequence's outputs in token order, the buffers, the summary."""
    summary = json.loads((out / "summary.json").read_text())
    per_sequence: dict[int, list[np.ndarray]] = {}
    for i, (_, rows, _) in enumerate(steps):
        output = np.fromfile(out / f"output_{i}.f32", "<f4").reshape(len(rows), -1, width)
        for r, (seq, _, _) in enumerate(rows):
            per_sequence.setdefault(seq, []).append(output[r])
    outputs = {seq: np.concatenate(parts) for seq, parts in per_sequence.items()}  # (tokens, E)
    shape = (BATCH, summary["heads"], summary["max_len"], summary["d_k"])
    buffers = {name: np.fromfile(out / f"{name}.f32", "<f4").reshape(shape) for name in ("past_key", "past_value")}
    return outputs, buffers, summary


def comparisons(outputs, buffers, steps, module, x):
    """Every output token of every sequence, and each slot's valid cache at the end, against the float64 module on
    each whole sequence: OutputComparisons of the sequences (and of the slots) laid end to end."""
    gold_out, gold_keys, gold_values = whole_sequence_golden(module, x)  # (S, n, E), (S, h, n, d_k) x 2
    lengths, holds, _ = expected_state(steps)
    seqs, slots = sorted(outputs), [b for b in range(BATCH) if holds[b] is not None]
    cache = {  # slot b's valid part, and the golden keys of the sequence it holds
        name: (
            np.concatenate([buffers[name][b, :, : lengths[b]] for b in slots], axis=1),
            np.concatenate([gold[holds[b], :, : lengths[b]] for b in slots], axis=1),
        )
        for name, gold in (("past_key", gold_keys), ("past_value", gold_values))
    }
    pairs = {
        "output": (
            np.concatenate([outputs[s] for s in seqs]),
            np.concatenate([gold_out[s, : len(outputs[s])] for s in seqs]),
        ),
        "present_key": cache["past_key"],
        "present_value": cache["past_value"],
    }
    return [OutputComparison.measure(n, a, g, "float32", FLOAT32) for n, (a, g) in pairs.items()]


# --- the tests ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_decodes_in_place_as_the_whole_sequence(runtime, impl, case, models, sequence, decoder, tmp_path):
    model, module = models[impl]
    steps = CASES[case]
    plan = write_plan(tmp_path / "plan", sequence, steps)
    result = decoder(runtime)(model, plan, tmp_path / "out")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == "" and result.stdout.startswith(f"decode_static: {len(steps)} steps")
    outputs, buffers, summary = read_run(tmp_path / "out", steps)
    lengths, _, written = expected_state(steps)
    assert summary["lengths"] == lengths and summary["steps"] == len(steps)
    assert summary["written_in_place"] is True
    # onnxruntime-node 1.30 hands every fetched output back as a new copy (docs/serving-node.md); C++ nothing
    assert summary["returned_copy"] is (runtime == "node"), summary

    failures = [f for c in comparisons(outputs, buffers, steps, module, sequence) for f in c.failures]
    assert not failures, failures
    for name, buffer in buffers.items():  # where no step wrote: the fill, neither read nor written
        for slot, high in enumerate(written):
            tail = buffer[slot, :, high:]
            assert (tail == np.float32(FILL)).all(), f"{name} slot {slot}: {int((tail != FILL).sum())} changed"


def _past_len_plus_one(path: Path, to: Path) -> Path:
    """The model with past_len read one too high: every node takes past_len + 1 (off by one, as a consumer that
    counted a token twice would feed it)."""
    model = onnx.load(path)
    graph = model.graph
    for node in graph.node:
        node.input[:] = ["past_len_skewed" if name == "past_len" else name for name in node.input]
    for node in graph.node:  # If branches read outer names too
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                for inner in attr.g.node:
                    inner.input[:] = ["past_len_skewed" if n == "past_len" else n for n in inner.input]
    graph.initializer.append(onnx.numpy_helper.from_array(np.array(1, np.int64), "skew_one"))
    graph.node.insert(0, helper.make_node("Add", ["past_len", "skew_one"], ["past_len_skewed"], name="skew"))
    assert graph.input[[i.name for i in graph.input].index("past_len")].type.tensor_type.elem_type == TensorProto.INT64
    onnx.save(model, to)
    return to


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_cache_written_one_position_off_fails_the_comparison(runtime, impl, models, sequence, decoder, tmp_path):
    """The same decode on a model that reads past_len one too high: it runs, and the comparison fails, the outputs
    and the valid caches alike (position 0 of each sequence is never written, and the fill is attended)."""
    model, module = models[impl]
    steps = CASES["unequal"]
    broken = _past_len_plus_one(model, tmp_path / "broken.onnx")
    result = decoder(runtime)(broken, write_plan(tmp_path / "plan", sequence, steps), tmp_path / "out")
    assert result.returncode == 0, result.stderr
    outputs, buffers, _ = read_run(tmp_path / "out", steps)
    verdicts = {c.output: c for c in comparisons(outputs, buffers, steps, module, sequence)}
    assert {name for name, c in verdicts.items() if not c.passed} == {"output", "present_key", "present_value"}
    assert all(c.max_abs > 100 * c.atol for c in verdicts.values())


@pytest.mark.parametrize(
    "prefill, q_len, message",
    [
        ((30, 30), 3, "slot 0 holds 30 of 32 tokens, a step of 3 more does not fit"),
        ((2, 31), 2, "slot 1 holds 31 of 32 tokens, a step of 2 more does not fit"),
    ],
    ids=["both-slots", "the-longer-slot"],
)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_full_cache_is_refused_before_the_step(runtime, prefill, q_len, message, models, decoder, tmp_path):
    """A step that does not fit is one line on stderr, exit 1, the words of Python's CacheFullError: the steps
    before it were written, the refused one was not run."""
    import onnxruntime as ort

    from attn_onnx.runtime_check.static_cache import CacheFullError, StaticCache

    model, _ = models["onnx-attention"]
    x = np.random.default_rng(1).standard_normal((BATCH, MAX_LEN + 4, WIDTH), dtype=np.float32)
    steps = [([slot], [(slot, 0, n)], []) for slot, n in enumerate(prefill)]
    steps.append(([0, 1], [(b, prefill[b], prefill[b] + q_len) for b in range(BATCH)], []))
    result = decoder(runtime)(model, write_plan(tmp_path / "plan", x, steps), tmp_path / "out")
    expected = f"the cache is full: {message} (reset the slot, or export with a larger --max-len)"
    assert (result.returncode, result.stderr) == (1, f"Error: {expected}\n")
    assert sorted(p.name for p in (tmp_path / "out").glob("output_*")) == ["output_0.f32", "output_1.f32"]

    cache = StaticCache(ort.InferenceSession(str(model)), BATCH)  # Python's, on the same steps: the same words
    for slot, n in enumerate(prefill):
        cache.step(x[slot : slot + 1, :n], slots=[slot])
    with pytest.raises(CacheFullError) as raised:
        cache.step(np.stack([x[b, prefill[b] : prefill[b] + q_len] for b in range(BATCH)]))
    assert str(raised.value) == expected


@pytest.mark.skipif(NODE_MISSING, reason=NODE_REASON)
def test_node_binds_the_callers_memory_and_returns_a_copy(models, tmp_path):
    """What docs/serving-node.md states of onnxruntime-node, each seen: a step on a subarray (slot 1's part of the
    buffer) writes exactly that slot's new positions in the caller's Float32Array; the result's present is a new
    ArrayBuffer, a copy taken after the run (a later change to the buffer does not show in it)."""
    model, _ = models["ort-gqa"]
    script = tmp_path / "probe.js"
    script.write_text(
        f"""'use strict';
const {{ StaticCache }} = require({json.dumps(str(NODE_DIR / "lib" / "static_cache.js"))});
(async () => {{
  const cache = await StaticCache.create({json.dumps(str(model))}, 2);
  cache.buffers.key.fill(7);
  const x = Float32Array.from({{ length: 3 * cache.width }}, (_, i) => Math.sin(i));
  await cache.step(x, 3, {{ slots: [1] }});
  const changed = new Set();
  cache.buffers.key.forEach((v, i) => {{
    if (v !== 7) changed.add([Math.floor(i / cache.slotSize), Math.floor(i / (cache.maxLen * cache.dK)) % cache.heads,
      Math.floor(i / cache.dK) % cache.maxLen].join(','));
  }});
  const returned = cache.lastResult.present_key.data;
  const at = cache.slotSize; // slot 1, head 0, position 0 in the buffer; the result holds slot 1 alone
  const wasEqual = returned[0] === cache.buffers.key[at];
  cache.buffers.key[at] += 1;
  console.log(JSON.stringify({{ changed: [...changed].sort(), sameBuffer: returned.buffer === cache.buffers.key.buffer,
    wasEqual, followsLaterChange: returned[0] === cache.buffers.key[at] }}));
}})().catch((e) => {{ console.error(e); process.exit(1); }});
"""
    )
    result = subprocess.run(["node", str(script)], capture_output=True, text=True, timeout=60, cwd=NODE_DIR)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["changed"] == [f"1,{h},{p}" for h in range(HEADS) for p in range(3)]
    assert seen == {**seen, "sameBuffer": False, "wasEqual": True, "followsLaterChange": False}


NOT_IN_PLACE = """'use strict';
const {{ StaticCache }} = require({lib});
(async () => {{
  const cache = await StaticCache.create({model}, 2);
  cache.buffers.key.fill({fill});
  cache.buffers.value.fill({fill});
  const run = cache.session.run.bind(cache.session);
  cache.session.run = async (feeds, fetches) => {{ // the presents left to onnxruntime to allocate
    const result = await run(feeds, {{ output: null, present_key: null, present_value: null }});
    if ({copy_back}) {{ // then copied into the caller's buffers, as a binding that copies back would
      fetches.present_key.data.set(result.present_key.data);
      fetches.present_value.data.set(result.present_value.data);
    }}
    return result;
  }};
  try {{
    await cache.step(Float32Array.from({{ length: 2 * 5 * cache.width }}, (_, i) => Math.sin(i)), 5);
    await cache.step(Float32Array.from({{ length: 2 * cache.width }}, (_, i) => Math.cos(i)), 1);
    await cache.step(Float32Array.from({{ length: 2 * 2 * cache.width }}, (_, i) => Math.cos(2 * i)), 2);
  }} catch (error) {{
    console.log(JSON.stringify({{ error: `${{error.name}}: ${{error.message}}` }}));
    return;
  }}
  let tail = 0; // floats beyond each slot's length (8) no longer the fill
  cache.buffers.key.forEach((v, i) => {{
    if (Math.floor(i / cache.dK) % cache.maxLen >= 8 && v !== {fill}) tail++;
  }});
  console.log(JSON.stringify({{ tail }}));
}})();
"""


@pytest.mark.skipif(NODE_MISSING, reason=NODE_REASON)
@pytest.mark.parametrize("impl", IMPLS)
def test_a_step_not_in_place_is_seen(impl, models, tmp_path):
    """The checks above, each shown to catch a step that was not in place (session.run wrapped so that onnxruntime
    allocates the presents): left at that, StaticCache's own check refuses the step (the buffer was not written);
    copied back into the buffers afterwards, the decode is right but GroupQueryAttention's fresh present changed the
    tail (its positions beyond the lengths are unspecified there), and onnxruntime's TensorScatter says so on stderr
    (a warning: the decode tests above hold both runtimes' stderr empty, with warnings on)."""
    model, _ = models[impl]
    seen = {}
    for copy_back in ("false", "true"):
        script = tmp_path / f"not_in_place_{copy_back}.js"
        lib = json.dumps(str(NODE_DIR / "lib" / "static_cache.js"))
        script.write_text(NOT_IN_PLACE.format(lib=lib, model=json.dumps(str(model)), fill=FILL, copy_back=copy_back))
        result = subprocess.run(["node", str(script)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        seen[copy_back] = (json.loads(result.stdout), result.stderr)
    (ignored, _), (copied, stderr) = seen["false"], seen["true"]
    assert ignored["error"].startswith(
        "NotInPlaceError: onnxruntime-node did not write present_key into the caller's buffer: slot 0, head 0, "
        f"position 0 holds {FILL} where the step returned "
    )
    if impl == "ort-gqa":  # one token into a batch (GroupQueryAttention): its fresh present's tail is not the fill
        assert copied["tail"] > 0
    # two tokens into a batch of caches: TensorScatter in both forms (ort-gqa's If takes the standard step)
    assert "TensorScatter: in-place optimization not activated, copying past_cache to present_cache" in stderr
