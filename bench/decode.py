"""bench-attn --decode: one decoding step through the KV cache against recomputing the whole sequence with
the plain causal export, at several cache lengths, interleaved rounds, medians."""

from __future__ import annotations

import statistics

import numpy as np

from attn_onnx.timing.engine import session, timed
from attn_onnx.exporter.export import export_onnx
from attn_onnx.exporter.spec import ExportSpec


def decode_bench(past_lens: list[int], threads: int, heads: int = 8, embedding_dim: int = 512, rounds: int = 7,
                 target_s: float = 0.05) -> list[dict]:
    """Per cache length: the step's median ms (1 new token, past_len cached), the recompute's (the plain causal
    export on past_len + 1 tokens), and their ratio."""
    cached = ExportSpec(module="mha-cache", mask="causal", causal_align="bottom-right", heads=heads,
                        embedding_dim=embedding_dim).validate()
    module = cached.kind.build_module(cached, seed=0)
    plain = ExportSpec(mask="causal", heads=heads, embedding_dim=embedding_dim).validate()
    step = session(export_onnx(cached, module)[0], threads)
    whole = session(export_onnx(plain, module)[0], threads)
    rng = np.random.default_rng(0)
    rows = []
    for past in past_lens:
        x = rng.standard_normal((1, past + 1, embedding_dim), dtype=np.float32)
        new = x[:, -1:]
        cache = rng.standard_normal((1, heads, past, embedding_dim // heads), dtype=np.float32)
        step_feeds = {"query": new, "key": new, "value": new, "past_key": cache, "past_value": cache}
        whole_feeds = {"query": x, "key": x, "value": x}
        times = {"step": [], "recompute": []}
        for _ in range(rounds):
            times["step"].append(timed(lambda f=step_feeds: step.run(None, f), target_s))
            times["recompute"].append(timed(lambda f=whole_feeds: whole.run(None, f), target_s))
        step_ms, whole_ms = (statistics.median(times[k]) * 1e3 for k in ("step", "recompute"))
        rows.append({"past_len": past, "step_ms": step_ms, "recompute_ms": whole_ms, "speedup": whole_ms / step_ms})
    return rows
