"""The int8 profile's margin: every variant, mha and --self-attention, the default block (heads 8, width 512)
exported with --quantize int8, checked over check-attn's default sweep on onnxruntime CPU and onnx.reference
against the float64 golden of the dequantized weights. Prints the worst max_abs and needed atol (at rtol 0.05).
Run: .venv/bin/python scripts/int8/profile.py [--small] [--ort-only]"""

import sys
import tempfile
from pathlib import Path

from attn_onnx.deploy import export_model
from attn_onnx.exporter.spec import ExportSpec
from attn_onnx.exporter.variants import VARIANTS
from attn_onnx.runtime_check.check import CheckConfig, check_model
from attn_onnx.timing.engine import cpu_model

size = {"heads": 4, "embedding_dim": 32} if "--small" in sys.argv else {}
print(f"CPU: {cpu_model()}; {size or 'heads 8, width 512'}; {sys.argv[1:]}", flush=True)
worst = (0.0, 0.0, "")
with tempfile.TemporaryDirectory() as tmp:
    for module in ("mha", "mha-self"):
        for variant in VARIANTS:
            spec = ExportSpec(
                module=module, variant=variant, quantize="int8", opset=max(18, VARIANTS[variant].min_opset), **size
            ).validate()
            path = Path(tmp, f"{module}-{variant}.onnx")
            export_model(spec, path, seed=0, check=False)
            runtimes = ("onnxruntime",) if "--ort-only" in sys.argv else ("onnxruntime", "reference")
            report = check_model(path, CheckConfig(runtimes=runtimes))
            top = max(report.results, key=lambda r: r.needed_atol)
            big = max(r.max_abs for r in report.results)
            print(
                f"{module:8} {variant:15} cases {len(report.results):4} ok {report.ok} max_abs {big:.4f} "
                f"needed_atol {top.needed_atol:.4f} ({top.line()[:60]})",
                flush=True,
            )
            if top.needed_atol > worst[1]:
                worst = (big, top.needed_atol, f"{module} {variant}")
            worst = (max(worst[0], big), worst[1], worst[2])
print(f"worst: max_abs {worst[0]:.4f}, needed atol {worst[1]:.4f} ({worst[2]})")
