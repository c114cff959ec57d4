"""bench-attn decode: one decoding step three ways, against each other and against the memory limit.

The forms: `concat`, today's --kv-cache step (mha-cache), which takes the cache and returns it one token longer,
a new buffer every token; and the static cache (mha-static, --kv-cache --max-len) in place, in its two fast graph
forms (ort-gqa: GroupQueryAttention on the shared buffers; onnx-attention: TensorScatter and Attention-24),
stepped through runtime_check.static_cache.StaticCache, its buffers bound as both past and present. At batch 1,
per cache length, each form's step and the concat step's recompute (the plain causal export on past_len + 1
tokens); all in interleaved rounds, medians.

A decoding step's cost is reading its cache, so the limit is the machine's streaming rate: measured in the same
run, with the same thread count (a sum over STREAM_BYTES, far beyond the caches, by torch's threads), in every
round beside the contenders. A step must read its valid cache (keys and values) and the weights, once; its
figure against the limit is (those bytes / the rate) / its time. Every call is timed cold: a read of
EVICT_BYTES before it pushes the cache out of the CPU's caches, as other requests would in a service.
`allocated` is what the step's outputs hold, new on every call: the concat step's present cache is a new
past_len + 1 buffer each token; in place, the presents are the bound buffers, and only `output` is new.

The batch scenario: sequences of unequal lengths (BATCH_LENS, one per 1k up to 8k) take one step each. The static
forms step them all in one call, each at its own length (past_len). The concat step takes one cache length for a
batch, so it is timed both fair ways: `concat padded`, the batch padded to the longest with a mask input (an
export-attn --kv-cache --mask input model, each row's padding masked out), one call that reads every padded
cache; and `concat per sequence`, one batch-1 call per sequence at its own length (each cold; a round's figure is
their sum, and the row its median over rounds), which reads only the valid caches but the weights once per call.

The memory (rss_steps > 0): each form in fresh processes that import only onnxruntime and numpy (and
StaticCache). RSS (/proc/self/statm) before and after rss_steps decoding steps from RSS_PAST cached tokens, the
cache growing a token each step (the static buffers touched whole before: a server's buffers are resident). And
what a step actually allocates, in a process of its own: glibc's mmap threshold fixed at 16 KiB before anything
is allocated and onnxruntime's arena off, so a buffer from 16 KiB a step asks for is mapped, and its pages are
counted as they fault in (getrusage's minor faults) over ALLOC_STEPS steps at RSS_PAST. Every step's outputs are
held to the end of the count: freed, their pages could serve the next step's buffers unfaulted (glibc reused
them, under load, and the count fell short of the outputs it had allocated).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from attn_onnx.errors import RuntimeFailure
from attn_onnx.exporter.export import export_onnx
from attn_onnx.exporter.kinds.mha_static import MIN_MAX_LEN
from attn_onnx.exporter.spec import ExportSpec
from attn_onnx.runtime_check.static_cache import StaticCache
from attn_onnx.timing.engine import cpu_model, round_order, session, timed

PAST_LENS = (128, 512, 2047)  # cache lengths: short, middling, and one short of a 2048-token context
BATCH_LENS = tuple(k * 1024 - 1 for k in range(1, 9))  # batch 8: 1023, 2047, ..., 8191, one per 1k up to 8k
STATIC = ("ort-gqa", "onnx-attention")  # the static cache's graph forms timed in place (mha-static's variants)
CONCAT, PADDED, PER_SEQUENCE = "concat", "concat padded", "concat per sequence"
STREAM_BYTES = 256 * 2**20  # the streaming-rate probe's buffer: well beyond any L3
EVICT_BYTES = 64 * 2**20  # read before each timed call: the cache is not left in L3 by the previous call
RSS_STEPS = 1000  # decoding steps the memory is watched over
RSS_PAST = 1024  # the cache's length when they start: a moderate context
RSS_WARM = 10  # steps before the first RSS reading (the session's first runs size its arena)
ALLOC_STEPS = 50  # steps the fresh allocations are counted over


def static_form(variant: str) -> str:
    return f"static {variant}"


@dataclass
class DecodeStep:
    form: str  # concat, static ort-gqa or static onnx-attention
    past_len: int  # tokens already in the cache
    step_ms: float  # median: one new token through the form's step
    vs_concat: float  # the concat step's step_ms / this one's (1 for concat)
    read_mib: float  # what the step must read: its valid cache (keys and values) and its initializers, once
    limit_ms: float  # read_mib at the run's streaming rate (stream_gib_s): the fastest the step could be
    of_limit: float  # limit_ms / step_ms, in percent
    allocated_mib: float  # what the step's outputs hold, new on every call (in place: `output` alone)
    max_abs: float  # this step's output against the concat step's, same cache and token (0 for concat)
    recompute_ms: float | None = None  # concat's row: median, the plain causal export on past_len + 1 tokens
    vs_recompute: float | None = None  # concat's row: recompute_ms / step_ms


@dataclass
class BatchStep:
    form: str  # concat padded, concat per sequence, static ort-gqa or static onnx-attention
    step_ms: float  # median: one new token for every sequence (per sequence: the sum of its calls' medians)
    read_mib: float  # what the form must read (see the module's docstring: padded reads the padding too)
    limit_ms: float
    of_limit: float
    allocated_mib: float  # what the outputs hold, new on every call (per sequence: all its calls')
    vs_padded: float  # concat padded's step_ms / this one's
    vs_per_sequence: float  # concat per sequence's step_ms / this one's
    max_abs: float  # the outputs against concat per sequence's


@dataclass
class DecodeMemory:
    form: str
    past_len: int  # the cache's length at the first of the steps
    steps: int  # decoding steps between the two readings, the cache growing a token each
    rss_before_mib: float
    rss_after_mib: float
    rss_growth_mib: float
    outputs_mib: float  # what the step's outputs hold, new on every call, at past_len (as allocated_mib)
    fresh_mib: float | None  # measured: the buffers from 16 KiB a step allocates (pages faulted in), at past_len;
    # None where the allocator is not glibc's


@dataclass
class DecodeBench:
    cpu: str
    heads: int
    embedding_dim: int
    threads: int
    rounds: int
    max_len: int  # the static cache's capacity, the same for every form and length
    stream_gib_s: float = 0.0  # the streaming rate: median over every round of every scenario
    steps: list[DecodeStep] = field(default_factory=list)  # batch 1, every form at every past length
    batch_lens: list[int] = field(default_factory=list)  # the batch scenario's lengths, one a sequence
    batch: list[BatchStep] = field(default_factory=list)
    memory: list[DecodeMemory] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def initializer_bytes(proto: onnx.ModelProto) -> int:
    """The bytes of a model's initializers, its subgraphs' included: the weights a step reads once."""

    def graph_bytes(graph: onnx.GraphProto) -> int:
        total = sum(numpy_helper.to_array(t).nbytes for t in graph.initializer)
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    total += graph_bytes(attribute.g)
                total += sum(graph_bytes(g) for g in attribute.graphs)
        return total

    return graph_bytes(proto.graph)


def cache_bytes(heads: int, d_k: int, lengths) -> int:
    """Keys and values of `lengths` tokens (one length per sequence), float32."""
    return 2 * heads * d_k * 4 * int(sum(lengths))


def default_max_len(past_lens, batch_lens) -> int:
    """The static cache's capacity: the longest length and its new token."""
    return max(MIN_MAX_LEN, max([*past_lens, *batch_lens]) + 1)


class _Clock:
    """The run's timing: each call cold (EVICT_BYTES read before it), interleaved rounds, and the streaming probe
    in every round, its rates gathered for the run's one rate."""

    def __init__(self, rounds: int, target_s: float):
        import torch

        self.rounds, self.target_s = rounds, target_s
        self.stream = torch.ones(STREAM_BYTES // 4, dtype=torch.float32)
        self.evict = np.ones(EVICT_BYTES // 4, np.float32)
        self.rates: list[float] = []

    def cold(self, call: Callable[[], object]) -> float:
        """Seconds of the median call, each after the eviction (engine.timed)."""
        return timed(call, self.target_s, before=self.evict.sum)

    def medians(self, measures: dict[str, Callable[[], float]]) -> dict[str, float]:
        """Each contender's median ms over the rounds: each round times every one (`measure()` gives its seconds),
        one further on each round (engine.round_order), then the streaming probe."""
        times: dict[str, list[float]] = {name: [] for name in measures}
        for number in range(self.rounds):
            for name in round_order(list(measures), number):
                times[name].append(measures[name]())
            self.rates.append(STREAM_BYTES / timed(self.stream.sum, self.target_s))
        return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def decode_bench(
    past_lens: tuple[int, ...],
    threads: int,
    heads: int = 8,
    embedding_dim: int = 512,
    rounds: int = 7,
    target_s: float = 0.05,
    batch_lens: tuple[int, ...] = BATCH_LENS,
    max_len: int | None = None,
    rss_steps: int = RSS_STEPS,
) -> DecodeBench:
    """Per cache length, batch 1: every form's step and the concat step's recompute, against each other and the
    streaming rate measured in the same rounds; then the batch scenario at `batch_lens` (none: skipped); then
    the memory over `rss_steps` steps (0: skipped). `max_len`: the static cache's capacity, by default the
    longest length + 1."""
    import torch

    max_len = max_len or default_max_len(past_lens, batch_lens)
    cached = ExportSpec(
        module="mha-cache", mask="causal", causal_align="bottom-right", heads=heads, embedding_dim=embedding_dim
    ).validate()
    module = cached.kind.build_module(cached, seed=0)
    plain = ExportSpec(mask="causal", heads=heads, embedding_dim=embedding_dim).validate()
    step_proto = export_onnx(cached, module)[0]
    step = session(step_proto, threads)
    whole = session(export_onnx(plain, module)[0], threads)
    # the static forms on the same module, so every form's output is comparable
    statics = {static_form(v): export_onnx(static_spec(heads, embedding_dim, max_len, v), module)[0] for v in STATIC}
    static_sessions = {form: session(proto, threads) for form, proto in statics.items()}
    weights = {CONCAT: initializer_bytes(step_proto)} | {form: initializer_bytes(p) for form, p in statics.items()}
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # the rate at the thread count the steps run with
    rng = np.random.default_rng(0)
    bench = DecodeBench(cpu_model(), heads, embedding_dim, threads, rounds, max_len, batch_lens=list(batch_lens))
    clock = _Clock(rounds, target_s)
    try:
        caches = {form: _filled(StaticCache(s, 1), rng) for form, s in static_sessions.items()}
        for past in past_lens:
            bench.steps += _one_sequence(past, cached, step, whole, caches, weights, clock, rng)
        del caches
        if batch_lens:
            bench.batch = _batch(list(batch_lens), cached, module, step, static_sessions, weights, clock, threads, rng)
    finally:
        torch.set_num_threads(saved_threads)
    # One rate for the run, the one the header prints: every row's limit is its bytes at that rate (a row's own few
    # rounds of the probe swing with the machine's other tenants, and the rows would not agree with the header)
    rate = statistics.median(clock.rates)
    bench.stream_gib_s = rate / 2**30
    rows: list[DecodeStep | BatchStep] = [*bench.steps, *bench.batch]
    for row in rows:
        row.limit_ms = row.read_mib * 2**20 / rate * 1e3
        row.of_limit = 100 * row.limit_ms / row.step_ms
    if rss_steps:
        bench.memory = decode_memory(step_proto, module, heads, embedding_dim, threads, rss_steps)
    return bench


def static_spec(heads: int, embedding_dim: int, max_len: int, variant: str) -> ExportSpec:
    """The static cache's step (export-attn --kv-cache --max-len max_len --attention-impl variant)."""
    return ExportSpec(
        module="mha-static",
        mask="causal",
        causal_align="bottom-right",
        heads=heads,
        embedding_dim=embedding_dim,
        max_len=max_len,
        opset=24,
        variant=variant,
    ).validate()


def _filled(cache: StaticCache, rng) -> StaticCache:
    """The cache with its buffers noise throughout: beyond each sequence's length, what a step must not read."""
    for buffer in cache.buffers.values():
        buffer[:] = rng.standard_normal(buffer.shape, dtype=np.float32)
    return cache


def _one_sequence(past, cached, step, whole, caches, weights, clock: _Clock, rng) -> list[DecodeStep]:
    """Batch 1 at `past`: concat (and its recompute) and each static form, on the same cache and token."""
    heads, d_k = cached.heads, cached.d_k
    x = rng.standard_normal((1, past + 1, cached.embedding_dim), dtype=np.float32)
    new = x[:, -1:]
    kv = rng.standard_normal((1, heads, past, d_k), dtype=np.float32)
    step_feeds = {"query": new, "key": new, "value": new, "past_key": kv, "past_value": kv}
    calls: dict[str, Callable[[], object]] = {
        CONCAT: partial(step.run, None, step_feeds),
        "recompute": partial(whole.run, None, {"query": x, "key": x, "value": x}),
    }
    for form, cache in caches.items():
        for buffer in cache.buffers.values():
            buffer[:, :, :past] = kv  # the concat step's valid cache; beyond it, noise
        calls[form] = partial(cache.step_at, [past], new)  # the same positions every call
    times = clock.medians({name: partial(clock.cold, call) for name, call in calls.items()})
    outputs = step.run(None, step_feeds)
    read = cache_bytes(heads, d_k, [past])
    rows = [
        DecodeStep(
            CONCAT,
            past,
            times[CONCAT],
            1.0,
            (read + weights[CONCAT]) / 2**20,
            0.0,
            0.0,
            sum(a.nbytes for a in outputs) / 2**20,
            0.0,
            times["recompute"],
            times["recompute"] / times[CONCAT],
        )
    ]
    for form in caches:
        output = calls[form]()
        assert isinstance(output, np.ndarray)
        rows.append(
            DecodeStep(
                form,
                past,
                times[form],
                times[CONCAT] / times[form],
                (read + weights[form]) / 2**20,
                0.0,
                0.0,
                output.nbytes / 2**20,  # the presents are the bound buffers: only the output is new
                float(np.abs(output - outputs[0]).max()),
            )
        )
    return rows


def _batch(lengths, cached, module, step, static_sessions, weights, clock: _Clock, threads, rng) -> list[BatchStep]:
    """Every sequence one step at its own length: the static forms in one call; concat padded to the longest with a
    mask input, one call; and concat per sequence, one batch-1 call each, at its own length."""
    from attn_onnx.vocab import MASK_DTYPES

    heads, embedding_dim, d_k = cached.heads, cached.embedding_dim, cached.d_k
    batch, longest = len(lengths), max(lengths)
    masked_spec = ExportSpec(module="mha-cache", mask="input", heads=heads, embedding_dim=embedding_dim).validate()
    masked_proto = export_onnx(masked_spec, module)[0]
    masked = session(masked_proto, threads)
    tokens = rng.standard_normal((batch, 1, embedding_dim), dtype=np.float32)
    padded = rng.standard_normal((batch, heads, longest, d_k), dtype=np.float32)  # beyond each length: padding
    visible = np.arange(longest + 1)[None, :] < np.array(lengths)[:, None]
    visible[:, longest] = True  # the new token, appended after the padding
    padded_feeds = {
        "query": tokens,
        "key": tokens,
        "value": tokens,
        "past_key": padded,
        "past_value": padded,
        "mask": visible[:, None, :].astype(MASK_DTYPES[masked_spec.mask_dtype]),  # (batch, 1, longest + 1)
    }
    one = []  # per sequence: its own valid cache, batch 1
    for b, length in enumerate(lengths):
        kv = np.ascontiguousarray(padded[b : b + 1, :, :length])
        token = tokens[b : b + 1]
        one.append({"query": token, "key": token, "value": token, "past_key": kv, "past_value": kv})
    calls: dict[str, Callable[[], object]] = {}
    for form, sess in static_sessions.items():
        cache = _filled(StaticCache(sess, batch), rng)
        for buffer in cache.buffers.values():
            buffer[:, :, :longest] = padded
        calls[form] = partial(cache.step_at, lengths, tokens)
    measures: dict[str, Callable[[], float]] = {
        PADDED: partial(clock.cold, partial(masked.run, None, padded_feeds)),
        PER_SEQUENCE: lambda: sum(clock.cold(partial(step.run, None, feeds)) for feeds in one),
    }
    measures.update((form, partial(clock.cold, call)) for form, call in calls.items())
    times = clock.medians(measures)
    per_sequence = [step.run(None, feeds) for feeds in one]
    reference = np.concatenate([outputs[0] for outputs in per_sequence])
    padded_outputs = masked.run(None, padded_feeds)
    valid = cache_bytes(heads, d_k, lengths)
    padded_read = cache_bytes(heads, d_k, [longest] * batch) + padded_feeds["mask"].nbytes
    rows = {  # form: what it must read, what its outputs hold, its output
        PADDED: (
            padded_read + initializer_bytes(masked_proto),
            sum(a.nbytes for a in padded_outputs),
            padded_outputs[0],
        ),
        PER_SEQUENCE: (
            valid + batch * weights[CONCAT],  # the weights read by each call
            sum(a.nbytes for outputs in per_sequence for a in outputs),
            reference,
        ),
    }
    for form, call in calls.items():
        output = call()
        assert isinstance(output, np.ndarray)
        rows[form] = (valid + weights[form], output.nbytes, output)
    return [
        BatchStep(
            form,
            times[form],
            read / 2**20,
            0.0,
            0.0,
            allocated / 2**20,
            times[PADDED] / times[form],
            times[PER_SEQUENCE] / times[form],
            float(np.abs(output - reference).max()),
        )
        for form, (read, allocated, output) in rows.items()
    ]


# Runs in the child, one form, one measure. `rss`: RSS before and after `steps` decoding steps from `past` cached
# tokens, the cache growing a token each step, as a server runs it (onnxruntime's arena on). `fresh`: the buffers a
# step allocates, counted as their pages fault in over `steps` steps at `past`: glibc's mmap threshold is fixed at
# 16 KiB before anything is allocated (so no large request is served from a free chunk of the heap: each is mapped
# anew, and unmapped when freed), and onnxruntime's arena is off (so it asks glibc for every buffer).
_CHILD = r"""
import ctypes, json, resource, sys

mode, path, past, steps, warm, threads = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
fixed = 0
if mode == "fresh":
    try:
        fixed = ctypes.CDLL(None).mallopt(-3, 16 * 1024)  # M_MMAP_THRESHOLD; 0 where it is not glibc's
    except (OSError, AttributeError):
        pass
    if not fixed:
        print(json.dumps({"fresh": None}))
        sys.exit(0)

import numpy as np, onnxruntime as ort

PAGE = resource.getpagesize()


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


options = ort.SessionOptions()
options.intra_op_num_threads = threads
options.inter_op_num_threads = 1
options.enable_cpu_mem_arena = mode == "rss"
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
grow = mode == "rss"
inputs = {i.name: i for i in session.get_inputs()}
rng = np.random.default_rng(0)
token = rng.standard_normal((1, 1, inputs["query"].shape[-1]), dtype=np.float32)
heads, d_k = inputs["past_key"].shape[1], inputs["past_key"].shape[3]
if "past_len" in inputs:
    from attn_onnx.runtime_check.static_cache import StaticCache

    cache = StaticCache(session, 1)
    for buffer in cache.buffers.values():
        buffer[:] = rng.standard_normal(buffer.shape, dtype=np.float32)  # resident throughout, as a server's
    cache.lengths[:] = past

    def step():
        if not grow:
            cache.lengths[:] = past
        return cache.step(token)

else:
    state = {name: rng.standard_normal((1, heads, past, d_k), dtype=np.float32) for name in ("past_key", "past_value")}

    def step():
        outputs = session.run(None, {"query": token, "key": token, "value": token, **state})
        if grow:
            state["past_key"], state["past_value"] = outputs[1], outputs[2]
        return outputs


for _ in range(warm):
    step()
kept = []  # counting: every step's outputs held to the end, so a freed one's pages never serve the next step
before, start = rss(), faults()
for _ in range(steps):
    outputs = step()
    if mode != "rss":
        kept.append(outputs)
if mode == "rss":
    print(json.dumps({"rss_before": before, "rss_after": rss()}))
else:
    print(json.dumps({"fresh": (faults() - start) * PAGE / steps}))
"""


def decode_memory(
    step_proto: onnx.ModelProto, module, heads: int, embedding_dim: int, threads: int, steps: int
) -> list[DecodeMemory]:
    """Each form in fresh processes: RSS before and after `steps` decoding steps from RSS_PAST, and what a step
    allocates (see the module's docstring). The static forms' capacity: RSS_PAST and every step."""
    d_k = embedding_dim // heads
    protos = {CONCAT: step_proto} | {
        static_form(v): export_onnx(static_spec(heads, embedding_dim, RSS_PAST + RSS_WARM + steps, v), module)[0]
        for v in STATIC
    }
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "step.onnx"
        for form, proto in protos.items():
            path.write_bytes(proto.SerializeToString())
            rss = _child(form, "rss", path, steps, threads)
            fresh = _child(form, "fresh", path, ALLOC_STEPS, threads)["fresh"]
            outputs = embedding_dim * 4 + (cache_bytes(heads, d_k, [RSS_PAST + 1]) if form == CONCAT else 0)
            rows.append(
                DecodeMemory(
                    form,
                    RSS_PAST,
                    steps,
                    rss["rss_before"] / 2**20,
                    rss["rss_after"] / 2**20,
                    (rss["rss_after"] - rss["rss_before"]) / 2**20,
                    outputs / 2**20,
                    None if fresh is None else fresh / 2**20,
                )
            )
    return rows


def _child(form: str, mode: str, path: Path, steps: int, threads: int) -> dict:
    args = [mode, str(path), str(RSS_PAST), str(steps), str(RSS_WARM), str(threads)]
    child = subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True)
    if child.returncode != 0:
        raise RuntimeFailure(f"the memory of {form} could not be measured: {child.stderr.strip()[-500:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])
