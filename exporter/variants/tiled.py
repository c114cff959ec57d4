"""`tiled`: the seed's MatMul/Softmax one tile of query rows at a time, each tile over only the keys its mask
can allow. Standard operators (a `Loop`): any runtime.

Query rows [s, s+T) under a causal mask allow keys 0..s+T-1 at most, so a tile's scores are (G, h, T, s+T):
the upper triangle beyond the tile is never computed, and no (q_len, kv_len) tensor is ever held. A tile is
sized so that its scores stay in cache (about TILE_SCORES numbers). A row's softmax lies wholly inside its
tile, so it is the seed's softmax over the row, not an online (flash) rescaling of partial sums.

Which keys a tile takes is read off the mask at run time (_mask_reach, one ArgMax over it):
- the reach: query i attends no key j > i + reach (0 for causal and causal AND padding masks; the
  built-in causal mask's is known: 0 top-left, kv_len - q_len bottom-right; no mask: every key);
- each example's last allowed key: a tile of a mask input holds G examples (one, unless whole examples are
  short) and stops at the last key any of them may attend, so padded examples cost what their lengths cost.
A key left out is one the mask forbids, so leaving it out changes nothing: exp(-FLT_MAX - max) is 0.

Every tile has G examples and T rows (the last ones start G examples and T rows before the end and overlap
their neighbours), so the loop's scan output has one shape; one Gather puts the rows in place. Fully-masked
rows get the seed's uniform answer after the loop (fused.uniform_rows): inside a tile they would be uniform
over the tile's keys only.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from attn_onnx.dtypes import ONNX_TYPES, numpy_dtype
from attn_onnx.exporter.variants import Built
from attn_onnx.exporter.variants.fused import (GraphWriter, Weights, additive_bias, allowed_mask,
                                               can_mask_whole_rows, model, output_projection, projections,
                                               uniform_rows)

INT64 = TensorProto.INT64
TILE_SCORES = 1 << 20  # scores per tile (4 MiB in float32): G * h * T * kv_len, T at least MIN_TILE rows
MIN_TILE = 16
# with a mask input, a tile holds few examples (each tile's keys end at the last one its examples may attend):
# one, unless whole examples are short enough that about this many scores fit; the loop costs tens of
# microseconds a turn, which many one-example tiles of short sequences would add up
GROUP_SCORES = 1 << 17


def build(spec, graph, example, module) -> Built:
    w, weights = GraphWriter(), Weights(module)
    p = projections(w, weights, packed_bias=False, spec=spec)  # query, key, value (B, len, E) with their biases
    allowed = allowed_mask(w, spec)  # (B, mask_q_len, kv_len), causal (q_len, kv_len) bool, or None
    x, any_allowed = _attend_in_tiles(w, spec, p, allowed)  # (B, q_len, E)
    if can_mask_whole_rows(spec):
        x = uniform_rows(w, x, allowed, p["value"], None, ONNX_TYPES[spec.dtype], any_allowed)
    output_projection(w, weights, x)
    doc = ("MultiHeadedAttention, the seed's graph one tile of query rows at a time over the keys the mask can "
           "allow (attn-onnx variant tiled)")
    return Built(model(w, spec, {"": spec.opset}, doc), weights.map)


def _attend_in_tiles(w: GraphWriter, spec, p: dict[str, str], allowed: str | None) -> tuple[str, str | None]:
    """softmax(q k^T / sqrt(d_k) + mask) v, T query rows at a time: (B, q_len, E), heads concatenated; and for
    a mask input, which of its rows allow a key (uint8, (B, mask_q_len, 1)), read off it on the way."""
    shape = w.constant("heads_shape", np.array([0, 0, spec.heads, spec.d_k], np.int64))
    q, k, v = (w.op("Transpose", [w.op("Reshape", [p[n], shape], stem=n[0])], stem=n[0], perm=[0, 2, 1, 3])
               for n in ("query", "key", "value"))  # (B, h, len, d_k)
    # (q / sqrt(d_k)) k^T: the seed's scores exactly when sqrt(d_k) is a power of two, within an ulp otherwise
    q = w.op("Mul", [q, w.constant("inv_sqrt_d_k", np.array(1 / np.sqrt(spec.d_k), numpy_dtype(spec.dtype)))],
             stem="q")
    q_shape = w.op("Shape", [q])
    batch = w.op("Gather", [q_shape, _i64(w, 0)], axis=0, stem="batch")
    q_len = w.op("Gather", [q_shape, _i64(w, 2)], axis=0, stem="q_len")
    kv_len = w.op("Gather", [w.op("Shape", [k]), _i64(w, 2)], axis=0, stem="kv_len")
    i64 = lambda value: _i64(w, value)  # noqa: E731
    per_row = w.op("Mul", [i64(spec.heads), kv_len])  # scores per query row of one example
    any_allowed = None
    if spec.mask == "input":  # tiles of few examples, each tile's keys ending at the last any of them may attend
        reach, key_limit, any_allowed = _mask_reach(w, allowed)  # query i attends no key j > i + reach; (B,)
        tile = _clamp(w, w.op("Div", [i64(TILE_SCORES), per_row]), MIN_TILE, q_len, stem="tile")
        group = _clamp(w, w.op("Div", [i64(GROUP_SCORES), w.op("Mul", [per_row, tile])]), 1, batch, stem="group")
    else:  # every example in each tile: their keys end alike
        reach, key_limit = _reach(w, spec, q_len, kv_len), None
        tile = _clamp(w, w.op("Div", [i64(TILE_SCORES), w.op("Mul", [per_row, batch])]), MIN_TILE, q_len,
                      stem="tile")
        group = batch
    row_tiles = _ceil_div(w, q_len, tile, stem="tile_count")
    groups = _ceil_div(w, batch, group, stem="groups")
    count = w.op("Mul", [row_tiles, groups])
    last_first, last_start = w.op("Sub", [batch, group]), w.op("Sub", [q_len, tile])  # the overlapping last ones
    mask_rows = _mask_rows(w, allowed) if spec.mask == "input" else None

    body = w.branch()  # one tile: examples [first, first + G), rows [start, start + T), keys [0, n)
    counter, cond = w.fresh("tile_index"), w.fresh("cond")
    first = body.op("Min", [body.op("Mul", [body.op("Div", [counter, row_tiles]), group]), last_first],
                    stem="first")
    start = body.op("Min", [body.op("Mul", [body.op("Mod", [counter, row_tiles]), tile]), last_start],
                    stem="start")
    last, end = body.op("Add", [first, group]), body.op("Add", [start, tile], stem="end")
    limit = kv_len
    if key_limit is not None:
        limit = body.op("ReduceMax", [body.op("Slice", [key_limit, _vector(body, first), _vector(body, last)])],
                        keepdims=0, stem="limit")
    keys = body.op("Max", [i64(1), body.op("Min", [limit, body.op("Add", [end, reach])])], stem="keys")
    first_1, last_1, start_1, end_1, keys_1 = (_vector(body, x) for x in (first, last, start, end, keys))
    axes = w.constant("axes_0_2", np.array([0, 2], np.int64))
    q_tile = body.op("Slice", [q, body.op("Concat", [first_1, start_1], axis=0),
                               body.op("Concat", [last_1, end_1], axis=0), axes], stem="q_tile")  # (G, h, T, d_k)
    kv_starts = body.op("Concat", [first_1, _zero_1(w)], axis=0)
    kv_ends = body.op("Concat", [last_1, keys_1], axis=0)
    k_tile, v_tile = (body.op("Slice", [x, kv_starts, kv_ends, axes], stem="kv_tile") for x in (k, v))  # (G, h, n, d_k)
    scores = body.op("MatMul", [q_tile, body.op("Transpose", [k_tile], perm=[0, 1, 3, 2])], stem="scores")
    if allowed is not None:  # (G, h, T, n) + (G | 1, 1, T | 1, n)
        mask_tile = _mask_tile(body, spec, allowed, mask_rows, first, last, start, end, keys_1)
        scores = body.op("Add", [scores, additive_bias(body, mask_tile, spec, full_rows=False)], stem="scores")
    p_attn = body.op("Softmax", [scores], axis=-1, stem="p_attn")
    x_tile = body.op("Transpose", [body.op("MatMul", [p_attn, v_tile])], perm=[0, 2, 1, 3])  # (G, T, h, d_k)
    # flat: onnx.reference's Loop stacks scan outputs with np.vstack, which adds no axis unless they are 1-D
    x_tile = body.op("Reshape", [x_tile, w.constant("flat", np.array([-1], np.int64))], stem="x_tile")
    # an explicit true condition: onnx.reference's Loop runs no iteration when the condition is omitted
    tiles = w.op("Loop", [count, w.constant("true", np.array(True))], stem="tiles", body=body.loop_body(
        "tile", counter, cond, x_tile, ONNX_TYPES[spec.dtype], ["tile_values"]))  # (count, G * T * E)
    rows = w.op("Reshape", [tiles, w.constant("rows_shape", np.array([-1, spec.embedding_dim], np.int64))])

    # output (b, i) is row t of example e of tile (g, j): g-major over the groups, then j, then e, then t
    g, e = _placed(w, batch, group, groups, "example")  # (B,)
    j, t = _placed(w, q_len, tile, row_tiles, "row")  # (q_len,)
    col = lambda x: w.op("Unsqueeze", [x, w.constant("axes_1", np.array([1], np.int64))])  # noqa: E731
    tile_of = w.op("Add", [w.op("Mul", [col(g), row_tiles]), j])  # (B, q_len)
    where = w.op("Add", [w.op("Mul", [w.op("Add", [w.op("Mul", [tile_of, group]), col(e)]), tile]), t])
    return w.op("Gather", [rows, where], axis=0, stem="x"), any_allowed  # (B, q_len, E)


def _placed(w: GraphWriter, size: str, block: str, blocks: str, stem: str) -> tuple[str, str]:
    """For each of 0..size-1, which of the `blocks` blocks of `block` it is in and where: blocks end to end,
    the last one starting at size - block (it overlaps the one before)."""
    i64 = lambda value: _i64(w, value)  # noqa: E731
    index = w.op("Range", [i64(0), size, i64(1)])
    in_last = w.op("Cast", [w.op("GreaterOrEqual", [index, w.op("Mul", [w.op("Sub", [blocks, i64(1)]), block])])],
                   to=INT64)
    regular = w.op("Sub", [i64(1), in_last])
    which = w.op("Add", [w.op("Mul", [w.op("Div", [index, block]), regular]),
                         w.op("Mul", [w.op("Sub", [blocks, i64(1)]), in_last])], stem=stem + "_block")
    offset = w.op("Add", [w.op("Mul", [w.op("Mod", [index, block]), regular]),
                          w.op("Mul", [w.op("Sub", [index, w.op("Sub", [size, block])]), in_last])],
                  stem=stem + "_offset")
    return which, offset


def _clamp(w: GraphWriter, value: str, low: int, high: str, stem: str) -> str:
    return w.op("Min", [high, w.op("Max", [_i64(w, low), value])], stem=stem)


def _ceil_div(w: GraphWriter, a: str, b: str, stem: str) -> str:
    return w.op("Div", [w.op("Sub", [w.op("Add", [a, b]), _i64(w, 1)]), b], stem=stem)


def _reach(w: GraphWriter, spec, q_len: str, kv_len: str) -> str:
    """For the built-in masks and none: how far past a row its keys reach (query i attends no key j > i +
    reach)."""
    if spec.mask == "none":
        return kv_len
    return w.op("Sub", [kv_len, q_len]) if spec.causal_align == "bottom-right" else _i64(w, 0)


def _mask_reach(w: GraphWriter, allowed: str) -> tuple[str, str, str]:
    """For a mask input: how far past a row its keys reach (the least r with no allowed key j > i + r, at
    least 0), for each example one past the last key any of its queries may attend (B,), at least 1, and
    which rows allow a key at all (uint8, (B, mask_q_len, 1)).

    Both from each row's last allowed key: one ArgMax over the mask (its last maximum)."""
    mask = w.op("Cast", [allowed], to=TensorProto.UINT8)  # (B, mask_q_len, kv_len)
    first_col = w.op("Concat", [w.op("Slice", [w.op("Shape", [mask]), _zero_1(w), w.constant(
        "i64_1d_2", np.array([2], np.int64))]), w.constant("i64_1d_1", np.array([1], np.int64))], axis=0)
    ones = w.op("Expand", [w.constant("u8_1", np.array(1, np.uint8)), first_col])  # (B, mask_q_len, 1)
    # a 1 before key 0: the last 1 of each row is its last allowed key + 1, or 0 where it allows none
    last = w.op("ArgMax", [w.op("Concat", [ones, mask], axis=-1)], axis=-1, keepdims=0, select_last_index=1)
    last = w.op("Sub", [last, _i64(w, 1)], stem="last_key")  # (B, mask_q_len), -1 where no key
    rows = w.op("Range", [_i64(w, 0), w.op("Gather", [w.op("Shape", [allowed]), _i64(w, 1)], axis=0), _i64(w, 1)])
    reach = w.op("ReduceMax", [w.op("Sub", [last, rows])], keepdims=0)  # a one-row mask: row 0 binds every query
    reach = w.op("Max", [reach, _i64(w, 0)], stem="reach")
    limit = w.op("ReduceMax", [last, _vector(w, _i64(w, 1))], keepdims=0)  # (B,)
    any_allowed = w.op("Cast", [w.op("Unsqueeze", [w.op("GreaterOrEqual", [last, _i64(w, 0)]), _vector(
        w, _i64(w, -1))])], to=TensorProto.UINT8, stem="any_allowed_rows")  # (B, mask_q_len, 1)
    return reach, w.op("Max", [w.op("Add", [limit, _i64(w, 1)]), _i64(w, 1)], stem="key_limit"), any_allowed


def _mask_rows(w: GraphWriter, allowed: str) -> str:
    """1 where the mask input has a row per query, 0 where it is one (B, 1, kv_len) row for every query."""
    mask_q_len = w.op("Gather", [w.op("Shape", [allowed]), _i64(w, 1)], axis=0)
    return w.op("Cast", [w.op("Greater", [mask_q_len, _i64(w, 1)])], to=INT64, stem="full_mask")


def _mask_tile(body: GraphWriter, spec, allowed: str, full: str | None, first: str, last: str, start: str,
               end: str, keys_1: str) -> str:
    """The tile's examples, rows and first `keys` columns of the allowed mask: (T, n) for the built-in causal
    mask, (G, T, n) for a mask input, (G, 1, n) for a mask input that is one row for every query (`full` 0)."""
    if spec.mask == "causal":
        starts, ends, axes = [_vector(body, start)], [_vector(body, end)], [0, 1]
    else:  # a (B, 1, kv_len) mask is sliced at row 0 whatever the tile
        start = body.op("Mul", [start, full])
        end = body.op("Add", [body.op("Mul", [end, full]), body.op("Sub", [_i64(body, 1), full])])
        starts = [_vector(body, first), _vector(body, start)]
        ends, axes = [_vector(body, last), _vector(body, end)], [0, 1, 2]
    axes = body.constant("axes_" + "_".join(map(str, axes)), np.array(axes, np.int64))
    return body.op("Slice", [allowed, body.op("Concat", starts + [_zero_1(body)], axis=0),
                             body.op("Concat", ends + [keys_1], axis=0), axes], stem="mask_tile")


def _i64(w: GraphWriter, value: int) -> str:
    return w.constant(f"i_{value}".replace("-", "m"), np.array(value, np.int64))


def _vector(w: GraphWriter, scalar: str) -> str:
    return w.op("Unsqueeze", [scalar, w.constant("axes_0", np.array([0], np.int64))])


def _zero_1(w: GraphWriter) -> str:
    return w.constant("i64_1d_0", np.array([0], np.int64))
