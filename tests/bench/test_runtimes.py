"""bench-attn runtimes: the same model timed in every place it runs, side by side; a runtime that is not
installed is reported as not run, with the reason (no timing is asserted)."""

import json
import shutil

from click.testing import CliRunner

from attn_onnx.bench import runtimes
from attn_onnx.cli.bench_attn import main as bench
from attn_onnx.runtime_check.runners import web_runner

SMALL = ["runtimes", "--heads", "2", "--embedding-dim", "16", "--shapes", "1x8", "--rounds", "2", "--threads", "1"]
NAMES = ["onnxruntime (Python)", "onnxruntime-node", "onnxruntime-web (WASM)", "c++ (onnxruntime C++ API)"]


def test_every_runtime_is_timed_or_says_why_not(tmp_path):
    result = CliRunner().invoke(bench, [*SMALL, "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "r.json").read_text())
    rows = {t["runtime"]: t for t in data["timings"]}
    assert sorted(rows) == sorted(NAMES)
    installed = {
        "onnxruntime (Python)": True,
        "onnxruntime-node": shutil.which("node") is not None
        and (runtimes.NODE_DIR / "node_modules" / "onnxruntime-node").is_dir(),
        "onnxruntime-web (WASM)": not web_runner.missing(),
        "c++ (onnxruntime C++ API)": runtimes.CPP_BENCH.is_file(),
    }
    for name, row in rows.items():
        if installed[name]:
            assert row["median_ms"] > 0 and len(row["rounds_ms"]) == 2 and row["error"] == "", row
        else:
            assert row["median_ms"] is None and row["error"], row
    assert rows["onnxruntime (Python)"]["vs_python"] == 1.0
    assert data["cpu"] in result.output


def test_a_runtime_that_is_not_installed_is_reported_not_run(monkeypatch, tmp_path):
    monkeypatch.setattr(runtimes, "CPP_BENCH", tmp_path / "absent" / "bench_latency")
    result = CliRunner().invoke(bench, SMALL)
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.strip().startswith("c++"))
    assert "not run: run scripts/setup/cpp.sh to build examples/cpp" in line
