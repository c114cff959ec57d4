"""A real Triton server (tritonserver 2.51 from the nvidia-pytriton wheel, scripts/setup/triton.sh) serves the
repositories export-attn writes, checked through Triton's own clients: tritonclient.http with binary tensors
(its default) and with JSON, and tritonclient.grpc.

One server for the session, on 127.0.0.1 with free ports, stopped by its PID at the end (also on failure). Its
repository: the bundle's model with --triton-backend python (`small`), a KV-cache model (`kv`), the same model
with a long dynamic-batching delay (`batched`), a float16 one (`half`), the onnxruntime-backend form (`ortb`,
which this server cannot load: it has no onnxruntime backend), a copy of `small` with a small work budget
(`tight`), a python-backend copy with a broken config (`broken`, the control), and copies of `small` with a golden
output changed and re-signed, verified (`tampered`, not served) and not (`unverified`, served).
Skipped, visibly, where .deps/triton is absent (the setup script was not run).
"""

import json
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from attn_onnx.cli.export_attn import main as export
from tests.deploy.conftest import SMALL
from tests.deploy.tamper import move_a_value, rehash

pytest.importorskip("tritonclient.http", reason="tritonclient[http,grpc] is a test extra")
pytest.importorskip("tritonclient.grpc", reason="tritonclient[http,grpc] is a test extra")

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from attn_onnx.bench import servers
from attn_onnx.runtime_check.compare import OutputComparison, Tolerance

ROOT = Path(__file__).resolve().parents[2]
DEPS = ROOT / ".deps" / "triton"
pytestmark = pytest.mark.skipif(
    not (DEPS / "bin" / "tritonserver").exists(),
    reason="no Triton here: run `bash scripts/setup/triton.sh` (it unpacks the "
    "nvidia-pytriton wheel into .deps/triton)",
)
TIGHT_BUDGET = 100_000  # bytes: (1, 6, 6) requests fit, (4, 40, 40) ones do not
BATCH_DELAY_US = 300_000  # `batched` holds a request this long for others to join its batch
MISSING_BACKEND = (
    "Invalid argument: unable to find backend library for backend 'onnxruntime', try specifying "
    "runtime on the model configuration."
)


def model_stats(server, model: str) -> dict:
    """The model's entry of GET /v2/models/MODEL/stats (Triton's statistics extension)."""
    status, body = servers.http_json(f"http://{server.http}/v2/models/{model}/stats")
    assert status == 200, body
    return body["model_stats"][0]


def _export(*args):
    result = CliRunner().invoke(export, [*SMALL, *args, "--no-check"])  # the golden sets check what Triton serves
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="session")
def live(tmp_path_factory):
    """The running server, with the bundles its models were exported with (the same weights: seed 0)."""
    root = tmp_path_factory.mktemp("triton-live")
    repo, bundles = root / "repo", {"small": root / "small", "kv": root / "kv"}
    _export(
        "--bundle", str(bundles["small"]), "--triton-repo", str(repo), "--triton-backend", "python", "--name", "small"
    )
    _export(
        "--kv-cache",
        "--bundle",
        str(bundles["kv"]),
        "--triton-repo",
        str(repo),
        "--triton-backend",
        "python",
        "--name",
        "kv",
    )
    _export(
        "--triton-repo",
        str(repo),
        "--triton-backend",
        "python",
        "--name",
        "batched",
        "--triton-max-queue-delay-us",
        str(BATCH_DELAY_US),
    )
    _export("--triton-repo", str(repo), "--triton-backend", "python", "--name", "half", "--dtype", "float16")
    _export("--triton-repo", str(repo), "--name", "ortb")  # the default: onnxruntime backend
    shutil.copytree(repo / "small", repo / "tight")  # `small` with a work budget of TIGHT_BUDGET bytes
    config = (repo / "tight" / "config.pbtxt").read_text().replace('name: "small"', 'name: "tight"')
    budget = f'key: "max_request_bytes" value: {{ string_value: "{1 << 30}" }}'
    assert budget in config
    tight = budget.replace(str(1 << 30), str(TIGHT_BUDGET))
    (repo / "tight" / "config.pbtxt").write_text(config.replace(budget, tight))
    shutil.copytree(repo / "small", repo / "broken")
    config = (repo / "broken" / "config.pbtxt").read_text().replace('name: "small"', 'name: "broken"')
    (repo / "broken" / "config.pbtxt").write_text(config.replace("dims: [ -1, 16 ]", "dims: [ ]", 1))
    for copy, verify in (("tampered", "true"), ("unverified", "false")):  # `small`, a golden output changed and
        shutil.copytree(repo / "small", repo / copy)  # re-signed: only the numbers can tell
        move_a_value(repo / copy / "1" / "test_data_set_2" / "output_0.pb")
        rehash(repo / copy / "1")
        config = (repo / copy / "config.pbtxt").read_text().replace('name: "small"', f'name: "{copy}"')
        written = 'key: "attn_onnx.verify" value: { string_value: "true" }'
        assert written in config
        (repo / copy / "config.pbtxt").write_text(config.replace(written, written.replace("true", verify)))
    # --exit-on-error=false: up despite `ortb`, `broken` and `tampered`;
    # --strict-readiness=false: ready means ready to serve
    # the models that loaded (with the default, one model that failed keeps /v2/health/ready at 400)
    with servers.TritonServer(
        repo, "--exit-on-error=false", "--strict-readiness=false", log_path=root / "tritonserver.log", root=DEPS
    ) as server:
        server.repo, server.bundles = repo, bundles
        yield server
    assert server.process is None  # stopped


def _load(folder: Path, entry: dict) -> np.ndarray:
    return numpy_helper.to_array(onnx.load_tensor(str(folder / entry["file"])))


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _tolerance(manifest: dict) -> Tolerance:
    return Tolerance(atol=float(manifest["tolerance"]["atol"]), rtol=float(manifest["tolerance"]["rtol"]))


DATATYPES = {"float32": "FP32", "float16": "FP16", "bool": "BOOL"}


class Client:
    """One of Triton's clients, as a caller would use it: infer(model, feeds) -> outputs."""

    def __init__(self, kind: str, server, **options):
        self.kind = kind
        self.module = grpcclient if kind == "grpc" else httpclient
        self.client = self.module.InferenceServerClient(server.grpc if kind == "grpc" else server.http, **options)
        self.last = None

    def request(self, feeds: dict, outputs: list[str]) -> dict:
        """The client's InferInput and InferRequestedOutput objects: binary tensors but for http-json."""
        binary = {} if self.kind != "http-json" else {"binary_data": False}
        inputs = []
        for name, array in feeds.items():
            tensor = self.module.InferInput(name, list(array.shape), DATATYPES[str(array.dtype)])
            tensor.set_data_from_numpy(array, **binary)
            inputs.append(tensor)
        return {"inputs": inputs, "outputs": [self.module.InferRequestedOutput(name, **binary) for name in outputs]}

    def infer(self, model: str, feeds: dict, outputs: list[str]) -> dict:
        self.last = self.client.infer(model, **self.request(feeds, outputs))
        return {name: self.last.as_numpy(name) for name in outputs}


CLIENTS = ["http-binary", "http-json", "grpc"]


@pytest.fixture
def client_of(live):
    """client_of(kind) -> a Client; all closed after the test (an open HTTP connection holds Triton's exit)."""
    made = []

    def make(kind, **options):
        made.append(Client(kind, live, **options))
        return made[-1]

    yield make
    for client in made:
        client.client.close()


@pytest.mark.parametrize("kind", CLIENTS)
def test_every_golden_set_within_the_manifest_tolerance(live, client_of, kind):
    folder = live.bundles["small"]
    manifest = _manifest(folder)
    client, failed = client_of(kind), []
    assert len(manifest["test_data_sets"]) == 5
    for entry in manifest["test_data_sets"]:
        feeds = {f["name"]: _load(folder, f) for f in entry["inputs"]}
        expected = {f["name"]: _load(folder, f) for f in entry["outputs"]}
        outputs = client.infer("small", feeds, list(expected))
        for name, golden in expected.items():
            result = OutputComparison.measure(name, outputs[name], golden, "float32", _tolerance(manifest))
            if not result:
                failed.append(f"{entry['case']}: {result.failures}")
    assert not failed
    if kind != "grpc":  # the answer came back in the form asked for: binary after the JSON header, or JSON data
        output = client.last.get_output("output")
        if kind == "http-binary":
            assert output["parameters"]["binary_data_size"] == outputs["output"].nbytes and "data" not in output
        else:
            assert "data" in output and "binary_data_size" not in output.get("parameters", {})


@pytest.mark.parametrize("kind", CLIENTS)
def test_kv_cache_decode_threads_present_into_past(live, client_of, kind):
    """The bundle's decode set: step 0 from an empty cache, each later step fed the server's own present_*
    from the step before, each step within tolerance of the float64 golden."""
    folder = live.bundles["kv"]
    manifest = _manifest(folder)
    decode, client = manifest["decode"], client_of(kind)
    past = {name: np.zeros(decode["first_past"]["shape"], np.float32) for name in decode["thread"].values()}
    lengths = []
    for step in decode["steps"]:
        feeds = {f["name"]: _load(folder, f) for f in step["inputs"]}
        expected = {f["name"]: _load(folder, f) for f in step["outputs"]}
        outputs = client.infer("kv", {**feeds, **past}, list(expected))
        for name, golden in expected.items():
            result = OutputComparison.measure(name, outputs[name], golden, "float32", _tolerance(manifest))
            assert result, (step["folder"], result.failures)
        past = {decode["thread"][name]: outputs[name] for name in decode["thread"]}
        lengths.append(past["past_key"].shape[2])
    assert lengths == [4, 5, 6, 7]  # the cache grew by the prefill, then a token a step


def _feeds(rng, batch=1, length=6, kv_len=6):
    x = rng.standard_normal((batch, length, 16), dtype=np.float32)
    kv = x if kv_len == length else rng.standard_normal((batch, kv_len, 16), dtype=np.float32)
    mask = np.ones((batch, length, kv_len), bool)
    mask[:, :, kv_len * 2 // 3 :] = False  # padding
    return {"query": x, "key": kv, "value": kv, "mask": mask}


def _requests(stats: dict) -> tuple[int, int, int]:
    return (
        stats["execution_count"],
        stats["inference_stats"]["success"]["count"],
        stats["inference_stats"]["fail"]["count"],
    )


def test_dynamic_batching_runs_concurrent_requests_together(live, client_of):
    """8 concurrent requests (and one with a mask that does not fit its keys) reach `batched`, whose batcher
    waits for them: they run in fewer executions than requests; each good one gets its own answer, the same as
    alone through `small`; the bad one gets its own error and spoils no other."""
    rng = np.random.default_rng(7)
    good = [_feeds(rng) for _ in range(8)]
    bad = _feeds(rng)
    bad["mask"] = bad["mask"][:, :, :4]  # 4 keys' worth of mask for 6 keys
    client = client_of("http-binary", concurrency=9)  # tritonclient's own concurrency: 9 connections
    alone = [client.infer("small", feeds, ["output"])["output"] for feeds in good]
    before = model_stats(live, "batched")
    handles = [client.client.async_infer("batched", **client.request(feeds, ["output"])) for feeds in [*good, bad]]
    answers, errors = [None] * 9, [None] * 9
    for i, handle in enumerate(handles):
        try:
            answers[i] = handle.get_result(timeout=60).as_numpy("output")
        except InferenceServerException as exc:
            errors[i] = str(exc)
    deadline = time.monotonic() + 10  # Triton counts a request once its response is sent: read until all 9 are
    while True:
        executions, success, fail = np.subtract(_requests(model_stats(live, "batched")), _requests(before))
        if success + fail >= 9 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert errors[:8] == [None] * 8
    for answer, expected in zip(answers[:8], alone):  # each its own answer, as alone (to float32's roundoff)
        np.testing.assert_allclose(answer, expected, rtol=1e-4, atol=1e-5)
    # refused by the dims contract before it runs (it used to reach onnxruntime: "Attempting to broadcast...")
    assert answers[8] is None and "input 'mask' dim 2 (kv_len) is 4, but input 'key' dim 1 (kv_len) is 6" in errors[8]
    assert success + fail == 9  # (the Python backend counts a request answered with an error as a success)
    assert executions < 9, f"{executions} executions for 9 requests"


@pytest.mark.parametrize("kind", ["http-binary", "grpc"])  # JSON has no float16
def test_a_float16_model_is_served_in_float16(live, client_of, kind):
    """`half` (--dtype float16) answers FP16 tensors as onnxruntime in-process does with the same model."""
    import onnxruntime

    rng = np.random.default_rng(3)
    feeds = {name: rng.standard_normal((2, 5, 16)).astype(np.float16) for name in ("query", "key", "value")}
    feeds["mask"] = np.arange(5)[None, None, :] < np.array([5, 3])[:, None, None]  # (2, 1, 5): padding
    answer = client_of(kind).infer("half", feeds, ["output"])["output"]
    session = onnxruntime.InferenceSession(str(live.repo / "half" / "1" / "model.onnx"))
    expected = session.run(None, feeds)[0]
    assert answer.dtype == np.float16 and answer.shape == (2, 5, 16)
    np.testing.assert_allclose(answer.astype(np.float32), expected.astype(np.float32), rtol=4e-3, atol=4e-3)


def test_health_and_readiness(live, client_of):
    http, grpc = client_of("http-binary").client, client_of("grpc").client
    for client in (http, grpc):
        assert client.is_server_live() and client.is_server_ready()
        assert [client.is_model_ready(m) for m in ("small", "kv", "batched", "half", "ortb", "broken")] == [
            True,
            True,
            True,
            True,
            False,
            False,
        ]
    assert http.get_server_metadata()["version"] == "2.51.0"
    metadata = http.get_model_metadata("small")
    assert metadata["platform"] == "python" and [i["name"] for i in metadata["inputs"]] == [
        "query",
        "key",
        "value",
        "mask",
    ]


def test_a_model_whose_golden_set_fails_here_is_not_ready_unless_verification_is_off(live, client_of):
    """model.py's initialize runs the version folder's golden sets on the server's own onnxruntime: `tampered`
    (an output changed and re-signed) is not ready, and Triton gives the one line naming the set and the runtime
    as the reason; `unverified` (attn_onnx.verify "false") is served, and the log says the sets were not run.
    The log gives the start-up cost of the verification."""
    import re

    import onnxruntime

    index = live.index()
    runtime = f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider)"
    assert index["tampered"]["state"] == "UNAVAILABLE" and index["unverified"]["state"] == "READY"
    assert (
        f"tampered: golden set test_data_set_2 (b2.q6.kv6.masked_row) fails on {runtime}: output: max_abs=0.001 "
        "beyond atol=1e-05, rtol=0.0001; not serving"
    ) in index["tampered"]["reason"]
    client = client_of("http-binary").client
    assert not client.is_model_ready("tampered") and client.is_model_ready("unverified")
    log = live.log_path.read_text(errors="replace")
    assert "unverified: verification skipped (attn_onnx.verify is false): the bundle's golden sets were not run" in log
    for name, sets, steps in (("small", 5, 0), ("kv", 4, 4)):
        found = re.search(
            rf"{name}: {sets} golden sets and {steps} decode steps passed on {re.escape(runtime)} "
            r"\(max_abs [0-9.e-]+\) in (\d+) ms",
            log,
        )
        assert found, f"no verification line for {name} in the log"
        print(f"{name}: verified in {found.group(1)} ms at start")


def test_onnxruntime_backend_model_is_unavailable_for_the_missing_backend_only(live, client_of):
    """`ortb` fails for one reason: this server has no onnxruntime backend. Its config is the one Triton loads and
    serves as `small` but for the backend line; and Triton does check a python-backend config (the control,
    `broken`, fails on its dims), so nothing else is wrong with it."""
    index = live.index()
    assert index["ortb"]["state"] == "UNAVAILABLE" and index["ortb"]["reason"] == MISSING_BACKEND
    assert index["small"]["state"] == "READY"
    assert index["broken"]["state"] == "UNAVAILABLE"
    assert index["broken"]["reason"] == "Invalid argument: model input 'query' must specify 'dims' for broken"
    ortb = (live.repo / "ortb" / "config.pbtxt").read_text()
    small = (live.repo / "small" / "config.pbtxt").read_text()
    spinning = 'parameters { key: "session.intra_op.allow_spinning" value: { string_value: "0" } }\n'
    tail = small[small.index(spinning) :]  # model.py's parameters (the session's, the dims contract, the budget)
    assert '"attn_onnx.dims"' in tail and '"max_request_bytes"' in tail  # the onnxruntime backend's config has none
    assert ortb.replace('name: "ortb"', 'name: "small"').replace(
        'backend: "onnxruntime"', 'backend: "python"'
    ) == small.removesuffix(tail)
    served = client_of("http-binary").client.get_model_config("small")
    assert served["backend"] == "python" and served["max_batch_size"] == 8
    assert [(i["name"], i["data_type"], i["dims"]) for i in served["input"]] == [
        ("query", "TYPE_FP32", [-1, 16]),
        ("key", "TYPE_FP32", [-1, 16]),
        ("value", "TYPE_FP32", [-1, 16]),
        ("mask", "TYPE_BOOL", [-1, -1]),
    ]


def test_perf_analyzer_drives_the_server(live, tmp_path):
    """bench-attn serve's perf_analyzer (tritonclient 2.51's build) and its input file, against `small`: the
    server counts the requests it sent, and every one succeeded."""
    from attn_onnx.bench import serve

    data = tmp_path / "data.json"
    serve.input_data(data, 2, 8, 16, batched=True)
    before = _requests(model_stats(live, "small"))
    for target in ("triton-http", "triton-grpc"):
        url = live.grpc if target == "triton-grpc" else live.http
        row = serve.perf_analyzer(
            url, serve.TARGETS[target], data, 2, 1, tmp_path / "row.csv", request_count=20, model="small"
        )
        assert float(row["Inferences/Second"]) > 0 and float(row["p50 latency"]) > 0
    executions, success, fail = np.subtract(_requests(model_stats(live, "small")), before)
    assert (success, fail) == (40, 0)


def test_a_port_taken_before_the_server_binds_it_is_chosen_again(tmp_path, monkeypatch):
    """free_ports can only say a port was free a moment ago: the server retries on fresh ones, and is stopped
    by its PID (its process gone afterwards)."""
    import os
    import socket

    (tmp_path / "repo").mkdir()  # no models: the server alone
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        real, chosen = servers.free_ports, []

        def ports(count):
            chosen.append(real(count))
            if len(chosen) == 1:
                chosen[0][0] = taken.getsockname()[1]  # the HTTP port, taken
            return chosen[-1]

        monkeypatch.setattr(servers, "free_ports", ports)
        with servers.TritonServer(tmp_path / "repo", log_path=tmp_path / "log", root=DEPS) as server:
            assert server.http == f"127.0.0.1:{chosen[1][0]}" and len(chosen) == 2
            pid = server.process.pid
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize(
    "shapes, message",
    [
        # issue 27: a mask of one key for 4 keys used to be broadcast over the keys and answered with a 200
        (
            {"query": (2, 3), "key": (2, 4), "mask": (2, 3, 1)},
            "input 'mask' dim 2 (kv_len) is 1, but input 'key' dim 1 (kv_len) is 4",
        ),
        # issue 27: keys of batch 1 under a query of batch 2 were reshaped into two 2-key sequences, a 200 too; with
        # batching (max_batch_size > 0) the batch dim is Triton's, and Triton refuses it before model.py sees it
        ({"query": (2, 3), "key": (1, 4), "mask": (2, 1, 2)}, "input 'value' batch size does not match other inputs"),
        (
            {"query": (2, 3), "key": (2, 4), "mask": (2, 2, 4)},
            "input 'mask' dim 1 (mask_q_len) is 2, but input 'query' dim 1 (q_len) is 3 (mask_q_len is q_len or 1)",
        ),
    ],
    ids=["mask-kv-1", "key-batch-1", "mask-rows-2"],
)
def test_inputs_that_disagree_get_400_naming_both_inputs_and_the_dim(live, client_of, kind, shapes, message):
    rng = np.random.default_rng(11)
    feeds = {
        "query": rng.standard_normal((*shapes["query"], 16), dtype=np.float32),
        "key": rng.standard_normal((*shapes["key"], 16), dtype=np.float32),
        "value": rng.standard_normal((*shapes["key"], 16), dtype=np.float32),
        "mask": np.zeros(shapes["mask"], bool),
    }
    with pytest.raises(InferenceServerException) as caught:
        client_of(kind).infer("small", feeds, ["output"])
    assert message in caught.value.message()
    assert caught.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")


@pytest.mark.parametrize("kind", ["http-binary", "grpc"])
def test_a_request_past_the_work_budget_gets_400_naming_the_estimate_and_the_budget(live, client_of, kind):
    rng = np.random.default_rng(12)
    client = client_of(kind)
    assert client.infer("tight", _feeds(rng), ["output"])["output"].shape == (1, 6, 16)
    big = _feeds(rng, batch=4, length=40, kv_len=40)
    estimate = 4 * (2 * 4 * 2 * 40 * 40 + sum(a.size for a in big.values()) + 4 * 40 * 16)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("tight", big, ["output"])
    assert f"{estimate} bytes" in caught.value.message()
    assert f"budget of {TIGHT_BUDGET} bytes" in caught.value.message()
    assert caught.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
