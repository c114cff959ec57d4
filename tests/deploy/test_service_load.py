"""The Node service under load: concurrent clients all answered correctly, memory bounded over many
requests, and SIGTERM finishing the requests in flight before it exits 0."""

import json
import threading
import time

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.deploy.test_node import pytestmark as node_marks
from tests.deploy.test_node import post, serve

pytestmark = node_marks
DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.bool_): "BOOL"}


def load(path):
    t = onnx.TensorProto()
    t.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(t)


def requests_of(bundle):
    """Each vector set as (request body, expected output, tolerance)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    out = []
    for s in manifest["test_data_sets"]:
        arrays = {f["name"]: load(bundle / f["file"]) for f in s["inputs"]}
        inputs = [{"name": n, "shape": list(a.shape), "datatype": DATATYPES[a.dtype], "data": a.ravel().tolist()}
                  for n, a in arrays.items()]
        out.append((json.dumps({"inputs": inputs}).encode(), load(bundle / s["outputs"][0]["file"])))
    return out, manifest["tolerance"]


def infer(url, body):
    status, answer = post(url, body)
    assert status == 200, answer
    return status, answer


def correct(answer, expected, tol):
    out = answer["outputs"][0]
    actual = np.asarray(out["data"], np.float32).reshape(out["shape"])
    allowed = tol["atol"] + tol["rtol"] * np.abs(expected)
    return actual.shape == expected.shape and bool(np.all(np.abs(actual - expected) <= allowed))


def rss_kib(process):
    status = open(f"/proc/{process.pid}/status").read()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def test_8_concurrent_clients_times_25_requests_are_all_answered_correctly(bundle):
    cases, tol = requests_of(bundle)
    verdicts = []

    def client(k):
        for i in range(25):
            body, expected = cases[(k + i) % len(cases)]
            status, answer = infer(url, body)
            verdicts.append(status == 200 and correct(answer, expected, tol))

    with serve(bundle) as url:
        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert len(verdicts) == 200 and all(verdicts)


@pytest.mark.slow
def test_memory_stays_bounded_over_1000_requests(bundle):
    cases, tol = requests_of(bundle)
    with serve(bundle) as url:
        for i in range(100):  # warm up: the allocator and JIT settle
            infer(url, cases[i % len(cases)][0])
        settled = rss_kib(url.process)
        for i in range(1000):
            body, expected = cases[i % len(cases)]
            status, answer = infer(url, body)
            assert status == 200 and correct(answer, expected, tol)
        grown = rss_kib(url.process) - settled
    print(f"RSS after warm-up {settled} KiB, growth over 1000 requests {grown} KiB")
    assert grown < 32 * 1024  # a leak of even 32 KiB a request would show as 32 MiB


def test_sigterm_finishes_the_requests_in_flight_then_exits_0(bundle):
    cases, tol = requests_of(bundle)
    body, expected = cases[1]
    big = json.loads(body)  # the same request, many times over in the batch: it takes a while to parse and run
    reps = 2500  # about 30 MB of JSON
    for tensor in big["inputs"]:
        tensor["data"] = tensor["data"] * reps
        tensor["shape"][0] *= reps
    answers = []
    with serve(bundle) as url:
        data = json.dumps(big).encode()

        def send():
            answers.append(infer(url, data))
            answers.append(time.monotonic())

        thread = threading.Thread(target=send)
        thread.start()
        time.sleep(0.3)  # the request is being read or run
        url.process.terminate()
        terminated = time.monotonic()
        thread.join(timeout=60)
        code = url.process.wait(timeout=60)
    assert code == 0
    assert answers and answers[0][0] == 200
    assert answers[1] > terminated  # it was still in flight when SIGTERM came, and it was answered
    got = np.asarray(answers[0][1]["outputs"][0]["data"], np.float32).reshape(answers[0][1]["outputs"][0]["shape"])
    assert got.shape[0] == expected.shape[0] * reps
