"""The latency of one exported model in onnxruntime (Python, CPU) and in onnxruntime-web's WASM backend (under
Node, through check-attn's web runner), side by side: self-attention at (1, LEN), a causal mask, float32.

    .venv/bin/python scripts/web_latency.py mha.onnx --lengths 16,128,512 --threads 1 --rounds 7

Each round times RUNS calls of each runtime at each length, interleaved, after one untimed call; a figure is
the median over rounds of each round's median. onnxruntime-web is timed inside Node (session.run alone), so
the pipe to it is not in its figure. Prints the CPU model and the date. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="An mha model written by export-attn (mask input, float32).")
    parser.add_argument("--lengths", default="16,128,512", help="Comma-separated sequence lengths (batch 1).")
    parser.add_argument("--threads", type=int, default=1, help="Threads of each runtime (intra-op; WASM threads).")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=10, help="Timed calls per runtime, length and round.")
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from attn_onnx.errors import AttnOnnxError
    from attn_onnx.runtime_check.model import load_model
    from attn_onnx.runtime_check.runners.web_runner import WebRunner

    try:
        loaded = load_model(args.model)
        if loaded.spec.module != "mha" or loaded.spec.mask != "input" or loaded.spec.dtype != "float32":
            raise AttnOnnxError("give an mha model with a mask input at float32 (export-attn's default)")
        lengths = [int(n) for n in args.lengths.split(",")]
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(loaded.data, options, providers=["CPUExecutionProvider"])
        web = WebRunner(loaded.data, threads=args.threads)
    except (AttnOnnxError, ValueError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    width = loaded.spec.embedding_dim
    feeds = {}
    for n in lengths:
        x = np.random.default_rng(0).standard_normal((1, n, width), dtype=np.float32)
        feeds[n] = {"query": x, "key": x, "value": x, "mask": np.tril(np.ones((1, n, n), bool))}
        session.run(None, feeds[n])
    figures = {(runtime, n): [] for runtime in ("ort", "web") for n in lengths}
    for _ in range(args.rounds):
        for n in lengths:
            seconds = []
            for _ in range(args.runs):
                start = time.perf_counter()
                session.run(None, feeds[n])
                seconds.append(time.perf_counter() - start)
            figures["ort", n].append(statistics.median(seconds))
            figures["web", n].append(statistics.median(web.time(feeds[n], args.runs)))
    web.close()
    print(f"{args.model.name}: heads={loaded.spec.heads}, embedding_dim={width}, causal mask, float32, "
          f"{args.threads} thread(s); {args.rounds} rounds of {args.runs} calls; {cpu_model()}; "
          f"{datetime.date.today().isoformat()}; onnxruntime {ort.__version__}, {web.versions['onnxruntime_web']}")
    print("| shape | onnxruntime (Python) | onnxruntime-web (WASM, Node) | ratio |")
    print("| --- | --- | --- | --- |")
    for n in lengths:
        o, w = statistics.median(figures["ort", n]), statistics.median(figures["web", n])
        print(f"| (1,{n}) | {o * 1e3:.3f} ms | {w * 1e3:.3f} ms | {w / o:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
