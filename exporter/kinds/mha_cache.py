"""`mha-cache` (export-attn --kv-cache): one decoding step of MultiHeadedAttention with a KV cache.

Inputs: the new tokens query/key/value (batch, q_len, E), and past_key/past_value (batch, heads, past_len,
d_k), the projected keys and values of earlier tokens (past_len 0 for the prefill). Outputs: output
(batch, q_len, E), and present_key/present_value (batch, heads, past_len + q_len, d_k), fed back as the next
step's pasts. The causal mask is built in, bottom-right aligned: new token i sits at position past_len + i.

A check case `b2.q1.kv7` is batch 2, one new token, past_len 7: for this kind, kv is the cache's length.
runtime_check also decodes whole sequences through the cache (runtime_check/decode.py).
"""

from __future__ import annotations

import numpy as np

from attn_onnx.errors import UsageError
from attn_onnx.exporter.kinds.mha import MhaKind


class MhaCacheKind(MhaKind):
    name = "mha-cache"
    flag = "--kv-cache"
    extends = "mha"
    dtypes = ("float32",)  # the decode check and the bundle's decode steps are float32 so far
    help = "one decoding step of MultiHeadedAttention with a KV cache (export-attn --kv-cache)"
    settings = MhaKind.settings - {"attn_probs", "quantize"}
    metadata_fields: tuple[str, ...] = (
        "heads",
        "d_k",
        "embedding_dim",
        "dtype",
        "mask",
        "mask_dtype",
        "causal_align",
        "mask_convention",
        "weights",
        "weights_source",
    )
    decodes = True  # runtime_check feeds whole sequences through the cache

    def implied(self, settings, given):
        implied = {}
        if "mask" not in given:
            implied["mask"] = "causal"  # built in, bottom-right aligned: the mask a decoding step needs
        if "causal_align" not in given and implied.get("mask", settings["mask"]) == "causal":
            implied["causal_align"] = "bottom-right"
        return implied

    def validate(self, spec) -> None:
        super().validate(spec)
        if spec.mask == "none" or (spec.mask == "causal" and spec.causal_align != "bottom-right"):
            raise UsageError(
                "--kv-cache takes --mask causal, built in and bottom-right aligned (new token i at "
                "past_len + i), or --mask input (batch, q_len or 1, past_len + q_len); got --mask "
                f"{spec.mask}" + (f" --causal-align {spec.causal_align}" if spec.mask == "causal" else "")
            )
        if spec.attn_probs:
            raise UsageError("--kv-cache does not output attn_probs")

    def input_dims(self, spec):
        new = ["batch", "q_len", spec.embedding_dim]
        past = ["batch", spec.heads, "past_len", spec.d_k]
        dims = {"query": new, "key": list(new), "value": list(new), "past_key": past, "past_value": list(past)}
        if spec.mask == "input":
            dims["mask"] = ["batch", "mask_q_len", "total_len"]  # total_len = past_len + q_len
        return dims

    def output_dims(self, spec):
        present = ["batch", spec.heads, "total_len", spec.d_k]
        return {
            "output": ["batch", "q_len", spec.embedding_dim],
            "present_key": present,
            "present_value": list(present),
        }

    def input_dtypes(self, spec):
        from attn_onnx.vocab import MASK_DTYPES

        return {
            name: (np.dtype(MASK_DTYPES[spec.mask_dtype]).name if name == "mask" else spec.dtype)
            for name in self.input_dims(spec)
        }

    def describe(self, spec):
        return (
            f"MultiHeadedAttention(heads={spec.heads}, embedding_dim={spec.embedding_dim}), one decoding step "
            "with a KV cache"
        )

    def summary(self, spec):
        return f"mha with a KV cache, heads {spec.heads}, " + (
            "causal bottom-right" if spec.mask == "causal" else "mask input"
        )

    def graph(self, spec, module):
        from attn_onnx.models import MhaCacheGraph

        if module is None:
            raise UsageError("module 'mha-cache' needs its MultiHeadedAttention to build the graph")
        return MhaCacheGraph(module, spec.mask)

    def inputs(self, spec, dims, rng, mask=None):
        b, q, past = dims["batch"], dims["q_len"], dims["kv_len"]
        feeds = {
            name: rng.standard_normal((b, q, spec.embedding_dim), dtype=np.float32)
            for name in ("query", "key", "value")
        }
        for name in ("past_key", "past_value"):
            feeds[name] = rng.standard_normal((b, spec.heads, past, spec.d_k), dtype=np.float32)
        if spec.mask == "input":
            from attn_onnx.vocab import MASK_DTYPES

            # A check case's mask covers the cache (past_len keys); the new tokens are appended visible.
            mask = np.ones((b, q, past), np.uint8) if mask is None else mask  # (B, q_len or 1, past_len)
            mask = np.concatenate([mask, np.ones((b, mask.shape[1], q), mask.dtype)], axis=-1)
            feeds["mask"] = mask.astype(MASK_DTYPES[spec.mask_dtype])  # (B, q_len or 1, past_len + q_len)
        return feeds
