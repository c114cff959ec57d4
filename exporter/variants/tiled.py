"""`tiled`: the seed's MatMul/Softmax one tile of query rows at a time, each tile over only the keys its mask
can allow. Standard operators (a `Loop`): any runtime.

Query rows [s, s+T) under a causal mask allow keys 0..s+T-1 at most, so a tile's scores are (B, h, T, s+T):
the upper triangle beyond the tile is never computed, and no (q_len, kv_len) tensor is ever held. A tile is
sized so that its scores stay in cache (about TILE_SCORES numbers). A row's softmax lies wholly inside its
tile, so it is the seed's softmax over the row, not an online (flash) rescaling of partial sums. Every tile
has T rows (the last one starts at q_len - T and overlaps its neighbour), so the loop's scan output has one
shape; a Gather puts the rows back in order.

Each tile takes the keys up to its last row plus a reach, decided at run time:
- 0 for a mask input that allows no key above the diagonal (causal, causal AND padding, ...: one pass over
  the mask decides) and for the built-in top-left causal mask; kv_len - q_len for bottom-right;
- every key for no mask or any other mask (the tiles then only bound the memory).
A key past a mask's reach is masked anyway, so leaving it out changes nothing: exp(-FLT_MAX - max) is 0.
Fully-masked rows get the seed's uniform answer after the loop (fused.uniform_rows): inside a tile they
would be uniform over the tile's keys only.

Not tried further: a loop per example for causal+padding masks, which could skip each example's padded
keys; padded query rows still attend every valid key with their own query, so it would save about a
quarter of the attention of a half-padded batch, for a second loop and a mask check.
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
TILE_SCORES = 1 << 20  # scores per tile (4 MiB in float32): B * h * T * kv_len, T at least MIN_TILE rows
MIN_TILE = 16


def build(spec, graph, example, module) -> Built:
    w, weights = GraphWriter(), Weights(module)
    p = projections(w, weights, packed_bias=False, spec=spec)  # query, key, value (B, len, E) with their biases
    allowed = allowed_mask(w, spec)  # (B, mask_q_len, kv_len), causal (q_len, kv_len) bool, or None
    x = _attend_in_tiles(w, spec, p, allowed)  # (B, q_len, E)
    if can_mask_whole_rows(spec):
        x = uniform_rows(w, x, allowed, p["value"], None, ONNX_TYPES[spec.dtype])
    output_projection(w, weights, x)
    doc = ("MultiHeadedAttention, the seed's graph one tile of query rows at a time over the keys the mask can "
           "allow (attn-onnx variant tiled)")
    return Built(model(w, spec, {"": spec.opset}, doc), weights.map)


def _attend_in_tiles(w: GraphWriter, spec, p: dict[str, str], allowed: str | None) -> str:
    """softmax(q k^T / sqrt(d_k) + mask) v, T query rows at a time: (B, q_len, E), heads concatenated."""
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
    reach = _reach(w, spec, allowed, q_len, kv_len)  # query i attends no key j > i + reach
    per_row = w.op("Mul", [w.op("Mul", [batch, _i64(w, spec.heads)]), kv_len], stem="per_row")  # scores per row
    tile = w.op("Min", [q_len, w.op("Max", [_i64(w, MIN_TILE), w.op("Div", [_i64(w, TILE_SCORES), per_row])])],
                stem="tile")  # T
    count = w.op("Div", [w.op("Sub", [w.op("Add", [q_len, tile]), _i64(w, 1)]), tile], stem="tile_count")

    body = w.branch()  # one tile: rows [start, start + T), keys [0, n)
    counter, cond = w.fresh("tile_index"), w.fresh("cond")
    start = body.op("Min", [body.op("Mul", [counter, tile]), body.op("Sub", [q_len, tile])], stem="start")
    end = body.op("Add", [start, tile], stem="end")
    keys = body.op("Max", [_i64(w, 1), body.op("Min", [kv_len, body.op("Add", [end, reach])])], stem="keys")
    start_1, end_1, keys_1 = (_vector(body, x) for x in (start, end, keys))
    axis_2 = w.constant("axis_2", np.array([2], np.int64))
    q_tile = body.op("Slice", [q, start_1, end_1, axis_2], stem="q_tile")  # (B, h, T, d_k)
    k_tile, v_tile = (body.op("Slice", [x, _zero_1(w), keys_1, axis_2], stem="kv_tile") for x in (k, v))  # n keys
    scores = body.op("MatMul", [q_tile, body.op("Transpose", [k_tile], perm=[0, 1, 3, 2])], stem="scores")
    if allowed is not None:  # (B, h, T, n) + (B | 1, 1, T | 1, n)
        mask_tile = _mask_tile(body, spec, allowed, start, end, keys_1)
        scores = body.op("Add", [scores, additive_bias(body, mask_tile, spec, full_rows=False)], stem="scores")
    p_attn = body.op("Softmax", [scores], axis=-1, stem="p_attn")
    x_tile = body.op("Transpose", [body.op("MatMul", [p_attn, v_tile])], perm=[0, 2, 1, 3])  # (B, T, h, d_k)
    # flat: onnx.reference's Loop stacks scan outputs with np.vstack, which adds no axis unless they are 1-D
    x_tile = body.op("Reshape", [x_tile, w.constant("flat", np.array([-1], np.int64))], stem="x_tile")
    # an explicit true condition: onnx.reference's Loop runs no iteration when the condition is omitted
    tiles = w.op("Loop", [count, w.constant("true", np.array(True))], stem="tiles", body=body.loop_body(
        "tile", counter, cond, x_tile, ONNX_TYPES[spec.dtype], ["tile_values"]))  # (tiles, B * T * E)

    by_tile = w.op("Concat", [_zero_1(w), _vector(w, batch), w.constant("i64_1d_m1", np.array([-1], np.int64)),
                              w.constant("width_1d", np.array([spec.embedding_dim], np.int64))], axis=0)
    x = w.op("Transpose", [w.op("Reshape", [tiles, by_tile])], perm=[1, 0, 2, 3], stem="x")  # (B, tiles, T, E)
    x = w.op("Reshape", [x, w.constant("concat_shape", np.array([0, -1, spec.embedding_dim], np.int64))])
    return w.op("Gather", [x, _row_order(w, q_len, tile, count)], axis=1, stem="x")  # (B, q_len, E)


def _reach(w: GraphWriter, spec, allowed: str | None, q_len: str, kv_len: str) -> str:
    """How far past a row the keys it may attend reach: query i attends no key j > i + reach."""
    if spec.mask == "none":
        return kv_len
    if spec.mask == "causal":  # the mask is built in: its reach is known
        return w.op("Sub", [kv_len, q_len]) if spec.causal_align == "bottom-right" else _i64(w, 0)
    cols = w.op("Range", [_i64(w, 0), kv_len, _i64(w, 1)])
    rows = w.op("Unsqueeze", [w.op("Range", [_i64(w, 0), q_len, _i64(w, 1)]),
                              w.constant("axes_1", np.array([1], np.int64))])  # (q_len, 1)
    above = w.op("And", [allowed, w.op("Greater", [cols, rows])], stem="above")  # (B, q_len, kv_len)
    any_above = w.op("ReduceMax", [w.op("Cast", [above], to=TensorProto.UINT8)], keepdims=0, stem="any_above")
    return w.op("Mul", [w.op("Cast", [any_above], to=INT64), kv_len], stem="reach")  # 0 or every key


def _mask_tile(body: GraphWriter, spec, allowed: str, start: str, end: str, keys_1: str) -> str:
    """The tile's rows and first `keys` columns of the allowed mask: (T, n) for the built-in causal mask,
    (B, T, n) for a mask input, (B, 1, n) for a mask input that is one row for every query."""
    if spec.mask == "input":  # a (B, 1, kv_len) mask is sliced at row 0 whatever the tile
        mask_rows = body.op("Gather", [body.op("Shape", [allowed]), _i64(body, 1)], axis=0)
        full = body.op("Cast", [body.op("Greater", [mask_rows, _i64(body, 1)])], to=INT64)  # mask_q_len > 1
        start = body.op("Mul", [start, full])
        end = body.op("Add", [body.op("Mul", [end, full]), body.op("Sub", [_i64(body, 1), full])])
    axes = np.array([0, 1] if spec.mask == "causal" else [1, 2], np.int64)
    axes = body.constant("axes_" + "_".join(map(str, axes)), axes)
    starts = body.op("Concat", [_vector(body, start), _zero_1(body)], axis=0)
    ends = body.op("Concat", [_vector(body, end), keys_1], axis=0)
    return body.op("Slice", [allowed, starts, ends, axes], stem="mask_tile")


def _row_order(w: GraphWriter, q_len: str, tile: str, count: str) -> str:
    """Where each output row sits in the tiles laid end to end: row r at r, except in the last tile, which
    starts at q_len - T instead of (tiles - 1) * T, so its rows sit tiles * T - q_len further on."""
    rows = w.op("Range", [_i64(w, 0), q_len, _i64(w, 1)])  # (q_len,)
    padded = w.op("Mul", [count, tile])
    in_last = w.op("Cast", [w.op("GreaterOrEqual", [rows, w.op("Sub", [padded, tile])])], to=INT64)
    return w.op("Add", [rows, w.op("Mul", [in_last, w.op("Sub", [padded, q_len])])], stem="row_order")


def _i64(w: GraphWriter, value: int) -> str:
    return w.constant(f"i_{value}".replace("-", "m"), np.array(value, np.int64))


def _vector(w: GraphWriter, scalar: str) -> str:
    return w.op("Unsqueeze", [scalar, w.constant("axes_0", np.array([0], np.int64))])


def _zero_1(w: GraphWriter) -> str:
    return w.constant("i64_1d_0", np.array([0], np.int64))
