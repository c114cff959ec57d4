"""bench-attn decode: one decoding step through the KV cache against recomputing the whole sequence with the
plain causal export, at several cache lengths, interleaved rounds, medians."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field

import numpy as np

from attn_onnx.exporter.export import export_onnx
from attn_onnx.exporter.spec import ExportSpec
from attn_onnx.timing.engine import cpu_model, session, timed

PAST_LENS = (128, 512, 2047)  # cache lengths: short, middling, and one short of a 2048-token context


@dataclass
class DecodeStep:
    past_len: int  # tokens already in the cache
    step_ms: float  # median: one new token through the --kv-cache export
    recompute_ms: float  # median: the plain causal export on past_len + 1 tokens
    speedup: float  # recompute_ms / step_ms


@dataclass
class DecodeBench:
    cpu: str
    heads: int
    embedding_dim: int
    threads: int
    rounds: int
    steps: list[DecodeStep] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def decode_bench(
    past_lens: tuple[int, ...],
    threads: int,
    heads: int = 8,
    embedding_dim: int = 512,
    rounds: int = 7,
    target_s: float = 0.05,
) -> DecodeBench:
    """Per cache length, batch 1: the step's median ms (1 new token, past_len cached), the recompute's, and
    their ratio."""
    cached = ExportSpec(
        module="mha-cache", mask="causal", causal_align="bottom-right", heads=heads, embedding_dim=embedding_dim
    ).validate()
    module = cached.kind.build_module(cached, seed=0)
    plain = ExportSpec(mask="causal", heads=heads, embedding_dim=embedding_dim).validate()
    step = session(export_onnx(cached, module)[0], threads)
    whole = session(export_onnx(plain, module)[0], threads)
    rng = np.random.default_rng(0)
    bench = DecodeBench(cpu_model(), heads, embedding_dim, threads, rounds)
    for past in past_lens:
        x = rng.standard_normal((1, past + 1, embedding_dim), dtype=np.float32)
        new = x[:, -1:]
        cache = rng.standard_normal((1, heads, past, embedding_dim // heads), dtype=np.float32)
        step_feeds = {"query": new, "key": new, "value": new, "past_key": cache, "past_value": cache}
        whole_feeds = {"query": x, "key": x, "value": x}
        times: dict[str, list[float]] = {"step": [], "recompute": []}
        for _ in range(rounds):
            times["step"].append(timed(lambda f=step_feeds: step.run(None, f), target_s))
            times["recompute"].append(timed(lambda f=whole_feeds: whole.run(None, f), target_s))
        step_ms, whole_ms = (statistics.median(times[k]) * 1e3 for k in ("step", "recompute"))
        bench.steps.append(DecodeStep(past, step_ms, whole_ms, whole_ms / step_ms))
    return bench
