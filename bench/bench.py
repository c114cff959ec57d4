"""bench-attn's measurement: every contender timed by the timing engine (attn_onnx.timing.engine: interleaved
rounds on the same inputs, medians), beside the sgemm limit measured in the same run. Results are data
(`Bench`); the CLI prints and plots them.

Contenders, per shape (batch, len) at one width, heads and thread count:
- each export variant in onnxruntime (`ort:<variant>`), mask input with a causal+padding mask; at another
  --dtype as `ort:<variant>@float16`, with --quantize int8 as `ort:<variant>@int8` (their max_abs against
  the float64 module of the float32 weights is what the precision costs);
- PyTorch eager of the seed module (`torch-eager`), and PyTorch SDPA with the same weights (`torch-sdpa`).
Beside the ratio of medians each contender counts the rounds it was faster than SDPA in that same round
(`faster_rounds`): 7 of 7 is a clear win, 4 of 7 a tie.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field

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
from attn_onnx.timing.engine import (SESSIONS, SGEMM_N, cpu_model, feeds_at, interleaved, session, sessions,
                                     sgemm_model, timed)

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
    q, k, v = (F.linear(x, lin.weight, lin.bias).view(b, -1, h, d_k).transpose(1, 2)
               for lin, x in zip(module.linears, (query, key, value)))
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.unsqueeze(1))
    return module.linears[3](x.transpose(1, 2).reshape(b, -1, h * d_k))


def precisions(dtypes: list[str], quantize: bool) -> list[tuple[str, str]]:
    """The (dtype, quantize) forms each variant is timed in: float32 first."""
    return [("float32", "")] + [(d, "") for d in dtypes if d != "float32"] + ([("float32", "int8")] if quantize else [])


def run_bench(variants: list[str], shapes: list[tuple[int, int]], threads: list[int], heads: int = 8,
              embedding_dim: int = 512, rounds: int = 7, target_s: float = 0.05,
              on_line=lambda text: None, self_attention: bool = False, dtypes: list[str] = ("float32",),
              quantize: bool = False) -> Bench:
    """Time every contender at every (shape, threads); `on_line` gets a progress line per shape.

    With `self_attention`, query, key and value are one tensor x, and each variant is also timed as a
    --self-attention export fed x alone (`ort:<variant>/self`). `dtypes` and `quantize` add each variant at
    that precision (`ort:<variant>@float16`, `ort:<variant>@int8`)."""
    spec0 = ExportSpec(heads=heads, embedding_dim=embedding_dim).validate()
    module = spec0.kind.build_module(spec0, seed=0)
    protos, feed_dtypes = {}, {}
    for name in variants:
        variant = VARIANTS[name]
        for dtype, quantized in precisions(list(dtypes), quantize):
            if dtype not in variant.dtypes:
                continue
            spec = ExportSpec(heads=heads, embedding_dim=embedding_dim, variant=name, dtype=dtype, quantize=quantized,
                              opset=max(18, variant.min_opset)).validate()
            key = name + ("" if spec.precision == "float32" else f"@{spec.precision}")
            protos[key], _ = export_onnx(spec, module)
            if self_attention:
                protos[key + "/self"], _ = export_onnx(spec.replace(module="mha-self"), module)
            feed_dtypes[key] = feed_dtypes[key + "/self"] = numpy_dtype(dtype)
    double = type(module)(heads, embedding_dim, dropout=0.0).double().eval()
    double.load_state_dict({k: v.double() for k, v in module.state_dict().items()})
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((SGEMM_N, SGEMM_N), dtype=np.float32) for _ in range(2))
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    bench = Bench(cpu=cpu_model(), heads=heads, embedding_dim=embedding_dim, threads=list(threads),
                  sgemm_gflops={}, versions={"attn_onnx": __version__, "onnxruntime": ort.__version__,
                                             "torch": torch.__version__, "onnx": onnx.__version__})
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        by_variant = {name: sessions(p, n_threads) for name, p in protos.items()}
        sgemm = session(sgemm_model(), n_threads)
        limit_rounds, torch_rounds = [], []
        for batch, length in shapes:
            feeds = feeds_at(spec0, batch, length)
            if self_attention:
                feeds["key"] = feeds["value"] = feeds["query"]
            tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
            given = {name: _cast({"x": feeds["query"], "mask": feeds["mask"]} if name.endswith("/self") else feeds,
                                 feed_dtypes[name]) for name in by_variant}
            with torch.no_grad():
                golden = double(*(tensors[n].double() for n in ("query", "key", "value")), tensors["mask"]).numpy()
            calls = {f"ort:{name}": (lambda number, s=s, f=given[name]: s[number % SESSIONS].run(None, f))
                     for name, s in by_variant.items()}
            q, k, v, m = (tensors[n] for n in ("query", "key", "value", "mask"))
            calls["torch-eager"] = lambda number, q=q, k=k, v=v, m=m: module(q, k, v, m)
            calls["torch-sdpa"] = lambda number, q=q, k=k, v=v, m=m: sdpa(module, q, k, v, m)
            errors = {f"ort:{name}": float(np.abs(s.run(None, given[name])[0].astype(np.float64) - golden).max())
                      for name, (s, *_) in by_variant.items()}

            def limits(number, sgemm=sgemm):  # the sgemm limit and torch.matmul, timed in every round too
                limit_rounds.append(timed(lambda: sgemm.run(None, {"a": a, "b": b}), target_s))
                torch_rounds.append(timed(lambda: torch.matmul(ta, tb), target_s))

            with torch.no_grad():
                samples = interleaved(calls, rounds, target_s, before_round=limits)
            work = flops(batch, length, embedding_dim)
            rows = []
            for name, times in samples.items():
                median = statistics.median(times)
                rows.append(Timing(name, batch, length, n_threads, median * 1e3, [t * 1e3 for t in times],
                                   work / median / 1e9, 0.0, errors.get(name)))
            by_name = {r.contender: r for r in rows}
            sdpa_rounds = by_name["torch-sdpa"].rounds_ms
            for row in rows:
                row.vs_sdpa = by_name["torch-sdpa"].median_ms / row.median_ms
                if row.contender != "torch-sdpa":
                    row.faster_rounds = sum(t < s for t, s in zip(row.rounds_ms, sdpa_rounds))
                if "ort:torch-export" in by_name:
                    row.vs_export = by_name["ort:torch-export"].median_ms / row.median_ms
            bench.timings.extend(rows)
            on_line(f"({batch},{length}) at {n_threads} thread(s): timed")
        limit = 2 * SGEMM_N ** 3 / statistics.median(limit_rounds) / 1e9  # over every round of every shape
        bench.sgemm_gflops[n_threads] = limit
        bench.torch_sgemm_gflops[n_threads] = 2 * SGEMM_N ** 3 / statistics.median(torch_rounds) / 1e9
        for row in bench.timings:
            if row.threads == n_threads:
                row.limit_fraction = row.gflops / limit
    return bench


def _cast(feeds: dict[str, np.ndarray], dtype: np.dtype) -> dict[str, np.ndarray]:
    """The float inputs (not the mask) at the model's dtype."""
    return {k: v if k == "mask" or v.dtype == dtype else v.astype(dtype) for k, v in feeds.items()}


def fastest(bench: Bench, batch: int, length: int, threads: int, tolerance: float = 1e-4) -> Timing | None:
    """The fastest onnxruntime contender whose answer is within `tolerance` of the float64 seed."""
    rows = [t for t in bench.timings if (t.batch, t.length, t.threads) == (batch, length, threads)
            and t.max_abs is not None and math.isfinite(t.max_abs) and t.max_abs <= tolerance]
    return min(rows, key=lambda t: t.median_ms, default=None)
