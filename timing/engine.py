"""The timing engine: every contender timed in interleaved rounds on the same inputs, each call after a pause,
the median over rounds; onnxruntime sessions made alike; the inputs a shape is timed on; the sgemm limit. One
engine for bench-attn (bench/), its --runtimes and --decode, and export-attn --attention-impl auto (auto.py).

A round times every contender once (each for about `target_s`, after a pause that lets the previous
contender's threads stop spinning); the figure is the median over rounds, so a noisy neighbour slows all
contenders of a round alike instead of one of them. Each round starts one contender further on (round_order),
so none is always first after the sgemm or always right after PyTorch.

How sure a ratio is: on this kind of shared 2-core machine, the same model in two sessions timed side by side
differed by up to 10-25% at one shape within one run, and a ratio moves by about as much between runs. Part
of it stays with the session: of six sessions of one model timed in 16 rotated rounds, one took 7.62 and
7.52 ms (median of the even rounds, of the odd rounds) and another 8.34 and 8.87. So each onnxruntime
contender runs in SESSIONS sessions, taking turns by round. Three, not two: with 7 rounds the sessions take 3, 2
and 2 of them, so one slow session holds at most 3 of the 7 figures and cannot move the median (with two, the
slow one held 4 and was the median: export-attn --attention-impl auto once timed tiled at 14.1 ms at (1,1024)
where bench-attn's runs gave 9.4 and 10.8).
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Mapping

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from attn_onnx.exporter.spec import ExportSpec
from attn_onnx.runtime_check.cases import make_mask

SGEMM_N = 2048
# Both libraries keep their pool threads spinning after a call: onnxruntime's intra-op threads for tens of
# milliseconds (PyTorch SDPA at (4, 512) timed right after an onnxruntime run took 2x its time alone, and
# still 1.6x after a 30 ms pause; after 50 ms it ran as alone), PyTorch's OpenMP threads likewise. On two
# cores the next contender would share them with that spinning. So each contender starts after a pause.
SETTLE_S = 0.1
SESSIONS = 3  # per onnxruntime contender, used in turn round by round: one slow session cannot be the median


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def feeds_at(spec: ExportSpec, batch: int, length: int, pattern: str = "causal+padding") -> dict[str, np.ndarray]:
    """The inputs the benches time a model of `spec` on: self-attention lengths, and for a mask input a mask of
    pattern `pattern` (bench-attn's causal+padding unless asked otherwise). Drawn from a seed of the shape alone, so
    that every contender, and bench-attn and auto, time the same inputs at a shape: a padding mask's lengths
    are random at batch > 1, and tiled skips the tiles they hide (auto once drew them anew for each variant,
    and timed tiled on other masks than the rest)."""
    rng = np.random.default_rng((batch, length))
    mask_array = make_mask(pattern, batch, length, length, rng) if spec.mask == "input" else None
    return spec.kind.inputs(spec, {"batch": batch, "q_len": length, "kv_len": length}, rng, mask_array)


def round_order(names: list[str], round_number: int) -> list[str]:
    """The contenders in the order round `round_number` times them: rotated by one each round, so over
    len(names) rounds each contender takes every place once."""
    start = round_number % len(names)
    return names[start:] + names[:start]


def session(proto: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def sessions(proto: onnx.ModelProto, threads: int) -> list[ort.InferenceSession]:
    """SESSIONS sessions of one model, taken in turn round by round (see the module's docstring)."""
    return [session(proto, threads) for _ in range(SESSIONS)]


def interleaved(
    calls: Mapping[str, Callable[[int], object]],
    rounds: int,
    target_s: float,
    before_round: Callable[[int], None] = lambda number: None,
    on_round: Callable[[int], None] = lambda number: None,
    measure: Callable[[Callable[[], object], float], float] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each contender in each round: every round times every contender once, in
    round_order, each after a pause (`timed`, or `measure` for contenders that time themselves in their own
    process). `call(number)` gets the round's number, so a contender can take its sessions in turn. The one timing
    engine of bench-attn, its --runtimes, and export-attn --attention-impl auto."""
    measure = measure or timed
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for number in range(rounds):
        before_round(number)
        for name in round_order(list(calls), number):
            samples[name].append(measure(_in_round(calls[name], number), target_s))
        on_round(number)
    return samples


def _in_round(call: Callable[[int], object], number: int) -> Callable[[], object]:
    """`call` as a contender of round `number` (what interleaved times)."""
    return lambda: call(number)


def sgemm_model() -> onnx.ModelProto:
    """One MatMul of two 2048x2048 float32 inputs: the ceiling any attention graph on this CPU runs under."""
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [SGEMM_N, SGEMM_N])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [SGEMM_N, SGEMM_N])
    c = helper.make_tensor_value_info("c", TensorProto.FLOAT, [SGEMM_N, SGEMM_N])
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "sgemm", [a, b], [c])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def timed(call, target_s: float, settle_s: float = SETTLE_S, before: Callable[[], object] | None = None) -> float:
    """Seconds of the median call, of as many calls as fill about `target_s` (at least one), each timed alone,
    after `settle_s` of quiet and one untimed call; `before()`, where given, runs untimed before each call (to
    evict the caches, say).

    The median call, not the window's mean: on a shared machine a neighbour's burst lands on a few calls of a
    window, and the mean carried it. At (1,16), where a call is 0.13 ms, four bench-attn runs (9 rounds each)
    gave onnx-attention 0.136-0.205 ms with the window's mean and 0.125-0.130 ms with the median call; over the
    six variants, the spread between runs went from 5-51% to 4-31%."""
    time.sleep(settle_s)
    if before is not None:
        before()
    start = time.perf_counter()
    call()
    once = time.perf_counter() - start
    n = max(1, min(1000, int(target_s / max(once, 1e-6))))
    times = []
    for _ in range(n):
        if before is not None:
            before()
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
