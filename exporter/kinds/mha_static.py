"""`mha-static` (export-attn --kv-cache --max-len N): one decoding step of MultiHeadedAttention with a static
cache, fixed buffers written in place, sequences of unequal lengths in one batch.

Inputs: the new tokens query/key/value (batch, q_len, E); past_key/past_value (batch, heads, max_len, d_k), the
cache's buffers; past_len (batch,) int64, how many tokens each sequence already holds. Outputs: output
(batch, q_len, E), and present_key/present_value (batch, heads, max_len, d_k): the buffers with the new keys and
values written at past_len[b] .. past_len[b] + q_len - 1. Bound to past's own buffers (IO binding), the step
writes in place and the cache is never copied; run plainly, the runtime allocates new presents.

New token i of sequence b sits at past_len[b] + i and attends keys 0..past_len[b] + i: today's causal mask,
bottom-right aligned, per sequence. Keys beyond a sequence's length are never read, so the lengths stand in for a
padding mask. A prefill is a step with past_len 0 and q_len the prompt. A step past max_len is an error, never a
write elsewhere. Positions beyond a sequence's new length are not part of the answer: in place they keep what
they held; in a present the runtime allocated they are unspecified (GroupQueryAttention copies only the valid
part). The checks compare each sequence's valid positions, and the outputs everywhere.

The buffers must hold finite numbers everywhere (StaticCache allocates zeros; a finished sequence's keys left
beyond a new one's length are harmless). The forms that attend over the whole buffer under a mask (onnx-attention,
torch-export, ort-gqa's standard step) weight a masked key by exactly 0, and 0 * NaN is NaN: a NaN in a tail
reaches the output. GroupQueryAttention reads valid keys only, and zeroes the tails of a present it allocates.

A check case `b3.q2.kv6` is batch 3, two new tokens, the first sequence holding 6 tokens and the others fewer
(runtime_check.cases: past_lengths), its cache's tail filled with noise the step must not read.
"""

from __future__ import annotations

import numpy as np

from attn_onnx.errors import UsageError
from attn_onnx.exporter.kinds.mha_cache import MhaCacheKind
from attn_onnx.vocab import GRAPH_MASK

MIN_MAX_LEN = 16  # the decode check's sequences reach 11 tokens (runtime_check.decode SEQUENCE, decode_static UNEQUAL)


def past_lengths(batch: int, past: int) -> np.ndarray:
    """A case's past_len (batch,) int64: the first sequence holds `past` tokens, the others fewer and unequal."""
    return np.array([past - (i * past) // batch for i in range(batch)], np.int64)


class MhaStaticKind(MhaCacheKind):
    name = "mha-static"
    flag = "--max-len"
    extends = "mha-cache"  # --kv-cache --max-len N
    help = "one decoding step of MultiHeadedAttention with a static cache written in place (--kv-cache --max-len N)"
    settings = MhaCacheKind.settings | {"max_len"}
    metadata_fields: tuple[str, ...] = (*MhaCacheKind.metadata_fields, "max_len", "cache_contract")
    static_cache = True
    example_dims = {"batch": 2, "q_len": 3, "kv_len": 4}  # past_len (4, 2): unequal, none 1

    def implied(self, settings, given):
        implied = super().implied(settings, given)
        if "opset" not in given:
            implied["opset"] = 24  # TensorScatter and Attention-24, the in-place standard operators
        return implied

    def validate(self, spec) -> None:
        if spec.mask != "causal" or spec.causal_align != "bottom-right":  # before mha-cache's, which offers a mask
            raise UsageError(
                "--max-len takes the built-in causal mask, bottom-right aligned per sequence; past_len gives each "
                f"sequence's length, so no padding mask is needed; got --mask {spec.mask}"
                + (f" --causal-align {spec.causal_align}" if spec.mask == "causal" else "")
            )
        super().validate(spec)
        if spec.max_len < MIN_MAX_LEN:
            raise UsageError(f"--max-len is the cache's capacity in tokens, at least {MIN_MAX_LEN}; got {spec.max_len}")

    def input_dims(self, spec):
        new = ["batch", "q_len", spec.embedding_dim]
        cache = ["batch", spec.heads, spec.max_len, spec.d_k]
        return {
            "query": new,
            "key": list(new),
            "value": list(new),
            "past_key": cache,
            "past_value": list(cache),
            "past_len": ["batch"],
        }

    def output_dims(self, spec):
        cache = ["batch", spec.heads, spec.max_len, spec.d_k]
        return {"output": ["batch", "q_len", spec.embedding_dim], "present_key": cache, "present_value": list(cache)}

    def input_dtypes(self, spec):
        return {name: ("int64" if name == "past_len" else spec.dtype) for name in self.input_dims(spec)}

    def score_dims(self, spec):
        return ["batch", spec.heads, "q_len", spec.max_len]

    def dims_contract(self, spec) -> dict:
        """The dims contract, and one value rule (exporter/kinds/dims.py `lengths`): each past_len[b] is at least
        0, and past_len[b] + q_len at most max_len. Out of it a step fails inside onnxruntime with its own words
        (TensorScatter's or GroupQueryAttention's), so a service refuses it before running, with these."""
        contract = super().dims_contract(spec)
        contract["lengths"] = {
            "past_len": {
                "description": "the tokens each sequence already holds: at least 0, and with the q_len new ones "
                f"at most the cache's {spec.max_len}",
                "at_least": 0,
                "plus": "q_len",
                "at_most": spec.max_len,
                "limit": "the cache's max_len",
                "past_limit": "the cache is full (reset the sequence, or export with a larger --max-len)",
            }
        }
        return contract

    def describe(self, spec):
        return (
            f"MultiHeadedAttention(heads={spec.heads}, embedding_dim={spec.embedding_dim}), one decoding step "
            f"with a static cache of {spec.max_len} tokens written in place"
        )

    def summary(self, spec):
        return f"mha with a static cache of {spec.max_len} tokens, heads {spec.heads}"

    def graph(self, spec, module):
        from attn_onnx.models import MhaStaticGraph

        if module is None:
            raise UsageError("module 'mha-static' needs its MultiHeadedAttention to build the graph")
        return MhaStaticGraph(module, spec.max_len)

    def inputs(self, spec, dims, rng, mask=None):
        b, q, past = dims["batch"], dims["q_len"], dims["kv_len"]
        lengths = past_lengths(b, past)
        if q + past > spec.max_len:
            raise UsageError(f"{past} cached and {q} new tokens do not fit a cache of max_len {spec.max_len}")
        feeds = {
            name: rng.standard_normal((b, q, spec.embedding_dim), dtype=np.float32)
            for name in ("query", "key", "value")
        }
        for name in ("past_key", "past_value"):  # the valid part and the tail alike: noise the step must not read
            feeds[name] = rng.standard_normal((b, spec.heads, spec.max_len, spec.d_k), dtype=np.float32)
        feeds["past_len"] = lengths
        return feeds

    def valid_lengths(self, spec, feeds):
        """The presents: sequence b's positions 0..past_len[b] + q_len - 1 (the module docstring)."""
        lengths = [int(n) + int(feeds["query"].shape[1]) for n in feeds["past_len"]]
        return {"present_key": lengths, "present_value": lengths}

    # --- cases: (batch, q_len, kv_len) with kv_len the first sequence's past_len, fitted into max_len --------

    def mask_kinds(self, spec):
        return [GRAPH_MASK]

    def _fit(self, spec, shapes):
        """Each shape fitted into the cache: past at most half of it, q_len at most what is left. A shape keeps a
        cache where it had one, so several new tokens into a filled cache (a GroupQueryAttention mode of its own at
        batch 1) stay in the sweep at any max_len."""
        fitted = []
        for b, q, kv in shapes:
            kv = min(kv, spec.max_len // 2)
            fitted.append((b, min(q, spec.max_len - kv), kv))
        return list(dict.fromkeys(fitted))

    def _grid(self, spec, shapes, masks):
        return [
            (f"b{b}.q{q}.kv{kv}.{GRAPH_MASK}", {"batch": b, "q_len": q, "kv_len": kv}, GRAPH_MASK)
            for b, q, kv in self._fit(spec, shapes)
        ]

    def parse_case(self, spec, name):
        import re

        match = re.fullmatch(rf"b(\d+)\.q(\d+)\.kv(\d+)\.{GRAPH_MASK}", name)
        if not match or int(match[1]) < 1 or int(match[2]) < 1:
            raise UsageError(
                f"case {name!r} is not of the form b<batch>.q<q_len>.kv<past_len>.{GRAPH_MASK} (batch, q_len >= 1)"
            )
        dims = {"batch": int(match[1]), "q_len": int(match[2]), "kv_len": int(match[3])}
        if dims["q_len"] + dims["kv_len"] > spec.max_len:
            raise UsageError(f"case {name!r}: {dims['kv_len']} cached and {dims['q_len']} new tokens exceed max_len")
        return dims, GRAPH_MASK

    def vector_cases(self, spec):
        # a prefill; one token into unequal caches; two tokens into unequal caches; the cache filled exactly; three
        # tokens into one filled cache (GroupQueryAttention's own mode for it)
        return (
            f"b1.q5.kv0.{GRAPH_MASK}",
            f"b2.q1.kv7.{GRAPH_MASK}",
            f"b3.q2.kv6.{GRAPH_MASK}",
            f"b2.q1.kv{spec.max_len - 1}.{GRAPH_MASK}",
            f"b1.q3.kv4.{GRAPH_MASK}",
        )

    def describe_case(self, spec, dims, mask):
        lengths = past_lengths(dims["batch"], dims["kv_len"]).tolist()
        return (
            f"batch {dims['batch']}, q_len {dims['q_len']} new tokens, past_len {lengths} (a cache of "
            f"{spec.max_len}; its tail noise the step must not read)"
        )

    def mask_contract(self, spec):
        return (
            "no mask input: new token i of sequence b sits at past_len[b] + i and attends keys 0..past_len[b] + i "
            "(causal, bottom-right aligned per sequence); keys beyond a sequence's length are never read"
        )

    def cache_contract(self, spec) -> str:
        return (
            f"past_key/past_value (batch, {spec.heads}, {spec.max_len}, {spec.d_k}) float32 are the cache's "
            "buffers; past_len (batch,) int64 the tokens each sequence holds. A step writes the q_len new keys and "
            "values at past_len[b]..past_len[b]+q_len-1 and returns the buffers as present_key/present_value: "
            "bind each present to its past's own buffer (IO binding) and the step writes in place. Feed "
            "past_len[b]+q_len as the next past_len. past_len[b]+q_len > max_len is an error. Positions beyond a "
            "sequence's length are not part of the answer, but must hold finite numbers (zeros when allocated): a "
            "NaN there reaches the output of the forms that mask rather than skip"
        )
