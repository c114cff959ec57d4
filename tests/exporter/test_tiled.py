"""tiled: tiles of query rows (of one example or a few with a mask input), each over the keys up to its last
row plus a reach, and no further than its examples' last allowed key, both read off the mask at run time.
Tiny tiles (a few rows) make every shape span many tiles, the last one overlapping, so that each path is
checked against float64 at small sizes; the reach, the key limits, T and G are read off the graph's values."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import attn_onnx.exporter.variants.tiled as tiled
from attn_onnx.deploy import export_model
from attn_onnx.exporter.export import build_module
from attn_onnx.exporter.spec import ExportSpec, ModelSpec
from attn_onnx.runtime_check.cases import Sweep, make_mask
from attn_onnx.runtime_check.check import CheckConfig, check_model
from attn_onnx.runtime_check.reference import reference_module
from tests.exporter.test_variants import SMALL

SHAPES = ((1, 1, 1), (2, 7, 7), (3, 9, 9), (2, 10, 10), (3, 9, 5), (2, 5, 9), (1, 33, 33))  # 10: 3+3+3+1 rows


@pytest.fixture(scope="module")
def tiny_tiles(tmp_path_factory):
    """export(group_scores=1, **fields) -> (path, spec, module) for a tiled export whose tiles are 3 rows (of
    one example each with a mask input, unless `group_scores` lets more in)."""
    folder, cache = tmp_path_factory.mktemp("tiny_tiles"), {}

    def export(group_scores=1, **fields):
        key = (group_scores, *sorted(fields.items()))
        if key not in cache:
            spec = ExportSpec(**{**SMALL, "variant": "tiled", "opset": 18, **fields}).validate()
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(tiled, "TILE_SCORES", 1)
                patch.setattr(tiled, "MIN_TILE", 3)
                patch.setattr(tiled, "GROUP_SCORES", group_scores)
                path = folder / f"{len(cache)}.onnx"
                export_model(spec, path, seed=0, check=False)
            cache[key] = (path, spec, build_module(spec, seed=0))
        return cache[key]

    return export


@pytest.mark.parametrize(
    "fields",
    [
        {"mask": "input"},
        {"mask": "input", "mask_dtype": "float32"},
        {"mask": "causal"},
        {"mask": "input", "group_scores": 700},  # 4 heads x 9 keys x 9 rows = 324 per example: 2 of 3 (overlapping)
        {"mask": "causal", "causal_align": "bottom-right"},
        {"mask": "none"},
        {"mask": "input", "module": "mha-self"},
        {"mask": "causal", "module": "mha-self"},
    ],
)
def test_many_small_tiles_match_float64_in_onnxruntime_and_onnx_reference(tiny_tiles, fields):
    path, spec, module = tiny_tiles(**fields)
    shapes = tuple(s for s in SHAPES if spec.module != "mha-self" or s[1] == s[2])
    report = check_model(
        path, CheckConfig(runtimes=("onnxruntime", "reference"), sweep=Sweep(shapes=shapes)), module=module
    )
    assert report.ok and not report.nothing_checked, [r.line() for r in report.failed]
    assert {r.runner for r in report.results} == {"onnxruntime/cpu", "onnx-reference"}


def with_values(path, *names):
    """The model with some of its inner values (the reach, the tile size, the tile count, the key limit) as
    extra outputs."""
    proto = onnx.load(path)
    found = {}
    for node in proto.graph.node:
        for out in node.output:
            for name in names:
                if out.rsplit("_", 1)[0] == name:
                    found[name] = out
    for name in names:
        proto.graph.output.append(onnx.helper.make_tensor_value_info(found[name], onnx.TensorProto.INT64, None))
    return proto, [found[n] for n in names]


@pytest.mark.parametrize(
    "mask_kind, reach",
    [
        ("causal+padding", 0),
        ("causal", 0),
        ("zeros", 0),  # nothing above the diagonal: keys up to the tile
        ("ones", 8),
        ("padding", 8),  # query 0 attends key 8
        ("masked_row", None),  # whatever the random mask reaches
    ],
)
def test_the_reach_and_each_examples_last_key_are_read_off_the_mask(tiny_tiles, mask_kind, reach):
    """reach: the least r with no allowed key j > i + r; key_limit: one past an example's last allowed key
    (at least 1), where its tiles stop."""
    path, spec, module = tiny_tiles(mask="input")
    proto, names = with_values(path, "reach", "key_limit")
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    mask = make_mask(mask_kind, 3, 9, 9, np.random.default_rng(1))
    feeds = spec.kind.inputs(spec, {"batch": 3, "q_len": 9, "kv_len": 9}, np.random.default_rng(0), mask)
    got_reach, got_limit = session.run(names, feeds)
    rows, cols = np.nonzero(np.broadcast_to(mask, (3, 9, 9)).any(axis=0))
    assert int(got_reach) == max(0, (cols - rows).max(initial=0)) == (reach if reach is not None else got_reach)
    full = np.broadcast_to(mask, (3, 9, 9)).any(axis=1)  # (B, kv): some query attends key j
    assert got_limit.tolist() == [max(1, int(np.nonzero(f)[0].max(initial=-1)) + 1) for f in full]
    if mask_kind == "causal+padding":
        assert got_limit.tolist() == mask[:, -1].sum(axis=-1).tolist()  # each example's length


def test_skipping_keys_above_the_diagonal_is_wrong_for_masks_that_allow_them(tiny_tiles, tmp_path):
    """The reach matters: forced to 0, the tiles drop keys the mask allows, and the check fails exactly on
    the masks that allow keys above the diagonal. The honest model passes the same sweep."""
    path, spec, module = tiny_tiles(mask="input")
    proto = onnx.load(path)
    (mul,) = [n for n in proto.graph.node if n.output[0].rsplit("_", 1)[0] == "reach"]
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.array(0, np.int64), "no_reach"))
    mul.op_type, mul.input[:] = "Identity", ["no_reach"]
    del mul.attribute[:]
    forced = tmp_path / "forced.onnx"
    onnx.save(proto, forced)
    config = CheckConfig(runtimes=("onnxruntime",), sweep=Sweep(shapes=((2, 7, 7), (3, 9, 9))))
    assert check_model(path, config, module=module).ok
    failed = {r.case.rsplit(".", 1)[1] for r in check_model(forced, config, module=module).failed}
    assert failed == {"ones", "masked_row", "padding"}


@pytest.mark.parametrize(
    "mask, batch, length, tile",
    [
        ("none", 1, 2048, 64),
        ("none", 4, 512, 64),
        ("none", 8, 128, 128),
        ("none", 1, 512, 256),
        ("none", 1, 16, 16),
        ("none", 1, 8192, 16),
        ("none", 16, 1024, 16),
        ("causal", 8, 128, 64),
        ("causal", 1, 512, 64),
    ],
)
def test_a_tile_holds_about_tile_scores_numbers(exported, mask, batch, length, tile):
    """T = TILE_SCORES / (B * h * kv_len) rows, at least MIN_TILE, at most q_len (8 heads, 1 << 20 scores);
    under a mask at most MAX_TILE, which bounds the masked scores of the tile's diagonal block."""
    path, spec, _ = exported(heads=8, embedding_dim=64, variant="tiled", opset=18, mask=mask)
    proto, names = with_values(path, "tile", "tile_count")
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {n: np.zeros((batch, length, 64), np.float32) for n in ("query", "key", "value")}
    got_tile, got_count = session.run(names, feeds)
    assert (int(got_tile), int(got_count)) == (tile, -(-length // tile))


@pytest.mark.parametrize(
    "batch, length, tile, group",
    [
        (8, 128, 64, 1),
        (4, 512, 64, 1),
        (1, 2048, 64, 1),
        (1, 8192, 16, 1),
        (256, 16, 16, 64),
        (32, 64, 64, 4),
        (3, 16, 16, 3),
    ],
)
def test_with_a_mask_input_a_tile_holds_one_example_unless_examples_are_short(exported, batch, length, tile, group):
    """T = TILE_SCORES / (h * kv_len) rows, at most MAX_TILE, of G examples, G = GROUP_SCORES / (h * kv_len *
    q_len), at least 1 and at most the batch: many short sequences share tiles, where one tile each would cost
    a loop turn each; longer ones do not (examples of different lengths in one tile compute each other's
    padding, masked)."""
    path, spec, _ = exported(heads=8, embedding_dim=64, variant="tiled", opset=18)
    proto, names = with_values(path, "tile", "group")
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {n: np.zeros((batch, length, 64), np.float32) for n in ("query", "key", "value")}
    feeds["mask"] = np.ones((batch, length, length), bool)
    assert [int(x) for x in session.run(names, feeds)] == [tile, group]


def test_keys_and_values_are_projected_only_where_a_query_of_their_example_may_attend(tiny_tiles):
    """The rows gathered for the key and value projections are those of keys j < key_limit[b], example after
    example; padding is not projected."""
    path, spec, module = tiny_tiles(mask="input")
    proto, names = with_values(path, "needed_at", "key_limit")
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    mask = make_mask("causal+padding", 3, 9, 9, np.random.default_rng(1))
    feeds = spec.kind.inputs(spec, {"batch": 3, "q_len": 9, "kv_len": 9}, np.random.default_rng(0), mask)
    needed, limit = session.run(names, feeds)
    lengths = mask[:, -1].sum(axis=-1)
    assert limit.tolist() == lengths.tolist() and lengths.min() < 9  # some example is padded
    assert needed.tolist() == [b * 9 + j for b in range(3) for j in range(lengths[b])]
    gathered = {n.output[0] for n in proto.graph.node if n.op_type == "Gather" and n.input[1] == names[0]}
    projected = [n for n in proto.graph.node if n.op_type == "MatMul" and n.input[0] in gathered]
    assert len(projected) == 2  # key and value


@pytest.mark.parametrize("group_scores", [1, 700])  # one example a tile; two of three (their keys end apart)
def test_what_padding_holds_never_reaches_the_output(tiny_tiles, group_scores):
    """Garbage in the padded keys' and values' inputs (huge, or NaN) gives bit for bit the output of clean
    padding: those rows are never projected, and a tile's keys past one example's limit take a row of its own.

    (The seed gives the same within rounding for finite garbage, its masked keys weighing exactly 0; a NaN there it
    would spread into every row of the example, 0 * NaN in p_attn @ value.)"""
    path, spec, module = tiny_tiles(group_scores=group_scores, mask="input")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    mask = make_mask("causal+padding", 3, 9, 9, np.random.default_rng(1))
    feeds = spec.kind.inputs(spec, {"batch": 3, "q_len": 9, "kv_len": 9}, np.random.default_rng(0), mask)
    clean = session.run(None, feeds)[0]
    padded = ~mask[:, -1].astype(bool)  # (B, kv_len)
    for garbage in (1e30, np.nan):
        dirty = {**feeds, "key": feeds["key"].copy(), "value": feeds["value"].copy()}
        dirty["key"][padded], dirty["value"][padded] = garbage, -garbage
        np.testing.assert_array_equal(session.run(None, dirty)[0], clean)


def test_self_attention_with_a_mask_input_projects_key_and_value_together_on_the_rows_needed(exported):
    """The query on every row of x; key and value with one MatMul of the packed (E, 2E) weight on the rows
    gathered; the weight map leads back to every weight."""
    path, spec, module = exported(**SMALL, variant="tiled", opset=18, module="mha-self")
    proto = onnx.load(path)
    rows_of_x = {n.output[0] for n in proto.graph.node if n.op_type == "Reshape" and n.input[0] == "x"}  # (B*len, E)
    on_x = [n for n in proto.graph.node if n.op_type == "MatMul" and n.input[0] in rows_of_x]
    assert [n.input[1] for n in on_x] == ["linears.0.weight.T"]
    gathered = [n for n in proto.graph.node if n.op_type == "Gather" and n.input[0] in rows_of_x]
    on_needed = [n for n in proto.graph.node if n.op_type == "MatMul" and n.input[0] == gathered[0].output[0]]
    assert len(gathered) == 1 and [n.input[1] for n in on_needed] == ["kv.weight.T"]
    assert spec.weights["linears.1.weight"] == {"initializer": "kv.weight.T", "transposed": True, "slice": [0, 32]}
    assert spec.weights["linears.2.weight"] == {"initializer": "kv.weight.T", "transposed": True, "slice": [32, 64]}
    rebuilt, _ = reference_module(proto, ModelSpec.from_metadata({p.key: p.value for p in proto.metadata_props}))
    for key, tensor in module.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], tensor), key
