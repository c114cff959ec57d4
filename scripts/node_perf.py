"""perf_analyzer against the Node service: latency, throughput, and the service's own compute-infer time from its
statistics in the same run, over HTTP binary, HTTP JSON and gRPC.

    scripts/setup/perf-node.sh                      # perf_analyzer, once
    .venv/bin/python scripts/node_perf.py           # a default export (8 heads, 512 wide), (1,128), padding mask
    .venv/bin/python scripts/node_perf.py --bundle mha-bundle --batch 4 --q-len 512 --concurrency 4

Prints one markdown row per protocol: throughput, p50 and p99 latency as perf_analyzer measures them, the
server's average compute infer (session.run) and the ratio p50 / compute infer, with the CPU, date and command.
"""

import argparse
import base64
import datetime
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NODE_DIR = ROOT / "examples" / "node"
PERF_ANALYZER = ROOT / ".deps" / "perf-node" / "perf_analyzer.sh"
PROTOCOLS = ("http-binary", "http-json", "grpc")


def input_data(manifest: dict, batch: int, q_len: int, folder: Path) -> Path:
    """perf_analyzer's --input-data file: random query/key/value (q_len == kv_len) and a padding mask
    (batch, 1, kv_len), a quarter of the keys padding."""
    rng = np.random.default_rng(0)
    data = {}
    for spec in manifest["inputs"]:
        width = spec["shape"][-1]
        if spec["name"] == "mask":
            valid = np.arange(q_len) < q_len - q_len // 4
            array = np.broadcast_to(valid, (batch, 1, q_len)).copy()
            data["mask"] = {"content": array.ravel().tolist(), "shape": list(array.shape)}
        else:
            array = rng.standard_normal((batch, q_len, width), dtype=np.float32).round(4)
            data[spec["name"]] = {"b64": base64.b64encode(array.tobytes()).decode(), "shape": list(array.shape)}
    path = folder / f"input-{batch}x{q_len}.json"
    path.write_text(json.dumps({"data": [data]}))
    return path


def run_perf(protocol: str, name: str, http: str, grpc: str, data: Path, concurrency: int) -> dict:
    # windows of 500 requests (fewer for the slow JSON), stable when their p50s and throughputs agree within 50%:
    # on a shared 2-core machine tighter settings often never settle
    count = "50" if protocol == "http-json" else "500"
    args = [str(PERF_ANALYZER), "-m", name, "--input-data", str(data), "--concurrency-range", str(concurrency),
            "--percentile", "50", "--measurement-mode", "count_windows", "--measurement-request-count", count,
            "--stability-percentage", "50", "--max-trials", "10"]
    if protocol == "grpc":
        args += ["-i", "grpc", "-u", grpc]
    else:
        args += ["-i", "http", "-u", http]
    if protocol == "http-json":
        args += ["--input-tensor-format", "json", "--output-tensor-format", "json"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        return {"error": (out.stdout + out.stderr).strip().splitlines()[-1]}

    def number(pattern):
        return float(re.search(pattern, out.stdout)[1])

    return {"throughput": number(r"Throughput: ([\d.]+) infer/sec"), "p50": number(r"p50 latency: (\d+) usec"),
            "p99": number(r"p99 latency: (\d+) usec"), "infer": number(r"compute infer (\d+) usec"),
            "request": number(r"Avg request latency: (\d+) usec")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path,
                        help="a bundle folder (default: export-attn's default, exported here)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--q-len", type=int, default=128, help="query and key length")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--protocols", default=",".join(PROTOCOLS), help=f"some of {','.join(PROTOCOLS)}")
    parser.add_argument("--spinning", choices=["on", "off"], default="off", help="server.js --spinning")
    args = parser.parse_args()
    if not PERF_ANALYZER.exists():
        print("Error: perf_analyzer is not installed: run scripts/setup/perf-node.sh", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        bundle = args.bundle
        if bundle is None:
            bundle = folder / "bundle"
            export = Path(sys.executable).with_name("export-attn")  # the venv's console script
            subprocess.run([str(export), "--bundle", str(bundle), "--name", "mha", "--no-check"], check=True,
                           capture_output=True)
        manifest = json.loads((bundle / "manifest.json").read_text())
        data = input_data(manifest, args.batch, args.q_len, folder)
        server = subprocess.Popen(["node", "server.js", "--bundle", str(bundle.resolve()), "--port", "0",
                                   "--grpc-port", "0", "--spinning", args.spinning], cwd=NODE_DIR,
                                  stdout=subprocess.PIPE, text=True)
        try:
            line = server.stdout.readline()
            http = line.split("http://", 1)[1].split("/", 1)[0]
            grpc = line.split(", gRPC on ", 1)[1].strip()
            cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
            cores = sum(1 for line in open("/proc/cpuinfo") if line.startswith("processor"))
            print(f"{datetime.date.today()}, {cpu}, {cores} cores; shape ({args.batch},{args.q_len}) with a padding "
                  f"mask, concurrency {args.concurrency}, spinning {args.spinning}")
            print(f"command: {' '.join(sys.argv)}\n")
            print("| protocol | throughput | p50 | p99 | service (server's whole time) | compute infer | "
                  "p50 / compute infer |")
            print("| --- | --- | --- | --- | --- | --- | --- |")
            for protocol in args.protocols.split(","):
                r = run_perf(protocol, manifest["name"], http, grpc, data, args.concurrency)
                if "error" in r:
                    print(f"| {protocol} | {r['error']} | | | | | |")
                    continue
                print(f"| {protocol} | {r['throughput']:.0f}/s | {r['p50'] / 1e3:.2f} ms | {r['p99'] / 1e3:.2f} ms | "
                      f"{r['request'] / 1e3:.2f} ms | {r['infer'] / 1e3:.2f} ms | {r['p50'] / r['infer']:.2f}x |",
                      flush=True)
        finally:
            server.terminate()
            server.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
