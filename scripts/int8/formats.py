"""Which int8 format computes the same numbers on every x86 CPU, and what it costs.

For the default block (heads 8, width 512), variants torch-export and tiled, shapes (1,16) (4,512) (1,2048):
float32, the old format (QInt8 weights per channel: u8s8), and the candidates, each exported through
attn_onnx's own quantize() with quantize_dynamic's weight options overridden. Per model and shape:
  max_abs vs the float64 module of the FLOAT weights, vs the float64 module of the DEQUANTIZED weights,
  and vs onnx.reference (which runs MatMulInteger exactly, in numpy: 0 up to float32 rounding iff onnxruntime's
  integer kernel is exact on this CPU), and the median ms over interleaved rounds (bench-attn's engine),
  beside the onnxruntime sgemm limit timed in every round.
Run: .venv/bin/python scripts/int8/formats.py [--rounds 7]
"""

import argparse
import statistics

import numpy as np
import onnxruntime as ort
import onnxruntime.quantization as q
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import attn_onnx.exporter.quantize as quantize_module
from attn_onnx.exporter.export import export_onnx
from attn_onnx.exporter.quantize import quantize
from attn_onnx.exporter.spec import ExportSpec
from attn_onnx.runtime_check.reference import reference_module
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

FORMATS = {  # name -> quantize_dynamic overrides (None: float32)
    "float32": None,
    "old s8 (u8s8)": dict(weight_type=q.QuantType.QInt8, reduce_range=False),
    "s8 reduce_range (u8s8, 7-bit)": dict(weight_type=q.QuantType.QInt8, reduce_range=True),
    "u8 (u8u8)": dict(weight_type=q.QuantType.QUInt8, reduce_range=False),
}
VARIANTS = ("torch-export", "tiled")
SHAPES = ((1, 16), (4, 512), (1, 2048))

parser = argparse.ArgumentParser()
parser.add_argument("--rounds", type=int, default=7)
parser.add_argument("--target-s", type=float, default=0.05)
parser.add_argument("--threads", type=int, default=2)
args = parser.parse_args()

original = q.quantize_dynamic

quantize_module._check_range = lambda *args: None  # the guard refuses every format but the chosen one


def export(spec, module, overrides):
    def patched(*a, **kw):
        kw.update(overrides)
        return original(*a, **kw)

    q.quantize_dynamic = patched
    try:
        return export_onnx(spec, module)
    finally:
        q.quantize_dynamic = original


def double_of(module):
    double = type(module)(module.head, module.embedding_dim, dropout=0.0).double().eval()
    double.load_state_dict({k: v.double() for k, v in module.state_dict().items()})
    return double


def run_double(module, feeds):
    with torch.no_grad():
        qkv = (torch.from_numpy(feeds[n]).double() for n in ("query", "key", "value"))
        return module(*qkv, torch.from_numpy(feeds["mask"].astype(np.float64))).numpy()


print(
    f"CPU: {cpu_model()}; onnxruntime {ort.__version__}, torch {torch.__version__}; {args.threads} threads, "
    f"{args.rounds} rounds",
    flush=True,
)
spec0 = ExportSpec().validate()
module = spec0.kind.build_module(spec0, seed=0)
golden_float = double_of(module)
models = {}
for variant in VARIANTS:
    for fmt, overrides in FORMATS.items():
        spec = ExportSpec(variant=variant, quantize="" if overrides is None else "int8").validate()
        proto, mspec = export(spec, module, overrides or {})
        deq, _ = reference_module(proto, mspec)
        models[(variant, fmt)] = (proto, double_of(deq))
torch.set_num_threads(args.threads)
runs = {key: sessions(proto, args.threads) for key, (proto, _) in models.items()}
sgemm = session(sgemm_model(), args.threads)
rng = np.random.default_rng(0)
a, b = (rng.standard_normal((SGEMM_N, SGEMM_N), dtype=np.float32) for _ in range(2))
limit_rounds = []
table = {}
for batch, length in SHAPES:
    feeds = feeds_at(spec0, batch, length)
    want_float = run_double(golden_float, feeds)
    errors = {}
    for key, (proto, deq) in models.items():
        got = runs[key][0].run(None, feeds)[0].astype(np.float64)
        exact = ReferenceEvaluator(proto).run(None, feeds)[0].astype(np.float64)
        errors[key] = (
            np.abs(got - want_float).max(),
            np.abs(got - run_double(deq, feeds)).max(),
            np.abs(got - exact).max(),
        )
    calls = {key: (lambda n, s=s, feeds=feeds: s[n % SESSIONS].run(None, feeds)) for key, s in runs.items()}
    samples = interleaved(
        calls,
        args.rounds,
        args.target_s,
        before_round=lambda n: limit_rounds.append(timed(lambda: sgemm.run(None, {"a": a, "b": b}), args.target_s)),
    )
    for key in runs:
        table[(batch, length, key)] = (statistics.median(samples[key]) * 1e3, *errors[key])
    print(f"({batch},{length}) timed", flush=True)
# one projection alone, x (2048, 512) times W (512, 512): the integer kernel without the attention around it

w = module.linears[0].weight.detach().numpy().T.copy()
proj_float = helper.make_model(
    helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "projection",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", 512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 512])],
        [numpy_helper.from_array(w, "w")],
    ),
    opset_imports=[helper.make_opsetid("", 18)],
)
x = np.random.default_rng(1).standard_normal((2048, 512), dtype=np.float32)
proj = {}
for fmt, overrides in FORMATS.items():
    if overrides is None:
        proj[fmt] = proj_float
    else:

        def patched(*a, overrides=overrides, **kw):
            kw.update(overrides)
            return original(*a, **kw)

        q.quantize_dynamic = patched
        proj[fmt], _ = quantize(proj_float, {"w": {"initializer": "w", "transposed": False}})
        q.quantize_dynamic = original
proj_runs = {fmt: sessions(m, args.threads) for fmt, m in proj.items()}
proj_err = {
    fmt: float(
        np.abs(
            proj_runs[fmt][0].run(None, {"x": x})[0].astype(np.float64) - ReferenceEvaluator(m).run(None, {"x": x})[0]
        ).max()
    )
    for fmt, m in proj.items()
}
proj_samples = interleaved(
    {fmt: (lambda n, s=s: s[n % SESSIONS].run(None, {"x": x})) for fmt, s in proj_runs.items()},
    args.rounds,
    args.target_s,
    before_round=lambda n: limit_rounds.append(timed(lambda: sgemm.run(None, {"a": a, "b": b}), args.target_s)),
)
limit = 2 * SGEMM_N**3 / statistics.median(limit_rounds) / 1e9
print(f"\nsgemm limit (onnxruntime MatMul 2048^3, median over every round): {limit:.0f} GFLOP/s\n")
print(
    "median ms (speed vs float32 of the same variant, vs the old format; max_abs vs float64 of the float "
    "weights / of the dequantized weights / vs onnx.reference)\n"
)
header = "| shape | variant | " + " | ".join(FORMATS) + " |"
print(header)
print("|" + " --- |" * (len(FORMATS) + 2))
for batch, length in SHAPES:
    for variant in VARIANTS:
        cells = []
        base = table[(batch, length, (variant, "float32"))][0]
        old = table[(batch, length, (variant, "old s8 (u8s8)"))][0]
        for fmt in FORMATS:
            ms, e_float, e_deq, e_ref = table[(batch, length, (variant, fmt))]
            if fmt == "float32":
                cells.append(f"{ms:.3g} ({e_float:.1e})")
            else:
                cells.append(f"{ms:.3g} ({base / ms:.2f}x, {old / ms:.2f}x; {e_float:.1e} / {e_deq:.1e} / {e_ref:.1e})")
        print(f"| ({batch},{length}) | {variant} | " + " | ".join(cells) + " |")

print(
    "\none projection, (2048, 512) x (512, 512): median ms (vs float32, vs the old format; max_abs vs onnx.reference)"
)
base, old = (statistics.median(proj_samples[f]) * 1e3 for f in ("float32", "old s8 (u8s8)"))
for fmt in FORMATS:
    ms = statistics.median(proj_samples[fmt]) * 1e3
    print(f"  {fmt:32} {ms:8.3f} ({base / ms:.2f}x, {old / ms:.2f}x; {proj_err[fmt]:.1e})")
