"""bench-attn decode: one decoding step through the KV cache against recomputing the whole sequence with the
plain causal export, at several cache lengths, interleaved rounds, medians; and the step against the memory limit.

A decoding step's cost is reading its cache, so the limit is the machine's streaming rate: measured in the same
run, with the same thread count (a sum over STREAM_BYTES, far beyond the caches, by torch's threads), in every
round beside the contenders. A step must read its valid cache (keys and values) and the weights, once; its
figure against the limit is (those bytes / the rate) / its time. Every call is timed cold: a read of
EVICT_BYTES before it pushes the cache out of the CPU's caches, as other requests would in a service.
`allocated` is what the step's outputs hold, fresh from onnxruntime on every call (the concat step's present
cache is a new past_len + 1 buffer each token).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from functools import partial

import numpy as np
from onnx import numpy_helper

from attn_onnx.exporter.export import export_onnx
from attn_onnx.exporter.spec import ExportSpec
from attn_onnx.timing.engine import cpu_model, session, timed

PAST_LENS = (128, 512, 2047)  # cache lengths: short, middling, and one short of a 2048-token context
STREAM_BYTES = 256 * 2**20  # the streaming-rate probe's buffer: well beyond any L3
EVICT_BYTES = 64 * 2**20  # read before each timed call: the cache is not left in L3 by the previous call


@dataclass
class DecodeStep:
    past_len: int  # tokens already in the cache
    step_ms: float  # median: one new token through the --kv-cache export
    recompute_ms: float  # median: the plain causal export on past_len + 1 tokens
    speedup: float  # recompute_ms / step_ms
    read_mib: float  # what the step must read: its valid cache (keys and values) and its initializers, once
    limit_ms: float  # read_mib at the run's streaming rate (stream_gib_s): the fastest the step could be
    of_limit: float  # limit_ms / step_ms, in percent
    allocated_mib: float  # what the step's outputs hold, allocated afresh by onnxruntime on every call


@dataclass
class DecodeBench:
    cpu: str
    heads: int
    embedding_dim: int
    threads: int
    rounds: int
    stream_gib_s: float = 0.0  # the streaming rate: median over every round of every past length
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
    """Per cache length, batch 1: the step's median ms (1 new token, past_len cached), the recompute's, their
    ratio, and the step against the streaming rate measured in the same rounds."""
    import torch

    cached = ExportSpec(
        module="mha-cache", mask="causal", causal_align="bottom-right", heads=heads, embedding_dim=embedding_dim
    ).validate()
    module = cached.kind.build_module(cached, seed=0)
    plain = ExportSpec(mask="causal", heads=heads, embedding_dim=embedding_dim).validate()
    step_proto = export_onnx(cached, module)[0]
    step = session(step_proto, threads)
    whole = session(export_onnx(plain, module)[0], threads)
    weight_bytes = sum(numpy_helper.to_array(t).nbytes for t in step_proto.graph.initializer)
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # the rate at the thread count the steps run with
    stream = torch.ones(STREAM_BYTES // 4, dtype=torch.float32)
    evict = np.ones(EVICT_BYTES // 4, np.float32)
    rng = np.random.default_rng(0)
    bench = DecodeBench(cpu_model(), heads, embedding_dim, threads, rounds)
    rates: list[float] = []
    try:
        for past in past_lens:
            x = rng.standard_normal((1, past + 1, embedding_dim), dtype=np.float32)
            new = x[:, -1:]
            cache = rng.standard_normal((1, heads, past, embedding_dim // heads), dtype=np.float32)
            step_feeds = {"query": new, "key": new, "value": new, "past_key": cache, "past_value": cache}
            whole_feeds = {"query": x, "key": x, "value": x}
            times: dict[str, list[float]] = {"step": [], "recompute": [], "stream": []}
            for _ in range(rounds):
                times["step"].append(timed(partial(step.run, None, step_feeds), target_s, before=evict.sum))
                times["recompute"].append(timed(partial(whole.run, None, whole_feeds), target_s, before=evict.sum))
                times["stream"].append(timed(stream.sum, target_s))
            step_ms, whole_ms = statistics.median(times["step"]) * 1e3, statistics.median(times["recompute"]) * 1e3
            rates.extend(STREAM_BYTES / t for t in times["stream"])
            read = 2 * cache.nbytes + weight_bytes  # past_key and past_value, and the weights
            allocated = sum(a.nbytes for a in step.run(None, step_feeds))
            bench.steps.append(
                DecodeStep(past, step_ms, whole_ms, whole_ms / step_ms, read / 2**20, 0.0, 0.0, allocated / 2**20)
            )
    finally:
        torch.set_num_threads(saved_threads)
    # One rate for the run, the one the header prints: every row's limit is its bytes at that rate (a row's own few
    # rounds of the probe swing with the machine's other tenants, and the rows would not agree with the header)
    rate = statistics.median(rates)
    bench.stream_gib_s = rate / 2**30
    for s in bench.steps:
        s.limit_ms = s.read_mib * 2**20 / rate * 1e3
        s.of_limit = 100 * s.limit_ms / s.step_ms
    return bench
