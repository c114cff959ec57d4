"""Peak memory of one inference per variant: each model runs once in a fresh process that imports only
onnxruntime and numpy, so the figure is the model's own (session, inputs, the run's buffers), not torch's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from attn_onnx.exporter.export import export_onnx
from attn_onnx.exporter.spec import ExportSpec
from attn_onnx.exporter.variants import VARIANTS

# Runs in the child: RSS high-water mark after the session is built, then after one run. VmHWM, not
# getrusage's ru_maxrss: on Linux that survives exec and starts at the parent's size (torch's, here).
_CHILD = r"""
import json, sys
import numpy as np, onnxruntime as ort


def hwm_kib():
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("VmHWM:")))


path, batch, length, threads = sys.argv[1], *map(int, sys.argv[2:5])
options = ort.SessionOptions()
options.intra_op_num_threads = threads
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
loaded = hwm_kib()
rng = np.random.default_rng(0)
feeds = {}
for value in session.get_inputs():
    if value.name == "mask":  # causal + padding, as the bench's timing inputs
        mask = np.tril(np.ones((length, length), bool))[None].repeat(batch, 0)
        mask[1:, :, length // 2:] = False
        feeds["mask"] = mask
    else:
        feeds[value.name] = rng.standard_normal((batch, length, value.shape[-1]), dtype=np.float32)
session.run(None, feeds)
peak = hwm_kib()
print(json.dumps({"loaded_kib": loaded, "peak_kib": peak}))
"""


def peak_rss(
    variants: list[str], batch: int, length: int, threads: int, heads: int = 8, embedding_dim: int = 512
) -> dict[str, dict[str, float | str]]:
    """variant -> {"peak_mib", "run_mib" (above the loaded session), "inputs_mib"}; "error" if the run failed."""
    spec0 = ExportSpec(heads=heads, embedding_dim=embedding_dim).validate()
    module = spec0.kind.build_module(spec0, seed=0)
    inputs_mib = (3 * batch * length * embedding_dim * 4 + batch * length * length) / 2**20
    out: dict[str, dict[str, float | str]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in variants:
            spec = ExportSpec(
                heads=heads, embedding_dim=embedding_dim, variant=name, opset=max(18, VARIANTS[name].min_opset)
            ).validate()
            proto, _ = export_onnx(spec, module)
            path = Path(folder) / f"{name}.onnx"
            path.write_bytes(proto.SerializeToString())
            child = subprocess.run(
                [sys.executable, "-c", _CHILD, str(path), str(batch), str(length), str(threads)],
                capture_output=True,
                text=True,
            )
            if child.returncode != 0:
                out[name] = {"error": (child.stderr.strip().splitlines() or ["killed"])[-1][:200]}
                continue
            figures = json.loads(child.stdout.strip().splitlines()[-1])
            out[name] = {
                "peak_mib": figures["peak_kib"] / 1024,
                "run_mib": (figures["peak_kib"] - figures["loaded_kib"]) / 1024,
                "inputs_mib": inputs_mib,
            }
    return out
