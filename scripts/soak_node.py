"""A bounded soak of the Node service (examples/node/server.js), loopback only.

    .venv/bin/python scripts/soak_node.py BUNDLE [--seconds 60] [--clients 4] [--json report.json]

Starts the service on free ports (HTTP and gRPC, 127.0.0.1), then `--clients` threads send, until `--seconds`
have passed, a mix of: good requests (each golden vector set of the bundle, as JSON, as binary tensor data and over
gRPC; the answers compared with the golden outputs within the manifest's tolerance), hostile ones (JSON that does
not parse, inputs that disagree on a named dim, a binary size that lies, an unsupported Content-Encoding, a gzip
body that is not gzip) and oversized ones (a request past the work budget, over HTTP and gRPC; a gzip body that
inflates past the body limit). Every request must get the answer its kind expects. Prints one report: requests,
answers by kind and status, unexpected answers, wrong answers (must be 0), RSS at start, peak and end; then
SIGTERMs the service, which must exit 0. Exit 0 when nothing was unexpected or wrong.
"""

import argparse
import collections
import gzip
import json
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

NODE_DIR = Path(__file__).resolve().parents[1] / "examples" / "node"
DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.float16): "FP16", np.dtype(np.bool_): "BOOL"}


def load(path: Path) -> np.ndarray:
    return numpy_helper.to_array(onnx.load_tensor(str(path)))


def rss_mib(pid: int, key: str = "VmRSS:") -> float:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(key))
    return int(line.split()[1]) / 1024


class Soak:
    def __init__(self, bundle: Path, http_url: str, grpc_url: str):
        manifest = json.loads((bundle / "manifest.json").read_text())
        self.name = manifest["name"]
        self.tol = manifest["tolerance"]
        self.sets = [
            (
                {f["name"]: load(bundle / f["file"]) for f in s["inputs"]},
                {f["name"]: load(bundle / f["file"]) for f in s["outputs"]},
            )
            for s in manifest["test_data_sets"]
        ]
        self.http = http_url
        self.grpc = grpc_url
        self.counts = collections.Counter()  # (kind, status) -> n
        self.unexpected = []
        self.wrong = 0
        self.lock = threading.Lock()
        self.local = threading.local()
        self.dims = {i["name"]: i["dims"] for i in manifest["inputs"]}

    # --- transports ---
    def post(self, body: bytes, headers: dict):
        request = urllib.request.Request(
            f"http://{self.http}/v2/models/{self.name}/infer",
            data=body,
            method="POST",
            headers={"content-type": "application/json", **headers},
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read()

    def stub(self):
        import grpc
        from tritonclient.grpc import service_pb2_grpc

        if not hasattr(self.local, "stub"):
            self.local.channel = grpc.insecure_channel(self.grpc)
            self.local.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.local.channel)
        return self.local.stub

    def grpc_infer(self, arrays, shapes=None):
        import grpc
        from tritonclient.grpc import service_pb2

        request = service_pb2.ModelInferRequest(model_name=self.name)
        for name, array in arrays.items():
            request.inputs.add(
                name=name, datatype=DATATYPES[array.dtype], shape=list((shapes or {}).get(name, array.shape))
            )
            request.raw_input_contents.append(array.tobytes())
        try:
            return "OK", self.stub().ModelInfer(request, timeout=120)
        except grpc.RpcError as err:
            return err.code().name, err.details()

    # --- requests ---
    @staticmethod
    def json_body(arrays, shapes=None) -> bytes:
        return json.dumps(
            {
                "inputs": [
                    {
                        "name": n,
                        "shape": list((shapes or {}).get(n, a.shape)),
                        "datatype": DATATYPES[a.dtype],
                        "data": a.ravel().tolist(),
                    }
                    for n, a in arrays.items()
                ]
            }
        ).encode()

    @staticmethod
    def binary_body(arrays, sizes=None):
        head = json.dumps(
            {
                "inputs": [
                    {
                        "name": n,
                        "shape": list(a.shape),
                        "datatype": DATATYPES[a.dtype],
                        "parameters": {"binary_data_size": (sizes or {}).get(n, a.nbytes)},
                    }
                    for n, a in arrays.items()
                ],
                "parameters": {"binary_data_output": True},
            }
        ).encode()
        body = head + b"".join(a.tobytes() for a in arrays.values())
        return body, {"Inference-Header-Content-Length": str(len(head))}

    def close(self, actual: np.ndarray, expected: np.ndarray) -> bool:
        allowed = self.tol["atol"] + self.tol["rtol"] * np.abs(expected.astype(np.float64))
        return actual.shape == expected.shape and bool(
            np.all(np.abs(actual.astype(np.float64) - expected.astype(np.float64)) <= allowed)
        )

    def mismatched(self, arrays):
        """The same inputs with the first named dim of the last input off by one in its declared shape."""
        name = list(arrays)[-1]
        shape = list(arrays[name].shape)
        shape[0] += 1  # batch: every input has it
        return {name: shape}

    def oversized_shapes(self, arrays):
        """Declared shapes with every named length 16384 (mask_q_len 1, batch as it was): past a 1 GiB budget
        for any heads, while each input alone stays under the service's 2^27 elements."""

        def dim(name, d):
            if not isinstance(name, str) or name == "batch":
                return d
            return 1 if name == "mask_q_len" else 16384

        return {n: [dim(name, d) for name, d in zip(self.dims[n], a.shape)] for n, a in arrays.items()}

    def one(self, rng: random.Random):
        arrays, expected = rng.choice(self.sets)
        kind = rng.choice(
            [
                "good-json",
                "good-binary",
                "good-grpc",
                "good-json",
                "good-binary",
                "good-grpc",
                "bad-json",
                "dims-http",
                "dims-grpc",
                "binary-size",
                "encoding",
                "not-gzip",
                "budget-http",
                "budget-grpc",
                "inflate-bomb",
            ]
        )
        self.local.kind = kind
        wrong = False
        if kind == "good-json":
            status, _, body = self.post(self.json_body(arrays), {})
            answer = json.loads(body)
            if status == 200:
                for out in answer["outputs"]:
                    actual = np.asarray(out["data"], np.float32).reshape(out["shape"])
                    wrong |= not self.close(actual, expected[out["name"]])
            expect = 200
        elif kind == "good-binary":
            body, headers = self.binary_body(arrays)
            status, head, data = self.post(body, headers)
            if status == 200:
                length = int(head["Inference-Header-Content-Length"])
                at = length
                for out in json.loads(data[:length])["outputs"]:
                    size = out["parameters"]["binary_data_size"]
                    dtype = {"FP32": np.float32, "FP16": np.float16}[out["datatype"]]
                    actual = np.frombuffer(data[at : at + size], dtype).reshape(out["shape"])
                    at += size
                    wrong |= not self.close(actual, expected[out["name"]])
            expect = 200
        elif kind == "good-grpc":
            status, answer = self.grpc_infer(arrays)
            if status == "OK":
                for out, raw in zip(answer.outputs, answer.raw_output_contents):
                    dtype = {"FP32": np.float32, "FP16": np.float16}[out.datatype]
                    wrong |= not self.close(np.frombuffer(raw, dtype).reshape(list(out.shape)), expected[out.name])
            expect = "OK"
        elif kind == "bad-json":
            status, expect = self.post(b'{"inputs": [', {})[0], 400
        elif kind == "dims-http":
            status, expect = self.post(self.json_body(arrays, self.mismatched(arrays)), {})[0], 400
        elif kind == "dims-grpc":
            status, expect = self.grpc_infer(arrays, self.mismatched(arrays))[0], "INVALID_ARGUMENT"
        elif kind == "binary-size":
            body, headers = self.binary_body(arrays, {list(arrays)[0]: 3})
            status, expect = self.post(body, headers)[0], 400
        elif kind == "encoding":
            # a small body: the 415 is answered before the body is read, and a client still sending a large one
            # may see the connection close under it (urllib reads that as a broken pipe, not the answer)
            status, expect = self.post(b'{"inputs": []}', {"Content-Encoding": "br"})[0], 415
        elif kind == "not-gzip":
            status, expect = self.post(self.json_body(arrays), {"Content-Encoding": "gzip"})[0], 400
        elif kind == "budget-http":
            status, expect = (
                self.post(
                    json.dumps(
                        {
                            "inputs": [
                                {"name": n, "shape": s, "datatype": DATATYPES[arrays[n].dtype], "data": [0]}
                                for n, s in self.oversized_shapes(arrays).items()
                            ]
                        }
                    ).encode(),
                    {},
                )[0],
                413,
            )
        elif kind == "budget-grpc":
            status, expect = self.grpc_infer(arrays, self.oversized_shapes(arrays))[0], "RESOURCE_EXHAUSTED"
        else:  # inflate-bomb: 80 MB of zeros in about 80 KB, past the default 64 MiB body limit
            status, expect = self.post(self.bomb, {"Content-Encoding": "gzip"})[0], 413
        with self.lock:
            self.counts[(kind, status)] += 1
            if status != expect:
                self.unexpected.append(f"{kind}: {status}, expected {expect}")
            if wrong:
                self.wrong += 1

    def run(self, seconds: float, clients: int):
        self.bomb = gzip.compress(bytes(80 * 1024 * 1024), 9)
        deadline = time.monotonic() + seconds

        def client(k):
            rng = random.Random(k)
            while time.monotonic() < deadline:
                try:
                    self.one(rng)
                except Exception as exc:  # a dropped connection, a timeout: counted, never silent
                    with self.lock:
                        kind = getattr(self.local, "kind", "?")
                        self.counts[(kind, type(exc).__name__)] += 1
                        self.unexpected.append(f"{kind}: {exc!r}")

        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    process = subprocess.Popen(
        [
            "node",
            "server.js",
            "--bundle",
            str(args.bundle.resolve()),
            "--port",
            "0",
            "--grpc-port",
            "0",
            "--host",
            "127.0.0.1",
        ],
        cwd=NODE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = process.stdout.readline()
    if not line.startswith("serving"):
        process.kill()
        sys.exit(f"the service did not start: {line}{process.stderr.read()}")
    http_url = line.split("http://", 1)[1].split("/", 1)[0]
    grpc_url = line.split(", gRPC on ", 1)[1].strip()
    start = rss_mib(process.pid)
    soak = Soak(args.bundle, http_url, grpc_url)
    began = time.monotonic()
    soak.run(args.seconds, args.clients)
    took = time.monotonic() - began
    peak, end = rss_mib(process.pid, "VmHWM:"), rss_mib(process.pid)
    process.terminate()
    code = process.wait(timeout=60)
    report = {
        "seconds": round(took, 1),
        "requests": sum(soak.counts.values()),
        "by_kind": {f"{kind} -> {status}": n for (kind, status), n in sorted(soak.counts.items(), key=str)},
        "unexpected": len(soak.unexpected),
        "unexpected_first": soak.unexpected[:10],
        "wrong_answers": soak.wrong,
        "rss_mib": {"start": round(start, 1), "peak": round(peak, 1), "end": round(end, 1)},
        "exit_code_after_sigterm": code,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if not soak.unexpected and not soak.wrong and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
