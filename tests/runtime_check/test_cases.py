"""The case generator: names, shapes, mask patterns, and data that depends only on (seed, name)."""

import numpy as np
import pytest

from attn_onnx.errors import UsageError
from attn_onnx.exporter.spec import ExportSpec
from attn_onnx.runtime_check.cases import (
    MASK_PATTERNS,
    QUICK,
    Sweep,
    generate_cases,
    make_mask,
    parse_case,
    valid_lengths,
)

MHA = ExportSpec(heads=2, embedding_dim=16)


def test_default_sweep_covers_batches_lengths_cross_pairs_and_every_mask():
    cases = generate_cases(MHA)
    shapes = {(c.batch, c.q_len, c.kv_len) for c in cases}
    assert {b for b, _, _ in shapes} == {1, 2, 5}
    assert {q for _, q, _ in shapes} == {1, 7, 64, 257}
    assert (5, 257, 1) in shapes and (2, 7, 64) in shapes and (1, 64, 64) in shapes
    assert any(q != kv for _, q, kv in shapes)
    assert {c.pattern for c in cases} == set(MASK_PATTERNS)
    assert len(cases) == 3 * 8 * len(MASK_PATTERNS)


def test_models_without_mask_input_get_graph_cases_only():
    assert {c.pattern for c in generate_cases(MHA.replace(mask="causal"))} == {"graph"}
    assert [c.name for c in generate_cases(ExportSpec(module="mask"), Sweep(sizes=(1, 5)))] == ["size1", "size5"]


def test_feeds_depend_only_on_seed_and_name():
    wide = {c.name: c for c in generate_cases(MHA)}
    narrow = generate_cases(MHA, Sweep(shapes=((5, 7, 64), (1, 257, 1)), masks=("padding", "masked_row")))
    for case in narrow:
        a, b = case.feeds(3), wide[case.name].feeds(3)
        assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(narrow[0].feeds(3)["query"], narrow[0].feeds(4)["query"])


@pytest.mark.parametrize(
    "dtype, np_dtype", [("bool", np.bool_), ("uint8", np.uint8), ("int64", np.int64), ("float32", np.float32)]
)
def test_mask_feed_has_the_models_dtype_and_shape(dtype, np_dtype):
    spec = MHA.replace(mask_dtype=dtype)
    feeds = parse_case("b3.q11.kv5.masked_row", spec).feeds(0)
    assert feeds["mask"].dtype == np_dtype and feeds["mask"].shape == (3, 11, 5)
    assert parse_case("b3.q11.kv5.padding", spec).feeds(0)["mask"].shape == (3, 1, 5)
    attention = ExportSpec(module="attention", heads=2, embedding_dim=16, mask_dtype=dtype)
    assert parse_case("b3.q11.kv5.padding", attention).feeds(0)["mask"].shape == (3, 1, 1, 5)
    assert parse_case("b3.q11.kv5.ones", attention).feeds(0)["query"].shape == (3, 2, 11, 8)


def test_mask_kinds_mean_what_they_say():
    rng = np.random.default_rng(0)
    assert make_mask("zeros", 2, 3, 4, rng).sum() == 0
    causal = make_mask("causal", 2, 3, 4, rng)
    assert causal[1].tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]]
    padding = make_mask("padding", 5, 3, 9, rng)
    lengths = padding[:, 0].sum(-1)
    assert lengths[0] == 9 and len(set(lengths.tolist())) > 1  # one unpadded, the others differ
    row = make_mask("masked_row", 2, 7, 6, rng)
    assert row[-1, 3].sum() == 0 and row.sum() > 0


@pytest.mark.parametrize(
    "spec", [MHA, MHA.replace(module="attention"), MHA.replace(module="mha-self")], ids=["mha", "attention", "mha-self"]
)
@pytest.mark.parametrize(
    "sweep",
    [Sweep(), QUICK, Sweep(batches=(1, 2, 3, 8), lengths=(1, 2, 3, 9))],
    ids=["default", "quick", "small-lengths"],
)
def test_every_padding_case_pads_and_its_lengths_differ(spec, sweep):
    """A padding case pads at least one example at any batch (batch 1 used to pad nothing: its one length was
    overwritten with kv_len), and no two examples share a length while kv_len leaves room."""
    cases = [c for c in generate_cases(spec, sweep) if c.pattern == "padding"]
    assert len(cases) >= 2 and 1 in {c.batch for c in cases}
    for case in cases:
        mask = case.feeds(0)["mask"]
        assert mask.size == case.batch * case.kv_len  # (B, 1, kv_len), or attention's (B, 1, 1, kv_len)
        keys = mask.reshape(case.batch, case.kv_len).astype(np.int64)
        lengths = keys.sum(-1)
        assert (lengths < case.kv_len).any(), case.name  # someone is padded
        assert all(np.array_equal(k, np.arange(case.kv_len) < n) for k, n in zip(keys, lengths)), case.name
        room = 2 if case.kv_len == 1 else case.kv_len  # lengths 1..kv_len, or 0 and 1
        assert len(set(lengths.tolist())) == min(case.batch, room), (case.name, lengths)


@pytest.mark.parametrize("batch, q_len, kv_len", [(1, 5, 5), (1, 1, 1), (3, 6, 6), (5, 9, 4), (4, 2, 2)])
def test_causal_plus_padding_is_the_causal_mask_times_the_padding(batch, q_len, kv_len):
    mask = make_mask("causal+padding", batch, q_len, kv_len, np.random.default_rng(7))
    valid = valid_lengths(batch, kv_len, np.random.default_rng(7))
    padding = np.arange(kv_len)[None, None, :] < valid[:, None, None]
    assert np.array_equal(mask, np.tril(np.ones((q_len, kv_len)))[None] * padding)
    assert (valid < kv_len).any() and (batch == 1 or valid[0] == kv_len)


def test_quick_sweep_avoids_the_export_example_shape_and_has_cross_and_square_shapes():
    assert all(shape != (2, 3, 4) for shape in QUICK.shapes)
    assert any(q != kv for _, q, kv in QUICK.shapes)  # cross-attention lengths
    assert any(q == kv and b > 2 for b, q, kv in QUICK.shapes)  # square (GroupQueryAttention's), distinct lengths


def test_the_gate_runs_every_mask_kind_auto_times():
    assert QUICK.masks is None or {"causal", "causal+padding"} <= set(QUICK.masks)


@pytest.mark.parametrize("name", ["b3.q11", "b0.q1.kv1.ones", "b1.q1.kv1.sideways", "size5"])
def test_bad_case_names_are_usage_errors(name):
    with pytest.raises(UsageError, match="is not of the form"):
        parse_case(name, MHA)


def test_bad_sweeps_are_usage_errors():
    with pytest.raises(UsageError, match=r"unknown mask pattern\(s\) \['diagonal'\]"):
        Sweep(masks=("diagonal",)).validate()
    with pytest.raises(UsageError, match="must be >= 1"):
        Sweep(batches=(0,)).validate()
