"""--quantize int8: the projections become int8 MatMulIntegers, the weight map follows them (dequantized,
the golden holds exactly the file's weights), the check passes at the int8 profile in every variant, and a
fully-masked row stays uniform."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from attn_onnx.cli.check_attn import main as check
from attn_onnx.cli.export_attn import main as export
from attn_onnx.exporter.spec import ModelSpec
from attn_onnx.exporter.variants import VARIANTS
from attn_onnx.runtime_check.cases import Sweep
from attn_onnx.runtime_check.check import CheckConfig, check_model
from attn_onnx.runtime_check.compare import PROFILES
from attn_onnx.runtime_check.reference import reference_module

from tests.exporter.refusals import assert_refused
from tests.exporter.test_variants import large_feeds, seed_output, variant_fields

SWEEP = Sweep(batches=(1, 3), lengths=(1, 9, 33))


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("module", ["mha", "mha-self"])
def test_runtime_check_passes_at_the_int8_profile_in_every_variant(exported, variant, module):
    path, spec, float_module = exported(**variant_fields(variant, module=module, quantize="int8"))
    model = onnx.load(path)
    ops = [n.op_type for n in model.graph.node]
    packed = module == "mha-self" and variant != "torch-export"  # the hand-built ones pack Q, K, V in one MatMul
    projections = 2 if packed else 4
    if packed and variant == "tiled":  # with a mask input: the query on every row, K and V on the keys needed
        projections = 3
    assert ops.count("MatMulInteger") == projections
    # every weight is int8 only, a branch's projection included (tiled's fully-masked rows read W_v there)
    matrices = [i for i in model.graph.initializer if len(i.dims) == 2]
    assert matrices and all(i.data_type == onnx.TensorProto.INT8 for i in matrices), [i.name for i in matrices]
    report = check_model(path, CheckConfig(runtimes=("onnxruntime", "reference"), sweep=SWEEP))
    assert report.ok and not report.nothing_checked, [r.line() for r in report.failed]
    assert report.tolerances["onnxruntime/cpu"] == ("int8", PROFILES["int8"])
    for result in report.results:  # the profile's margin
        assert result.needed_atol <= PROFILES["int8"].atol / 2, result.line()


@pytest.mark.parametrize("variant", ["torch-export", "tiled"])  # tiled also reads W_v in an If branch
def test_the_weight_map_leads_to_the_dequantized_weights(exported, variant):
    path, spec, module = exported(**variant_fields(variant, quantize="int8"))
    proto = onnx.load(path)
    spec = ModelSpec.from_metadata({p.key: p.value for p in proto.metadata_props})
    assert spec.quantize == "int8" and spec.precision == "int8"
    rebuilt, _ = reference_module(proto, spec)
    for key, tensor in module.state_dict().items():
        got = rebuilt.state_dict()[key]
        if key.endswith("weight"):  # int8 per output channel: within half a step of that channel's scale
            step = tensor.abs().amax(dim=1, keepdim=True) / 127
            assert torch.all((got - tensor).abs() <= step / 2 + 1e-7), key
            assert not torch.equal(got, tensor)
        else:
            assert torch.equal(got, tensor), key  # biases stay float


@pytest.mark.parametrize("variant", ["additive-mask", "onnx-attention", "ort-mha", "tiled"])
def test_a_fully_masked_row_stays_uniform_when_quantized(exported, variant):
    path, spec, module = exported(**variant_fields(variant, quantize="int8"))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rebuilt, _ = reference_module(onnx.load(path), spec)  # the dequantized weights
    for scale in (1, 30, 300):
        feeds, masked = large_feeds(spec, scale)
        got = session.run(None, feeds)[0]
        want = seed_output(rebuilt, feeds)
        # the activations are quantized per tensor: the error scales with the inputs' range
        tolerance = PROFILES["int8"]
        np.testing.assert_allclose(got[masked], want[masked], rtol=tolerance.rtol, atol=tolerance.atol * scale)


def test_export_prints_what_quantizing_cost(tmp_path):
    out = tmp_path / "q.onnx"
    result = CliRunner().invoke(export, ["--quantize", "int8", "--out", str(out)])
    assert result.exit_code == 0, result.output
    parity = next(line for line in result.output.splitlines() if "vs PyTorch float64" in line)
    assert "(atol=0.05, rtol=0.05): PASSED" in parity
    accuracy = next(line for line in result.output.splitlines() if line.startswith("accuracy:"))
    assert 1e-3 < float(accuracy.split("max_abs=")[1].split()[0]) < 0.05
    assert "projections int8" in result.output
    assert out.stat().st_size < 0.6 * 4 * 512 * 512 * 4  # int8 weights: about a quarter of float32's 4 MiB


def test_an_int8_bundle_holds_the_golden_of_its_own_weights_and_profile(tmp_path):
    """The bundle's golden vectors come from the dequantized weights and its manifest carries the int8
    profile, so the bundle passes its own check (with the float module's answers at float32 tolerance,
    every set failed by ~1e-2)."""
    bundle = tmp_path / "b"
    result = CliRunner().invoke(export, ["--heads", "4", "--embedding-dim", "32", "--quantize", "int8",
                                         "--bundle", str(bundle)])
    assert result.exit_code == 0, result.output
    tolerance = json.loads((bundle / "manifest.json").read_text())["tolerance"]
    assert (tolerance["atol"], tolerance["rtol"]) == (PROFILES["int8"].atol, PROFILES["int8"].rtol)
    checked = CliRunner().invoke(check, ["--bundle", str(bundle)])
    assert checked.exit_code == 0, checked.output
    assert "| summary | 5 passed, 0 failed" in checked.output


@pytest.mark.parametrize("args, message", [
    (["--quantize", "int8", "--module", "attention"], "--quantize does not apply to --module attention"),
    (["--quantize", "int8", "--dtype", "float16"], "--quantize int8 quantizes float32 weights; not with --dtype"),
    (["--quantize", "int4"], "'int4' is not 'int8'"),
])
def test_refusals(tmp_path, args, message):
    assert_refused(tmp_path, args, message)
