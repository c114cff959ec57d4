"""The Node.js example (examples/node): its own tests under Node's built-in test runner, on a bundle this
suite exports; and the service driven with tritonclient, the Open Inference Protocol's real client.

Skipped, visibly, where node or the example's node_modules (npm ci --ignore-scripts) are absent."""

import contextlib
import json
import os
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from attn_onnx.deploy.bundle import read_manifest
from attn_onnx.exporter.variants import VARIANTS

NODE_DIR = Path(__file__).resolve().parents[2] / "examples" / "node"
NODE = shutil.which("node")
pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not installed"),
    pytest.mark.skipif(
        not (NODE_DIR / "node_modules" / "onnxruntime-node").is_dir(),
        reason="run `npm ci --ignore-scripts --prefix examples/node` first",
    ),
]


def test_node_test_runner_passes_on_the_bundle(bundle):
    result = subprocess.run(
        [NODE, "--test", "test/"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "ATTN_ONNX_BUNDLE": str(bundle)},
    )
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout and "# skipped 0" in result.stdout


def test_verify_js_passes_and_says_so_per_set(bundle):
    result = subprocess.run([NODE, "verify.js", str(bundle)], cwd=NODE_DIR, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len([line for line in lines if line.startswith("PASSED | onnxruntime-node | test_data_set_")]) == 5
    assert lines[-1] == "5 passed, 0 failed"


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "torch-export"])  # the default: above
def test_every_graph_variant_verifies_in_onnxruntime_node(bundle_of, variant):
    """The hand-built graphs (a Loop, If branches, com.microsoft kernels) run in onnxruntime-node as they do in
    Python: every golden set of the bundle, fully-masked rows included."""
    folder = bundle_of("--attention-impl", variant)
    result = subprocess.run([NODE, "verify.js", str(folder)], cwd=NODE_DIR, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    sets = len(json.loads((folder / "manifest.json").read_text())["test_data_sets"])  # tiled: 2 more, its tiles'
    assert sets >= 5 and result.stdout.strip().splitlines()[-1] == f"{sets} passed, 0 failed"


class Served(str):
    """host:port of a running service (HTTP), with its process, and its gRPC host:port (or None)."""

    def __new__(cls, url, process, grpc=None):
        served = super().__new__(cls, url)
        served.process = process
        served.grpc = grpc
        return served


@contextlib.contextmanager
def serve(bundle, *options):
    """Start server.js on a free port; yield host:port; stop it with SIGTERM, which must exit 0. With options
    "--grpc-port", "0", gRPC too, on a free port: the yielded value's .grpc."""
    process = subprocess.Popen(
        [NODE, "server.js", "--bundle", str(bundle), "--port", "0", *options],
        cwd=NODE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = process.stdout.readline()  # "serving 'small' on http://127.0.0.1:PORT/v2/models/small[, gRPC on H:P]"
    if not line.startswith("serving"):
        process.kill()
        pytest.fail(f"the service did not start: {line}{process.stderr.read()}")
    grpc = line.split(", gRPC on ", 1)[1].strip() if ", gRPC on " in line else None
    try:
        yield Served(line.split("http://", 1)[1].split("/", 1)[0], process, grpc)
    finally:
        process.terminate()
        code = process.wait(timeout=30)
        process.stdout.close()
        process.stderr.close()
    assert code == 0  # SIGTERM: finishes in-flight requests, exits 0


@pytest.fixture(scope="module")
def service(bundle):
    with serve(bundle) as url:
        yield url


def test_the_readme_tritonclient_example_runs_as_written(tmp_path_factory, capsys):
    """Against a default export (8 heads, 512 wide) named mha, as the README's example assumes."""
    from click.testing import CliRunner

    from attn_onnx.cli.export_attn import main as export
    from tests.test_readme import python_block

    folder = tmp_path_factory.mktemp("readme") / "mha-bundle"
    assert CliRunner().invoke(export, ["--bundle", str(folder), "--no-check"]).exit_code == 0
    with serve(folder) as url:
        block = python_block("## Quick start")
        assert 'url="localhost:8000"' in block
        exec(block.replace('url="localhost:8000"', f'url="{url}"'), {})
        assert capsys.readouterr().out.strip() == "(2, 7, 512)"


def golden(bundle, query, key, value, mask):
    from attn_onnx.runtime_check.model import load_model
    from attn_onnx.runtime_check.reference import reference_module

    loaded = load_model(bundle / "model.onnx")
    module, _ = reference_module(loaded.proto, loaded.spec)
    with torch.no_grad():
        return module.double()(
            *(torch.from_numpy(a).double() for a in (query, key, value)), torch.from_numpy(mask)
        ).numpy()


def test_tritonclient_gets_the_float64_answers(bundle, service):
    import tritonclient.http as httpclient

    manifest = json.loads((bundle / "manifest.json").read_text())
    client = httpclient.InferenceServerClient(url=service)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("small")
    meta = client.get_model_metadata("small")
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
        ("query", "FP32", [-1, -1, 16]),
        ("key", "FP32", [-1, -1, 16]),
        ("value", "FP32", [-1, -1, 16]),
        ("mask", "BOOL", [-1, -1, -1]),
    ]
    rng = np.random.default_rng(7)
    query = rng.standard_normal((3, 9, 16), dtype=np.float32)
    memory = rng.standard_normal((3, 4, 16), dtype=np.float32)
    mask = np.arange(4)[None, None, :] < np.array([4, 2, 1])[:, None, None]  # (3, 1, 4) padding
    mask = np.broadcast_to(mask, (3, 9, 4)).copy()
    mask[1, 5] = False  # a fully-masked row: uniform attention, never NaN
    inputs = []
    for name, array, datatype in (
        ("query", query, "FP32"),
        ("key", memory, "FP32"),
        ("value", memory, "FP32"),
        ("mask", mask, "BOOL"),
    ):
        tensor = httpclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=False)
        inputs.append(tensor)
    outputs = [httpclient.InferRequestedOutput("output", binary_data=False)]
    result = client.infer("small", inputs, outputs=outputs, request_id="r1")
    answer = result.as_numpy("output")
    expected = golden(bundle, query, memory, memory, mask)
    tol = manifest["tolerance"]
    assert answer.shape == (3, 9, 16) and np.isfinite(answer).all()
    np.testing.assert_allclose(answer, expected, atol=tol["atol"], rtol=tol["rtol"])


def post(url, body: bytes, model: str = "small", timeout: float = 60):
    """POST `body` to the service's infer route; (status, parsed JSON answer), 4xx included."""
    request = urllib.request.Request(
        f"http://{url}/v2/models/{model}/infer", data=body, method="POST", headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_malformed_request_gets_a_4xx_and_the_service_keeps_serving(bundle, service):
    status, body = post(service, b'{"inputs": [{"name": "query"')
    assert status == 400 and body["error"].startswith("the body is not valid JSON")
    status, body = post(
        service,
        json.dumps({"inputs": [{"name": "mask", "shape": [1, 1, 1], "datatype": "UINT8", "data": [1]}]}).encode(),
    )
    assert status == 400 and body == {"error": "input 'mask': datatype \"UINT8\", the model takes BOOL"}
    test_tritonclient_gets_the_float64_answers(bundle, service)  # still serving, still right


# --- it verifies before it serves (issue 30) ---------------------------------------------------------------------


def _start(bundle, *options, timeout=60):
    """server.js until it says where it serves (then SIGTERM) or exits: (exit code or None, stdout, stderr)."""
    process = subprocess.Popen(
        [NODE, "server.js", "--bundle", str(bundle), "--port", "0", *options],
        cwd=NODE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = process.stdout.readline()
    if first.startswith("serving"):
        process.terminate()
    out, err = process.communicate(timeout=timeout)
    return (None if first.startswith("serving") else process.returncode), first + out, err


def test_the_service_runs_the_golden_sets_before_it_serves_and_says_so(bundle):
    code, out, err = _start(bundle)
    assert code is None and out.startswith("serving 'small' on http://")
    assert re.match(
        r"verified on onnxruntime-node \d+\.\d+\.\d+: \d+ passed, 0 failed \(golden sets and decode steps\) "
        r"in \d+ ms",
        err,
    ), err


def test_a_golden_set_that_fails_here_is_refused_with_the_set_and_the_runtime(bundle, tmp_path):
    """A vector changed and the manifest re-signed: the sha256s match, only running the sets can tell."""
    from tests.deploy.tamper import copy_of, move_a_value, rehash

    bad = copy_of(bundle, tmp_path)
    entry = read_manifest(bad)["test_data_sets"][1]
    move_a_value(bad / entry["outputs"][0]["file"])
    rehash(bad)
    code, out, err = _start(bad)
    assert code == 1 and not out
    assert re.fullmatch(
        rf"Error: golden set {entry['folder']} \({re.escape(entry['case'])}\) fails on onnxruntime-node "
        r"\d+\.\d+\.\d+: max_abs=\S+ \| output: .*; not serving \(--no-verify serves anyway\)\n",
        err,
    ), err
    code, out, err = _start(bad, "--no-verify")  # its user's call: served, and the log says it was not verified
    assert code is None and out.startswith("serving") and "verification skipped (--no-verify)" in err


def test_a_bundle_that_needs_a_later_onnxruntime_is_refused_with_both_versions(bundle, tmp_path):
    from tests.deploy.tamper import copy_of

    later = copy_of(bundle, tmp_path)
    manifest = json.loads((later / "manifest.json").read_text())
    manifest["model"]["min_onnxruntime"] = "1.100.0"  # 1.100 > 1.30: compared as numbers, not text
    (later / "manifest.json").write_text(json.dumps(manifest))
    for options in ((), ("--no-verify",)):
        code, out, err = _start(later, *options)
        assert code == 1 and re.fullmatch(
            r"Error: the bundle needs onnxruntime >= 1\.100\.0 \(its manifest's "
            r"min_onnxruntime\); this service runs onnxruntime-node \d+\.\d+\.\d+\n",
            err,
        )
