"""--dtype float16 / bfloat16: every variant keeps the seed's semantics at reduced precision, a fully-masked
row included, and the check passes at the dtype's documented profile with the runtimes that have kernels."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from attn_onnx.cli.export_attn import main as export
from attn_onnx.dtypes import numpy_dtype, to_numpy, to_torch
from attn_onnx.exporter.export import in_dtype
from attn_onnx.exporter.variants import VARIANTS
from attn_onnx.models import attention
from attn_onnx.models.attention import mask_fill
from attn_onnx.runtime_check.cases import Sweep
from attn_onnx.runtime_check.check import CheckConfig, check_model
from attn_onnx.runtime_check.compare import PROFILES
from tests.exporter.refusals import assert_refused
from tests.exporter.test_variants import large_feeds, seed_output, variant_fields

SWEEP = Sweep(batches=(1, 3), lengths=(1, 9, 33))
U = {"float16": 2.0**-11, "bfloat16": 2.0**-8}  # unit roundoff


def dtype_variants(dtype):
    return [name for name, v in VARIANTS.items() if dtype in v.dtypes]


def test_the_fill_is_finite_in_every_dtype():
    """float16 cannot hold -1e9: cast, it is -inf, and a fully-masked row becomes NaN. The fill clamps."""
    assert torch.tensor(-1e9, dtype=torch.float16).item() == float("-inf")  # the trap
    assert mask_fill(torch.float16) == -65504.0
    assert mask_fill(torch.float32) == mask_fill(torch.float64) == mask_fill(torch.bfloat16) == -1e9
    q = torch.randn(1, 2, 3, 8, dtype=torch.float16)
    for dtype in (torch.float16, torch.bfloat16):
        out, p = attention(q.to(dtype), q.to(dtype), q.to(dtype), mask=torch.zeros(1, 1, 3, 3))
        assert torch.isfinite(out).all()
        assert torch.equal(p, torch.full_like(p, 1 / 3))  # uniform, exactly


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_bfloat16_and_float16_round_trip_through_torch(dtype):
    array = np.array([[1.5, -2.25, 3e4]], np.float32).astype(numpy_dtype(dtype))
    tensor = to_torch(array)
    assert str(tensor.dtype) == f"torch.{dtype}"
    assert np.array_equal(to_numpy(tensor).astype(np.float64), array.astype(np.float64))


@pytest.mark.parametrize("dtype, variant", [(d, v) for d in ("float16", "bfloat16") for v in dtype_variants(d)])
@pytest.mark.parametrize("mask", ["input", "causal"])
def test_runtime_check_passes_at_each_dtype_in_every_variant(exported, dtype, variant, mask):
    """ort-mha refuses bfloat16 (test_refusals): nothing on a CPU could check it."""
    path, spec, module = exported(**variant_fields(variant, mask=mask, dtype=dtype))
    model = onnx.load(path)
    elem = {"float16": onnx.TensorProto.FLOAT16, "bfloat16": onnx.TensorProto.BFLOAT16}[dtype]
    assert model.graph.input[0].type.tensor_type.elem_type == elem
    assert model.graph.output[0].type.tensor_type.elem_type == elem
    report = check_model(path, CheckConfig(runtimes=("onnxruntime", "reference", "torch"), sweep=SWEEP))
    assert report.ok and not report.nothing_checked, [r.line() for r in report.failed]
    runners = {r.runner for r in report.results}
    assert f"torch/{dtype}" in runners
    if dtype == "float16":
        assert "onnxruntime/cpu" in runners
        assert report.tolerances["onnxruntime/cpu"] == ("float16", PROFILES["float16"])
    else:  # no bfloat16 MatMul in onnxruntime's CPU: skipped, with the reason; onnx.reference checks it
        assert "onnx-reference" in runners
        assert [s.reason for s in report.skipped if s.runner == "onnxruntime/cpu"] == [
            "onnxruntime's CPUExecutionProvider cannot run this model: it has no kernel for MatMul(13) at this "
            "model's dtype"
        ]
    # the profile's margin: the worst error sits well inside it (a regression that doubles it still shows)
    for result in report.results:
        profile = report.tolerances[result.runner][1]
        assert result.needed_atol <= profile.atol / 1.5, result.line()


@pytest.mark.parametrize("variant", dtype_variants("float16"))
def test_a_fully_masked_row_stays_uniform_in_float16_at_large_scores(exported, variant):
    """The seed's -1e9 in float16 is -inf: softmax of a fully-masked row is NaN unless the fill is clamped
    (torch-export, additive-mask) or the row is replaced (every fused variant)."""
    path, spec, module = exported(**variant_fields(variant, dtype="float16"))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    stored = in_dtype(module, "float16")  # the weights as the model holds them
    for scale in (1, 8, 30):
        feeds, masked = large_feeds(spec, scale)  # float16 inputs, scores within float16's range
        got = session.run(None, feeds)[0].astype(np.float64)
        assert np.isfinite(got).all(), scale
        want = seed_output(stored, feeds)
        # a masked row is the projection of a mean of 7 values: a few float16 roundings of its magnitude
        magnitude = np.abs(want[masked]).max()
        np.testing.assert_allclose(got[masked], want[masked], rtol=0, atol=8 * U["float16"] * magnitude)


@pytest.mark.parametrize("dtype, factor", [("float16", 1.05), ("bfloat16", 1.2)])
def test_moved_weights_fail_the_dtype_profile(exported, dtype, factor):
    """The profile still sees a real change: output-projection weights scaled by 5% in float16 (100u), 20%
    in bfloat16 (51u; its 8u profile is 3%) fail in the runtimes that run the model, while the unchanged
    model passes (the tests above)."""
    path, spec, module = exported(**variant_fields("torch-export", dtype=dtype))
    moved = type(module)(module.head, module.embedding_dim, dropout=0.0).eval()
    state = {k: v.clone() for k, v in module.state_dict().items()}
    state["linears.3.weight"] *= factor
    moved.load_state_dict(state)
    report = check_model(path, CheckConfig(runtimes=("onnxruntime", "reference"), sweep=SWEEP), module=moved)
    failed = [r for r in report.results if not r.passed]
    assert report.results and len(failed) >= 0.9 * len(report.results)  # a fully-masked case's mean may slip


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--dtype", "bfloat16", "--attention-impl", "ort-mha"],
            "--attention-impl ort-mha takes --dtype float32/float16, not bfloat16",
        ),
        (["--dtype", "float16", "--kv-cache"], "--dtype float16 does not apply to --kv-cache: it takes float32"),
        (["--dtype", "float16", "--module", "mask"], "--dtype does not apply to --module mask"),
        (["--dtype", "float64"], "'float64' is not one of"),
    ],
)
def test_refusals(tmp_path, args, message):
    assert_refused(tmp_path, args, message)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_export_attn_checks_at_the_dtype_and_reports_the_rounding_cost(tmp_path, dtype):
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(export, ["--heads", "4", "--embedding-dim", "32", "--dtype", dtype, "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    parity = next(line for line in lines if line.startswith("parity:") and "vs PyTorch float64" in line)
    profile = PROFILES[dtype]
    assert parity.endswith(": PASSED") and f"atol={profile.atol:g}" in parity
    accuracy = next(line for line in lines if line.startswith("accuracy:"))
    figure = float(accuracy.split("max_abs=")[1].split()[0])
    assert 0 < figure < 8 * U[dtype]  # rounding the weights costs something, and not much
    assert any(f"{dtype:<8} [batch, q_len, 32]" in line for line in lines)
