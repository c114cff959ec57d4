"""What each int8 format costs against the float weights where its integers are exact (as on a VNNI CPU):
onnx.reference's output (MatMulInteger in numpy integers) vs the float64 module of the FLOAT weights, for the
default block, torch-export, at the shapes of docs/precision.md's table and on export-attn's quick cases.
Run: .venv/bin/python scripts/int8/exact_cost.py"""

import numpy as np
import onnxruntime.quantization as q
import torch
from onnx.reference import ReferenceEvaluator

import attn_onnx.exporter.quantize as quantize_module
from attn_onnx.exporter.export import export_onnx
from attn_onnx.exporter.spec import ExportSpec
from attn_onnx.runtime_check.cases import QUICK, generate_cases
from attn_onnx.timing.engine import cpu_model, feeds_at

quantize_module._check_range = lambda *args: None
FORMATS = {
    "old s8 (full range)": dict(weight_type=q.QuantType.QInt8, reduce_range=False),
    "s8 reduce_range (7-bit)": dict(weight_type=q.QuantType.QInt8, reduce_range=True),
    "u8 (u8u8)": dict(weight_type=q.QuantType.QUInt8, reduce_range=False),
}
original = q.quantize_dynamic
spec0 = ExportSpec().validate()
module = spec0.kind.build_module(spec0, seed=0)
double = type(module)(8, 512, dropout=0.0).double().eval()
double.load_state_dict({k: v.double() for k, v in module.state_dict().items()})


def golden(feeds):
    with torch.no_grad():
        return double(
            *(torch.from_numpy(feeds[n]).double() for n in ("query", "key", "value")),
            torch.from_numpy(feeds["mask"].astype(np.float64)),
        ).numpy()


print(f"CPU: {cpu_model()} (irrelevant: onnx.reference computes in numpy)")
quick = [c.feeds(0) for c in generate_cases(spec0, QUICK)]
for name, overrides in FORMATS.items():
    q.quantize_dynamic = lambda *a, o=overrides, **kw: original(*a, **{**kw, **o})
    proto, _ = export_onnx(ExportSpec(quantize="int8").validate(), module)
    q.quantize_dynamic = original
    ref = ReferenceEvaluator(proto)
    errors = [
        float(np.abs(ref.run(None, f)[0] - golden(f)).max())
        for f in [feeds_at(spec0, 1, 16), feeds_at(spec0, 4, 512), feeds_at(spec0, 1, 2048)]
    ]
    quick_error = max(float(np.abs(ref.run(None, {k: v for k, v in f.items()})[0] - golden(f)).max()) for f in quick)
    print(
        f"{name:26} (1,16) {errors[0]:.1e}  (4,512) {errors[1]:.1e}  (1,2048) {errors[2]:.1e}  "
        f"quick cases {quick_error:.4f}",
        flush=True,
    )
