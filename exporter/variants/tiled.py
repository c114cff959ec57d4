"""`tiled`: the seed's MatMul/Softmax one tile of query rows at a time, each tile over only the keys its mask
can allow. Standard operators (a `Loop`): any runtime.

Query rows [s, s+T) under a causal mask allow keys 0..s+T-1 at most, so a tile's scores are (h, G, T, s+T):
the upper triangle beyond the tile is never computed, and no (q_len, kv_len) tensor is ever held. A tile is
sized so that its scores stay in cache (about TILE_SCORES numbers), and under a mask it is at most MAX_TILE
rows: the triangle it does compute, masked, is slow (below). A row's softmax lies wholly inside its tile, so
it is the seed's softmax over the row, not an online (flash) rescaling of partial sums.

Which keys a tile takes is read off the mask at run time (_mask_reach, one ArgMax over it):
- the reach: query i attends no key j > i + reach (0 for causal and causal AND padding masks; the
  built-in causal mask's is known: 0 top-left, kv_len - q_len bottom-right; no mask: every key);
- each example's last allowed key: a tile of a mask input holds G examples (one, unless whole examples are
  short) and stops at the last key any of them may attend, so padded examples cost what their lengths cost.
A key left out is one the mask forbids, so leaving it out changes nothing: exp(-FLT_MAX - max) is 0.

With a mask input, keys and values are projected only where some query of their example may attend them
(key j < its last allowed key): padding costs no projection either. The rows projected are packed, example
after example, and each tile gathers its keys from them.

Every tile has G examples and T rows (the last ones start G examples and T rows before the end and overlap
their neighbours), so the loop's scan output has one shape; one Gather puts the rows in place. Fully-masked
rows get the seed's uniform answer after the loop (builder.uniform_rows): inside a tile they would be uniform
over the tile's keys only.

Masked scores are slow in onnxruntime's Softmax. Its AVX-512 exp() clamps x - max at -103.97 and scales by
2^m with vscalefps, whose underflowing result (exactly 0 for our fill, a denormal for x - max in about
[-104, -87]) costs a microcode assist: about 8x an allowed score for our fill, about 18x for a denormal one
(a (8,1,256,512) Softmax with a quarter masked, 2 threads: 0.27-0.30 ms unmasked, 0.78-0.89 ms for any fill
below -104, 1.59 ms for fills from -86 to -95). A T-row tile on the diagonal computes T(T-1)/2 masked scores
per head; fewer rows mean fewer of those but more loop turns, and smaller matmuls. MAX_TILE = 64 measured
best, or level with the best, of 32, 64, 128 and no cap at each bench-attn shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from attn_onnx.dtypes import ONNX_TYPES, numpy_dtype
from attn_onnx.exporter.variants.base import Built
from attn_onnx.exporter.variants.builder import (
    GraphWriter,
    Int,
    Weights,
    additive_bias,
    allowed_mask,
    can_mask_whole_rows,
    int64,
    mean_over_keys,
    model,
    output_projection,
    projections,
    source,
    uniform_rows,
)

INT64 = TensorProto.INT64
TILE_SCORES = 1 << 20  # scores per tile (4 MiB in float32): G * h * T * kv_len, T at least MIN_TILE rows
MIN_TILE = 16
MAX_TILE = 64  # rows of a tile under a mask (see above)
# with a mask input, a tile holds few examples (each tile's keys end at the last one its examples may attend):
# one, unless whole examples are short enough that about this many scores of theirs fit; a turn of the loop
# costs about 15 microseconds before any work (its 25 small nodes), which many one-example tiles of short
# sequences would add up
GROUP_SCORES = 1 << 17


def build(spec, module) -> Built:
    w, weights = GraphWriter(), Weights(module)
    allowed = allowed_mask(w, spec)  # (B, mask_q_len, kv_len), causal (q_len, kv_len) bool, or None
    # with a mask input: the reach, each example's key limit, the rows that allow a key (one ArgMax)
    limits = None
    if spec.mask == "input":
        assert allowed is not None  # allowed_mask gives the mask input's
        limits = _mask_reach(w, allowed)
    value_mean = None  # the mean of the values over every key: by default that of p["value"] (uniform_rows)
    if limits is None:
        p = projections(w, weights, packed_bias=False, spec=spec)  # query, key, value (B, len, E) with biases
    else:  # keys and values projected only where some query of the example may attend them
        p, value_mean = _needed_projections(w, weights, spec, limits[1])
    x = _attend_in_tiles(w, spec, p, allowed, limits)  # (B, q_len, E)
    if can_mask_whole_rows(spec):
        assert allowed is not None  # a mask input, or the built-in causal mask
        x = uniform_rows(w, x, allowed, p["value"], ONNX_TYPES[spec.dtype], limits[2] if limits else None, value_mean)
    output_projection(w, weights, x)
    doc = (
        "MultiHeadedAttention, the seed's graph one tile of query rows at a time over the keys the mask can "
        "allow (attn-onnx variant tiled)"
    )
    return Built(model(w, spec, {"": spec.opset}, doc), weights.map)


def tiles(spec, batch: int, q_len: int, kv_len: int) -> tuple[int, int, int, int]:
    """(row tiles, example groups, rows per tile, examples per group) the graph's Loop takes at these dims: the
    same arithmetic as _tile_size, in Python, to choose shapes that run its paths (coverage_shapes)."""

    def clamp(value, low, high):
        return min(high, max(low, value))

    per_row = spec.heads * kv_len
    if spec.mask == "input":
        tile = clamp(TILE_SCORES // per_row, MIN_TILE, min(q_len, MAX_TILE))
        group = clamp(GROUP_SCORES // (per_row * q_len), 1, batch)
    else:
        tile = clamp(TILE_SCORES // (per_row * batch), MIN_TILE, q_len if spec.mask == "none" else min(q_len, MAX_TILE))
        group = batch
    return -(-q_len // tile), -(-batch // group), tile, group


def coverage_shapes(spec) -> list[tuple[int, int, int]]:
    """The smallest square shapes at batch 2 whose Loop runs 2 tiles, and 3 or more ending in a partial tile
    (one that overlaps the tile before): small shapes run one tile only, and a check on them alone passes a
    graph whose later tiles are wrong."""
    found = {}
    for length in range(2, 1 << 14):
        row_tiles, groups, tile, group = tiles(spec, 2, length, length)
        count, partial = row_tiles * groups, length % tile or 2 % group
        if count == 2 and "two" not in found:
            found["two"] = (2, length, length)
        if count >= 3 and partial and "three" not in found:
            found["three"] = (2, length, length)
        if len(found) == 2:
            break
    return list(found.values())


def _needed_projections(
    w: GraphWriter, weights: Weights, spec, key_limit: str
) -> tuple[dict[str, str], Callable[[GraphWriter], str]]:
    """The query projected on every row (B * q_len, E); the key and value only on the rows of keys some query of
    their example may attend (key j < key_limit[b]), packed example after example (N, E), with where each
    example's rows start (`key_offsets`, (B,)) and the key positions (`key_range`, (1, kv_len)); and, beside
    them, how to write the mean of the projected values over every key, which a fully-masked row attends
    (uniform_rows' `value_mean`).

    Padding is thus not projected: at (4, 512) with half the keys padded, a quarter of the projections' work.
    The mean is linear: mean(x) W^T + b is the mean of x W^T + b (to float32 rounding), whatever was skipped.
    Self-attention projects key and value with one (E, 2E) MatMul on the rows they need."""
    width = spec.embedding_dim
    kv_len = w.op("Gather", [w.op("Shape", [source(spec, "key")]), int64(w, 1)], axis=0, stem="kv_len")
    keys = w.op("Unsqueeze", [w.op("Range", [int64(w, 0), kv_len, int64(w, 1)]), _zero_1(w)])  # (1, kv_len)
    needed = w.op(
        "Less",
        [keys, w.op("Unsqueeze", [key_limit, w.constant("axes_1", np.array([1], np.int64))])],
        stem="needed_keys",
    )  # (B, kv_len)
    flat = w.constant("flat", np.array([-1], np.int64))
    where = w.op("Squeeze", [w.op("NonZero", [w.op("Reshape", [needed, flat])]), _zero_1(w)], stem="needed_at")  # (N,)
    tokens = w.constant("tokens_shape", np.array([-1, width], np.int64))
    out = {
        "query": _linear(w, weights, w.op("Reshape", [source(spec, "query"), tokens]), [0]),  # (B * q_len, E)
        "key_range": keys,  # (1, kv_len): 0, 1, ..., kv_len - 1
        "key_offsets": w.op("CumSum", [key_limit, int64(w, 0)], exclusive=1, stem="key_offsets"),
    }
    if spec.kind.self_attention:
        kv = _linear(w, weights, _needed_rows(w, "x", tokens, where), [1, 2])  # (N, 2E)
        out["key"], out["value"] = w.ops(
            "Split", [kv, w.constant("kv_split", np.array([width] * 2, np.int64))], 2, stem="kv", axis=-1
        )  # each (N, E)
        v_part = [w.constant(n, np.array([v], np.int64)) for n, v in (("v_start", width), ("v_end", 2 * width))]

        def value_mean(b: GraphWriter) -> str:
            return b.op(
                "Slice",
                [_linear(b, weights, mean_over_keys(b, "x"), [1, 2])]
                + v_part
                + [w.constant("axes_last", np.array([-1], np.int64))],
                stem="mean_v",
            )  # (B, 1, 2E) -> its value half

    else:
        for i, role in ((1, "key"), (2, "value")):
            out[role] = _linear(w, weights, _needed_rows(w, role, tokens, where), [i])  # (N, E)

        def value_mean(b: GraphWriter) -> str:
            return _linear(b, weights, mean_over_keys(b, "value"), [2])

    return out, value_mean


def _needed_rows(w: GraphWriter, x: str, tokens: str, where: str) -> str:
    """The rows `where` of input x as tokens: (B, len, E) -> (N, E)."""
    return w.op("Gather", [w.op("Reshape", [x, tokens]), where], axis=0, stem="needed")


def _linear(w: GraphWriter, weights: Weights, x: str, which: list[int]) -> str:
    """x W^T + b for linears `which` (side by side on the last axis when more than one)."""
    name = f"linears.{which[0]}" if len(which) == 1 else "kv"
    weight = weights.place(w, [f"linears.{i}.weight" for i in which], f"{name}.weight.T", transposed=True)
    bias = weights.place(w, [f"linears.{i}.bias" for i in which], f"{name}.bias", transposed=False)
    return w.op("Add", [w.op("MatMul", [x, weight]), bias], stem="projected")


@dataclass(frozen=True)
class _Tiling:
    """How the rows and examples are cut into tiles: the dims (Int scalars) and, for every tile at once (count,),
    its examples [first, last), rows [start, end) and keys [0, keys). A turn of the loop only looks its own up
    (_this_tile), which keeps the nodes a turn few."""

    batch: Int  # B
    q_len: Int
    tile: Int  # T, rows per tile
    group: Int  # G, examples per tile
    row_tiles: Int  # ceil(q_len / T)
    groups: Int  # ceil(B / G)
    count: Int  # row_tiles * groups, the Loop's trip count
    first: Int  # (count,) each, per tile: its examples [first, last)
    last: Int
    start: Int  # its rows [start, end)
    end: Int
    zeros: Int  # 0
    keys: str  # its keys [0, keys): n
    examples: str | None  # (count, G) with a mask input: each tile's examples
    example_limits: str | None  # (count, G): their key limits


def _attend_in_tiles(
    w: GraphWriter, spec, p: dict[str, str], allowed: str | None, limits: tuple[str, str, str] | None
) -> str:
    """softmax(q k^T / sqrt(d_k) + mask) v, T query rows at a time: (B, q_len, E), heads concatenated.
    `limits`: a mask input's reach and key limits (_mask_reach); its keys and values come packed
    (_needed_projections).

    Heads first, (h, B, len, d_k): a tile's keys gathered from packed rows are then (h, G, n, d_k) as they come,
    and a tile's mask, (G | 1, T | 1, n), broadcasts against its (h, G, T, n) scores as it is.

    The steps, in the order their nodes are written (their names count, so the order is the graph's): split the
    heads, size the tiles, lay them out, then one Loop turn per tile (slice its query, take its keys and values,
    score, add the mask's bias, softmax and weigh the values), and put the tiles' rows in place."""
    q = _query_heads(w, spec, p["query"])  # (h, B, q_len, d_k)
    batch, q_len, kv_len = _lengths(w, spec, q)
    reach, tile, group = _tile_size(w, spec, batch, q_len, kv_len, allowed, limits)
    k, v = _key_value_heads(w, spec, p, packed=limits is not None)  # (h, N, d_k) packed, or (h, B, kv_len, d_k)
    key_limit = limits[1] if limits is not None else None
    tiling = _tiling(w, Int(w, batch), Int(w, q_len), kv_len, Int(w, tile), Int(w, group), reach, key_limit)

    body = w.branch()  # one turn: one tile, examples [first, first + G), rows [start, start + T), keys [0, n)
    counter, cond = w.fresh("tile_index"), w.fresh("cond")
    q_tile = _query_tile(w, body, counter, q, tiling)  # (h, G, T, d_k)
    if limits is None:
        k_tile, v_tile = _sliced_keys_values(w, body, counter, k, v, tiling)  # (h, G, n, d_k)
    else:
        k_tile, v_tile = _gathered_keys_values(w, body, counter, k, v, p, tiling)  # (h, G, n, d_k)
    scores = _scores(w, body, spec, q_tile, k_tile)  # (h, G, T, n)
    if allowed is not None:
        scores = body.op("Add", [scores, _mask_bias(w, body, counter, spec, allowed, tiling)], stem="scores")
    x_tile = _attend(w, body, scores, v_tile)  # (G * T * E,)
    x_tiles = _tile_loop(w, body, counter, cond, x_tile, spec, tiling)  # (count, G * T * E)
    return _place_rows(w, spec, x_tiles, tiling)  # (B, q_len, E)


def _query_heads(w: GraphWriter, spec, query: str) -> str:
    """The projected query, heads first: (B, q_len, E) -> (h, B, q_len, d_k). It may come as (B * q_len, E) rows
    (_needed_projections), so its shape is spelled out from the query input's."""
    batch_len = w.op(
        "Slice", [w.op("Shape", [source(spec, "query")]), _zero_1(w), w.constant("i64_1d_2", np.array([2], np.int64))]
    )  # (B, q_len)
    q_shape = w.op(
        "Concat", [batch_len, w.constant("heads_d_k", np.array([spec.heads, spec.d_k], np.int64))], axis=0
    )  # (B, q_len, h, d_k)
    return w.op("Transpose", [w.op("Reshape", [query, q_shape])], perm=[2, 0, 1, 3], stem="q")


def _lengths(w: GraphWriter, spec, q: str) -> tuple[str, str, str]:
    """B, q_len (off the heads-first query) and kv_len (off the key input): int64 scalars."""
    q_shape = w.op("Shape", [q])  # (h, B, q_len, d_k)
    batch = w.op("Gather", [q_shape, int64(w, 1)], axis=0, stem="batch")
    q_len = w.op("Gather", [q_shape, int64(w, 2)], axis=0, stem="q_len")
    kv_len = w.op("Gather", [w.op("Shape", [source(spec, "key")]), int64(w, 1)], axis=0, stem="kv_len")
    return batch, q_len, kv_len


def _tile_size(
    w: GraphWriter, spec, batch: str, q_len: str, kv_len: str, allowed: str | None, limits: tuple[str, str, str] | None
) -> tuple[str, str, str]:
    """(reach, T, G): how far past a row its keys reach, and a tile's rows and examples, sized so that its
    scores, G * h * T * kv_len, are about TILE_SCORES (tiles() does the same arithmetic in Python).

    With a mask input a tile holds few examples (each tile's keys end at the last any of them may attend), and
    its reach was read off the mask; otherwise every example is in each tile (their keys end alike)."""
    per_row = w.op("Mul", [int64(w, spec.heads), kv_len])  # scores per query row of one example
    if limits is not None:
        tile = _clamp(
            w, w.op("Div", [int64(w, TILE_SCORES), per_row]), MIN_TILE, _at_most(w, q_len, MAX_TILE), stem="tile"
        )
        group = _clamp(w, w.op("Div", [int64(w, GROUP_SCORES), w.op("Mul", [per_row, q_len])]), 1, batch, stem="group")
        return limits[0], tile, group
    reach = _reach(w, spec, q_len, kv_len)
    most = q_len if allowed is None else _at_most(w, q_len, MAX_TILE)
    tile = _clamp(w, w.op("Div", [int64(w, TILE_SCORES), w.op("Mul", [per_row, batch])]), MIN_TILE, most, stem="tile")
    return reach, tile, batch


def _key_value_heads(w: GraphWriter, spec, p: dict[str, str], packed: bool) -> tuple[str, str]:
    """The projected keys and values, heads first: the packed rows (N, E) -> (h, N, d_k), or (B, kv_len, E) ->
    (h, B, kv_len, d_k)."""
    if packed:
        rows_shape = w.constant("rows_heads", np.array([-1, spec.heads, spec.d_k], np.int64))
        key, value = (
            w.op("Transpose", [w.op("Reshape", [p[n], rows_shape])], perm=[1, 0, 2], stem=n[0])
            for n in ("key", "value")
        )
        return key, value
    key, value = (
        w.op(
            "Transpose",
            [w.op("Reshape", [p[n], w.constant("heads_shape", np.array([0, 0, spec.heads, spec.d_k], np.int64))])],
            perm=[2, 0, 1, 3],
        )
        for n in ("key", "value")
    )
    return key, value


def _tiling(
    w: GraphWriter, batch: Int, q_len: Int, kv_len: str, tile: Int, group: Int, reach: str, key_limit: str | None
) -> _Tiling:
    """Every tile's examples, rows and keys: tiles of G examples and T rows, g-major over the example groups,
    then the row tiles; the last ones start G examples and T rows before the end (they overlap their
    neighbours), so that every tile has one shape."""
    row_tiles = ((q_len + tile - 1) // tile).named("tile_count")  # ceil(q_len / tile)
    groups = ((batch + group - 1) // group).named("groups")
    count = row_tiles * groups
    last_first, last_start = batch - group, q_len - tile  # the overlapping last ones
    number = Int(w, w.op("Range", [int64(w, 0), count, int64(w, 1)], stem="tile_number"))  # (count,)
    zeros = number * 0
    first = (number // row_tiles * group).min(last_first).named("first")
    start = (number % row_tiles * tile).min(last_start).named("start")
    last, end = first + group, (start + tile).named("end")
    keys, examples, example_limits = _tile_keys(w, first, group, end, kv_len, reach, key_limit)
    return _Tiling(
        batch,
        q_len,
        tile,
        group,
        row_tiles,
        groups,
        count,
        first,
        last,
        start,
        end,
        zeros,
        keys,
        examples,
        example_limits,
    )


def _tile_keys(
    w: GraphWriter, first: Int, group: Int, end: Int, kv_len: str, reach: str, key_limit: str | None
) -> tuple[str, str | None, str | None]:
    """How many keys each tile takes (count,): up to its last row plus the reach, no further than the last key
    any of its examples may attend (key_limit, with a mask input), at least 1; and with a mask input its
    examples and their key limits, (count, G) each."""
    limit, examples, example_limits = kv_len, None, None
    if key_limit is not None:
        examples = w.op("Add", [_unsqueeze(w, first, 1), w.op("Range", [int64(w, 0), group, int64(w, 1)])])
        example_limits = w.op("Gather", [key_limit, examples], axis=0)  # (count, G)
        limit = w.op(
            "ReduceMax", [example_limits, w.constant("axes_1", np.array([1], np.int64))], keepdims=0, stem="limit"
        )
    keys = w.op("Max", [int64(w, 1), w.op("Min", [limit, end + reach])], stem="keys")  # (count,)
    return keys, examples, example_limits


def _table(w: GraphWriter, *columns: Int | str) -> str:
    """Per-tile values (count,) side by side: (count, len(columns)), a tile's row of which is its Slice's
    starts or ends."""
    return w.op("Concat", [_unsqueeze(w, x, 1) for x in columns], axis=1)


def _this_tile(body: GraphWriter, counter: str, table: str) -> str:
    """This turn's tile's row of a per-tile table."""
    return body.op("Gather", [table, counter], axis=0)


def _query_tile(w: GraphWriter, body: GraphWriter, counter: str, q: str, tiling: _Tiling) -> str:
    """The tile's queries: (h, B, q_len, d_k) -> (h, G, T, d_k), examples [first, last), rows [start, end)."""
    axes = w.constant("axes_1_2", np.array([1, 2], np.int64))
    starts = _this_tile(body, counter, _table(w, tiling.first, tiling.start))
    ends = _this_tile(body, counter, _table(w, tiling.last, tiling.end))
    return body.op("Slice", [q, starts, ends, axes], stem="q_tile")


def _sliced_keys_values(
    w: GraphWriter, body: GraphWriter, counter: str, k: str, v: str, tiling: _Tiling
) -> tuple[str, str]:
    """Without a mask input, the tile's keys and values are a slice of every example's: (h, B, kv_len, d_k) ->
    (h, G, n, d_k), examples [first, last), keys [0, n)."""
    starts = _this_tile(body, counter, _table(w, tiling.first, tiling.zeros))
    ends = _this_tile(body, counter, _table(w, tiling.last, tiling.keys))
    axes = w.constant("axes_1_2", np.array([1, 2], np.int64))
    k_tile, v_tile = (body.op("Slice", [x, starts, ends, axes], stem="kv_tile") for x in (k, v))
    return k_tile, v_tile


def _gathered_keys_values(
    w: GraphWriter, body: GraphWriter, counter: str, k: str, v: str, p: dict[str, str], tiling: _Tiling
) -> tuple[str, str]:
    """With a mask input, the tile's keys and values are gathered from the packed rows of the needed keys:
    (h, N, d_k) -> (h, G, n, d_k). An example's keys past its own limit (a tile of several examples goes to the
    last of theirs) are masked in every row of it; they take the row of its last needed key, a finite value
    weighed 0."""
    assert tiling.examples is not None and tiling.example_limits is not None  # a mask input's (_tile_keys)
    key = body.op(
        "Slice",
        [
            p["key_range"],
            _zero_1(w),
            _this_tile(body, counter, _unsqueeze(w, tiling.keys, 1)),
            w.constant("axes_1", np.array([1], np.int64)),
        ],
    )  # (1, n)
    offsets = _unsqueeze(w, w.op("Gather", [p["key_offsets"], tiling.examples], axis=0), 2)  # (count, G, 1)
    last_keys = _unsqueeze(w, w.op("Sub", [tiling.example_limits, int64(w, 1)]), 2)  # (count, G, 1)
    at = body.op(
        "Add",
        [_this_tile(body, counter, offsets), body.op("Min", [key, _this_tile(body, counter, last_keys)])],
        stem="kv_rows",
    )  # (G, n)
    k_tile, v_tile = (body.op("Gather", [x, at], axis=1, stem="kv_tile") for x in (k, v))
    return k_tile, v_tile


def _scores(w: GraphWriter, body: GraphWriter, spec, q_tile: str, k_tile: str) -> str:
    """q k^T / sqrt(d_k), as the seed writes it (onnxruntime folds the division into the MatMul):
    (h, G, T, d_k) x (h, G, n, d_k) -> (h, G, T, n)."""
    k_t = body.op("Transpose", [k_tile], perm=[0, 1, 3, 2])  # (h, G, d_k, n)
    q_k = body.op("MatMul", [q_tile, k_t])
    return body.op(
        "Div", [q_k, w.constant("sqrt_d_k", np.array(np.sqrt(spec.d_k), numpy_dtype(spec.dtype)))], stem="scores"
    )


def _mask_bias(w: GraphWriter, body: GraphWriter, counter: str, spec, allowed: str, tiling: _Tiling) -> str:
    """The tile's part of the mask as an additive bias (0 where allowed, the dtype's lowest where masked): the
    built-in causal mask's rows and keys, (T, n); a mask input's examples, rows and keys, (G, T, n), or
    (G, 1, n) for a (B, 1, kv_len) mask, whose row 0 is every tile's. It broadcasts against (h, G, T, n)."""
    if spec.mask == "causal":
        starts, ends, axes = _table(w, tiling.start, tiling.zeros), _table(w, tiling.end, tiling.keys), [0, 1]
    else:
        full = Int(w, _mask_rows(w, allowed))  # 1 where the mask has a row per query
        rows_end = tiling.end * full + (1 - full)
        starts = _table(w, tiling.first, tiling.start * full, tiling.zeros)
        ends, axes = _table(w, tiling.last, rows_end, tiling.keys), [0, 1, 2]
    axes_name = w.constant("axes_" + "_".join(map(str, axes)), np.array(axes, np.int64))
    mask_tile = body.op(
        "Slice",
        [allowed, _this_tile(body, counter, starts), _this_tile(body, counter, ends), axes_name],
        stem="mask_tile",
    )
    return additive_bias(body, mask_tile, spec, per_head_dims=False)


def _attend(w: GraphWriter, body: GraphWriter, scores: str, v_tile: str) -> str:
    """softmax(scores) v over the tile's keys, heads concatenated, flat: (h, G, T, n) -> (G * T * E,). A row's
    keys are all in its tile, so this is the seed's softmax over the row."""
    p_attn = body.op("Softmax", [scores], axis=-1, stem="p_attn")
    x_tile = body.op("Transpose", [body.op("MatMul", [p_attn, v_tile])], perm=[1, 2, 0, 3])  # (G, T, h, d_k)
    # flat: onnx.reference's Loop stacks scan outputs with np.vstack, which adds no axis unless they are 1-D
    return body.op("Reshape", [x_tile, w.constant("flat", np.array([-1], np.int64))], stem="x_tile")


def _tile_loop(w: GraphWriter, body: GraphWriter, counter: str, cond: str, x_tile: str, spec, tiling: _Tiling) -> str:
    """The Loop that runs `body` once per tile, its scan output every tile's x_tile: (count, G * T * E)."""
    # an explicit true condition: onnx.reference's Loop runs no iteration when the condition is omitted
    x_tiles = w.op(
        "Loop",
        [tiling.count, w.constant("true", np.array(True))],
        stem="tiles",
        body=body.loop_body("tile", counter, cond, x_tile, ONNX_TYPES[spec.dtype], ["tile_values"]),
    )
    # for runtime_check.coverage: the last tile is partial (it overlaps the one before) where the rows or the
    # examples do not divide into whole tiles
    t = tiling
    w.nodes[-1].doc_string = f"coverage: partial if ({t.q_len} % {t.tile}) or ({t.batch} % {t.group})"
    return x_tiles


def _place_rows(w: GraphWriter, spec, x_tiles: str, tiling: _Tiling) -> str:
    """The tiles' rows in place: (count, G * T * E) -> (B, q_len, E), one Gather (overlapping rows are taken
    from the last tile that holds them)."""
    rows = w.op("Reshape", [x_tiles, w.constant("rows_shape", np.array([-1, spec.embedding_dim], np.int64))])
    # output (b, i) is row t of example e of tile (g, j): g-major over the groups, then j, then e, then t
    g, e = _placed(w, tiling.batch, tiling.group, tiling.groups, "example")  # (B,)
    j, t = _placed(w, tiling.q_len, tiling.tile, tiling.row_tiles, "row")  # (q_len,)
    tile_of = Int(w, _unsqueeze(w, g, 1)) * tiling.row_tiles + j  # (B, q_len)
    where = (tile_of * tiling.group + _unsqueeze(w, e, 1)) * tiling.tile + t
    return w.op("Gather", [rows, where], axis=0, stem="x")  # (B, q_len, E)


def _placed(w: GraphWriter, size: Int, block: Int, blocks: Int, stem: str) -> tuple[Int, Int]:
    """For each of 0..size-1, which of the `blocks` blocks of `block` it is in and where: blocks end to end,
    the last one starting at size - block (it overlaps the one before)."""
    index = Int(w, w.op("Range", [int64(w, 0), size, int64(w, 1)]))
    in_last = Int(w, w.op("Cast", [w.op("GreaterOrEqual", [index, (blocks - 1) * block])], to=INT64))
    regular = 1 - in_last
    which = (index // block * regular + (blocks - 1) * in_last).named(stem + "_block")
    offset = (index % block * regular + (index - (size - block)) * in_last).named(stem + "_offset")
    return which, offset


def _clamp(w: GraphWriter, value: str, low: int, high: str, stem: str) -> str:
    return w.op("Min", [high, w.op("Max", [int64(w, low), value])], stem=stem)


def _at_most(w: GraphWriter, value: str, most: int) -> str:
    return w.op("Min", [value, int64(w, most)])


def _reach(w: GraphWriter, spec, q_len: str, kv_len: str) -> str:
    """For the built-in masks and none: how far past a row its keys reach (query i attends no key j > i +
    reach)."""
    if spec.mask == "none":
        return kv_len
    return w.op("Sub", [kv_len, q_len]) if spec.causal_align == "bottom-right" else int64(w, 0)


def _mask_reach(w: GraphWriter, allowed: str) -> tuple[str, str, str]:
    """For a mask input: how far past a row its keys reach (the least r with no allowed key j > i + r, at
    least 0), for each example one past the last key any of its queries may attend (B,), at least 1, and
    which rows allow a key at all (uint8, (B, mask_q_len, 1)).

    Both from each row's last allowed key: one ArgMax over the mask (its last maximum)."""
    mask = w.op("Cast", [allowed], to=TensorProto.UINT8)  # (B, mask_q_len, kv_len)
    first_col = w.op(
        "Concat",
        [
            w.op("Slice", [w.op("Shape", [mask]), _zero_1(w), w.constant("i64_1d_2", np.array([2], np.int64))]),
            w.constant("i64_1d_1", np.array([1], np.int64)),
        ],
        axis=0,
    )
    ones = w.op("Expand", [w.constant("u8_1", np.array(1, np.uint8)), first_col])  # (B, mask_q_len, 1)
    # a 1 before key 0: the last 1 of each row is its last allowed key + 1, or 0 where it allows none
    last = w.op("ArgMax", [w.op("Concat", [ones, mask], axis=-1)], axis=-1, keepdims=0, select_last_index=1)
    last = w.op("Sub", [last, int64(w, 1)], stem="last_key")  # (B, mask_q_len), -1 where no key
    rows = w.op("Range", [int64(w, 0), w.op("Gather", [w.op("Shape", [allowed]), int64(w, 1)], axis=0), int64(w, 1)])
    reach = w.op("ReduceMax", [w.op("Sub", [last, rows])], keepdims=0)  # a one-row mask: row 0 binds every query
    reach = w.op("Max", [reach, int64(w, 0)], stem="reach")
    limit = w.op("ReduceMax", [last, _vector(w, int64(w, 1))], keepdims=0)  # (B,)
    any_allowed = w.op(
        "Cast",
        [w.op("Unsqueeze", [w.op("GreaterOrEqual", [last, int64(w, 0)]), _vector(w, int64(w, -1))])],
        to=TensorProto.UINT8,
        stem="any_allowed_rows",
    )  # (B, mask_q_len, 1)
    return reach, w.op("Max", [w.op("Add", [limit, int64(w, 1)]), int64(w, 1)], stem="key_limit"), any_allowed


def _mask_rows(w: GraphWriter, allowed: str) -> str:
    """1 where the mask input has a row per query, 0 where it is one (B, 1, kv_len) row for every query."""
    mask_q_len = w.op("Gather", [w.op("Shape", [allowed]), int64(w, 1)], axis=0)
    return w.op("Cast", [w.op("Greater", [mask_q_len, int64(w, 1)])], to=INT64, stem="full_mask")


def _unsqueeze(w: GraphWriter, x: Int | str, axis: int) -> str:
    """x with a new axis of size 1 at `axis` (1 or 2): (count,) -> (count, 1), (count, G) -> (count, G, 1)."""
    return w.op("Unsqueeze", [x, w.constant(f"axes_{axis}", np.array([axis], np.int64))])


def _vector(w: GraphWriter, scalar: str) -> str:
    return w.op("Unsqueeze", [scalar, w.constant("axes_0", np.array([0], np.int64))])


def _zero_1(w: GraphWriter) -> str:
    return w.constant("i64_1d_0", np.array([0], np.int64))
