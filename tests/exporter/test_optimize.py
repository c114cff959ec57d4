"""--optimize: onnxruntime's offline optimization at the portable level keeps the metadata, the weight map
and the seed's semantics, a fully-masked row at large scores included."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from attn_onnx.errors import ExportError
from attn_onnx.exporter.optimize import _refind
from attn_onnx.exporter.spec import ModelSpec
from attn_onnx.exporter.variants import VARIANTS
from attn_onnx.runtime_check.cases import QUICK
from attn_onnx.runtime_check.check import CheckConfig, check_model
from attn_onnx.runtime_check.reference import reference_module
from tests.exporter.test_variants import large_feeds, seed_output, variant_fields


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_an_optimized_export_checks_clean_with_its_golden_from_the_file(exported, variant):
    path, spec, module = exported(**variant_fields(variant), optimize="extended")
    proto = onnx.load(path)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["attn_onnx.optimize"] == "extended" and meta["attn_onnx.producer.onnxruntime"] == ort.__version__
    rebuilt, _ = reference_module(proto, ModelSpec.from_metadata(meta))
    for key, tensor in module.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], tensor), key
    report = check_model(path, CheckConfig(sweep=QUICK))  # no module: the golden comes from the file
    assert report.ok, [r.line() for r in report.failed]


def test_the_straight_export_is_actually_rewritten(exported):
    plain, _, _ = exported(**variant_fields("torch-export"))
    optimized, _, _ = exported(**variant_fields("torch-export"), optimize="extended")
    ops = {(n.domain, n.op_type) for n in onnx.load(optimized).graph.node}
    assert ("com.microsoft", "FusedMatMul") in ops  # the 1/sqrt(d_k) folded into the scores' MatMul
    assert ops != {(n.domain, n.op_type) for n in onnx.load(plain).graph.node}


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "torch-export"])
def test_optimized_fused_variants_keep_the_uniform_row_at_large_scores(exported, variant):
    path, spec, module = exported(**variant_fields(variant), optimize="extended")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds, masked = large_feeds(spec, 300)
    got, want = session.run(None, feeds)[0], seed_output(module, feeds)
    np.testing.assert_allclose(got[masked], want[masked], rtol=0, atol=1e-5 * np.abs(want[masked]).max())


def test_a_renamed_weight_is_found_again_by_value_and_a_folded_one_is_an_error(exported):
    path, spec, _ = exported(**variant_fields("additive-mask"))
    before = onnx.load(path)
    after = onnx.load(path)
    init = next(i for i in after.graph.initializer if i.name == "linears.1.weight.T")
    init.name = "renamed"
    assert _refind(before, after, spec.weights)["linears.1.weight"] == {"initializer": "renamed", "transposed": True}
    array = onnx.numpy_helper.to_array(init) * 2  # folded with a scale: no longer the weight
    init.CopyFrom(onnx.numpy_helper.from_array(array, "renamed"))
    with pytest.raises(ExportError, match="folded weight 'linears.1.weight'"):
        _refind(before, after, spec.weights)
