"""Every graph variant keeps the seed's semantics: runtime_check passes on each variant and mask mode, a
fully-masked row attends uniformly for any score magnitude, and the weight map rebuilds the module."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attn_onnx.cli.export_attn import main as export
from attn_onnx.exporter.spec import ModelSpec
from attn_onnx.exporter.variants import VARIANTS
from attn_onnx.runtime_check.cases import QUICK, Sweep
from attn_onnx.runtime_check.check import CheckConfig, check_model
from attn_onnx.runtime_check.reference import reference_module

FUSED = [name for name, v in VARIANTS.items() if not v.attn_probs]  # hand-built, with the uniform-row fix
KERNELS = ["onnx-attention", "ort-mha"]  # those that hand attention to one fused op
SMALL = {"heads": 4, "embedding_dim": 32}


def variant_fields(variant, **fields):
    return {**SMALL, "variant": variant, "opset": max(18, VARIANTS[variant].min_opset), **fields}


def with_masks(variants, masks):
    """(variant, mask, ...) for each variant and each mask mode it builds (ort-gqa needs a mask)."""
    return [
        (v, *m) if isinstance(m, tuple) else (v, m)
        for v in variants
        for m in masks
        if (m[0] if isinstance(m, tuple) else m) in VARIANTS[v].masks
    ]


@pytest.mark.parametrize(
    "variant, mask, mask_dtype",
    with_masks(
        VARIANTS, [("input", "bool"), ("input", "float32"), ("input", "uint8"), ("causal", "bool"), ("none", "bool")]
    ),
)
def test_runtime_check_passes_on_every_variant_and_mask_mode(exported, variant, mask, mask_dtype):
    path, spec, module = exported(**variant_fields(variant, mask=mask, mask_dtype=mask_dtype))
    assert spec.variant == variant
    sweep = Sweep(batches=(1, 3), lengths=(1, 9, 33)) if mask_dtype == "bool" else QUICK
    report = check_model(path, CheckConfig(sweep=sweep), module=module)
    assert report.ok and not report.nothing_checked, [r.line() for r in report.failed]
    checked = {r.runner for r in report.results}
    assert any(r.startswith("onnxruntime") for r in checked)
    if VARIANTS[variant].runs_in != "onnxruntime only":
        assert "onnx-reference" in checked
    else:  # com.microsoft ops run in onnxruntime only; onnx.reference skips them
        ops = {
            "ort-mha": "com.microsoft.MultiHeadAttention",
            "ort-gqa": "com.microsoft.GroupQueryAttention, com.microsoft.MultiHeadAttention",
        }[variant]
        assert [s.reason for s in report.skipped] == [
            f"onnx.reference runs standard ONNX operators only; this model uses {ops} (export-attn "
            f"--attention-impl {variant}, an onnxruntime-only variant)"
        ]


@pytest.mark.parametrize("variant", FUSED)
def test_the_golden_rebuilt_from_the_file_holds_the_modules_weights(exported, variant):
    """The fused builders pack and transpose weights; their weight map must still lead back to each tensor."""
    path, spec, module = exported(**variant_fields(variant))
    proto = onnx.load(path)
    rebuilt, _ = reference_module(proto, ModelSpec.from_metadata({p.key: p.value for p in proto.metadata_props}))
    for key, tensor in module.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], tensor), key
    assert check_model(path, CheckConfig(sweep=QUICK)).ok  # no module given: the golden comes from the file


def seed_output(module, feeds):
    """The seed module in float64 (from its weights at whatever dtype they are) on the feeds."""
    double = type(module)(module.head, module.embedding_dim, dropout=0.0).double().eval()
    double.load_state_dict({k: v.double() for k, v in module.state_dict().items()})
    with torch.no_grad():
        q, k, v = (torch.from_numpy(feeds[n]).double() for n in ("query", "key", "value"))
        return double(q, k, v, torch.from_numpy(feeds["mask"].astype(np.float64))).numpy()


def large_feeds(spec, scale):
    """Inputs scaled so that scores reach hundreds, with fully-masked rows (one, and a whole example); scaled
    in float32 and rounded back to the spec's dtype."""
    rng = np.random.default_rng(3)
    mask = (rng.random((3, 6, 7)) < 0.6).astype(np.uint8)
    mask[0, 2] = 0
    mask[2] = 0
    feeds = spec.kind.inputs(spec, {"batch": 3, "q_len": 6, "kv_len": 7}, rng, mask)
    for name in ("query", "key", "value"):
        feeds[name] = (feeds[name].astype(np.float32) * np.float32(scale)).astype(feeds[name].dtype)
    return feeds, mask.max(axis=-1) == 0  # (3, 6): the fully-masked rows


@pytest.mark.parametrize("variant", FUSED)
@pytest.mark.parametrize("mask_dtype", ["bool", "float32"])
def test_a_fully_masked_row_attends_uniformly_at_any_score_magnitude(exported, variant, mask_dtype):
    """An additive -1e9 bias would give such a row the unmasked softmax once |score| passes the ulp of 1e9
    (64); a boolean mask (onnx-attention) gives it zeros. The seed gives the mean of the values."""
    path, spec, module = exported(**variant_fields(variant, mask_dtype=mask_dtype))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for scale in (1, 30, 300):
        feeds, masked = large_feeds(spec, scale)
        got, want = session.run(None, feeds)[0], seed_output(module, feeds)
        # Masked rows are the output projection of a mean: no softmax, so float32 rounding of sums of
        # 7 terms and one 32-wide projection (a few ulp of the magnitude) is all that separates them.
        magnitude = np.abs(want[masked]).max()
        np.testing.assert_allclose(got[masked], want[masked], rtol=0, atol=1e-5 * magnitude)
        if scale == 1:  # small scores: every row at the float32 profile
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def all_graphs(graph):
    """The graph and every subgraph in it (If branches)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from all_graphs(attr.g)


@pytest.mark.parametrize("variant", FUSED)
def test_without_the_uniform_row_fix_the_graph_is_wrong(exported, variant):
    """The trap exists. The Where bypassed, the ONNX Attention kernel gives zeros on those rows; an additive
    bias with the seed's own -1e9 (instead of the lowest float) follows the large scores."""
    path, spec, module = exported(**variant_fields(variant))
    proto = onnx.load(path)
    graphs = list(all_graphs(proto.graph))  # the fix is an If's branch (in ort-gqa's If's else branch)
    where = [n for g in graphs for n in g.node if n.op_type == "Where" and n.input[0].startswith("any_allowed")][-1]
    where.op_type, where.input[:] = "Identity", [where.input[1]]  # the kernel's answer on every row
    for init in proto.graph.initializer:
        if init.name == "f_max":  # (allowed - 1) * 1e9: the seed's fill as a bias
            init.CopyFrom(onnx.numpy_helper.from_array(np.array(1e9, np.float32), "f_max"))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds, masked = large_feeds(spec, 30)
    error = np.abs(session.run(None, feeds)[0] - seed_output(module, feeds))[masked].max()
    assert error > 1.0


def test_the_fused_kernels_materialize_no_scores_of_their_own(exported):
    """Projections, the mask, the kernel, the fix, the output projection: no MatMul/Softmax outside it."""
    for variant in KERNELS:
        path, _, _ = exported(**variant_fields(variant))
        ops = [n.op_type for n in onnx.load(path).graph.node]
        assert "Softmax" not in ops and ops.count("MatMul") == 4, (variant, ops)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--attention-impl", "onnx-attention", "--opset", "18"],
            "Error: --attention-impl onnx-attention needs --opset 23 or later; got 18",
        ),
        (
            ["--attention-impl", "ort-mha", "--module", "attention"],
            "Error: --attention-impl ort-mha builds --module mha (also with --self-attention), not attention",
        ),
        (["--attention-impl", "ort-mha", "--attn-probs"], "Error: --attention-impl ort-mha cannot output attn_probs"),
        (["--attention-impl", "flash"], "Error: Invalid value for '--attention-impl'"),
    ],
)
def test_a_variant_that_cannot_build_the_spec_is_refused_before_any_work(tmp_path, args, message):
    result = CliRunner().invoke(export, [*args, "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith(message), result.output
    assert not (tmp_path / "m.onnx").exists()


def test_onnx_attention_defaults_to_opset_23(tmp_path):
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(
        export,
        ["--attention-impl", "onnx-attention", *map(str, ["--heads", 2, "--embedding-dim", 16]), "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert meta["attn_onnx.variant"] == "onnx-attention" and meta["attn_onnx.opset"] == "23"
    assert "opset 23" in result.output


_SESSIONS = {}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    variant=st.sampled_from(list(VARIANTS)),
    heads=st.sampled_from([1, 2, 4]),
    d_k=st.sampled_from([1, 3, 8]),
    batch=st.integers(1, 3),
    q_len=st.integers(1, 12),
    kv_len=st.integers(1, 12),
    padding=st.booleans(),
    data=st.data(),
)
def test_any_variant_width_shape_and_mask_matches_float64(
    exported, variant, heads, d_k, batch, q_len, kv_len, padding, data
):
    """Export-then-run parity over random head counts, widths, shapes and masks (fully-masked rows and
    examples included, as random bits make them), for every graph variant."""
    d_k *= VARIANTS[variant].d_k_multiple  # GroupQueryAttention takes multiples of 8
    path, spec, module = exported(**variant_fields(variant, heads=heads, embedding_dim=heads * d_k))
    rows = 1 if padding else q_len
    bits = data.draw(st.lists(st.booleans(), min_size=batch * rows * kv_len, max_size=batch * rows * kv_len))
    mask = np.array(bits, dtype=np.uint8).reshape(batch, rows, kv_len)
    feeds = spec.kind.inputs(
        spec,
        {"batch": batch, "q_len": q_len, "kv_len": kv_len},
        np.random.default_rng(batch * 10_000 + q_len * 100 + kv_len),
        mask,
    )
    if path not in _SESSIONS:
        _SESSIONS[path] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = _SESSIONS[path].run(None, feeds)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, seed_output(module, feeds), atol=1e-5, rtol=1e-4)  # the float32 profile


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("align", ["top-left", "bottom-right"])
def test_the_built_in_causal_mask_is_aligned_as_asked_in_every_variant(exported, variant, align):
    """q_len != kv_len both ways: bottom-right with more queries than keys masks whole rows, which must
    attend uniformly as the seed's -1e9 fill makes them."""
    path, spec, module = exported(**variant_fields(variant, mask="causal", causal_align=align))
    assert spec.causal_align == align
    sweep = Sweep(shapes=((2, 3, 7), (2, 7, 3), (1, 1, 9), (3, 5, 5)))
    report = check_model(path, CheckConfig(sweep=sweep), module=module)
    assert report.ok and not report.nothing_checked, [r.line() for r in report.failed]
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert meta["attn_onnx.causal_align"] == align


def test_the_two_alignments_differ_where_they_should(exported):
    """The same weights, q_len 2 and kv_len 5: top-left lets query 0 see key 0 only, bottom-right keys 0..3."""
    outs = {}
    for align in ("top-left", "bottom-right"):
        path, spec, module = exported(**variant_fields("torch-export", mask="causal", causal_align=align))
        feeds = spec.kind.inputs(spec, {"batch": 1, "q_len": 2, "kv_len": 5}, np.random.default_rng(0))
        outs[align] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert np.abs(outs["top-left"] - outs["bottom-right"]).max() > 1e-3


def test_causal_align_without_the_causal_mask_is_refused(tmp_path):
    result = CliRunner().invoke(export, ["--causal-align", "bottom-right", "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2
    assert result.output.strip() == (
        "Error: --causal-align does not apply to --mask input (it aligns the built-in causal mask)"
    )


SELF = {"module": "mha-self"}


@pytest.mark.parametrize("variant, mask", with_masks(VARIANTS, ["input", "causal", "none"]))
def test_self_attention_checks_clean_in_every_variant(exported, variant, mask):
    path, spec, module = exported(**variant_fields(variant, mask=mask, **SELF))
    assert spec.input_names == (["x", "mask"] if mask == "input" else ["x"])
    report = check_model(path, CheckConfig(sweep=QUICK), module=module)
    assert report.ok and not report.nothing_checked, [r.line() for r in report.failed]
    assert all(r.case.split(".")[1][1:] == r.case.split(".")[2][2:] for r in report.results)  # q_len == kv_len


@pytest.mark.parametrize("variant, mask", [(v, "input") for v in FUSED if v != "tiled"] + [("tiled", "causal")])
def test_self_attention_projects_q_k_v_with_one_packed_matmul(exported, variant, mask):
    """(tiled with a mask input projects K and V only on the keys it needs: test_tiled.py)"""
    path, spec, module = exported(**variant_fields(variant, mask=mask, **SELF))
    proto = onnx.load(path)
    projections = [n for n in proto.graph.node if n.op_type == "MatMul" and n.input[0] == "x"]
    assert len(projections) == 1 and any(n.op_type == "Split" for n in proto.graph.node)
    assert spec.weights["linears.1.weight"] == {"initializer": "qkv_weight.T", "transposed": True, "slice": [32, 64]}
    rebuilt, _ = reference_module(proto, ModelSpec.from_metadata({p.key: p.value for p in proto.metadata_props}))
    for key, tensor in module.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], tensor), key


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_self_attention_equals_the_three_input_export_fed_x_three_times(exported, variant):
    self_path, spec, module = exported(**variant_fields(variant, **SELF))
    cross_path, _, _ = exported(**variant_fields(variant))
    x = np.random.default_rng(5).standard_normal((2, 6, 32), dtype=np.float32)
    mask = np.tril(np.ones((6, 6), bool))[None].repeat(2, 0)
    mask[1, 2] = False  # a fully-masked row
    run = {p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (self_path, cross_path)}
    one = run[self_path].run(None, {"x": x, "mask": mask})[0]
    three = run[cross_path].run(None, {"query": x, "key": x, "value": x, "mask": mask})[0]
    np.testing.assert_allclose(one, three, atol=1e-5, rtol=1e-4)  # both within float32 of the same golden
    np.testing.assert_allclose(
        one, seed_output(module, {"query": x, "key": x, "value": x, "mask": mask}), atol=1e-5, rtol=1e-4
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--self-attention", "--kv-cache"], "Error: --kv-cache and --self-attention exclude each other"),
        (["--self-attention", "--module", "attention"], "Error: --self-attention applies to --module mha"),
    ],
)
def test_self_attention_refusals(tmp_path, args, message):
    result = CliRunner().invoke(export, [*args, "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2 and result.output.strip().startswith(message), result.output


def test_a_constant_name_holds_one_value():
    """GraphWriter.constant used to hand back the first tensor stored under a name, whatever value was asked
    the second time (tiled's v_start is [E], ort-mha's [2E]: one rename from a wrong graph)."""
    import numpy as np

    from attn_onnx.exporter.variants.builder import GraphWriter

    writer = GraphWriter()
    assert writer.constant("v_start", np.array([16], np.int64)) == "v_start"
    assert writer.branch().constant("v_start", np.array([16], np.int64)) == "v_start"  # a branch shares them
    assert len(writer.initializers) == 1
    for other in (np.array([32], np.int64), np.array([16], np.int32), np.array([[16]], np.int64)):
        with pytest.raises(ValueError, match="constant 'v_start' is already int64"):
            writer.branch().constant("v_start", other)
    assert len(writer.initializers) == 1
