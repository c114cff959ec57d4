"""`onnx-attention`: the standard ONNX `Attention` op (opset 23), any runtime that implements it; for a static
cache (mha-static), TensorScatter and Attention at opset 24 (static_cache.py).

A boolean `attn_mask` (True = attend) or `is_causal` (top-left, as the seed's subsequent_mask); the op
gives zeros (onnxruntime 1.32, the onnx 1.23 errata) or NaN (earlier onnx) on a fully-masked row, so those
rows are restored to the seed's uniform attention (see builder.py).
"""

from __future__ import annotations

from attn_onnx.dtypes import ONNX_TYPES
from attn_onnx.exporter.variants import static_cache
from attn_onnx.exporter.variants.base import Built
from attn_onnx.exporter.variants.builder import (
    GraphWriter,
    Weights,
    allowed_mask,
    model,
    output_projection,
    per_head,
    projections,
    scale,
    uniform_rows,
)


def build(spec, module) -> Built:
    w, weights = GraphWriter(), Weights(module)
    p = projections(w, weights, packed_bias=False, spec=spec)  # query, key, value (B, len, E) with their biases
    if spec.kind.static_cache:  # TensorScatter into the cache's buffers, then Attention-24 over them
        output_projection(w, weights, static_cache.standard(w, spec, p))
        doc = (
            "MultiHeadedAttention, one step of a static cache: TensorScatter and the ONNX Attention op (onnx-attention)"
        )
        return Built(model(w, spec, {"": spec.opset}, doc), weights.map)
    attrs = {"q_num_heads": spec.heads, "kv_num_heads": spec.heads, "scale": scale(spec)}
    inputs = [p["query"], p["key"], p["value"]]
    allowed = None
    if spec.mask == "causal" and spec.causal_align == "top-left":
        attrs["is_causal"] = 1  # the op's is_causal is top-left aligned, as the seed's subsequent_mask
    elif spec.mask != "none":
        allowed = allowed_mask(w, spec)  # (B, mask_q_len, kv_len) or bottom-right causal (q_len, kv_len) bool
        assert allowed is not None  # a mask input, or the built-in causal mask
        inputs.append(per_head(w, allowed, spec))  # (B | 1, 1, q_len, kv_len)
    attended = w.op("Attention", inputs, stem="attended", **attrs)  # (B, q_len, E)
    if allowed is not None:
        attended = uniform_rows(w, attended, allowed, p["value"], ONNX_TYPES[spec.dtype])
    output_projection(w, weights, attended)
    doc = "MultiHeadedAttention through the ONNX Attention op (attn-onnx variant onnx-attention)"
    return Built(model(w, spec, {"": spec.opset}, doc), weights.map)
