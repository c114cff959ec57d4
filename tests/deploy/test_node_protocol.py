"""The Node service speaks the protocol Triton speaks to its clients: tritonclient.http with its defaults (binary
tensors), tritonclient.grpc, JSON and binary mixed, FP16 in binary, Triton's model-configuration and statistics
extensions, gRPC health and metadata, hostile requests, memory under a thousand of them, and perf_analyzer.

Skipped, visibly, where node or the example's node_modules are absent (perf_analyzer: where
scripts/setup/triton.sh was not run)."""

import json
import re
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.deploy.test_node import pytestmark as node_marks
from tests.deploy.test_node import serve

pytestmark = node_marks
ROOT = Path(__file__).resolve().parents[2]
PERF_ANALYZER = ROOT / ".deps" / "triton" / "bin" / "perf_analyzer"  # scripts/setup/triton.sh
DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.float16): "FP16", np.dtype(np.bool_): "BOOL"}


def load(path: Path) -> np.ndarray:
    return numpy_helper.to_array(onnx.load_tensor(str(path)))


def vector_sets(bundle: Path):
    """Each golden set: (folder, {input name: array}, {output name: expected array}), and the tolerance."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    sets = [
        (
            s["folder"],
            {f["name"]: load(bundle / f["file"]) for f in s["inputs"]},
            {f["name"]: load(bundle / f["file"]) for f in s["outputs"]},
        )
        for s in manifest["test_data_sets"]
    ]
    return sets, manifest["tolerance"]


def assert_close(actual, expected, tol, what):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (what, actual.shape, actual.dtype)
    assert np.isfinite(actual.astype(np.float64)).all(), what
    np.testing.assert_allclose(
        actual.astype(np.float64), expected.astype(np.float64), atol=tol["atol"], rtol=tol["rtol"], err_msg=what
    )


def client_inputs(module, arrays, binary=True):
    """tritonclient InferInputs for `arrays`; `binary` (HTTP only): True, False, or a set of the binary names."""
    inputs = []
    for name, array in arrays.items():
        tensor = module.InferInput(name, list(array.shape), DATATYPES[array.dtype])
        if module.__name__.endswith("http"):
            tensor.set_data_from_numpy(array, binary_data=binary if isinstance(binary, bool) else name in binary)
        else:
            tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


@pytest.fixture(scope="module")
def served(bundle):
    with serve(bundle, "--grpc-port", "0") as url:
        yield url


def http_json(url, path, body=None, headers=None):
    """(status, headers, body bytes) of a GET (or a POST of `body`)."""
    request = urllib.request.Request(
        f"http://{url}{path}", data=body, headers=headers or {}, method="GET" if body is None else "POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def stats(url):
    return json.loads(http_json(url, "/v2/models/small/stats")[2])["model_stats"][0]


# --- answers ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_tritonclient_with_its_defaults_gets_every_golden_set(bundle, served, protocol):
    """HTTP: binary inputs (set_data_from_numpy's default) and binary outputs (no outputs listed:
    binary_data_output; listed: InferRequestedOutput's default binary_data=True). gRPC: raw_input_contents."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    module, url = (httpclient, served) if protocol == "http" else (grpcclient, served.grpc)
    client = module.InferenceServerClient(url=url)
    sets, tol = vector_sets(bundle)
    for folder, arrays, expected in sets:
        for outputs in (None, [module.InferRequestedOutput("output")]):
            result = client.infer("small", client_inputs(module, arrays), outputs=outputs, request_id=folder)
            response = result.get_response()
            assert (response["id"] if protocol == "http" else response.id) == folder
            assert_close(result.as_numpy("output"), expected["output"], tol, f"{protocol} {folder}")


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
def test_a_compressed_request_is_inflated_first(bundle, served, compression):
    """tritonclient's request_compression_algorithm: the whole body compressed, Inference-Header-Content-Length
    counting the inflated bytes."""
    import tritonclient.http as httpclient

    sets, tol = vector_sets(bundle)
    folder, arrays, expected = sets[4]
    result = httpclient.InferenceServerClient(url=served).infer(
        "small", client_inputs(httpclient, arrays), request_compression_algorithm=compression
    )
    assert_close(result.as_numpy("output"), expected["output"], tol, f"{compression} {folder}")


def test_the_binary_answer_is_laid_out_as_triton_lays_it_out(bundle, served):
    """The JSON header, then each binary output's bytes; Inference-Header-Content-Length the header's size;
    each output's parameters.binary_data_size its byte count; BOOL would be one byte per element."""
    sets, tol = vector_sets(bundle)
    _, arrays, expected = sets[1]
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
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
        }
    ).encode()
    body = head + b"".join(np.ascontiguousarray(a).tobytes() for a in arrays.values())
    assert arrays["mask"].nbytes == arrays["mask"].size  # BOOL: a byte each
    status, headers, answer = http_json(
        served, "/v2/models/small/infer", body, {"Inference-Header-Content-Length": str(len(head))}
    )
    assert status == 200, answer
    length = int(headers["Inference-Header-Content-Length"])
    assert headers["Content-Type"] == "application/octet-stream"
    meta = json.loads(answer[:length])
    out = expected["output"]
    assert meta["outputs"] == [
        {"name": "output", "datatype": "FP32", "shape": list(out.shape), "parameters": {"binary_data_size": out.nbytes}}
    ]
    assert len(answer) == length + out.nbytes
    assert_close(np.frombuffer(answer[length:], np.float32).reshape(out.shape), out, tol, "binary answer")


def test_json_and_binary_inputs_and_outputs_mixed(bundle_of):
    """A KV-cache model (three outputs) decoded step by step over HTTP: query and past_value binary, the rest
    JSON; output and present_value back binary, present_key as JSON; each step's present_* threaded into the
    next step's past_* by the client, the first step's past empty (binary_data_size 0)."""
    import tritonclient.http as httpclient

    folder = bundle_of("--kv-cache")
    manifest = json.loads((folder / "manifest.json").read_text())
    tol = manifest["tolerance"]
    past = {
        name: np.zeros(manifest["decode"]["first_past"]["shape"], np.float32)
        for name in manifest["decode"]["thread"].values()
    }
    with serve(folder) as url:
        client = httpclient.InferenceServerClient(url=url)
        for step in manifest["decode"]["steps"]:
            arrays = {f["name"]: load(folder / f["file"]) for f in step["inputs"]} | past
            outputs = [
                httpclient.InferRequestedOutput("output"),
                httpclient.InferRequestedOutput("present_key", binary_data=False),
                httpclient.InferRequestedOutput("present_value"),
            ]
            result = client.infer(
                "small", client_inputs(httpclient, arrays, binary={"query", "past_value"}), outputs=outputs
            )
            kinds = {o["name"]: "data" in o for o in result.get_response()["outputs"]}
            assert kinds == {"output": False, "present_key": True, "present_value": False}
            for f in step["outputs"]:
                assert_close(result.as_numpy(f["name"]), load(folder / f["file"]), tol, f"{step['folder']} {f['name']}")
            past = {p: result.as_numpy(present) for present, p in manifest["decode"]["thread"].items()}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_fp16_travels_binary_and_is_answered_within_the_float16_tolerance(float16_bundle, protocol):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    sets, tol = vector_sets(float16_bundle)
    with serve(float16_bundle, "--grpc-port", "0") as url:
        module = httpclient if protocol == "http" else grpcclient
        client = module.InferenceServerClient(url=url if protocol == "http" else url.grpc)
        meta = client.get_model_metadata("small")
        datatypes = [i["datatype"] for i in meta["inputs"]] if protocol == "http" else [i.datatype for i in meta.inputs]
        assert datatypes == ["FP16", "FP16", "FP16", "BOOL"]
        for folder, arrays, expected in sets:
            result = client.infer("small", client_inputs(module, arrays))
            assert_close(result.as_numpy("output"), expected["output"], tol, f"{protocol} {folder}")
        if protocol == "http":  # JSON has no float16: refused both ways, naming the way out
            _, arrays, _ = sets[0]
            status, _, answer = http_json(
                url,
                "/v2/models/small/infer",
                json.dumps(
                    {
                        "inputs": [
                            {
                                "name": n,
                                "shape": list(a.shape),
                                "datatype": DATATYPES[a.dtype],
                                "data": a.astype(np.float32).ravel().tolist()
                                if a.dtype != bool
                                else a.ravel().tolist(),
                            }
                            for n, a in arrays.items()
                        ]
                    }
                ).encode(),
            )
            assert status == 400 and "FP16 cannot travel as JSON" in json.loads(answer)["error"]
            with pytest.raises(Exception, match="FP16, which JSON cannot hold"):
                client.infer(
                    "small",
                    client_inputs(module, arrays),
                    outputs=[httpclient.InferRequestedOutput("output", binary_data=False)],
                )


# --- metadata, configuration, statistics ---------------------------------------------------------------------


def test_server_metadata_lists_its_extensions_and_grpc_answers_health_and_metadata(bundle, served):
    import grpc
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    meta = json.loads(http_json(served, "/v2")[2])
    assert set(meta["extensions"]) == {"binary_tensor_data", "model_configuration", "statistics"}
    client = grpcclient.InferenceServerClient(url=served.grpc)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("small")
    assert not client.is_model_ready("other") and not client.is_model_ready("small", "2")
    assert list(client.get_server_metadata().extensions) == meta["extensions"]
    grpc_meta = client.get_model_metadata("small", as_json=True)
    http_meta = json.loads(http_json(served, "/v2/models/small")[2])
    assert grpc_meta["inputs"] == [{**i, "shape": [str(d) for d in i["shape"]]} for i in http_meta["inputs"]]
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("other")
    assert info.value.status() == str(grpc.StatusCode.NOT_FOUND) and "no model 'other'" in info.value.message()


def test_the_model_configuration_is_tritons_and_matches_the_manifest(bundle, served):
    """GET /v2/models/NAME/config and gRPC ModelConfig: Triton's ModelConfig (parsed by Triton's own protobuf,
    every field known to it), max_batch_size 0 with full dims, -1 where free."""
    import tritonclient.grpc as grpcclient
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2

    manifest = json.loads((bundle / "manifest.json").read_text())
    config = json.loads(http_json(served, "/v2/models/small/config")[2])
    proto = json_format.ParseDict(config, model_config_pb2.ModelConfig())  # unknown fields would raise
    assert proto.max_batch_size == 0 and proto.name == "small" and proto.platform == "onnxruntime_onnx"
    types = {"FP32": model_config_pb2.TYPE_FP32, "BOOL": model_config_pb2.TYPE_BOOL}
    assert [(i.name, i.data_type, list(i.dims)) for i in proto.input] == [
        (i["name"], types[i["datatype"]], i["shape"]) for i in manifest["inputs"]
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in proto.output] == [
        (o["name"], types[o["datatype"]], o["shape"]) for o in manifest["outputs"]
    ]
    over_grpc = grpcclient.InferenceServerClient(url=served.grpc).get_model_config("small").config
    assert over_grpc.input == proto.input and over_grpc.output == proto.output
    assert over_grpc.max_batch_size == 0
    assert over_grpc.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


def test_statistics_count_every_request_and_time_its_parts(bundle, served):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    sets, _ = vector_sets(bundle)
    _, arrays, _ = sets[1]
    before = stats(served)
    for _ in range(3):
        httpclient.InferenceServerClient(url=served).infer("small", client_inputs(httpclient, arrays))
    grpcclient.InferenceServerClient(url=served.grpc).infer("small", client_inputs(grpcclient, arrays))
    assert http_json(served, "/v2/models/small/infer", b'{"inputs": 5}')[0] == 400
    after = stats(served)
    grew = {
        k: after["inference_stats"][k]["count"] - before["inference_stats"][k]["count"]
        for k in after["inference_stats"]
    }
    assert grew == {
        "success": 4,
        "fail": 1,
        "queue": 4,
        "compute_input": 4,
        "compute_infer": 4,
        "compute_output": 4,
        "cache_hit": 0,
        "cache_miss": 0,
    }
    assert after["inference_count"] - before["inference_count"] == 4
    assert after["execution_count"] - before["execution_count"] == 4
    ns = {k: after["inference_stats"][k]["ns"] - before["inference_stats"][k]["ns"] for k in grew}
    assert ns["compute_infer"] > 0 and ns["compute_input"] > 0 and ns["compute_output"] > 0 and ns["fail"] > 0
    assert ns["success"] >= ns["compute_input"] + ns["compute_infer"] + ns["compute_output"]
    assert after["last_inference"] >= before["last_inference"]
    assert after["batch_stats"][0]["batch_size"] == 1
    assert after["batch_stats"][0]["compute_infer"] == after["inference_stats"]["compute_infer"]
    over_grpc = grpcclient.InferenceServerClient(url=served.grpc).get_inference_statistics("small", as_json=True)
    assert int(over_grpc["model_stats"][0]["inference_count"]) == after["inference_count"]
    assert json.loads(http_json(served, "/v2/models/stats")[2])["model_stats"][0]["name"] == "small"


# --- hostile requests ----------------------------------------------------------------------------------------


def hostile_http(arrays):
    """(description, headers, body) of binary requests that must each get a 400."""

    def binary(sizes=None, header=None, cut=0, extra=b""):
        inputs = [
            {
                "name": n,
                "shape": list(a.shape),
                "datatype": DATATYPES[a.dtype],
                "parameters": {"binary_data_size": (sizes or {}).get(n, a.nbytes)},
            }
            for n, a in arrays.items()
        ]
        head = json.dumps({"inputs": inputs}).encode()
        body = head + b"".join(a.tobytes() for a in arrays.values()) + extra
        return {"Inference-Header-Content-Length": str(len(head)) if header is None else header}, body[
            : len(body) - cut
        ]

    q = arrays["query"].nbytes
    return [
        ("negative size", *binary({"query": -4})),
        ("fractional size", *binary({"query": q + 0.5})),
        ("size as a string", *binary({"query": str(q)})),
        ("size not shape x element", *binary({"query": q - 4})),
        ("a terabyte declared", *binary({"query": 2**40})),
        ("header past the body", *binary(header="99999999")),
        ("header not a number", *binary(header="12abc")),
        ("body cut short", *binary(cut=5)),
        ("bytes left over", *binary(extra=b"\0" * 8)),
    ]


def hostile_grpc(arrays):
    """(description, ModelInferRequest, expected status name) of gRPC requests that must each be refused."""
    from tritonclient.grpc import service_pb2

    def request(model="small", raw=None, shape=None, output=None, typed=False):
        r = service_pb2.ModelInferRequest(model_name=model)
        for n, a in arrays.items():
            t = r.inputs.add(name=n, datatype=DATATYPES[a.dtype], shape=(shape or {}).get(n, a.shape))
            if typed:
                t.contents.fp32_contents.extend(
                    a.ravel().tolist()
                ) if a.dtype != bool else t.contents.bool_contents.extend(a.ravel().tolist())
        if not typed:
            contents = [a.tobytes() for a in arrays.values()]
            r.raw_input_contents.extend(raw(contents) if raw else contents)
        if output:
            r.outputs.add(name=output)
        return r

    return [
        ("raw contents for 3 of 4 inputs", request(raw=lambda c: c[:3]), "INVALID_ARGUMENT"),
        ("raw contents 4 bytes short", request(raw=lambda c: [c[0][:-4], *c[1:]]), "INVALID_ARGUMENT"),
        ("a negative dim", request(shape={"query": [-1, *arrays["query"].shape[1:]]}), "INVALID_ARGUMENT"),
        ("a terabyte shape", request(shape={"query": [2**20, 2**20, 16]}), "INVALID_ARGUMENT"),
        ("an output that does not exist", request(output="nope"), "INVALID_ARGUMENT"),
        ("another model", request(model="other"), "NOT_FOUND"),
        (
            "typed contents 1 short",
            request(typed=True, shape={"query": [*arrays["query"].shape[:2], 17]}),
            "INVALID_ARGUMENT",
        ),
    ]


def rss_kib(pid):
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def test_a_thousand_hostile_requests_get_4xx_and_leave_memory_near_its_baseline(bundle):
    """Binary HTTP requests with bad sizes, headers and bodies, and bad gRPC requests, 1000 in all, each about
    100 KB (so that keeping any part of each would show as tens of MB): each refused with its 4xx or gRPC status,
    the service still right afterwards, its RSS near where it settled."""
    import grpc
    import tritonclient.http as httpclient
    from tritonclient.grpc import service_pb2_grpc

    sets, tol = vector_sets(bundle)
    _, good, expected = sets[1]
    rng = np.random.default_rng(1)
    arrays = {name: rng.standard_normal((8, 64, 16), dtype=np.float32) for name in ("query", "key", "value")}
    arrays["mask"] = np.ones((8, 1, 64), np.bool_)
    http_cases, grpc_cases = hostile_http(arrays), hostile_grpc(arrays)
    with serve(bundle, "--grpc-port", "0") as url:
        channel = grpc.insecure_channel(url.grpc)
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        host, port = url.split(":")

        def send_all(rounds):
            import http.client

            connection = http.client.HTTPConnection(host, int(port), timeout=30)
            for _ in range(rounds):
                for what, headers, body in http_cases:
                    connection.request("POST", "/v2/models/small/infer", body=body, headers=headers)
                    response = connection.getresponse()
                    answer = json.loads(response.read())
                    assert response.status == 400, (what, answer)
                for what, request, status in grpc_cases:
                    with pytest.raises(grpc.RpcError) as info:
                        stub.ModelInfer(request, timeout=30)
                    assert info.value.code() == getattr(grpc.StatusCode, status), (what, info.value.details())
            connection.close()

        send_all(10)  # warm up: the allocator and JIT settle
        settled = rss_kib(url.process.pid)
        rounds = 1000 // (len(http_cases) + len(grpc_cases))
        send_all(rounds // 2)  # V8's heap may still grow once here, whatever the requests
        middle = rss_kib(url.process.pid)
        send_all(rounds - rounds // 2)  # a leak grows again, by as much
        grown = rss_kib(url.process.pid) - middle
        result = httpclient.InferenceServerClient(url=url).infer("small", client_inputs(httpclient, good))
        assert_close(result.as_numpy("output"), expected["output"], tol, "after the hostile requests")
        channel.close()
    print(
        f"RSS after warm-up {settled} KiB; {middle - settled:+d} KiB over the first half of "
        f"{rounds * (len(http_cases) + len(grpc_cases))} hostile requests, {grown:+d} KiB over the second"
    )
    # keeping 16 bytes of each ~100 KB body grew it by 43-54 MiB over all of them (20-27 MiB a half); on this
    # shared machine the heap's one-time growth reached 9 MiB over the whole run, in the first half
    assert grown < 12 * 1024


def test_a_client_gone_mid_body_leaves_the_service_serving(bundle, served):
    """The body declared 1 MB, 1 KB sent, the connection closed: nothing to answer, nothing kept."""
    host, port = served.split(":")
    for _ in range(20):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                b"POST /v2/models/small/infer HTTP/1.1\r\nHost: x\r\nInference-Header-Content-Length: 10\r\n"
                b"Content-Length: 1000000\r\n\r\n" + b"x" * 1024
            )
    test_tritonclient_with_its_defaults_gets_every_golden_set(bundle, served, "http")


# --- perf_analyzer -------------------------------------------------------------------------------------------


@pytest.mark.skipif(not PERF_ANALYZER.exists(), reason="perf_analyzer is not installed: run scripts/setup/triton.sh")
@pytest.mark.parametrize("protocol", ["http", "http-json", "grpc"])
def test_perf_analyzer_drives_the_service_and_reads_its_statistics(bundle, served, protocol):
    """perf_analyzer reads the model's config and metadata, sends binary (or JSON) tensors over HTTP or gRPC, and
    reports the server's own statistics (it asks for them because the server lists the extension)."""
    shapes = ["--shape", "query:1,8,16", "--shape", "key:1,8,16", "--shape", "value:1,8,16", "--shape", "mask:1,1,8"]
    args = [
        "-m",
        "small",
        "--concurrency-range",
        "1",
        "--measurement-interval",
        "300",
        "--stability-percentage",
        "10000",
        "--max-trials",
        "3",
        *shapes,
    ]  # 3 windows of 0.3 s, no stability asked
    if protocol == "grpc":
        args += ["-i", "grpc", "-u", served.grpc]
    else:
        args += ["-i", "http", "-u", served]
    if protocol == "http-json":
        args += ["--input-tensor-format", "json", "--output-tensor-format", "json", "--input-data", "zero"]
    result = subprocess.run([str(PERF_ANALYZER), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    client = int(re.search(r"Client: \n\s+Request count: (\d+)", result.stdout)[1])
    server = int(re.search(r"Server: \n\s+Inference count: (\d+)", result.stdout)[1])
    assert client > 0 and abs(server - client) <= 2, result.stdout  # the statistics counted what was sent
    assert int(re.search(r"compute infer (\d+) usec", result.stdout)[1]) > 0, result.stdout
