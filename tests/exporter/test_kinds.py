"""Each module kind describes itself consistently: dims, dtypes, example inputs, metadata, options."""

import dataclasses

import numpy as np
import pytest

from attn_onnx.exporter.export import example_inputs
from attn_onnx.exporter.kinds import KINDS
from attn_onnx.exporter.spec import MASK_DTYPES, MASK_MODES, ExportSpec, ModelSpec

SPECS = [ExportSpec(module=m, heads=2, embedding_dim=16, mask=mask, mask_dtype=dtype, attn_probs=probs)
         for m in ("mha", "attention") for mask in MASK_MODES for dtype in MASK_DTYPES for probs in (False, True)
         if (mask == "input" or dtype == "bool") and (m == "mha" or not probs)] + [ExportSpec(module="mask")] + [
    ExportSpec(module="mha-cache", heads=2, embedding_dim=16, mask="causal", causal_align="bottom-right"),
    ExportSpec(module="mha-cache", heads=2, embedding_dim=16, mask="input", mask_dtype="int64"),
    ExportSpec(module="mha-self", heads=2, embedding_dim=16, mask="input", mask_dtype="uint8"),
    ExportSpec(module="mha-self", heads=2, embedding_dim=16, mask="causal", causal_align="bottom-right")] + [
    ExportSpec(module=m, heads=2, embedding_dim=16, mask="causal", causal_align="bottom-right")
    for m in ("mha", "attention")]
IDS = [f"{s.module}-{s.mask}-{s.mask_dtype}{'-probs' if s.attn_probs else ''}-{s.causal_align}" for s in SPECS]


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_dims_dtypes_and_example_agree(spec):
    assert list(spec.input_dtypes()) == spec.input_names
    assert list(spec.output_dtypes()) == spec.output_names
    example = example_inputs(spec)
    assert len(example) == len(spec.input_names)
    for tensor, (name, dims) in zip(example, spec.input_dims().items()):
        assert tensor.dim() == len(dims), name
        assert str(tensor.numpy().dtype) == spec.input_dtypes()[name], name
        for size, dim in zip(tensor.shape, dims):
            assert size == dim if isinstance(dim, int) else size not in (0, 1), (name, dims, tuple(tensor.shape))


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_metadata_round_trips(spec):
    assert ModelSpec.from_metadata(ModelSpec.of(spec).to_metadata()) == spec


def test_every_kind_is_covered():
    assert {s.module for s in SPECS} == set(KINDS)


def test_the_mask_convention_in_metadata_is_the_models():
    from attn_onnx.models import MASK_CONVENTION

    assert ModelSpec().to_metadata()["attn_onnx.mask_convention"] == MASK_CONVENTION


def test_kind_settings_are_the_vocabulary_s_and_each_has_an_export_attn_option():
    from attn_onnx.cli.export_attn import SETTING_OF
    from attn_onnx.cli.export_attn import main as export
    from attn_onnx.exporter.kinds.base import KIND_SETTINGS

    for kind in KINDS.values():
        assert kind.settings <= KIND_SETTINGS, kind.name
    options = {SETTING_OF.get(p.name, p.name) for p in export.params}
    assert KIND_SETTINGS <= options
    settings = {f.name for f in dataclasses.fields(ExportSpec)}
    assert KIND_SETTINGS - settings == {"weights"}  # where the weights come from: the ModelSpec's weight map
    assert "weights" in {f.name for f in dataclasses.fields(ModelSpec)}


def test_a_padding_mask_is_one_row_for_every_query():
    spec = ExportSpec(module="attention", heads=2, embedding_dim=16, mask_dtype="int64")
    mask = np.ones((3, 1, 5), np.uint8)
    feeds = spec.kind.inputs(spec, {"batch": 3, "q_len": 4, "kv_len": 5}, np.random.default_rng(0), mask)
    assert feeds["mask"].shape == (3, 1, 1, 5) and feeds["mask"].dtype == np.int64
    assert feeds["query"].shape == (3, 2, 4, 8)


def test_settings_carry_no_products_and_a_model_spec_states_both():
    with pytest.raises(TypeError):
        ExportSpec(weights={"linears.0.weight": {"initializer": "w"}})  # what an export produced is not a setting
    assert not hasattr(ExportSpec(), "to_metadata")  # only what was produced is written into a model
    settings = ExportSpec(heads=2, embedding_dim=16)
    produced = ModelSpec.of(settings, weights={"linears.0.weight": {"initializer": "w"}}, weights_source="here")
    assert produced == settings and produced.settings() == settings.settings()  # equal as settings
    assert produced.replace(heads=4) != settings and produced.replace(heads=4).weights == produced.weights
