"""The bad-input tables of docs/reliability.md, run row by row: each row's command (or request) is executed here and
must answer with the row's exit code (or status) and message. A row this file cannot set up fails."""

import gzip
import hashlib
import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper

from attn_onnx.cli.check_attn import main as check_attn
from attn_onnx.cli.export_attn import main as export_attn

TABLES = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text()
CLIS = {"check-attn": check_attn, "export-attn": export_attn}


def table(heading: str) -> list[list[str]]:
    """The rows of the first table after `heading`, as cell texts (escaped pipes restored)."""
    section = heading + TABLES.split(heading, 1)[1]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    block = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        block.append(line)
    rows = []
    for line in block[2:]:
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        rows.append(cells)
    return rows


def fragments(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


@pytest.fixture(scope="module")
def default_bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("default") / "bundle"
    result = CliRunner().invoke(export_attn, ["--bundle", str(folder), "--name", "mha", "--no-check"])
    assert result.exit_code == 0, result.output
    return folder


def _rehash(folder: Path, relative: str) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    for s in manifest["test_data_sets"]:
        for f in s["inputs"] + s["outputs"]:
            if f["file"] == relative:
                f["sha256"] = hashlib.sha256((folder / relative).read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _flip(path: Path, where: int) -> None:
    data = bytearray(path.read_bytes())
    data[where] ^= 0x10
    path.write_bytes(bytes(data))


def _model_with(default, change) -> callable:
    def make(tmp, name):
        model = onnx.load(str(default))
        change(model)
        onnx.save(model, str(tmp / name))

    return make


def _renamed(model):
    for node in model.graph.node:
        node.input[:] = ["attention_mask" if n == "mask" else n for n in node.input]
    next(i for i in model.graph.input if i.name == "mask").name = "attention_mask"


def _retyped(model):
    next(i for i in model.graph.input if i.name == "mask").type.tensor_type.elem_type = onnx.TensorProto.UINT8


def _setups(default: Path, bundle: Path) -> dict:
    """input (the README row's first cell) -> a function that makes the files its command needs."""
    from attn_onnx.models import MultiHeadedAttention
    from tests.runtime_check import broken

    def nan_bundle(tmp):
        shutil.copytree(bundle, tmp / "nan-bundle")
        path = tmp / "nan-bundle" / "test_data_set_0" / "input_0.pb"
        t = onnx.TensorProto()
        t.ParseFromString(path.read_bytes())
        array = numpy_helper.to_array(t).copy()
        array.flat[3] = np.nan
        path.write_bytes(numpy_helper.from_array(array, t.name).SerializeToString())
        _rehash(tmp / "nan-bundle", "test_data_set_0/input_0.pb")

    def copy_bundle(name, relative, where):
        def make(tmp):
            shutil.copytree(bundle, tmp / name)
            _flip(tmp / name / relative, where)

        return make

    def bad_decode(tmp):
        result = CliRunner().invoke(
            export_attn,
            ["--kv-cache", "--heads", "2", "--embedding-dim", "16", "--no-check", "--bundle", str(tmp / "bad-decode")],
        )
        assert result.exit_code == 0, result.output
        manifest = json.loads((tmp / "bad-decode" / "manifest.json").read_text())
        del manifest["decode"]["steps"][1]["inputs"]
        (tmp / "bad-decode" / "manifest.json").write_text(json.dumps(manifest))

    def other(tmp):
        graph = onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["x"], ["y"])],
            "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        )
        onnx.save(onnx.helper.make_model(graph), str(tmp / "other.onnx"))

    return {
        "an empty file": lambda tmp: (tmp / "empty.onnx").write_bytes(b""),
        "a truncated model": lambda tmp: (tmp / "truncated.onnx").write_bytes(default.read_bytes()[:100_000]),
        "random bytes": lambda tmp: (tmp / "corrupt.onnx").write_bytes(np.random.default_rng(0).bytes(4096)),
        "a PNG named .onnx": lambda tmp: (tmp / "picture.onnx").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100)),
        "a model from another tool": other,
        "an input renamed after export": lambda tmp: _model_with(default, _renamed)(tmp, "renamed.onnx"),
        "an input's dtype changed": lambda tmp: _model_with(default, _retyped)(tmp, "retyped.onnx"),
        "a reshape that baked in the batch": lambda tmp: broken.baked_reshape_model(
            default, tmp / "baked.onnx", "batch"
        ),
        "NaN in a bundle's input vector": nan_bundle,
        "heads that do not divide the width": lambda tmp: None,
        "zero heads": lambda tmp: None,
        "an opset out of range": lambda tmp: None,
        "`--out` under a file": lambda tmp: (tmp / "notes.txt").write_text("notes"),
        "`--out` in a missing folder": lambda tmp: None,
        "`--out` that exists": lambda tmp: shutil.copy(default, tmp / "m.onnx"),
        "`--json` in a missing folder": lambda tmp: shutil.copy(default, tmp / "m.onnx"),
        "an option that does not apply": lambda tmp: None,
        "text named .pt": lambda tmp: (tmp / "notes.pt").write_text("these are my notes, not weights\n"),
        "a pickled whole module": lambda tmp: torch.save(MultiHeadedAttention(2, 16), tmp / "whole.pt"),
        "a bundle with a flipped model byte": copy_bundle("tampered", "model.onnx", 5000),
        "a bundle with a changed vector": copy_bundle("changed", "test_data_set_2/output_0.pb", -3),
        "a decode step without its inputs in a bundle's manifest": bad_decode,
        "a bfloat16 bundle": lambda tmp: None,
        "a NaN tolerance (no difference is ever beyond it)": lambda tmp: shutil.copy(default, tmp / "m.onnx"),
        "an infinite tolerance": lambda tmp: shutil.copy(default, tmp / "m.onnx"),
        "a bundle name its own schema refuses": lambda tmp: None,
        "tiled, had its file named no shapes past one tile": lambda tmp: None,  # the test patches coverage_shapes
    }


CLI_ROWS = table("## Bad inputs")


def test_every_row_has_a_setup(exported, default_bundle):
    assert {row[0] for row in CLI_ROWS} == set(_setups(exported()[0], default_bundle))


@pytest.mark.parametrize("row", CLI_ROWS, ids=[row[0] for row in CLI_ROWS])
def test_the_row_says_what_the_readme_says(row, exported, default_bundle, tmp_path, monkeypatch):
    what, command, says, code = row
    if "no shapes past one tile" in what:  # the gate's small shapes alone run tiled's Loop once
        import attn_onnx.exporter.variants.tiled as tiled

        monkeypatch.setattr(tiled, "coverage_shapes", lambda spec: [])
    _setups(exported()[0], default_bundle)[what](tmp_path)
    monkeypatch.chdir(tmp_path)
    argv = shlex.split(fragments(command)[0])
    result = CliRunner().invoke(CLIS[argv[0]], argv[1:])
    assert result.exit_code == int(code), result.output
    for fragment in fragments(says):
        assert fragment in result.output, (fragment, result.output[-2000:])
    if fragments(says)[0].startswith("Error: "):
        assert result.output.strip().splitlines() == [result.output.strip().splitlines()[0]]  # one line
        assert result.output.startswith(fragments(says)[0])


# --- the service ------------------------------------------------------------------------------------------

REQUEST_ROWS = table("| request to `POST /v2/models/mha/infer` |")  # the heading row itself starts the table


def _good(width=512):
    rng = np.random.default_rng(0)
    data = rng.standard_normal(width).round(3).tolist()
    return {
        "inputs": [
            {"name": n, "shape": [1, 1, width], "datatype": "FP32", "data": data} for n in ("query", "key", "value")
        ]
        + [{"name": "mask", "shape": [1, 1, 1], "datatype": "BOOL", "data": [True]}]
    }


def _with(change) -> bytes:
    body = _good()
    change(body)
    return json.dumps(body).encode()


def _input(body, name):
    return next(i for i in body["inputs"] if i["name"] == name)


def _shaped(batch_q, q_len, batch_kv, kv_len, mask, data=True) -> bytes:
    """A JSON request of zeros: query (batch_q, q_len, 512), key and value (batch_kv, kv_len, 512), mask `mask`;
    without `data`, the shapes alone (one value each: refused before the values are read)."""

    def tensor(name, shape, datatype):
        count = int(np.prod(shape)) if data else 1
        return {
            "name": name,
            "shape": list(shape),
            "datatype": datatype,
            "data": [True] * count if datatype == "BOOL" else [0.0] * count,
        }

    return json.dumps(
        {
            "inputs": [
                tensor("query", (batch_q, q_len, 512), "FP32"),
                tensor("key", (batch_kv, kv_len, 512), "FP32"),
                tensor("value", (batch_kv, kv_len, 512), "FP32"),
                tensor("mask", mask, "BOOL"),
            ]
        }
    ).encode()


BODIES = {
    "a body that is not JSON": b'{"inputs": [',
    "data nested 200,000 lists deep": (
        b'{"inputs": [{"name": "query", "shape": [1, 1, 512], "datatype": "FP32", '
        b'"data": ' + b"[" * 200_000 + b"1" + b"]" * 200_000 + b"}]}"
    ),
    '`{"inputs": 5}`': b'{"inputs": 5}',
    "no `mask` input": _with(lambda b: b["inputs"].pop()),
    "`query` 511 wide": _with(lambda b: _input(b, "query").update(shape=[1, 1, 511], data=[0.0] * 511)),
    "`mask` as UINT8": _with(lambda b: _input(b, "mask").update(datatype="UINT8", data=[1])),
    "3 values for a (1, 1, 512) `query`": _with(lambda b: _input(b, "query").update(data=[0.0, 1.0, 2.0])),
    "a declared shape of 2^31 x 1 x 512": _with(lambda b: _input(b, "query").update(shape=[2**31, 1, 512])),
    "a mask (1, 2, 3) for one query and one key": _with(
        lambda b: _input(b, "mask").update(shape=[1, 2, 3], data=[True] * 6)
    ),
    "a mask (2, 3, 1) for 4 keys": _shaped(2, 3, 2, 4, (2, 3, 1)),
    "`query` batch 2, `key` and `value` batch 1, a mask (2, 1, 2)": _shaped(2, 3, 1, 4, (2, 1, 2)),
    "a mask of 2 query rows for 3 queries": _shaped(1, 3, 1, 4, (1, 2, 4)),
    "a (1, 16384, 512) `query` over 16384 keys": _shaped(1, 16384, 1, 16384, (1, 1, 16384), data=False),
    "a body over `--max-body-bytes`": b"x" * 4096,
    "an output that does not exist": _with(lambda b: b.update(outputs=[{"name": "nope"}])),
}


def _binary(sizes=None, shapes=None, header=None, cut=0, extra=b"", data=False) -> tuple[dict, bytes]:
    """(headers, body) of _good()'s request with every input as binary tensor data; `sizes` and `shapes` override
    inputs' binary_data_size and shape, `header` the Inference-Header-Content-Length (None: left out)."""
    body = _good()
    arrays = {
        i["name"]: np.asarray(i["data"], np.float32 if i["datatype"] == "FP32" else np.bool_) for i in body["inputs"]
    }
    for i in body["inputs"]:
        i["parameters"] = {"binary_data_size": (sizes or {}).get(i["name"], arrays[i["name"]].nbytes)}
        i["shape"] = (shapes or {}).get(i["name"], i["shape"])
        if not (data and i["name"] == "query"):
            del i["data"]
    head = json.dumps(body).encode()
    whole = head + b"".join(a.tobytes() for a in arrays.values()) + extra
    headers = {"Inference-Header-Content-Length": str(len(head)) if header == "right" else header}
    return {k: v for k, v in headers.items() if v is not None}, whole[: len(whole) - cut]


RAW = {  # (headers, body): binary tensor data, compressed bodies
    "binary, `query`'s `binary_data_size` -4": _binary({"query": -4}, header="right"),
    "binary, `query`'s `binary_data_size` 2048.5": _binary({"query": 2048.5}, header="right"),
    'binary, `query`\'s `binary_data_size` the string "2048"': _binary({"query": "2048"}, header="right"),
    "binary, `query`'s `binary_data_size` 2044 for (1, 1, 512)": _binary({"query": 2044}, header="right"),
    "binary, `query`'s `binary_data_size` a terabyte (2^40)": _binary({"query": 2**40}, header="right"),
    "binary, `query` declared 2^31 x 1 x 512 with a terabyte to match": _binary(
        {"query": 2**42}, {"query": [2**31, 1, 512]}, header="right"
    ),
    "binary, the body cut 5 bytes short": _binary(header="right", cut=5),
    "binary, 8 bytes after the last input": _binary(header="right", extra=bytes(8)),
    "binary, `Inference-Header-Content-Length: 99999999`": _binary(header="99999999"),
    "binary, `Inference-Header-Content-Length: 12abc`": _binary(header="12abc"),
    "binary, without `Inference-Header-Content-Length`": _binary(),
    "binary, `query` with `data` too": _binary(header="right", data=True),
    "binary, a mask (1, 1, 2) for one key": _binary({"mask": 2}, {"mask": [1, 1, 2]}, header="right", extra=bytes(1)),
    "`Content-Encoding: gzip` on bytes that are not gzip": ({"Content-Encoding": "gzip"}, json.dumps(_good()).encode()),
    "a gzip body that inflates past `--max-body-bytes`": (
        {"Content-Encoding": "gzip"},
        gzip.compress(bytes(3_000_000)),
    ),
    "`Content-Encoding: br`": ({"Content-Encoding": "br"}, json.dumps(_good()).encode()),
}


def _grpc_request(change=None):
    """A gRPC ModelInferRequest of _good()'s inputs as raw_input_contents, then `change(request)`."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="mha")
    for i in _good()["inputs"]:
        request.inputs.add(name=i["name"], datatype=i["datatype"], shape=i["shape"])
        request.raw_input_contents.append(
            np.asarray(i["data"], np.float32 if i["datatype"] == "FP32" else np.bool_).tobytes()
        )
    if change:
        change(request)
    return request


def _typed(request):
    """The same request with typed contents instead of raw_input_contents."""
    for tensor, raw in zip(request.inputs, request.raw_input_contents):
        if tensor.datatype == "FP32":
            tensor.contents.fp32_contents.extend(np.frombuffer(raw, np.float32).tolist())
        else:
            tensor.contents.bool_contents.extend(np.frombuffer(raw, np.bool_).tolist())
    del request.raw_input_contents[:]
    return request


GRPC_ROWS = table("| gRPC `ModelInfer` request (`--grpc-port`) |")

GRPC_REQUESTS = {
    "`raw_input_contents` for 3 of the 4 inputs": lambda: _grpc_request(lambda r: r.raw_input_contents.pop()),
    "`query`'s raw contents 4 bytes short": lambda: _grpc_request(
        lambda r: r.raw_input_contents.__setitem__(0, r.raw_input_contents[0][:-4])
    ),
    "raw contents, and typed contents for `query`": lambda: _grpc_request(
        lambda r: r.inputs[0].contents.fp32_contents.extend([0.0] * 512)
    ),
    "3 `fp32_contents` for a (1, 1, 512) `query`": lambda: _grpc_request(
        lambda r: (
            _typed(r),
            r.inputs[0].contents.ClearField("fp32_contents"),
            r.inputs[0].contents.fp32_contents.extend([1, 2, 3]),
        )
    ),
    "`mask` in `fp32_contents`": lambda: _grpc_request(
        lambda r: (
            _typed(r),
            r.inputs[3].contents.ClearField("bool_contents"),
            r.inputs[3].contents.fp32_contents.append(1.0),
        )
    ),
    "`query` with a dim of -1": lambda: _grpc_request(lambda r: r.inputs[0].shape.__setitem__(0, -1)),
    "`query` declared 2^31 x 1 x 512": lambda: _grpc_request(lambda r: r.inputs[0].shape.__setitem__(0, 2**31)),
    "an output that does not exist": lambda: _grpc_request(lambda r: r.outputs.add(name="nope")),
    "model `other`": lambda: _grpc_request(lambda r: setattr(r, "model_name", "other")),
    "`query` batch 1, `key` and `value` batch 2": lambda: _grpc_request(
        lambda r: [
            (r.inputs[k].shape.__setitem__(0, 2), r.raw_input_contents.__setitem__(k, r.raw_input_contents[k] * 2))
            for k in (1, 2)
        ]
    ),
    "a mask (1, 1, 2) for one key": lambda: _grpc_request(
        lambda r: (r.inputs[3].shape.__setitem__(2, 2), r.raw_input_contents.__setitem__(3, b"\x01\x01"))
    ),
    "a (1, 16384, 512) `query` over 16384 keys": lambda: _grpc_request(
        lambda r: [r.inputs[k].shape.__setitem__(1 if k < 3 else 2, 16384) for k in range(4)]
    ),
    "a message over `--max-body-bytes`": lambda: _grpc_request(
        lambda r: (r.inputs[0].shape.__setitem__(1, 1000), r.raw_input_contents.__setitem__(0, bytes(1000 * 512 * 4)))
    ),
}


def test_every_request_row_has_a_body():
    assert {row[0] for row in REQUEST_ROWS} == set(BODIES) | set(RAW)
    assert {row[0] for row in GRPC_ROWS} == set(GRPC_REQUESTS)


def _post(url, body: bytes, headers: dict):
    """POST to the default model's infer route with extra headers; (status, parsed JSON answer)."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://{url}/v2/models/mha/infer", data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def node_service(default_bundle):
    from tests.deploy.test_node import NODE, NODE_DIR, serve

    if NODE is None or not (NODE_DIR / "node_modules" / "onnxruntime-node").is_dir():
        pytest.skip("node, or the Node example's node_modules, is absent")
    with serve(default_bundle, "--max-body-bytes", "2000000", "--grpc-port", "0") as url:
        yield url


def test_each_hostile_request_gets_its_4xx_and_the_service_keeps_serving(node_service):
    from tests.deploy.test_node import post

    url = node_service
    for what, status, error in REQUEST_ROWS:
        if what.startswith("a body over"):  # declared over the limit: refused before it is read
            code, answer = _declare_only(url, 2_000_001)
        elif what in RAW:
            code, answer = _post(url, RAW[what][1], RAW[what][0])
        else:
            code, answer = post(url, BODIES[what], "mha")
        assert code == int(status), (what, answer)
        assert all(f in answer["error"] for f in fragments(error)), (what, answer)
        assert post(url, json.dumps(_good()).encode(), "mha")[0] == 200, f"not serving after: {what}"


def test_each_hostile_grpc_request_gets_its_status_and_the_service_keeps_serving(node_service):
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    with grpc.insecure_channel(node_service.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for what, status, error in GRPC_ROWS:
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(GRPC_REQUESTS[what](), timeout=60)
            assert info.value.code() == getattr(grpc.StatusCode, status), (what, info.value.details())
            assert all(f in info.value.details() for f in fragments(error)), (what, info.value.details())
            answer = stub.ModelInfer(_grpc_request(), timeout=60)
            assert answer.outputs[0].name == "output", f"not serving after: {what}"


def _declare_only(url, length):
    """Send only the headers of a request whose declared body is `length` bytes; read the answer."""
    import socket

    host, port = url.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"POST /v2/models/mha/infer HTTP/1.1\r\nHost: {url}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n".encode()
        )
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < int(
            re.search(rb"content-length: (\d+)", data, re.I)[1]
        ):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(body)
