"""`ort-gqa`: onnxruntime's `com.microsoft.GroupQueryAttention` where the mask is causal plus key padding, and
`ort-mha`'s graph for any other mask (runs in onnxruntime only).

GroupQueryAttention is always causal and takes per-example key lengths (`seqlens_k`), with no mask tensor: it
never builds the (batch, heads, len, len) scores and skips the upper triangle, about 1.5x the speed of
MultiHeadAttention with an additive bias at (1, 2048). It answers exactly as the seed does under
"query i attends keys 0..i that are within the example's length", the padded query rows included (they
attend every valid key). So the graph tests, at run time, whether the mask it was given is exactly that:

- the built-in causal mask (top-left) with q_len == kv_len: always;
- a mask input: q_len == kv_len, a full (batch, q_len, kv_len) mask, and mask == causal AND (key j < length
  of the example), the length read off its last row and at least 1 (an example with no key would be a
  fully-masked row for every query).

An `If` then runs GroupQueryAttention, or else ort-mha's path (MultiHeadAttention with an additive bias and the
uniform-row fix, see builder.py). Either way the answer is the seed's, for any mask.

For a static cache (mha-static), GroupQueryAttention on the cache's own buffers: static_cache.py.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from attn_onnx.dtypes import ONNX_TYPES
from attn_onnx.exporter.variants import static_cache
from attn_onnx.exporter.variants.base import Built
from attn_onnx.exporter.variants.builder import (
    GraphWriter,
    Weights,
    additive_bias,
    allowed_mask,
    can_mask_whole_rows,
    model,
    output_projection,
    projections,
    scale,
    source,
    uniform_rows,
)

INT32 = TensorProto.INT32


def build(spec, module) -> Built:
    w, weights = GraphWriter(), Weights(module)
    p = projections(w, weights, packed_bias=False, spec=spec)  # query, key, value (B, len, E), biases added
    if spec.kind.static_cache:  # GroupQueryAttention on the shared buffers where it takes the step
        output_projection(w, weights, static_cache.gqa_or_standard(w, spec, p))
        doc = (
            "MultiHeadedAttention, one step of a static cache: com.microsoft.GroupQueryAttention where it takes the "
            "step, TensorScatter and the ONNX Attention op otherwise (attn-onnx variant ort-gqa)"
        )
        return Built(model(w, spec, {"": spec.opset, "com.microsoft": 1}, doc), weights.map)
    allowed = allowed_mask(w, spec)  # (B, mask_q_len, kv_len) or causal (q_len, kv_len) bool
    assert allowed is not None  # ort-gqa takes only a mask input or the built-in causal mask (its Variant's masks)
    lengths, total, fast = _causal_padding(w, spec, allowed)  # (B,) key lengths, kv_len (int32); GQA applies

    def group_query_attention(b: GraphWriter) -> str:
        seqlens = b.op("Sub", [lengths, w.constant("i32_1", np.array(1, np.int32))], stem="seqlens_k")
        return b.ops(
            "GroupQueryAttention",
            [p["query"], p["key"], p["value"], "", "", seqlens, total],
            3,
            stem="attended",
            domain="com.microsoft",
            num_heads=spec.heads,
            kv_num_heads=spec.heads,
            scale=scale(spec),
        )[0]  # (B, q_len, E)

    doc = (
        "MultiHeadedAttention through com.microsoft.GroupQueryAttention for causal+padding masks, "
        "MultiHeadAttention otherwise (attn-onnx variant ort-gqa)"
    )
    if spec.mask == "causal" and spec.kind.self_attention:  # q_len == kv_len always: GQA always applies, and an
        output_projection(w, weights, group_query_attention(w))  # If whose else no input reaches is not written
        return Built(model(w, spec, {"": spec.opset, "com.microsoft": 1}, doc), weights.map)
    gqa = w.branch()
    attended_fast = group_query_attention(gqa)

    mha = w.branch()
    bias = additive_bias(mha, allowed, spec)  # (B | 1, 1, q_len, kv_len)
    attended = mha.op(
        "MultiHeadAttention",
        [p["query"], p["key"], p["value"], "", "", bias],
        stem="attended",
        domain="com.microsoft",
        num_heads=spec.heads,
        scale=scale(spec),
    )
    if can_mask_whole_rows(spec):
        attended = uniform_rows(mha, attended, allowed, p["value"], ONNX_TYPES[spec.dtype])

    elem = ONNX_TYPES[spec.dtype]
    out = w.op(
        "If",
        [fast],
        stem="attended",
        then_branch=gqa.subgraph("gqa", attended_fast, elem),
        else_branch=mha.subgraph("mha", attended, elem),
    )
    output_projection(w, weights, out)  # (B, q_len, E)
    return Built(model(w, spec, {"": spec.opset, "com.microsoft": 1}, doc), weights.map)


def _causal_padding(w: GraphWriter, spec, allowed: str) -> tuple[str, str, str]:
    """The key length of each example (B,) int32, kv_len as an int32 scalar, and whether the mask is exactly
    causal AND key padding with q_len == kv_len and every length >= 1 (a scalar bool)."""
    one = w.constant("i64_1d_1", np.array([1], np.int64))
    query_shape = w.op("Shape", [source(spec, "query")])
    q_len = w.op("Gather", [query_shape, w.constant("i_1", np.array(1, np.int64))], axis=0)
    kv_len = w.op("Gather", [w.op("Shape", [source(spec, "key")]), w.constant("i_1", np.array(1, np.int64))], axis=0)
    total = w.op("Cast", [kv_len], to=INT32, stem="total")
    square = w.op("Equal", [q_len, kv_len], stem="square")
    if spec.mask == "causal":  # built in: top-left, hence exactly causal when square; every key valid
        batch = w.op("Slice", [query_shape, w.constant("i64_1d_0", np.array([0], np.int64)), one])  # (1,)
        return w.op("Expand", [total, batch], stem="lengths"), total, square  # the alignments agree when square
    # the last query row of causal AND padding allows exactly the example's valid keys
    last = w.op("Gather", [allowed, w.constant("i_m1", np.array(-1, np.int64))], axis=1, stem="last_row")  # (B, kv)
    lengths = w.op(
        "ReduceSum",
        [w.op("Cast", [last], to=INT32), w.constant("axes_m1", np.array([-1], np.int64))],
        keepdims=0,
        stem="lengths",
    )  # (B,)
    zero = w.constant("i64_0", np.array(0, np.int64))
    cols = w.op("Range", [zero, kv_len, w.constant("i64_step", np.array(1, np.int64))])  # (kv,)
    rows = w.op("Unsqueeze", [w.op("Range", [zero, q_len, w.constant("i64_step", np.array(1, np.int64))]), one])
    causal = w.op("LessOrEqual", [cols, rows], stem="causal")  # (q, kv)
    valid = w.op(
        "Less",
        [
            w.op("Cast", [cols], to=INT32),
            w.op("Unsqueeze", [lengths, w.constant("axes_1_2", np.array([1, 2], np.int64))]),
        ],
        stem="valid",
    )  # (B, 1, kv)
    expected = w.op("And", [causal, valid], stem="expected")  # (B, q, kv)
    differs = w.op(
        "ReduceMax",
        [w.op("Cast", [w.op("Xor", [allowed, expected])], to=TensorProto.UINT8)],
        keepdims=0,
        stem="differs",
    )  # 0 or 1; a (B, 1, kv) mask broadcasts and differs unless q is 1
    mask_rows = w.op("Gather", [w.op("Shape", [allowed]), w.constant("i_1", np.array(1, np.int64))], axis=0)
    full_mask = w.op("Equal", [mask_rows, q_len], stem="full_mask")
    min_length = w.op("ReduceMin", [lengths], keepdims=0, stem="min_length")
    has_keys = w.op("GreaterOrEqual", [min_length, w.constant("i32_1", np.array(1, np.int32))], stem="has_keys")
    same = w.op("Not", [w.op("Cast", [differs], to=TensorProto.BOOL)], stem="same")
    fast = w.op("And", [w.op("And", [square, full_mask]), w.op("And", [same, has_keys])], stem="fast")
    return lengths, total, fast


def coverage_shapes(spec) -> tuple[tuple[int, int, int], ...]:
    """The static cache's If takes GroupQueryAttention or the standard step by shape: a shape for each."""
    return static_cache.coverage_shapes(spec) if spec.kind.static_cache else ()
