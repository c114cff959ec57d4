"""`mha-self` (export-attn --self-attention): MultiHeadedAttention on one input x as query, key and value.

One input instead of three lets a graph project all three with one MatMul on the packed (E, 3E) weight
(the hand-built variants do; the weight map records each projection's slice of it). Check cases are
self-attention: q_len == kv_len.
"""

from __future__ import annotations

from attn_onnx.errors import UsageError
from attn_onnx.exporter.kinds.mha import MhaKind


class MhaSelfKind(MhaKind):
    name = "mha-self"
    flag = "--self-attention"
    extends = "mha"
    help = "MultiHeadedAttention on one input x (export-attn --self-attention)"
    self_attention = True
    example_dims = {"batch": 2, "q_len": 3, "kv_len": 3}  # one length; batch and length still differ
    settings = MhaKind.settings

    def input_dims(self, spec):
        dims = {"x": ["batch", "q_len", spec.embedding_dim]}
        if spec.mask == "input":
            dims["mask"] = ["batch", "mask_q_len", "q_len"]  # mask_q_len: q_len (full mask) or 1 (padding)
        return dims

    def describe(self, spec):
        return f"MultiHeadedAttention(heads={spec.heads}, embedding_dim={spec.embedding_dim}) on one input x"

    def summary(self, spec):
        return "mha self-attention" + super().summary(spec)[3:]

    def graph(self, spec, module):
        from attn_onnx.models import MhaSelfGraph

        if module is None:
            raise UsageError("module 'mha-self' needs its MultiHeadedAttention to build the graph")
        return MhaSelfGraph(module, spec.mask, spec.attn_probs, spec.causal_align)

    def inputs(self, spec, dims, rng, mask=None):
        if dims["q_len"] != dims["kv_len"]:
            raise UsageError(f"a self-attention model takes q_len == kv_len, not {dims['q_len']} and {dims['kv_len']}")
        feeds = self._qkv(spec, dims, rng, (), spec.embedding_dim, mask, ())
        feeds["x"] = feeds.pop("query")
        del feeds["key"], feeds["value"]
        return {name: feeds[name] for name in self.input_dims(spec)}

    def input_dtypes(self, spec):
        dtypes = super().input_dtypes(spec)
        return {name: dtypes["query" if name == "x" else name] for name in self.input_dims(spec)}
