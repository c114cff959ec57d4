"""`attention`: the bare masked scaled dot-product attention on (batch, heads, len, d_k) tensors."""

from __future__ import annotations

from attn_onnx.exporter.kinds.base import AttentionKindBase


class AttentionKind(AttentionKindBase):
    name = "attention"
    flag = "--module attention"
    help = "the bare attention(query, key, value, mask); outputs output and attn_probs"
    settings = frozenset({"heads", "embedding_dim", "mask", "mask_dtype", "causal_align", "dtype"})
    metadata_fields = ("heads", "d_k", "dtype", "mask", "mask_dtype", "causal_align", "mask_convention")

    def input_dims(self, spec):
        q, kv = ["batch", spec.heads, "q_len", spec.d_k], ["batch", spec.heads, "kv_len", spec.d_k]
        dims = {"query": q, "key": kv, "value": list(kv)}
        if spec.mask == "input":
            dims["mask"] = ["batch", 1, "mask_q_len", "kv_len"]  # one mask for every head
        return dims

    def output_dims(self, spec):
        return {
            "output": ["batch", spec.heads, "q_len", spec.d_k],
            "attn_probs": ["batch", spec.heads, "q_len", "kv_len"],
        }

    def describe(self, spec):
        return f"attention(query, key, value, mask) with heads={spec.heads}, d_k={spec.d_k}"

    def summary(self, spec):
        return f"attention, heads {spec.heads}, d_k {spec.d_k}, mask {spec.mask}"

    def graph(self, spec, module):
        from attn_onnx.models import AttentionGraph

        return AttentionGraph(spec.mask, spec.causal_align)

    def inputs(self, spec, dims, rng, mask=None):
        return self._qkv(spec, dims, rng, (spec.heads,), spec.d_k, mask, (1,))
