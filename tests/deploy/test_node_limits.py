"""The Node service's promises at its edges (issue 27): an empty `outputs` list answers every output; every 4xx on
the model's route counts in the statistics; --help; a SIGTERM that always ends, stalled uploads included; inputs
checked against each other by the model's named dims (HTTP JSON, binary, gRPC, verify.js), with a manifest's
`dims` field or without it; and a work budget (--max-request-bytes) refused before anything runs, after which
memory comes back.

Skipped, visibly, where node or the example's node_modules are absent. Loopback only."""

import gzip
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.deploy.test_node import NODE, NODE_DIR, post, serve
from tests.deploy.test_node import pytestmark as node_marks
from tests.deploy.test_node_protocol import http_json, rss_kib, stats, vector_sets

pytestmark = node_marks
DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.bool_): "BOOL", np.dtype(np.int64): "INT64"}


def json_body(arrays, **extra) -> bytes:
    return json.dumps(
        {
            "inputs": [
                {"name": n, "shape": list(a.shape), "datatype": DATATYPES[a.dtype], "data": a.ravel().tolist()}
                for n, a in arrays.items()
            ],
            **extra,
        }
    ).encode()


def binary_body(arrays, **extra) -> tuple[bytes, dict]:
    """(body, headers) of a request with every input as binary tensor data."""
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": n,
                    "shape": list(a.shape),
                    "datatype": DATATYPES[a.dtype],
                    "parameters": {"binary_data_size": a.nbytes},
                }
                for n, a in arrays.items()
            ],
            **extra,
        }
    ).encode()
    return head + b"".join(a.tobytes() for a in arrays.values()), {"Inference-Header-Content-Length": str(len(head))}


def attention(batch_q, q_len, batch_kv, kv_len, mask_shape, width=16):
    rng = np.random.default_rng(3)
    return {
        "query": rng.standard_normal((batch_q, q_len, width), dtype=np.float32),
        "key": rng.standard_normal((batch_kv, kv_len, width), dtype=np.float32),
        "value": rng.standard_normal((batch_kv, kv_len, width), dtype=np.float32),
        "mask": np.ones(mask_shape, np.bool_),
    }


def refused_everywhere(url, arrays, error: str, what: str) -> None:
    """The service at `url` refuses `arrays` with `error` in each protocol: HTTP JSON and binary (400), gRPC
    (INVALID_ARGUMENT)."""
    import grpc

    assert post(url, json_body(arrays)) == (400, {"error": error}), what
    body, headers = binary_body(arrays)
    status, _, data = http_json(url, "/v2/models/small/infer", body, headers)
    assert (status, json.loads(data)) == (400, {"error": error}), what
    err = grpc_infer(url.grpc, arrays)
    assert isinstance(err, grpc.RpcError), what
    assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, error), what


def grpc_infer(url, arrays, outputs=(), timeout=60):
    """tritonclient.grpc's ModelInfer of `arrays` as raw contents: the answer, or the grpc.RpcError."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name="small")
    for name, array in arrays.items():
        request.inputs.add(name=name, datatype=DATATYPES[array.dtype], shape=list(array.shape))
        request.raw_input_contents.append(array.tobytes())
    for name in outputs:
        request.outputs.add(name=name)
    with grpc.insecure_channel(url) as channel:
        try:
            return service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=timeout)
        except grpc.RpcError as err:
            return err


# --- protocol promises ---------------------------------------------------------------------------------------


def test_an_empty_outputs_list_answers_every_output_over_json_binary_and_grpc(bundle_of):
    """Triton answers `"outputs": []` with every output; onnxruntime refuses an empty fetch list ('fetches'
    cannot be an empty array), so the service used to answer 400."""
    from tritonclient.grpc import service_pb2

    folder = bundle_of("--kv-cache", "--mask", "input")  # three outputs
    sets, _ = vector_sets(folder)
    _, arrays, expected = sets[1]
    names = list(expected)
    assert len(names) == 3
    with serve(folder, "--grpc-port", "0") as url:
        status, answer = post(url, json_body(arrays, outputs=[]))
        assert status == 200, answer
        assert [o["name"] for o in answer["outputs"]] == names
        body, headers = binary_body(arrays, outputs=[], parameters={"binary_data_output": True})
        status, head, data = http_json(url, "/v2/models/small/infer", body, headers)
        assert status == 200, data[:300]
        length = int(head["Inference-Header-Content-Length"])
        outputs = json.loads(data[:length])["outputs"]
        assert [o["name"] for o in outputs] == names
        assert all("binary_data_size" in o["parameters"] for o in outputs)
        answer = grpc_infer(url.grpc, arrays)
        assert isinstance(answer, service_pb2.ModelInferResponse), answer
        assert [o.name for o in answer.outputs] == names and len(answer.raw_output_contents) == 3


def test_every_4xx_on_the_model_route_counts_as_a_failure_413_and_415_included(bundle):
    with serve(bundle, "--max-body-bytes", "100000") as url:
        before = stats(url)["inference_stats"]["fail"]["count"]
        path = "/v2/models/small/infer"
        assert http_json(url, path, b"x", {"Content-Encoding": "br"})[0] == 415
        assert http_json(url, path, b"x" * 100_001)[0] == 413
        assert http_json(url, path, gzip.compress(bytes(200_000)), {"Content-Encoding": "gzip"})[0] == 413
        assert http_json(url, path, b"not gzip", {"Content-Encoding": "gzip"})[0] == 400
        assert http_json(url, path, b'{"inputs": 5}')[0] == 400
        assert stats(url)["inference_stats"]["fail"]["count"] - before == 5


def test_help_prints_usage_and_exits_0_and_an_unknown_option_exits_2():
    result = subprocess.run([NODE, "server.js", "--help"], cwd=NODE_DIR, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: node server.js --bundle DIR --port N")
    for flag in ("--grace-seconds", "--max-request-bytes", "--max-body-bytes", "--grpc-port"):
        assert flag in result.stdout
    result = subprocess.run(
        [NODE, "server.js", "--nope", "1"], cwd=NODE_DIR, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and result.stderr.startswith("Error: unknown option --nope")
    result = subprocess.run(
        [NODE, "server.js", "--grace-seconds", "-1", "--bundle", "b", "--port", "0"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "--grace-seconds must be" in result.stderr


# --- a shutdown that always ends -----------------------------------------------------------------------------


def refused(host, port):
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        return True
    return False


@pytest.mark.parametrize("grace", [1, 3])
def test_sigterm_with_a_stalled_upload_stops_accepting_at_once_and_exits_0_after_the_grace(bundle, grace):
    """A client sends its headers (Content-Length 1000) and 10 bytes, then nothing: SIGTERM used to wait for it
    forever (the forced exit was armed only after the drain, which never ended)."""
    with serve(bundle, "--grpc-port", "0", "--grace-seconds", str(grace)) as url:
        host, port = url.split(":")
        stalled = socket.create_connection((host, int(port)), timeout=30)
        stalled.sendall(
            b"POST /v2/models/small/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n0123456789"
        )
        time.sleep(0.5)
        signalled = time.monotonic()
        url.process.terminate()
        time.sleep(0.3)
        assert refused(host, port) and refused(*url.grpc.split(":"))  # at once: no new connection, either protocol
        assert url.process.wait(timeout=grace + 10) == 0
        took = time.monotonic() - signalled
        assert stalled.recv(100) == b""  # closed by the service, unanswered
        stalled.close()
    assert grace - 0.5 <= took <= grace + 4, took


def test_a_request_finished_within_the_grace_is_answered(bundle):
    """The rest of a half-sent body arrives 1 s after SIGTERM, within a 5 s grace: answered 200, then exit 0."""
    sets, _ = vector_sets(bundle)
    body = json_body(sets[0][1])
    with serve(bundle, "--grace-seconds", "5") as url:
        host, port = url.split(":")
        sock = socket.create_connection((host, int(port)), timeout=30)
        sock.sendall(
            b"POST /v2/models/small/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )
        time.sleep(0.3)
        url.process.terminate()
        time.sleep(1)
        sock.sendall(body[10:])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        sock.close()
        assert url.process.wait(timeout=15) == 0
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


# --- inputs checked against each other -----------------------------------------------------------------------

# (what, arrays, the error's words): each was answered 200 before, wrongly
MISMATCHES = [
    (
        "a mask (2, 3, 1) for 4 keys: it broadcast over the keys",
        attention(2, 3, 2, 4, (2, 3, 1)),
        "input 'mask' dim 2 (kv_len) is 1, but input 'key' dim 1 (kv_len) is 4: the inputs must agree on kv_len",
    ),
    (
        "query batch 2, key/value batch 1, mask (2, 1, 2): one 4-key sequence reshaped into two",
        attention(2, 3, 1, 4, (2, 1, 2)),
        "input 'key' dim 0 (batch) is 1, but input 'query' dim 0 (batch) is 2: the inputs must agree on batch",
    ),
    (
        "query batch 1, key/value batch 2",
        attention(1, 3, 2, 4, (1, 1, 4)),
        "input 'key' dim 0 (batch) is 2, but input 'query' dim 0 (batch) is 1: the inputs must agree on batch",
    ),
    (
        "a mask of 2 query rows for 3 queries",
        attention(1, 3, 1, 4, (1, 2, 4)),
        "input 'mask' dim 1 (mask_q_len) is 2, but input 'query' dim 1 (q_len) is 3: mask_q_len must equal "
        "q_len or be 1",
    ),
]


@pytest.fixture(scope="module")
def small_served(bundle):
    with serve(bundle, "--grpc-port", "0") as url:
        yield url


@pytest.mark.parametrize("what,arrays,error", MISMATCHES, ids=[m[0][:40] for m in MISMATCHES])
def test_inputs_that_disagree_on_a_named_dim_are_refused_over_json_binary_and_grpc(small_served, what, arrays, error):
    url = small_served
    refused_everywhere(url, arrays, error, what)
    fine = attention(2, 3, 2, 4, (2, 1, 4))  # mask_q_len 1 broadcasts over the queries: allowed
    assert post(url, json_body(fine))[0] == 200


def with_dims(folder: Path, tmp_path: Path, dims: dict) -> Path:
    """A copy of the bundle whose manifest carries a top-level `dims` field (the field another change adds)."""
    copy = tmp_path / f"{folder.name}-dims"
    shutil.copytree(folder, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["dims"] = dims
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return copy


KV_DIMS = {
    "batch": {"description": "sequences in the batch"},
    "q_len": {"description": "new tokens"},
    "past_len": {"description": "tokens in the cache"},
    "total_len": {"description": "keys attended to", "sum": ["past_len", "q_len"]},
    "mask_q_len": {"description": "the mask's query rows", "is": "q_len", "or_one": True},
}


def kv_arrays(past_len, new, mask_keys, mask_rows=1):
    rng = np.random.default_rng(5)
    return {
        "query": rng.standard_normal((1, new, 16), dtype=np.float32),
        "key": rng.standard_normal((1, new, 16), dtype=np.float32),
        "value": rng.standard_normal((1, new, 16), dtype=np.float32),
        "past_key": rng.standard_normal((1, 2, past_len, 8), dtype=np.float32),
        "past_value": rng.standard_normal((1, 2, past_len, 8), dtype=np.float32),
        "mask": np.ones((1, mask_rows, mask_keys), np.bool_),
    }


def test_a_manifests_dims_field_is_applied_generically(bundle_of, tmp_path):
    """`sum`: total_len (the mask's keys) must be past_len + q_len; `is` with or_one; every rule from the field,
    none named in the code. The same bundle without the field takes a mask of any key count (its total_len
    appears once), and onnxruntime then fails on it."""
    import grpc

    folder = with_dims(bundle_of("--kv-cache", "--mask", "input"), tmp_path, KV_DIMS)
    wrong = (
        "input 'mask' dim 2 (total_len) is 4, but input 'past_key' dim 2 (past_len) 3 + input 'query' dim 1 "
        "(q_len) 2 is 5: total_len must be past_len + q_len"
    )
    with serve(folder, "--grpc-port", "0") as url:
        assert post(url, json_body(kv_arrays(3, 2, 5)))[0] == 200
        assert post(url, json_body(kv_arrays(3, 2, 5, mask_rows=2)))[0] == 200
        assert post(url, json_body(kv_arrays(3, 2, 4))) == (400, {"error": wrong})
        err = grpc_infer(url.grpc, kv_arrays(3, 2, 4))
        assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, wrong)
        status, answer = post(url, json_body(kv_arrays(3, 2, 5, mask_rows=3)))
        assert status == 400 and "mask_q_len must equal q_len or be 1" in answer["error"]
    strict = with_dims(
        bundle_of("--kv-cache", "--mask", "input"),
        tmp_path / "strict",
        {**KV_DIMS, "mask_q_len": {"description": "", "is": "q_len", "or_one": False}},
    )
    with serve(strict, "--no-verify") as url:  # its own golden sets break the strict rule: verified, it is refused
        status, answer = post(url, json_body(kv_arrays(3, 2, 5, mask_rows=1)))
        assert (status, answer["error"]) == (
            400,
            "input 'mask' dim 1 (mask_q_len) is 1, but input 'query' dim 1 (q_len) is 2: mask_q_len must equal q_len",
        )


def test_verify_js_checks_each_sets_inputs_by_the_named_dims(bundle, bundle_of, tmp_path):
    """A rule the golden sets break (q_len must equal kv_len: the sets have 17 queries over 6 keys) fails
    verify.js naming both inputs and the dim; the rules a bundle really has pass, with a KV cache's decode steps."""
    broken = with_dims(bundle, tmp_path, {"q_len": {"description": "", "is": "kv_len"}})
    result = subprocess.run([NODE, "verify.js", str(broken)], cwd=NODE_DIR, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
    assert failed and all(
        "the inputs disagree: input 'query' dim 1 (q_len) is" in line and "but input 'key' dim 1 (kv_len) is" in line
        for line in failed
    ), result.stdout
    kv = with_dims(bundle_of("--kv-cache", "--mask", "input"), tmp_path / "kv", KV_DIMS)
    result = subprocess.run([NODE, "verify.js", str(kv)], cwd=NODE_DIR, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith(" passed, 0 failed"), result.stdout


# --- the work budget ---------------------------------------------------------------------------------------------


def test_a_request_past_the_work_budget_is_refused_before_it_runs_naming_estimate_and_budget(bundle):
    """heads 2, width 16: a (1, 600, 16) query over 600 keys is 4 x (2 x 2 x 600 x 600 + 4 x 9600 + 360000 + 9600)
    = 7,353,600 bytes at its peak, past a budget of 5,000,000 (the body is 475 KB, well under its own limit)."""
    import grpc

    arrays = attention(1, 600, 1, 600, (1, 600, 600))
    estimate = 4 * (2 * 2 * 600 * 600 + 4 * 600 * 16 + 600 * 600)
    with serve(bundle, "--grpc-port", "0", "--max-request-bytes", "5000000") as url:
        body, headers = binary_body(arrays)
        status, _, data = http_json(url, "/v2/models/small/infer", body, headers)
        error = json.loads(data)["error"]
        assert status == 413 and f"about {estimate} bytes" in error and "budget of 5000000 bytes" in error, error
        err = grpc_infer(url.grpc, arrays)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and f"about {estimate} bytes" in err.details()
        assert post(url, json_body(attention(1, 300, 1, 300, (1, 1, 300))))[0] == 200  # 2.2 MB: within it


@pytest.fixture(scope="module")
def mha_bundle(tmp_path_factory):
    """A default export (8 heads, 512 wide), as the issue measured it."""
    from click.testing import CliRunner

    from attn_onnx.cli.export_attn import main as export

    folder = tmp_path_factory.mktemp("mha") / "mha"
    assert CliRunner().invoke(export, ["--bundle", str(folder), "--no-check"]).exit_code == 0
    return folder


def mha_binary(length):
    arrays = {n: np.zeros((1, length, 512), np.float32) for n in ("query", "key", "value")}
    arrays["mask"] = np.ones((1, length, length), np.bool_)
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": n,
                    "shape": list(a.shape),
                    "datatype": DATATYPES[a.dtype],
                    "parameters": {"binary_data_size": a.nbytes},
                }
                for n, a in arrays.items()
            ]
        }
    )
    return head.encode(), b"".join(a.tobytes() for a in arrays.values())


def mha_post(url, head, data, compress=False):
    body = gzip.compress(head + data, 1) if compress else head + data
    headers = {"Inference-Header-Content-Length": str(len(head)), **({"Content-Encoding": "gzip"} if compress else {})}
    status, _, answer = http_json(url, "/v2/models/mha/infer", body, headers)
    return status, answer


def test_a_small_gzip_body_for_a_huge_attention_is_refused_and_memory_comes_back(mha_bundle):
    """The issue's request: a gzip body of zeros (about 25 KB) for a (1, 4096, 512) query, key and value and a
    (1, 1, 4096) mask, 8 heads: it inflates to 25 MB, within the 64 MiB body limit; it used to get 200 and leave RSS
    at 1842 MiB. The estimate (1.1 GB) is past the default budget (1 GiB): 413, before anything runs."""
    arrays = {n: np.zeros((1, 4096, 512), np.float32) for n in ("query", "key", "value")}
    arrays["mask"] = np.ones((1, 1, 4096), np.bool_)
    body, headers = binary_body(arrays)
    head_length = int(headers["Inference-Header-Content-Length"])
    with serve(mha_bundle) as url:
        before = rss_kib(url.process.pid)
        status, _, answer = http_json(
            url, "/v2/models/mha/infer", gzip.compress(body, 1), {**headers, "Content-Encoding": "gzip"}
        )
        assert status == 413 and "past this service's budget of 1073741824 bytes" in json.loads(answer)["error"]
        assert head_length > 0
        after = rss_kib(url.process.pid)
    assert after - before < 200 * 1024, (before, after)  # the inflated 25 MB, not the 1.7 GB a run took


@pytest.mark.slow  # one 3900 x 3900 attention: 10-20 s on 2 cores
def test_after_the_largest_request_the_budget_allows_rss_comes_back_near_its_level_before(mha_bundle):
    """q_len = kv_len = 3900, 8 heads, a full (1, 3900, 3900) mask: an estimate of 1,066 MB, within the default
    1 GiB budget (3968 is past it). Measured (docs/serving-node.md): RSS 134 MiB before, 1684 MiB at the peak,
    262 MiB after with the arena off; with onnxruntime's CPU arena on, 1838 MiB after. Asserted generously:
    within 400 MiB of before."""
    head, data = mha_binary(3900)
    with serve(mha_bundle) as url:
        small_head, small_data = mha_binary(8)
        assert mha_post(url, small_head, small_data)[0] == 200
        before = rss_kib(url.process.pid)
        status, answer = mha_post(url, head, data)
        assert status == 200, answer[:300]
        del answer
        time.sleep(1)
        for _ in range(3):
            assert mha_post(url, small_head, small_data)[0] == 200
        after = rss_kib(url.process.pid)
        print(f"RSS before {before / 1024:.0f} MiB, after {after / 1024:.0f} MiB")
        past, over = mha_binary(3968)
        status, answer = mha_post(url, past, over)
        assert status == 413, answer[:300]
    assert after - before < 400 * 1024, (before, after)


# --- a soak ------------------------------------------------------------------------------------------------------


def test_a_short_soak_of_good_hostile_and_oversized_requests_has_no_wrong_answer(bundle, tmp_path):
    """scripts/soak_node.py for 8 s with 2 clients, HTTP and gRPC: every answer the one its kind expects, every good
    answer within the golden tolerance, SIGTERM then exit 0."""
    import sys

    report = tmp_path / "soak.json"
    result = subprocess.run(
        [
            sys.executable,
            str(NODE_DIR.parents[1] / "scripts" / "soak_node.py"),
            str(bundle),
            "--seconds",
            "8",
            "--clients",
            "2",
            "--json",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    data = json.loads(report.read_text())
    assert data["wrong_answers"] == 0 and data["unexpected"] == 0 and data["exit_code_after_sigterm"] == 0
    kinds = {key.split(" -> ")[0] for key in data["by_kind"]}
    assert {"good-json", "good-binary", "good-grpc"} <= kinds and data["requests"] > 20
