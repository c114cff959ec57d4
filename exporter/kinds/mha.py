"""`mha`: the seed's MultiHeadedAttention, on (batch, len, embedding_dim) tensors."""

from __future__ import annotations

from attn_onnx.errors import UsageError
from attn_onnx.exporter.kinds.base import AttentionKindBase


class MhaKind(AttentionKindBase):
    name = "mha"
    flag = "--module mha"
    help = "MultiHeadedAttention"
    has_weights = True
    settings = frozenset(
        {"heads", "embedding_dim", "mask", "mask_dtype", "causal_align", "attn_probs", "weights", "dtype", "quantize"}
    )
    metadata_fields: tuple[str, ...] = (
        "heads",
        "d_k",
        "embedding_dim",
        "dtype",
        "mask",
        "mask_dtype",
        "causal_align",
        "mask_convention",
        "attn_probs",
        "weights",
        "weights_source",
    )

    def input_dims(self, spec):
        q, kv = ["batch", "q_len", spec.embedding_dim], ["batch", "kv_len", spec.embedding_dim]
        dims = {"query": q, "key": kv, "value": list(kv)}
        if spec.mask == "input":
            dims["mask"] = ["batch", "mask_q_len", "kv_len"]  # mask_q_len: q_len (full mask) or 1 (padding)
        return dims

    def output_dims(self, spec):
        dims = {"output": ["batch", "q_len", spec.embedding_dim]}
        if spec.attn_probs:
            dims["attn_probs"] = ["batch", spec.heads, "q_len", "kv_len"]
        return dims

    def describe(self, spec):
        return f"MultiHeadedAttention(heads={spec.heads}, embedding_dim={spec.embedding_dim})"

    def summary(self, spec):
        return f"mha, heads {spec.heads}, mask {spec.mask}" + (", attn_probs" if spec.attn_probs else "")

    def build_module(self, spec, state=None, seed: int = 0):
        """A MultiHeadedAttention in eval mode: weights from `state`, else random from `seed`."""
        import torch

        from attn_onnx.models import MultiHeadedAttention
        from attn_onnx.models.weights import load_into

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = MultiHeadedAttention(spec.heads, spec.embedding_dim, dropout=0.0)
            # The seed's `clones` deep-copies one Linear, so all four start identical; draw each on its own,
            # or a swapped query/key/value projection could never be seen in a parity check.
            for linear in module.linears:
                assert isinstance(linear, torch.nn.Linear)  # clones of one Linear
                linear.reset_parameters()
        if state is not None:
            load_into(module, state, source="the given state_dict")
        return module.eval()

    def graph(self, spec, module):
        from attn_onnx.models import MhaGraph

        if module is None:
            raise UsageError("module 'mha' needs its MultiHeadedAttention to build the graph")
        return MhaGraph(module, spec.mask, spec.attn_probs, spec.causal_align)

    def inputs(self, spec, dims, rng, mask=None):
        return self._qkv(spec, dims, rng, (), spec.embedding_dim, mask, ())

    def checked_module(self, spec, module):
        """`module` has the seed's interface and the spec's sizes; returned in eval mode."""
        heads, linears = getattr(module, "head", None), getattr(module, "linears", None)
        if heads is None or linears is None:
            raise UsageError("the module lacks the seed's interface (attributes `head` and `linears`)")
        width = linears[0].in_features
        if (heads, width) != (spec.heads, spec.embedding_dim):
            raise UsageError(
                f"the module has heads={heads}, embedding_dim={width} but the spec asks for "
                f"heads={spec.heads}, embedding_dim={spec.embedding_dim}"
            )
        return module.eval()  # dropout is a training-time op
