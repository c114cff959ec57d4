"""export-attn --kv-cache --max-len N (mha-static) and its checks: every form equals the float64 module on the
check's cases and in every decoding, in place; the checks fail a model broken on purpose; a full cache is refused.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from attn_onnx.cli.export_attn import main as export
from attn_onnx.errors import UsageError
from attn_onnx.exporter.kinds.mha_static import past_lengths
from attn_onnx.runtime_check.check import QUICK_CONFIG, CheckConfig, check_model
from attn_onnx.runtime_check.compare import FLOAT32
from attn_onnx.runtime_check.decode import whole_sequence_golden
from attn_onnx.runtime_check.decode_static import UNEQUAL, case_names, decode_results
from attn_onnx.runtime_check.runners.ort_runner import OrtRunner
from attn_onnx.runtime_check.static_cache import CacheFullError, StaticCache

STATIC = {
    "module": "mha-static",
    "mask": "causal",
    "causal_align": "bottom-right",
    "heads": 2,
    "embedding_dim": 16,
    "max_len": 32,
    "opset": 24,
}
FORMS = ("ort-gqa", "onnx-attention", "torch-export")


@pytest.mark.parametrize("variant", FORMS)
def test_every_form_equals_the_module_on_every_case_and_decoding(exported, variant):
    path, spec, module = exported(**STATIC, variant=variant)
    runtimes = ("onnxruntime",) if variant == "ort-gqa" else ("onnxruntime", "reference")
    report = check_model(path, CheckConfig(runtimes=runtimes), module=module)
    assert report.ok, [r.line() for r in report.failed]
    decoded = {r.case for r in report.results if r.case.startswith("decode.")}
    assert decoded == set(case_names())  # the concat check's chunkings and the unequal batch
    shapes = {r.case for r in report.results if not r.case.startswith("decode.")}
    assert "b5.q16.kv16.graph" in shapes  # 257 and 257 fitted into the cache: 16 cached and 16 new fill it exactly
    assert "b1.q7.kv16.graph" in shapes  # several new tokens into a filled cache at batch 1: GQA's own mode
    assert all(c.max_abs < FLOAT32.atol for r in report.results for c in r.comparisons)


def test_the_gate_runs_both_branches_of_the_gqa_form(exported):
    path, _, module = exported(**STATIC, variant="ort-gqa")
    report = check_model(path, QUICK_CONFIG, module=module)
    assert report.ok and report.coverage is not None and not report.coverage.missing
    assert len(report.coverage.paths) == 2  # GroupQueryAttention, and the standard step


def _mutated(path, tmp_path, change) -> onnx.ModelProto:
    proto = onnx.load(path)
    nodes = [*proto.graph.node]
    for node in proto.graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                nodes += attr.g.node
    assert change(nodes), "the mutation found nothing to change"
    return proto


def test_a_mask_one_key_short_fails_the_check(exported, tmp_path):
    """Each new token must attend its own key: `<` instead of `<=` is the off-by-one the check must see."""
    path, _, module = exported(**STATIC, variant="onnx-attention")

    def short(nodes):
        hits = [n for n in nodes if n.op_type == "LessOrEqual" and n.output[0].startswith("allowed")]
        for n in hits:
            n.op_type = "Less"
        return hits

    report = check_model(_mutated(path, tmp_path, short), QUICK_CONFIG, module=module)
    assert report.results and not any(r.passed for r in report.results)


def test_a_gqa_reading_one_key_too_many_fails_the_check(exported, tmp_path):
    """seqlens_k is the last valid key's index, past_len + q_len - 1: one more reads the cache's noise."""
    path, _, module = exported(**STATIC, variant="ort-gqa")

    def one_more(nodes):
        hits = [n for n in nodes if n.op_type == "Sub" and any(i == "i_1" for i in n.input) and "If" not in n.name]
        hits = [n for n in hits if any(m.op_type == "Cast" and m.input[0] == n.output[0] for m in nodes)]
        for n in hits:
            n.op_type = "Add"
        return hits

    report = check_model(_mutated(path, tmp_path, one_more), QUICK_CONFIG, module=module)
    assert not report.ok
    failed = {r.case for r in report.failed}
    assert "b1.q17.kv6.graph" in failed and "decode.11x1" in failed  # the cases GroupQueryAttention takes


class LengthOffByOne:
    """onnxruntime, fed each sequence's length one short: the new token overwrites the last cached one."""

    def __init__(self, path):
        self.inner = OrtRunner(str(path))
        self.name, self.precision = "off-by-one", "float32"

    def run(self, feeds):
        return self.inner.run({**feeds, "past_len": np.maximum(feeds["past_len"] - 1, 0)})


def test_a_cache_written_one_position_early_fails_every_decoding(exported):
    path, spec, module = exported(**STATIC, variant="onnx-attention")
    results = decode_results([LengthOffByOne(path)], module, spec, {"off-by-one": FLOAT32})
    assert {r.case for r in results} == set(case_names())
    assert not any(r.passed for r in results if r.case != "decode.whole11")  # one chunk writes from 0: right


@pytest.mark.parametrize("variant", ["ort-gqa", "onnx-attention"])
def test_a_step_writes_the_callers_buffers_in_place(exported, variant):
    """Bound as past and present, the step writes the new keys into StaticCache's own numpy buffers: the keys
    read back from them are the module's, where nothing but the binding could have put them."""
    path, spec, module = exported(**STATIC, variant=variant)
    cache = StaticCache(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), batch=2)
    buffer = cache.buffers["past_key"]
    x = np.random.default_rng(0).standard_normal((2, 6, 16), dtype=np.float32)
    cache.step(x[:, :4])
    for t in range(4, 6):
        cache.step(x[:, t : t + 1])
    _, keys, values = whole_sequence_golden(module, x)
    assert cache.buffers["past_key"] is buffer and list(cache.lengths) == [6, 6]
    np.testing.assert_allclose(buffer[:, :, :6], keys, atol=FLOAT32.atol)
    np.testing.assert_allclose(cache.buffers["past_value"][:, :, :6], values, atol=FLOAT32.atol)
    assert not buffer[:, :, 6:].any()  # nothing written past the sequences' lengths


def test_a_slot_prefilled_alone_writes_only_its_part(exported):
    path, _, module = exported(**STATIC, variant="ort-gqa")
    cache = StaticCache(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), batch=3)
    x = np.random.default_rng(1).standard_normal((1, 5, 16), dtype=np.float32)
    cache.step(x, slots=[1])
    assert list(cache.lengths) == [0, 5, 0]
    _, keys, _ = whole_sequence_golden(module, x)
    np.testing.assert_allclose(cache.keys(1), keys[0], atol=FLOAT32.atol)
    assert not cache.buffers["past_key"][[0, 2]].any()


@pytest.mark.parametrize("variant", FORMS)
def test_a_full_cache_is_refused_by_the_loop_and_by_the_graph(exported, variant):
    path, spec, _ = exported(**STATIC, variant=variant)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    cache = StaticCache(session, batch=2)
    cache.lengths[:] = [30, 3]
    cache.step(np.ones((2, 2, 16), np.float32))  # 30 + 2 fills slot 0 exactly
    with pytest.raises(CacheFullError, match=r"the cache is full: slot 0 holds 32 of 32 tokens, a step of 1 more"):
        cache.step(np.ones((2, 1, 16), np.float32))
    assert list(cache.lengths) == [32, 5]  # the refused step changed nothing
    feeds = {n: np.ones((2, 1, 16), np.float32) for n in ("query", "key", "value")}
    buffers = {n: np.zeros((2, 2, 32, 8), np.float32) for n in ("past_key", "past_value")}
    with pytest.raises(Exception, match="(?i)out of|bound|range|TensorScatter"):  # the graph itself: no silent write
        session.run(None, {**feeds, **buffers, "past_len": np.array([32, 0], np.int64)})


def test_the_unequal_batch_finishes_sequences_at_different_steps_and_reuses_a_slot():
    slots = [slot for slot, _, _ in UNEQUAL]
    assert len(set(slots)) < len(slots)  # a slot serves two sequences
    ends = [total - prompt for _, prompt, total in UNEQUAL[:3]]
    assert len(set(ends)) == 3  # the first three finish at different steps
    assert list(past_lengths(3, 6)) == [6, 4, 2]  # a check case's lengths: unequal


def test_the_tail_of_a_present_is_not_compared_but_its_valid_part_is(exported):
    _, spec, _ = exported(**STATIC, variant="onnx-attention")
    feeds = spec.kind.inputs(spec, {"batch": 2, "q_len": 2, "kv_len": 5}, np.random.default_rng(0))
    outputs = {"present_key": feeds["past_key"].copy(), "output": np.ones((2, 2, 16), np.float32)}
    kept = spec.kind.comparable(spec, feeds, outputs)
    lengths = feeds["past_len"] + 2  # [7, 5]
    for b, n in enumerate(lengths):
        assert np.array_equal(kept["present_key"][b, :, :n], outputs["present_key"][b, :, :n])
        assert not kept["present_key"][b, :, n:].any()
    assert kept["output"] is outputs["output"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-len", "64"], "Error: --max-len applies to --kv-cache: add --kv-cache"),
        (["--kv-cache", "--max-len", "4"], "Error: Invalid value for '--max-len': 4 is not in the range x>=16."),
        (
            ["--kv-cache", "--max-len", "64", "--causal-align", "top-left"],
            "Error: --max-len takes the built-in causal mask, bottom-right aligned per sequence; past_len gives each "
            "sequence's length, so no padding mask is needed; got --mask causal --causal-align top-left",
        ),
        (["--kv-cache", "--max-len", "64", "--mask", "input"], "Error: --max-len takes the built-in causal mask"),
        (
            ["--kv-cache", "--max-len", "64", "--attention-impl", "onnx-attention", "--opset", "23"],
            "Error: --attention-impl onnx-attention needs --opset 24 or later for --max-len; got 23",
        ),
        (
            ["--kv-cache", "--max-len", "64", "--attention-impl", "tiled"],
            "Error: --attention-impl tiled builds --module mha (also with --self-attention), not mha-static",
        ),
    ],
)
def test_what_a_static_cache_cannot_do_is_refused(tmp_path, args, message):
    result = CliRunner().invoke(export, [*args, "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2 and result.output.strip().startswith(message), result.output
    assert not (tmp_path / "m.onnx").exists()


def test_a_static_export_says_what_it_is(exported):
    path, spec, _ = exported(**STATIC, variant="ort-gqa")
    proto = onnx.load(path)
    dims = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*proto.graph.input, *proto.graph.output]
    }
    assert dims["past_key"] == ["batch", 2, 32, 8] == dims["present_value"] and dims["past_len"] == ["batch"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["attn_onnx.module"] == "mha-static" and meta["attn_onnx.max_len"] == "32"
    assert "bind each present to its past" in meta["attn_onnx.cache_contract"]
    with pytest.raises(UsageError, match="exceed max_len"):
        spec.kind.parse_case(spec, "b1.q2.kv31.graph")


def test_a_present_not_written_into_the_bound_buffer_is_refused(exported, monkeypatch):
    """StaticCache holds onnxruntime to the binding: outputs whose memory is not the cache's buffers are an error,
    never a silent step whose keys went elsewhere."""
    from attn_onnx.errors import RuntimeFailure

    path, _, _ = exported(**STATIC, variant="onnx-attention")
    cache = StaticCache(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), batch=1)
    real = ort.OrtValue.ortvalue_from_numpy
    monkeypatch.setattr(ort.OrtValue, "ortvalue_from_numpy", lambda array, *a: real(array.copy(), *a))
    with pytest.raises(RuntimeFailure, match="did not write past_key, past_value in place"):
        cache.step(np.ones((1, 1, 16), np.float32))


@pytest.mark.parametrize("variant", FORMS)
def test_a_nan_beyond_the_lengths_reaches_the_output_of_the_masking_forms_only(exported, variant):
    """The contract's one demand on the tails (mha_static.py): finite. A masked key weighs exactly 0 and 0 * NaN is
    NaN, so the forms that attend over the whole buffer pass a NaN tail on; GroupQueryAttention never reads it."""
    path, _, _ = exported(**STATIC, variant=variant)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tail = np.zeros((2, 2, 32, 8), np.float32)
    tail[:, :, 10:] = np.nan
    x = np.ones((2, 1, 16), np.float32)
    feeds = {"query": x, "key": x, "value": x, "past_key": tail, "past_value": tail.copy()}
    output = session.run(["output"], {**feeds, "past_len": np.array([5, 3], np.int64)})[0]
    assert np.isnan(output).any() == (variant != "ort-gqa")
    cache = StaticCache(session, batch=2)
    assert not cache.buffers["past_key"].any()  # the loop's buffers start as zeros: finite


def test_the_smallest_cache_holds_every_decoding_of_the_check(exported):
    """MIN_MAX_LEN is where the decode check's sequences (11 tokens) fit: a model of the smallest max_len passes
    it, and one token less is refused before any work."""
    from attn_onnx.exporter.kinds.mha_static import MIN_MAX_LEN
    from attn_onnx.exporter.spec import ExportSpec

    path, _, module = exported(**{**STATIC, "max_len": MIN_MAX_LEN}, variant="ort-gqa")
    report = check_model(path, QUICK_CONFIG, module=module)
    assert report.ok, [r.line() for r in report.failed]
    with pytest.raises(UsageError, match=f"at least {MIN_MAX_LEN}; got {MIN_MAX_LEN - 1}"):
        ExportSpec(**{**STATIC, "max_len": MIN_MAX_LEN - 1}, variant="ort-gqa").validate()


def test_a_slot_outside_the_cache_is_refused(exported):
    path, _, _ = exported(**STATIC, variant="onnx-attention")
    cache = StaticCache(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), batch=2)
    with pytest.raises(UsageError, match="slot -1 is not one of 0..1"):
        cache.reset(-1)
    with pytest.raises(UsageError, match="slots is empty"):
        cache.step(np.ones((0, 1, 16), np.float32), slots=[])
