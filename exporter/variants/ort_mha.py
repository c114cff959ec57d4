"""`ort-mha`: onnxruntime's fused `com.microsoft.MultiHeadAttention` (runs in onnxruntime only).

The Q/K/V biases go into the kernel's packed `bias` input; a mask becomes an additive `attention_bias` of 0
or the dtype's lowest finite value (builder.additive_bias: not the seed's -1e9, which is slower there and
gives the same answers); fully-masked rows are restored to the seed's uniform attention (see builder.py). Without a
mask the kernel may take its flash-attention path.
"""

from __future__ import annotations

import numpy as np

from attn_onnx.dtypes import ONNX_TYPES
from attn_onnx.exporter.variants.base import Built
from attn_onnx.exporter.variants.builder import (
    GraphWriter,
    Weights,
    additive_bias,
    allowed_mask,
    can_mask_whole_rows,
    mean_over_keys,
    model,
    output_projection,
    projections,
    scale,
    uniform_rows,
)


def build(spec, module) -> Built:
    w, weights = GraphWriter(), Weights(module)
    p = projections(w, weights, packed_bias=True, spec=spec)  # query, key, value (B, len, E) unbiased; bias (3E,)
    allowed = allowed_mask(w, spec)
    bias = additive_bias(w, allowed, spec) if allowed is not None else ""
    attended = w.op(
        "MultiHeadAttention",
        [p["query"], p["key"], p["value"], p["bias"], "", bias],
        stem="attended",
        domain="com.microsoft",
        num_heads=spec.heads,
        scale=scale(spec),
    )
    if can_mask_whole_rows(spec):
        assert allowed is not None  # a mask input, or the built-in causal mask
        width = spec.embedding_dim
        value_bias = w.op(
            "Slice",
            [
                p["bias"],
                w.constant("v_start", np.array([2 * width], np.int64)),
                w.constant("v_end", np.array([3 * width], np.int64)),
            ],
            stem="value_bias",
        )
        attended = uniform_rows(
            w,
            attended,
            allowed,
            p["value"],
            ONNX_TYPES[spec.dtype],
            value_mean=lambda b: b.op("Add", [mean_over_keys(b, p["value"]), value_bias], stem="mean_v"),
        )  # the kernel adds the bias
    output_projection(w, weights, attended)  # (B, q_len, E)
    doc = "MultiHeadedAttention through com.microsoft.MultiHeadAttention (attn-onnx variant ort-mha)"
    return Built(model(w, spec, {"": spec.opset, "com.microsoft": 1}, doc), weights.map)
