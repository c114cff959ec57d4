"""--quantize int8: the projections become int8 MatMulIntegers, the weight map follows them (dequantized,
the golden holds exactly the file's weights), the check passes at the int8 profile in every variant, and a
fully-masked row stays uniform. The weights stay in [-64, 64], where onnxruntime's u8s8 kernels compute exact
integers on every x86 CPU (AVX2's int16 pairs included), and the file says so."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from attn_onnx.cli.check_attn import main as check
from attn_onnx.cli.export_attn import main as export
from attn_onnx.exporter.quantize import FORMAT, UNRECORDED_FORMAT, WEIGHT_MAX, quantize
from attn_onnx.exporter.spec import METADATA_PREFIX, ModelSpec
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
        if key.endswith("weight"):  # int8 per output channel, in [-64, 64]: within half a step of its scale
            step = tensor.abs().amax(dim=1, keepdim=True) / WEIGHT_MAX
            assert torch.all((got - tensor).abs() <= step / 2 + 1e-7), key
            assert not torch.equal(got, tensor)
        else:
            assert torch.equal(got, tensor), key  # biases stay float


@pytest.mark.parametrize("variant", ["torch-export", "tiled"])
def test_every_weight_is_in_the_range_that_no_cpu_saturates_and_the_file_names_its_format(exported, variant):
    """What the next test sees only on a CPU without VNNI, held on any CPU: every quantized weight is int8
    with 2·255·|w| within int16 (|w| <= 64; full-range weights reach 127), and the metadata states FORMAT."""
    path, spec, module = exported(**variant_fields(variant, quantize="int8"))
    proto = onnx.load(path)
    read = ModelSpec.from_metadata({p.key: p.value for p in proto.metadata_props})
    assert read.quantize_format == FORMAT and spec.quantize_format in ("", FORMAT)
    inits = {init.name: init for init in proto.graph.initializer}
    weights = [entry for key, entry in read.weights.items() if key.endswith("weight")]
    assert weights and all("scale" in entry for entry in weights)
    for entry in weights:
        array = numpy_helper.to_array(inits[entry["initializer"]]).astype(np.int32)
        assert inits[entry["initializer"]].data_type == TensorProto.INT8
        assert 2 * 255 * np.abs(array).max() <= 32767, entry  # u8·s8 pairs fit vpmaddubsw's int16
        assert np.abs(array).max() == WEIGHT_MAX  # and the range is used: each channel's largest weight is 64


def _projection(weight: np.ndarray) -> onnx.ModelProto:
    """x (rows, K) times a weight initializer (K, N): one MatMul, as a projection in an exported graph."""
    k, n = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "projection",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", n])],
        [numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_onnxruntime_computes_exact_integers_where_full_range_int8_saturates():
    """Activations that quantize to 229-255 (all positive: zero point 0) against weights at the top of their
    channel's range, every pair along K of one sign. With full-range int8 weights a pair of products reaches
    2·255·127 = 64770, and onnxruntime's u8s8 kernel on AVX2, or AVX-512 without VNNI (vpmaddubsw, int16),
    saturates it to 32767: the answer comes out about halved (VNNI CPUs add in int32 and get it right). With
    FORMAT's weights every CPU computes what onnx.reference computes in exact integers."""
    rng = np.random.default_rng(0)
    k, n = 256, 32
    signs = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    weight = (rng.uniform(0.9, 1.0, (k, n)) * signs).astype(np.float32)
    weight[0] = signs  # each channel's largest magnitude: the top of the integer range
    x = (rng.integers(229, 256, (5, k)) / 255).astype(np.float32)
    x[:, 0] = 1.0  # the activations' range [0, 1]: scale 1/255, zero point 0, each x exactly on the grid
    model, mapped = quantize(_projection(weight), {"w": {"initializer": "w", "transposed": False}})
    assert "scale" in mapped["w"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for rows in (x[:1], x):  # MLAS's matrix-vector and matrix-matrix paths
        got = session.run(None, {"x": rows})[0]
        exact = ReferenceEvaluator(model).run(None, {"x": rows})[0]  # numpy's integers: nothing saturates
        np.testing.assert_allclose(got, exact, rtol=1e-5)
        np.testing.assert_allclose(got, rows @ weight, rtol=0.02)  # which is the product, to the quantization


def test_a_file_from_before_the_format_was_recorded_still_loads(exported):
    path, spec, _ = exported(**variant_fields("torch-export", quantize="int8"))
    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert props.pop(METADATA_PREFIX + "quantize_format") == FORMAT
    read = ModelSpec.from_metadata(props)
    assert read == spec and read.quantize == "int8" and read.quantize_format == UNRECORDED_FORMAT
    assert read.to_metadata()[METADATA_PREFIX + "quantize_format"] == UNRECORDED_FORMAT  # not claimed as FORMAT


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
    result = CliRunner().invoke(
        export, ["--heads", "4", "--embedding-dim", "32", "--quantize", "int8", "--bundle", str(bundle)]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((bundle / "manifest.json").read_text())
    tolerance = manifest["tolerance"]
    assert (tolerance["atol"], tolerance["rtol"]) == (PROFILES["int8"].atol, PROFILES["int8"].rtol)
    assert manifest["model"]["quantization"] == manifest["metadata"][METADATA_PREFIX + "quantize_format"] == FORMAT
    checked = CliRunner().invoke(check, ["--bundle", str(bundle)])
    assert checked.exit_code == 0, checked.output
    assert "| summary | 5 passed, 0 failed" in checked.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--quantize", "int8", "--module", "attention"], "--quantize does not apply to --module attention"),
        (["--quantize", "int8", "--dtype", "float16"], "--quantize int8 quantizes float32 weights; not with --dtype"),
        (["--quantize", "int4"], "'int4' is not 'int8'"),
    ],
)
def test_refusals(tmp_path, args, message):
    assert_refused(tmp_path, args, message)
