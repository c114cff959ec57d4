"""One cell of the compatibility table, measured: every golden set and decode step of a bundle run through one
onnxruntime release (runtime_check/runners/ort_release_runner.py), against the manifest's tolerance.
scripts/compat_matrix.py measures the whole table with it; tests/deploy/test_compatibility.py re-measures a
sample in CI.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from attn_onnx.deploy.bundle import _check_decode, _load_tensor, entry_comparable, read_manifest
from attn_onnx.deploy.compatibility import Cell, lowered_ir
from attn_onnx.errors import RuntimeFailure
from attn_onnx.runtime_check.check import run_case
from attn_onnx.runtime_check.compare import Tolerance


def measure(folder: str | Path, runner, lower_for: str | None = None) -> Cell:
    """Every set and decode step of the bundle at `folder` through `runner` (an ort_release_runner.ReleaseRunner,
    which loads the bundle's model here), against the manifest's tolerance; the model at the IR version release
    `lower_for` reads, where that is given (lowered_ir)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    data = (folder / manifest["model"]["file"]).read_bytes()
    if lower_for is not None:
        data = lowered_ir(onnx.load_from_string(data), lower_for).SerializeToString()
    try:
        runner.load(data)
    except RuntimeFailure as exc:
        return Cell("cannot load", str(exc).split("cannot load the model: ", 1)[-1])
    tolerance = Tolerance(atol=float(manifest["tolerance"]["atol"]), rtol=float(manifest["tolerance"]["rtol"]))
    results = []
    for entry in manifest["test_data_sets"]:
        feeds = {f["name"]: _load_tensor(folder / f["file"]) for f in entry["inputs"]}
        expected = {f["name"]: _load_tensor(folder / f["file"]) for f in entry["outputs"]}
        results.append(
            run_case(
                runner,
                entry["folder"],
                entry["case"],
                feeds,
                expected,
                {n: str(a.dtype) for n, a in expected.items()},
                tolerance,
                entry_comparable(entry),  # a static cache's presents: each sequence's valid part
            )
        )
    if "decode" in manifest:
        results.extend(_check_decode(folder, manifest, [runner], tolerance))
    errors = [(r.case, r.error) for r in results if r.error is not None]
    if errors:
        case, error = errors[0]
        return Cell("run error", f"{case}: {error.split(': ', 1)[-1]}")
    worst = max(results, key=lambda r: r.max_abs)
    if not all(r.passed for r in results):
        return Cell("wrong numbers", f"max_abs {worst.max_abs:.3g} ({worst.case})")
    return Cell("runs right", f"max_abs {worst.max_abs:.2g}")
