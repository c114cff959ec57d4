"""bench-attn runtimes: one model's latency in each place it runs, timed side by side in one run.

Contenders, on the same exported model (torch-export, causal+padding mask input, float32) and the same inputs:
- `onnxruntime` (Python), in this process;
- `onnxruntime-node`, a Node process (examples/node/bench.js);
- `onnxruntime-web` (WASM, one thread), the Node process of check-attn's web runner (examples/web/runner.js);
- `c++`, onnxruntime's C++ API (examples/cpp's bench_latency, built by scripts/setup/cpp.sh).

Each times its own runs inside its own process (no pipe in the figure), for about TARGET_S a round, after one
untimed run. Rounds are bench-attn's (timing/engine.py interleaved: rotated order, a pause before each
contender); the figure is the median over rounds. A contender that is not installed here is reported as not run,
with the reason.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from onnx import numpy_helper

from attn_onnx import checkout
from attn_onnx.errors import RuntimeFailure
from attn_onnx.exporter.export import export_onnx
from attn_onnx.exporter.spec import ExportSpec

if TYPE_CHECKING:
    import numpy as np

    from attn_onnx.runtime_check.runners.web_runner import WebRunner

NODE_DIR = checkout.path("examples", "node")
CPP_BENCH = checkout.path(".deps", "cpp", "build", "bench_latency")
SHAPES = ((1, 16), (1, 128), (1, 512))
TARGET_S = 0.05


@dataclass
class RuntimeTiming:
    runtime: str
    batch: int
    length: int
    median_ms: float | None  # None: not run (see `error`)
    rounds_ms: list[float] = field(default_factory=list)
    vs_python: float | None = None  # how many times onnxruntime (Python)'s time: > 1 slower
    threads: int = 0
    error: str = ""


@dataclass
class RuntimesBench:
    cpu: str
    heads: int
    embedding_dim: int
    threads: int
    rounds: int
    timings: list[RuntimeTiming] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


class _Lines:
    """A process answering one line per line written (bench_latency's protocol): TARGET_MS in, mean ms out."""

    def __init__(self, command: list[str], cwd: Path | None = None):
        self.name = Path(command[0]).name
        self.process = subprocess.Popen(
            command, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        stdin, stdout, stderr = self.process.stdin, self.process.stdout, self.process.stderr
        assert stdin is not None and stdout is not None and stderr is not None  # all three PIPE
        self._stdin, self._stdout, self._stderr = stdin, stdout, stderr

    def seconds(self, target_s: float) -> float:
        self._stdin.write(f"{target_s * 1e3:.3f}\n")
        self._stdin.flush()
        line = self._stdout.readline()
        if not line:
            raise RuntimeFailure(f"{self.name} ended: {self._stderr.read()[-300:]}")
        return float(line) / 1e3

    def close(self) -> None:
        if self.process.poll() is None:
            self._stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def run_runtimes_bench(
    shapes=SHAPES,
    heads: int = 8,
    embedding_dim: int = 512,
    rounds: int = 7,
    threads: int | None = None,
    on_line=lambda text: None,
) -> RuntimesBench:
    import onnxruntime as ort

    from attn_onnx.runtime_check.model import load_model
    from attn_onnx.runtime_check.runners import web_runner
    from attn_onnx.timing.engine import cpu_model, feeds_at, interleaved, session

    threads = threads or len(os.sched_getaffinity(0))
    spec = ExportSpec(heads=heads, embedding_dim=embedding_dim).validate()
    proto, spec = export_onnx(spec)
    bench = RuntimesBench(cpu_model(), heads, embedding_dim, threads, rounds, versions={"onnxruntime": ort.__version__})
    with tempfile.TemporaryDirectory(prefix="attn-runtimes-") as tmp:
        folder = Path(tmp)
        model_path = folder / "model.onnx"
        model_path.write_bytes(proto.SerializeToString())
        for batch, length in shapes:
            feeds = feeds_at(spec, batch, length)
            feeds_dir = folder / f"feeds_{batch}x{length}"
            feeds_dir.mkdir()
            for k, (name, array) in enumerate(feeds.items()):
                (feeds_dir / f"input_{k}.pb").write_bytes(numpy_helper.from_array(array, name).SerializeToString())
            timers: dict[str, Callable[[int], float]] = {}
            closers: list[Callable[[], None]] = []
            missing: dict[str, str] = {}
            timers["onnxruntime (Python)"] = _each_round(partial(_python_seconds, session(proto, threads), feeds))
            node = shutil.which("node")
            if node is None or not (NODE_DIR / "node_modules" / "onnxruntime-node").is_dir():
                missing["onnxruntime-node"] = "node or examples/node/node_modules is absent"
            else:
                lines = _Lines([node, "bench.js", str(model_path), str(feeds_dir), "--threads", str(threads)], NODE_DIR)
                closers.append(lines.close)
                timers["onnxruntime-node"] = _each_round(partial(lines.seconds, TARGET_S))
            if web_runner.missing():
                missing["onnxruntime-web (WASM)"] = web_runner.missing()
            else:
                web = web_runner.make(load_model(proto), None, None)
                closers.append(web.close)
                bench.versions.update(web.versions)
                timers["onnxruntime-web (WASM)"] = _each_round(partial(_web_seconds, web, feeds))
            if not CPP_BENCH.is_file():
                missing["c++ (onnxruntime C++ API)"] = "run scripts/setup/cpp.sh to build examples/cpp"
            else:
                lines = _Lines([str(CPP_BENCH), str(model_path), str(feeds_dir), "--threads", str(threads)])
                closers.append(lines.close)
                timers["c++ (onnxruntime C++ API)"] = _each_round(partial(lines.seconds, TARGET_S))
            try:
                on_line(f"({batch},{length}): timing {', '.join(timers)} ({rounds} rounds)")
                samples = interleaved(timers, rounds, TARGET_S, measure=_self_timed)
            finally:
                for close in closers:
                    close()
            python_ms = statistics.median(samples["onnxruntime (Python)"]) * 1e3
            for name, times in samples.items():
                median = statistics.median(times) * 1e3
                bench.timings.append(
                    RuntimeTiming(
                        name,
                        batch,
                        length,
                        median,
                        [t * 1e3 for t in times],
                        median / python_ms,
                        1 if "web" in name else threads,
                    )
                )
            bench.timings.extend(RuntimeTiming(name, batch, length, None, error=why) for name, why in missing.items())
    return bench


def _each_round(seconds: Callable[[], float]) -> Callable[[int], float]:
    """A contender for engine.interleaved that gives its own figure (`seconds()`) whatever the round."""
    return lambda number: seconds()


def _self_timed(call, target_s: float) -> float:
    """engine.interleaved's measure for contenders that time themselves: the pause, then their own figure."""
    from attn_onnx.timing.engine import SETTLE_S

    time.sleep(SETTLE_S)
    return call()


def _python_seconds(session, feeds: dict[str, np.ndarray]) -> float:
    """onnxruntime's figure, timed in this process (no pause of its own: _self_timed has paused)."""
    from attn_onnx.timing.engine import timed

    return timed(lambda: session.run(None, feeds), TARGET_S, settle_s=0)


def _web_seconds(web: WebRunner, feeds: dict[str, np.ndarray]) -> float:
    first = web.time(feeds, 1)[0]
    runs = max(1, min(1000, round(TARGET_S / max(first, 1e-6))))
    return statistics.fmean(web.time(feeds, runs))


def table(bench: RuntimesBench) -> str:
    lines = [
        f"bench-attn runtimes: {bench.cpu}; width {bench.embedding_dim}, {bench.heads} heads, torch-export, "
        f"causal+padding mask input, float32; {bench.threads} thread(s) (onnxruntime-web: 1); {bench.rounds} "
        "interleaved rounds, medians; " + ", ".join(f"{k} {v}" for k, v in bench.versions.items()),
        f"  {'runtime':<28}{'shape':>10}{'median ms':>11}{'vs Python':>11}",
    ]
    for t in bench.timings:
        shape = f"({t.batch},{t.length})"
        if t.median_ms is None:
            lines.append(f"  {t.runtime:<28}{shape:>10}  not run: {t.error}")
        else:
            lines.append(f"  {t.runtime:<28}{shape:>10}{t.median_ms:>11.3f}{t.vs_python:>10.2f}x")
    return "\n".join(lines)
