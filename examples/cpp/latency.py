"""The same model's latency in onnxruntime's Python API and in the C++ consumer (bench_latency), side by side.

    python examples/cpp/latency.py [--shapes 1x16,1x128,1x512] [--rounds 15] [--threads 1] [--model M.onnx]

Exports the attention block as bench-attn does (8 heads, width 512, causal+padding mask input, float32), or
takes an export-attn model (--model). Writes each shape's feeds as TensorProto files, and keeps one Python
session and one bench_latency process (scripts/setup/cpp.sh builds it) per shape. Each round times both on the
same feeds, in an order that alternates round by round, each after a pause (bench-attn's rule: onnxruntime's
pool threads spin for a while after a call) and one untimed call, over as many calls as fill --target-ms.
Prints per shape the median of the rounds, in how many rounds C++ was the faster (a paired count), and the
fastest round of each, with the CPU model and the versions."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from attn_onnx.timing.engine import cpu_model, round_order, session, SETTLE_S
from attn_onnx.exporter.export import export_onnx
from attn_onnx.exporter.spec import ExportSpec
from attn_onnx.runtime_check.cases import make_mask
from attn_onnx.runtime_check.model import load_model

BINARY = Path(__file__).resolve().parents[2] / ".deps" / "cpp" / "build" / "bench_latency"


def timed_python(sess, feeds, target_s: float) -> float:
    """Milliseconds per call, as bench_latency measures: one untimed call, then calls that fill target_s."""
    start = time.perf_counter()
    sess.run(None, feeds)
    once = time.perf_counter() - start
    n = max(1, min(1000, int(target_s / max(once, 1e-6))))
    start = time.perf_counter()
    for _ in range(n):
        sess.run(None, feeds)
    return (time.perf_counter() - start) / n * 1e3


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="1x16,1x128,1x512", help="comma-separated BATCHxLEN")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds; the figure is their median")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads, both runtimes")
    parser.add_argument("--target-ms", type=float, default=50.0, help="time filled by the calls of one round")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--embedding-dim", type=int, default=512)
    parser.add_argument("--attention-impl", default="torch-export", help="the export variant to time")
    parser.add_argument("--model", type=Path, help="time this export-attn model instead of exporting one (its "
                        "spec, read from its metadata, overrides --heads, --embedding-dim and --attention-impl)")
    args = parser.parse_args(argv)
    if not BINARY.is_file():
        print(f"Error: {BINARY} is not built: run scripts/setup/cpp.sh", file=sys.stderr)
        return 1
    shapes = [tuple(int(p) for p in item.split("x")) for item in args.shapes.split(",")]
    if args.model is not None:
        loaded = load_model(args.model)
        spec, proto = loaded.spec, loaded.proto
    else:
        spec = ExportSpec(heads=args.heads, embedding_dim=args.embedding_dim, variant=args.attention_impl).validate()
        proto, _ = export_onnx(spec, spec.kind.build_module(spec, seed=0))
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model.onnx"
        onnx.save(proto, str(model))
        for batch, length in shapes:
            feeds = spec.kind.inputs(spec, {"batch": batch, "q_len": length, "kv_len": length}, rng,
                                     make_mask("causal+padding", batch, length, length, rng))
            folder = Path(tmp) / f"feeds_{batch}x{length}"
            folder.mkdir()
            for k, (name, array) in enumerate(feeds.items()):
                (folder / f"input_{k}.pb").write_bytes(numpy_helper.from_array(array, name).SerializeToString())
            sess = session(proto, args.threads)
            cpp = subprocess.Popen([str(BINARY), str(model), str(folder), "--threads", str(args.threads)],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            try:
                def timed_cpp() -> float:
                    cpp.stdin.write(f"{args.target_ms}\n")
                    cpp.stdin.flush()
                    line = cpp.stdout.readline()
                    if not line:
                        raise RuntimeError(f"bench_latency exited with {cpp.wait()}")
                    return float(line)

                calls = {"onnxruntime (Python)": lambda: timed_python(sess, feeds, args.target_ms / 1e3),
                         "onnxruntime-cpp": timed_cpp}
                samples = {name: [] for name in calls}
                for number in range(args.rounds):
                    for name in round_order(list(calls), number):
                        time.sleep(SETTLE_S)
                        samples[name].append(calls[name]())
            finally:
                cpp.stdin.close()
                cpp.wait(timeout=60)
            cpp_faster = sum(c < p for c, p in zip(samples["onnxruntime-cpp"], samples["onnxruntime (Python)"]))
            rows.append((batch, length, samples, cpp_faster))
    print(f"{cpu_model()}; onnxruntime {ort.__version__} (the wheel's library in both); {spec.variant}, "
          f"width {spec.embedding_dim}, {spec.heads} heads, causal+padding mask, {spec.dtype}; {args.threads} "
          f"thread(s); median of {args.rounds} interleaved rounds")
    print(f"  {'shape':<10}{'Python ms':>11}{'C++ ms':>10}{'C++/Python':>12}{'C++ faster':>12}"
          f"{'Python min':>12}{'C++ min':>10}")
    for batch, length, samples, cpp_faster in rows:
        python, cpp = samples["onnxruntime (Python)"], samples["onnxruntime-cpp"]
        ratio = statistics.median(cpp) / statistics.median(python)
        print(f"  {f'({batch},{length})':<10}{statistics.median(python):>11.3f}{statistics.median(cpp):>10.3f}"
              f"{ratio:>11.2f}x{f'{cpp_faster}/{args.rounds}':>12}{min(python):>12.3f}{min(cpp):>10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
