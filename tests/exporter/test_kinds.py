"""Each module kind describes itself consistently: dims, dtypes, example inputs, metadata, options."""

import dataclasses

import numpy as np
import pytest

from attn_onnx.exporter.export import example_inputs
from attn_onnx.exporter.kinds import KINDS
from attn_onnx.exporter.spec import MASK_DTYPES, MASK_MODES, ExportSpec, ModelSpec

SPECS = (
    [
        ExportSpec(module=m, heads=2, embedding_dim=16, mask=mask, mask_dtype=dtype, attn_probs=probs)
        for m in ("mha", "attention")
        for mask in MASK_MODES
        for dtype in MASK_DTYPES
        for probs in (False, True)
        if (mask == "input" or dtype == "bool") and (m == "mha" or not probs)
    ]
    + [ExportSpec(module="mask")]
    + [
        ExportSpec(module="mha-cache", heads=2, embedding_dim=16, mask="causal", causal_align="bottom-right"),
        ExportSpec(module="mha-cache", heads=2, embedding_dim=16, mask="input", mask_dtype="int64"),
        ExportSpec(module="mha-self", heads=2, embedding_dim=16, mask="input", mask_dtype="uint8"),
        ExportSpec(module="mha-self", heads=2, embedding_dim=16, mask="causal", causal_align="bottom-right"),
        ExportSpec(
            module="mha-static", heads=2, embedding_dim=16, mask="causal", causal_align="bottom-right", max_len=16
        ),
    ]
    + [
        ExportSpec(module=m, heads=2, embedding_dim=16, mask="causal", causal_align="bottom-right")
        for m in ("mha", "attention")
    ]
)
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


# --- the dims contract (issue 27): how one request's inputs agree with each other ------------------------------

MHA = ExportSpec(heads=8)


def _mha_shapes(query=(2, 3), key=(2, 4), mask=(2, 3, 4)):
    return {"query": (*query, 512), "key": (*key, 512), "value": (*key, 512), "mask": mask}


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_every_dim_has_a_rule_and_the_example_keeps_the_contract(spec):
    from attn_onnx.exporter.kinds.base import dims_problem

    contract = spec.kind.dims_contract(spec)
    names = {
        d for dims in (*contract["inputs"].values(), *contract["outputs"].values()) for d in dims if isinstance(d, str)
    }
    assert set(contract["dims"]) == names
    for rule in contract["dims"].values():
        assert rule["description"] and set(rule) <= {"description", "is", "or_one", "sum"}
        assert {rule.get("is"), *rule.get("sum", ())} - {None} <= names
    assert dims_problem(spec, {n: t.shape for n, t in zip(spec.input_names, example_inputs(spec))}) is None


@pytest.mark.parametrize(
    "shapes, message",
    [
        # issue 27: a mask of one key broadcast over 4 keys (the padding never applied)
        (_mha_shapes(mask=(2, 3, 1)), "input 'mask' dim 2 (kv_len) is 1, but input 'key' dim 1 (kv_len) is 4"),
        # issue 27: keys of batch 1 under a query of batch 2, mask (2, 1, 2): one 4-key sequence read as two of 2
        (
            _mha_shapes(key=(1, 4), mask=(2, 1, 2)),
            "input 'key' dim 0 (batch) is 1, but input 'query' dim 0 (batch) is 2",
        ),
        # a mask of batch 1 is not broadcast over the batch: the default graph fails on it (torch-export's Where, the
        # tiled variant's Gather), so the contract refuses it for every variant
        (_mha_shapes(mask=(1, 3, 4)), "input 'mask' dim 0 (batch) is 1, but input 'query' dim 0 (batch) is 2"),
        (
            _mha_shapes(mask=(2, 2, 4)),
            "input 'mask' dim 1 (mask_q_len) is 2, but input 'query' dim 1 (q_len) is 3 (mask_q_len is q_len or 1)",
        ),
        (
            {**_mha_shapes(), "value": (2, 5, 512)},
            "input 'value' dim 1 (kv_len) is 5, but input 'key' dim 1 (kv_len) is 4",
        ),
        ({**_mha_shapes(), "query": (2, 3, 256)}, "input 'query' dim 2 is 256, but the model takes 512 there"),
        (
            {**_mha_shapes(), "mask": (2, 4)},
            "input 'mask' has 2 dims [2, 4], but the model takes 3: (batch, mask_q_len, kv_len)",
        ),
    ],
)
def test_inputs_that_disagree_are_named_with_both_inputs_and_the_dim(shapes, message):
    from attn_onnx.exporter.kinds.base import dims_problem

    assert dims_problem(MHA, shapes) == message


def test_a_padding_mask_and_a_full_mask_keep_the_contract():
    from attn_onnx.exporter.kinds.base import dims_problem

    assert dims_problem(MHA, _mha_shapes(mask=(2, 1, 4))) is None
    assert dims_problem(MHA, _mha_shapes(mask=(2, 3, 4))) is None
    assert dims_problem(MHA, _mha_shapes(query=(2, 1), mask=(2, 1, 4))) is None


def test_a_cache_step_s_mask_covers_the_past_and_the_new_tokens():
    from attn_onnx.exporter.kinds.base import dims_problem

    spec = ExportSpec(module="mha-cache", heads=2, embedding_dim=16, mask="input")
    shapes = {
        "query": (2, 3, 16),
        "key": (2, 3, 16),
        "value": (2, 3, 16),
        "past_key": (2, 2, 7, 8),
        "past_value": (2, 2, 7, 8),
        "mask": (2, 1, 10),
    }
    assert dims_problem(spec, shapes) is None
    assert dims_problem(spec, {**shapes, "mask": (2, 1, 7)}) == (
        "input 'mask' dim 2 (total_len) is 7, but input 'past_key' dim 2 (past_len) is 7 and input 'query' dim 1 "
        "(q_len) is 3: total_len is past_len + q_len = 10"
    )
    assert "(past_len) is 6, but input 'past_key' dim 2 (past_len) is 7" in dims_problem(
        spec, {**shapes, "past_value": (2, 2, 6, 8)}
    )


def test_a_self_attention_mask_covers_its_one_length():
    from attn_onnx.exporter.kinds.base import dims_problem

    spec = ExportSpec(module="mha-self", heads=2, embedding_dim=16)
    assert dims_problem(spec, {"x": (2, 5, 16), "mask": (2, 1, 5)}) is None
    assert dims_problem(spec, {"x": (2, 5, 16), "mask": (2, 1, 1)}) == (
        "input 'mask' dim 2 (q_len) is 1, but input 'x' dim 1 (q_len) is 5"
    )


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_every_check_case_keeps_the_contract(spec):
    """runtime_check checks each case's feeds against the contract (Case.feeds raises where they break it)."""
    from attn_onnx.runtime_check.cases import QUICK, generate_cases

    for case in generate_cases(spec, QUICK):
        case.feeds(0)


def test_a_case_whose_feeds_break_the_contract_is_a_bug_in_the_sweep(monkeypatch):
    from attn_onnx.runtime_check.cases import parse_case

    spec = ExportSpec(heads=2, embedding_dim=16)
    inputs = type(spec.kind).inputs

    def broadcast_mask(self, spec, dims, rng, mask=None):  # a sweep that builds a mask of one key
        feeds = inputs(self, spec, dims, rng, mask)
        return {**feeds, "mask": feeds["mask"][..., :1]}

    monkeypatch.setattr(type(spec.kind), "inputs", broadcast_mask)
    with pytest.raises(
        AssertionError,
        match=r"b2\.q3\.kv4\.padding: its feeds break the model's dims contract: "
        r"input 'mask' dim 2 \(kv_len\) is 1, but input 'key' dim 1",
    ):
        parse_case("b2.q3.kv4.padding", spec).feeds(0)


# --- the lengths rule: a static cache's past_len, checked on its values ------------------------------------------

STATIC = next(s for s in SPECS if s.module == "mha-static")  # max_len 16


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_only_a_static_cache_rules_its_inputs_values_and_the_example_keeps_it(spec):
    from attn_onnx.exporter.kinds.dims import values_problem

    contract = spec.kind.dims_contract(spec)
    lengths = contract.get("lengths") or {}
    if spec.module != "mha-static":
        assert not lengths
    else:
        assert set(lengths) == {"past_len"} and spec.input_dtypes()["past_len"] == "int64"
        rule = lengths["past_len"]
        assert contract["inputs"]["past_len"] == ["batch"] and rule["plus"] in contract["dims"]
        assert (rule["at_least"], rule["at_most"]) == (0, spec.max_len) and rule["description"]
        assert set(rule) == {"description", "at_least", "plus", "at_most", "limit", "past_limit"}
    feeds = {n: t.numpy() for n, t in zip(spec.input_names, example_inputs(spec))}
    assert values_problem(contract, feeds) is None


def test_every_check_case_and_vector_case_of_a_static_cache_keeps_its_lengths():
    """The cases the checks and the bundle's vectors run are within the rule, the cache filled exactly among them:
    a service that checks it refuses none of them."""
    from attn_onnx.exporter.kinds.dims import values_problem
    from attn_onnx.runtime_check.cases import QUICK, generate_cases, parse_case

    contract = STATIC.kind.dims_contract(STATIC)
    cases = [*generate_cases(STATIC, QUICK), *(parse_case(n, STATIC) for n in STATIC.kind.vector_cases(STATIC))]
    filled = 0
    for case in cases:
        feeds = case.feeds(0)
        assert values_problem(contract, feeds) is None, case.name
        filled += int((feeds["past_len"] + feeds["query"].shape[1] == STATIC.max_len).any())
    assert filled


@pytest.mark.parametrize(
    "past_len, q_len, message",
    [
        (
            [15],
            2,
            "input 'past_len' is 15 for sequence 0, and 15 + q_len 2 is 17, past the cache's max_len 16: the cache is "
            "full (reset the sequence, or export with a larger --max-len)",
        ),
        (
            [2, 16, 0],
            1,
            "input 'past_len' is 16 for sequence 1, and 16 + q_len 1 is 17, past the cache's max_len 16: the cache is "
            "full (reset the sequence, or export with a larger --max-len)",
        ),
        ([0, -3], 1, "input 'past_len' is -3 for sequence 1: a length is at least 0"),
        ([14, 0], 2, None),  # fills sequence 0 exactly
        ([0], 16, None),  # a prefill of the whole cache
    ],
)
def test_a_static_step_outside_its_cache_is_named_with_the_sequence_and_the_limit(past_len, q_len, message):
    from attn_onnx.exporter.kinds.dims import values_problem

    feeds = STATIC.kind.inputs(STATIC, {"batch": len(past_len), "q_len": q_len, "kv_len": 0}, np.random.default_rng(0))
    feeds["past_len"] = np.array(past_len, np.int64)
    assert values_problem(STATIC.kind.dims_contract(STATIC), feeds) == message
    without = {k: v for k, v in STATIC.kind.dims_contract(STATIC).items() if k != "lengths"}
    assert values_problem(without, feeds) is None  # the rule is what refuses
