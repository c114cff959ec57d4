"""Plots a person can read: the chosen example and head, named in every title, integer ticks, and the
tolerance on the difference plot."""

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from attn_onnx.errors import UsageError
from attn_onnx.runtime_check.compare import FLOAT32
from attn_onnx.runtime_check.plots import draw, plot_names

CASE = "b3.q7.kv9.padding"


@pytest.fixture
def probs():
    rng = np.random.default_rng(0)
    golden = rng.random((3, 4, 7, 9))
    golden /= golden.sum(-1, keepdims=True)  # (batch, heads, q_len, kv_len)
    runtime = golden.astype(np.float32)
    runtime[1, 2, 3, 4] += 1e-3  # one element beyond tolerance, in example 1, head 2
    mask = np.ones((3, 1, 9), np.uint8)
    mask[1, 0, 6:] = 0
    return golden, runtime, mask


def test_the_chosen_example_and_head_are_drawn_and_named(probs):
    golden, runtime, mask = probs
    figures = draw(CASE, mask, golden, runtime, "onnxruntime/cpu", example=1, head=2, tolerance=FLOAT32)
    assert list(figures) == ["mask", "attn_probs", "attn_diff"]
    for fig in figures.values():
        for ax in fig.axes[:1]:
            assert CASE in ax.get_title()
    left = figures["attn_probs"].axes[0]
    assert "example 1, head 2" in left.get_title()
    np.testing.assert_array_equal(left.images[0].get_array(), golden[1, 2])
    mask_image = figures["mask"].axes[0].images[0].get_array()
    assert mask_image[:, 6:].sum() == 0 and mask_image[:, :6].all()  # example 1's padding, every query


def test_ticks_are_whole_positions(probs):
    golden, runtime, mask = probs
    for fig in draw(CASE, mask, golden, runtime, "onnxruntime/cpu", example=0, head=0, tolerance=FLOAT32).values():
        ax = fig.axes[0]
        fig.canvas.draw()
        for ticks in (ax.get_xticks(), ax.get_yticks()):
            assert np.all(ticks == np.round(ticks)), ticks


def test_the_difference_plot_shows_the_tolerance_and_what_breaks_it(probs):
    golden, runtime, mask = probs
    diff = draw(CASE, mask, golden, runtime, "onnxruntime/cpu", example=1, head=2, tolerance=FLOAT32)["attn_diff"]
    title = diff.axes[0].get_title()
    assert "atol=1e-05 rtol=0.0001: 1 beyond" in title
    marks = diff.axes[0].collections[0].get_offsets()
    assert marks.tolist() == [[4, 3]]  # (key, query) of the element beyond tolerance
    clean = draw(CASE, mask, golden, runtime, "onnxruntime/cpu", example=0, head=0, tolerance=FLOAT32)["attn_diff"]
    assert ": 0 beyond" in clean.axes[0].get_title()


def test_out_of_range_choices_are_usage_errors(probs):
    golden, runtime, mask = probs
    with pytest.raises(UsageError, match="--plot-head 4 is out of range: the model has 4 heads"):
        draw(CASE, mask, golden, runtime, "x", example=0, head=4, tolerance=FLOAT32)
    with pytest.raises(UsageError, match="--plot-example 3 is out of range"):
        draw(CASE, mask, golden, runtime, "x", example=3, head=0, tolerance=FLOAT32)


def test_file_names_carry_the_case():
    assert plot_names(CASE) == [f"{CASE}.mask.png", f"{CASE}.attn_probs.png", f"{CASE}.attn_diff.png"]
