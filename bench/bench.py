"""bench-attn variants: every contender timed by the timing engine (attn_onnx.timing.engine: interleaved
rounds on the same inputs, medians), beside the sgemm limit measured in the same run. Results are data
(`Bench`); the CLI prints and plots them.

Contenders, per shape (batch, len) at one width, heads and thread count:
- each export variant in onnxruntime (`ort:<variant>`), mask input with a causal+padding mask; at another
  dtype as `ort:<variant>@float16`, with int8 projections as `ort:<variant>@int8` (their max_abs against
  the float64 module of the float32 weights is what the precision costs);
- PyTorch eager of the seed module (`torch-eager`), and PyTorch SDPA with the same weights (`torch-sdpa`).
Beside the ratio of medians each contender counts the rounds it was faster than SDPA in that same round
(`faster_rounds`): 7 of 7 is a clear win, 4 of 7 a tie.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from functools import partial

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch.nn import functional as F

from attn_onnx import __version__
from attn_onnx.dtypes import numpy_dtype
from attn_onnx.exporter.export import export_onnx
from attn_onnx.exporter.spec import ExportSpec
from attn_onnx.exporter.variants import VARIANTS
from attn_onnx.timing.engine import (
    SESSIONS,
    SGEMM_N,
    cpu_model,
    feeds_at,
    interleaved,
    session,
    sessions,
    sgemm_model,
    timed,
)

DEFAULT_SHAPES = ((1, 16), (8, 128), (1, 512), (4, 512), (1, 2048))


@dataclass
class Timing:
    contender: str
    batch: int
    length: int
    threads: int
    median_ms: float
    rounds_ms: list[float]
    gflops: float  # achieved, counting the projections and both attention matmuls
    limit_fraction: float  # of the sgemm limit measured in the same run
    max_abs: float | None  # against the float64 seed module on the bench inputs; None for baselines
    vs_sdpa: float = 0.0  # how many times faster than torch-sdpa (> 1: faster)
    faster_rounds: int | None = None  # rounds in which it was faster than torch-sdpa timed in the same round
    vs_export: float = 0.0  # how many times faster than ort:torch-export


@dataclass
class Bench:
    cpu: str
    heads: int
    embedding_dim: int
    threads: list[int]
    sgemm_gflops: dict[int, float]  # threads -> onnxruntime MatMul at 2048^3: the limit
    torch_sgemm_gflops: dict[int, float] = field(default_factory=dict)  # torch.matmul (MKL) at 2048^3, for context
    timings: list[Timing] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def flops(batch: int, length: int, width: int) -> float:
    """4 projections (2·B·L·E² each) and QKᵀ, P·V (2·B·L²·E each) for self-attention."""
    return 8 * batch * length * width * width + 4 * batch * length * length * width


def sdpa(module, query, key, value, mask):
    """The same block through F.scaled_dot_product_attention (boolean mask: True = attend)."""
    b, h, d_k = query.size(0), module.head, module.d_k
    q, k, v = (
        F.linear(x, lin.weight, lin.bias).view(b, -1, h, d_k).transpose(1, 2)
        for lin, x in zip(module.linears, (query, key, value))
    )
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.unsqueeze(1))
    return module.linears[3](x.transpose(1, 2).reshape(b, -1, h * d_k))


def precisions(dtypes: tuple[str, ...], quantize: bool) -> list[tuple[str, str]]:
    """The (dtype, quantize) forms each variant is timed in: float32 first."""
    return [("float32", "")] + [(d, "") for d in dtypes if d != "float32"] + ([("float32", "int8")] if quantize else [])


@dataclass(frozen=True)
class BenchSettings:
    """What `bench-attn variants` times."""

    variants: tuple[str, ...] = tuple(VARIANTS)  # export variants, each timed in onnxruntime as ort:<variant>
    shapes: tuple[tuple[int, int], ...] = DEFAULT_SHAPES  # (batch, length) of self-attention
    threads: tuple[int, ...] = (1,)  # onnxruntime's and torch's intra-op threads, one pass each
    heads: int = 8
    embedding_dim: int = 512
    rounds: int = 7  # interleaved rounds; each figure is a median over them
    self_attention: bool = False  # query = key = value; each variant also as a --self-attention export, fed x
    dtypes: tuple[str, ...] = ("float32",)  # each variant also exported at these (ort:<variant>@float16)
    quantize: bool = False  # each variant also with int8 projections (ort:<variant>@int8)
    target_s: float = 0.05  # each timed figure: the median call of about this many seconds of calls


@dataclass(frozen=True)
class _Contender:
    """One onnxruntime contender: its model and the dtype its float inputs are fed at."""

    proto: onnx.ModelProto
    dtype: np.dtype
    self_attention: bool  # a --self-attention export, fed x (and the mask) alone


def run_bench(settings: BenchSettings, on_line=lambda text: None) -> Bench:
    """Time every contender at every (shape, threads); `on_line` gets a progress line per shape."""
    spec = ExportSpec(heads=settings.heads, embedding_dim=settings.embedding_dim).validate()
    module = spec.kind.build_module(spec, seed=0)
    contenders = _export_contenders(settings, module)
    golden = _float64_copy(module)
    bench = Bench(
        cpu=cpu_model(),
        heads=settings.heads,
        embedding_dim=settings.embedding_dim,
        threads=list(settings.threads),
        sgemm_gflops={},
        versions={
            "attn_onnx": __version__,
            "onnxruntime": ort.__version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
        },
    )
    for threads in settings.threads:
        torch.set_num_threads(threads)
        by_name = {name: sessions(c.proto, threads) for name, c in contenders.items()}
        limits = _MatmulLimits(threads, settings.target_s)
        for batch, length in settings.shapes:
            feeds = feeds_at(spec, batch, length)
            if settings.self_attention:
                feeds["key"] = feeds["value"] = feeds["query"]
            bench.timings += _time_shape(
                settings, module, golden, contenders, by_name, feeds, limits, batch, length, threads
            )
            on_line(f"({batch},{length}) at {threads} thread(s): timed")
        bench.sgemm_gflops[threads], bench.torch_sgemm_gflops[threads] = limits.gflops(), limits.torch_gflops()
        for row in bench.timings:
            if row.threads == threads:
                row.limit_fraction = row.gflops / bench.sgemm_gflops[threads]
    return bench


def _export_contenders(settings: BenchSettings, module) -> dict[str, _Contender]:
    """Each variant at each precision it takes (`torch-export`, `tiled@float16`, `ort-mha@int8`), and with
    `self_attention` its --self-attention export beside it (`torch-export/self`), all with `module`'s weights."""
    contenders = {}
    for name in settings.variants:
        variant = VARIANTS[name]
        for dtype, quantized in precisions(settings.dtypes, settings.quantize):
            if dtype not in variant.dtypes:
                continue
            spec = ExportSpec(
                heads=settings.heads,
                embedding_dim=settings.embedding_dim,
                variant=name,
                dtype=dtype,
                quantize=quantized,
                opset=max(18, variant.min_opset),
            ).validate()
            key = name + ("" if spec.precision == "float32" else f"@{spec.precision}")
            contenders[key] = _Contender(export_onnx(spec, module)[0], numpy_dtype(dtype), False)
            if settings.self_attention:
                contenders[key + "/self"] = _Contender(
                    export_onnx(spec.replace(module="mha-self"), module)[0], numpy_dtype(dtype), True
                )
    return contenders


def _float64_copy(module):
    """The seed module in float64, with its weights: every contender's max_abs is against it."""
    double = type(module)(module.head, module.head * module.d_k, dropout=0.0).double().eval()
    double.load_state_dict({k: v.double() for k, v in module.state_dict().items()})
    return double


class _MatmulLimits:
    """The sgemm limit (onnxruntime MatMul at SGEMM_N^3) and torch.matmul at the same size, timed before every
    round of every shape at one thread count: the limit is a median over the whole run, beside the contenders."""

    def __init__(self, threads: int, target_s: float):
        rng = np.random.default_rng(0)
        self.a, self.b = (rng.standard_normal((SGEMM_N, SGEMM_N), dtype=np.float32) for _ in range(2))
        self.ta, self.tb = torch.from_numpy(self.a), torch.from_numpy(self.b)
        self.session, self.target_s = session(sgemm_model(), threads), target_s
        self.ort_s: list[float] = []
        self.torch_s: list[float] = []

    def time_round(self, number: int) -> None:
        self.ort_s.append(timed(self._ort_matmul, self.target_s))
        self.torch_s.append(timed(self._torch_matmul, self.target_s))

    def _ort_matmul(self):
        return self.session.run(None, {"a": self.a, "b": self.b})

    def _torch_matmul(self):
        return torch.matmul(self.ta, self.tb)

    def gflops(self) -> float:
        return 2 * SGEMM_N**3 / statistics.median(self.ort_s) / 1e9

    def torch_gflops(self) -> float:
        return 2 * SGEMM_N**3 / statistics.median(self.torch_s) / 1e9


def _run_session(sessions_: list, feeds: dict, number: int):
    """An onnxruntime contender's call in round `number`: its sessions take turns (timing/engine.py)."""
    return sessions_[number % SESSIONS].run(None, feeds)


def _run_torch(function, args: tuple, number: int):
    """A PyTorch contender's call: the same in every round."""
    return function(*args)


def _time_shape(
    settings: BenchSettings,
    module,
    golden,
    contenders: dict[str, _Contender],
    by_name: dict,
    feeds: dict,
    limits: _MatmulLimits,
    batch: int,
    length: int,
    threads: int,
) -> list[Timing]:
    """Every contender at one shape and thread count, in interleaved rounds (the matmul limits timed before
    each); each onnxruntime contender's max_abs against the float64 golden on the same inputs."""
    tensors = tuple(torch.from_numpy(feeds[n]) for n in ("query", "key", "value", "mask"))
    fed = {
        name: _cast({"x": feeds["query"], "mask": feeds["mask"]} if c.self_attention else feeds, c.dtype)
        for name, c in contenders.items()
    }
    calls = {f"ort:{name}": partial(_run_session, by_name[name], fed[name]) for name in contenders}
    calls["torch-eager"] = partial(_run_torch, module, tensors)
    calls["torch-sdpa"] = partial(_run_torch, partial(sdpa, module), tensors)
    with torch.no_grad():
        expected = golden(*(t.double() for t in tensors[:3]), tensors[3]).numpy()
        errors = {
            f"ort:{name}": float(np.abs(by_name[name][0].run(None, fed[name])[0].astype(np.float64) - expected).max())
            for name in contenders
        }
        samples = interleaved(calls, settings.rounds, settings.target_s, before_round=limits.time_round)
    work = flops(batch, length, settings.embedding_dim)
    rows = [
        Timing(
            name,
            batch,
            length,
            threads,
            statistics.median(times) * 1e3,
            [t * 1e3 for t in times],
            work / statistics.median(times) / 1e9,
            0.0,
            errors.get(name),
        )
        for name, times in samples.items()
    ]
    _compare(rows)
    return rows


def _compare(rows: list[Timing]) -> None:
    """Each row's ratios to torch-sdpa and ort:torch-export (where it was timed), and the rounds it beat SDPA
    timed in the same round."""
    by_name = {r.contender: r for r in rows}
    sdpa_row, export_row = by_name["torch-sdpa"], by_name.get("ort:torch-export")
    for row in rows:
        row.vs_sdpa = sdpa_row.median_ms / row.median_ms
        if row is not sdpa_row:
            row.faster_rounds = sum(t < s for t, s in zip(row.rounds_ms, sdpa_row.rounds_ms))
        if export_row is not None:
            row.vs_export = export_row.median_ms / row.median_ms


def _cast(feeds: dict[str, np.ndarray], dtype: np.dtype) -> dict[str, np.ndarray]:
    """The float inputs (not the mask) at the model's dtype."""
    return {k: v if k == "mask" or v.dtype == dtype else v.astype(dtype) for k, v in feeds.items()}


def fastest(bench: Bench, batch: int, length: int, threads: int, tolerance: float = 1e-4) -> Timing | None:
    """The fastest onnxruntime contender whose answer is within `tolerance` of the float64 seed."""
    rows = [
        t
        for t in bench.timings
        if (t.batch, t.length, t.threads) == (batch, length, threads)
        and t.max_abs is not None
        and math.isfinite(t.max_abs)
        and t.max_abs <= tolerance
    ]
    return min(rows, key=lambda t: t.median_ms, default=None)
