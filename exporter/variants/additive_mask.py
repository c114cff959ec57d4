"""`additive-mask`: the seed's MatMul/Softmax graph built by hand, with the mask added as a bias shared by
all heads instead of a masked_fill on every head's scores.

torch-export's masked_fill is a Where on (batch, heads, q_len, kv_len) with broadcast scalars, onnxruntime's
slowest node in that graph (26 of 67 ms at (4, 512) on a Xeon); an Add of a (batch, 1, mask_q_len, kv_len)
bias does the same masking in a fraction of that. The bias is (allowed - 1) * FLT_MAX, and fully-masked
rows get the seed's uniform answer explicitly (see builder.py). Standard operators: any runtime.
"""

from __future__ import annotations

import numpy as np

from attn_onnx.dtypes import ONNX_TYPES, numpy_dtype
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
    uniform_rows,
)


def build(spec, module) -> Built:
    w, weights = GraphWriter(), Weights(module)
    p = projections(w, weights, packed_bias=False, spec=spec)  # query, key, value (B, len, E) with their biases
    heads = w.constant("heads_shape", np.array([0, 0, spec.heads, spec.d_k], np.int64))
    q, k, v = (w.op("Reshape", [p[n], heads], stem=n[0]) for n in ("query", "key", "value"))  # (B, len, h, d_k)
    q = w.op("Transpose", [q], stem="q", perm=[0, 2, 1, 3])  # (B, h, q_len, d_k)
    k = w.op("Transpose", [k], stem="k", perm=[0, 2, 3, 1])  # (B, h, d_k, kv_len)
    v = w.op("Transpose", [v], stem="v", perm=[0, 2, 1, 3])  # (B, h, kv_len, d_k)
    scores = w.op(
        "Div",
        [
            w.op("MatMul", [q, k], stem="scores"),
            w.constant("sqrt_d_k", np.array(np.sqrt(spec.d_k), numpy_dtype(spec.dtype))),
        ],
        stem="scores",
    )
    allowed = allowed_mask(w, spec)
    if allowed is not None:
        scores = w.op("Add", [scores, additive_bias(w, allowed, spec, full_rows=False)], stem="scores")
    p_attn = w.op("Softmax", [scores], stem="p_attn", axis=-1)  # (B, h, q_len, kv_len)
    x = w.op("Transpose", [w.op("MatMul", [p_attn, v], stem="x")], stem="x", perm=[0, 2, 1, 3])  # (B, q_len, h, d_k)
    x = w.op("Reshape", [x, w.constant("concat_shape", np.array([0, 0, spec.embedding_dim], np.int64))], stem="x")
    if can_mask_whole_rows(spec):
        assert allowed is not None  # a mask input, or the built-in causal mask
        x = uniform_rows(w, x, allowed, p["value"], ONNX_TYPES[spec.dtype])
    output_projection(w, weights, x)
    doc = "MultiHeadedAttention, the seed's graph with an additive mask (attn-onnx variant additive-mask)"
    return Built(model(w, spec, {"": spec.opset}, doc), weights.map)
