"""The README's bad-input tables, run row by row: each row's command (or request) is executed here and
must answer with the row's exit code (or status) and message. A row this file cannot set up fails."""

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

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
CLIS = {"check-attn": check_attn, "export-attn": export_attn}


def table(heading: str) -> list[list[str]]:
    """The rows of the first table after `heading`, as cell texts (escaped pipes restored)."""
    section = heading + README.split(heading, 1)[1]
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
        result = CliRunner().invoke(export_attn, ["--kv-cache", "--heads", "2", "--embedding-dim", "16", "--no-check",
                                                  "--bundle", str(tmp / "bad-decode")])
        assert result.exit_code == 0, result.output
        manifest = json.loads((tmp / "bad-decode" / "manifest.json").read_text())
        del manifest["decode"]["steps"][1]["inputs"]
        (tmp / "bad-decode" / "manifest.json").write_text(json.dumps(manifest))

    def other(tmp):
        graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
                                       [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                       [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
        onnx.save(onnx.helper.make_model(graph), str(tmp / "other.onnx"))

    return {
        "an empty file": lambda tmp: (tmp / "empty.onnx").write_bytes(b""),
        "a truncated model": lambda tmp: (tmp / "truncated.onnx").write_bytes(default.read_bytes()[:100_000]),
        "random bytes": lambda tmp: (tmp / "corrupt.onnx").write_bytes(np.random.default_rng(0).bytes(4096)),
        "a PNG named .onnx": lambda tmp: (tmp / "picture.onnx").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100)),
        "a model from another tool": other,
        "an input renamed after export": lambda tmp: _model_with(default, _renamed)(tmp, "renamed.onnx"),
        "an input's dtype changed": lambda tmp: _model_with(default, _retyped)(tmp, "retyped.onnx"),
        "a reshape that baked in the batch":
            lambda tmp: broken.baked_reshape_model(default, tmp / "baked.onnx", "batch"),
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
    }


CLI_ROWS = table("### Bad inputs")


def test_every_row_has_a_setup(exported, default_bundle):
    assert {row[0] for row in CLI_ROWS} == set(_setups(exported()[0], default_bundle))


@pytest.mark.parametrize("row", CLI_ROWS, ids=[row[0] for row in CLI_ROWS])
def test_the_row_says_what_the_readme_says(row, exported, default_bundle, tmp_path, monkeypatch):
    what, command, says, code = row
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
    return {"inputs": [{"name": n, "shape": [1, 1, width], "datatype": "FP32", "data": data}
                       for n in ("query", "key", "value")] + [
        {"name": "mask", "shape": [1, 1, 1], "datatype": "BOOL", "data": [True]}]}


def _with(change) -> bytes:
    body = _good()
    change(body)
    return json.dumps(body).encode()


def _input(body, name):
    return next(i for i in body["inputs"] if i["name"] == name)


BODIES = {
    "a body that is not JSON": b'{"inputs": [',
    "data nested 200,000 lists deep": (b'{"inputs": [{"name": "query", "shape": [1, 1, 512], "datatype": "FP32", '
                                       b'"data": ' + b"[" * 200_000 + b"1" + b"]" * 200_000 + b"}]}"),
    "`{\"inputs\": 5}`": b'{"inputs": 5}',
    "no `mask` input": _with(lambda b: b["inputs"].pop()),
    "`query` 511 wide": _with(lambda b: _input(b, "query").update(shape=[1, 1, 511], data=[0.0] * 511)),
    "`mask` as UINT8": _with(lambda b: _input(b, "mask").update(datatype="UINT8", data=[1])),
    "3 values for a (1, 1, 512) `query`": _with(lambda b: _input(b, "query").update(data=[0.0, 1.0, 2.0])),
    "a declared shape of 2^31 x 1 x 512": _with(lambda b: _input(b, "query").update(shape=[2**31, 1, 512])),
    "a mask (1, 2, 3) for one query and one key": _with(
        lambda b: _input(b, "mask").update(shape=[1, 2, 3], data=[True] * 6)),
    "a body over `--max-body-bytes`": b"x" * 4096,
}


def test_every_request_row_has_a_body():
    assert {row[0] for row in REQUEST_ROWS} == set(BODIES)


def test_each_hostile_request_gets_its_4xx_and_the_service_keeps_serving(default_bundle):
    from tests.deploy.test_node import NODE, NODE_DIR, post, serve

    if NODE is None or not (NODE_DIR / "node_modules" / "onnxruntime-node").is_dir():
        pytest.skip("node, or the Node example's node_modules, is absent")
    with serve(default_bundle, "--max-body-bytes", "2000000") as url:
        for what, status, error in REQUEST_ROWS:
            if what.startswith("a body over"):  # declared over the limit: refused before it is read
                code, answer = _declare_only(url, 2_000_001)
            else:
                code, answer = post(url, BODIES[what], "mha")
            assert code == int(status), (what, answer)
            assert fragments(error)[0] in answer["error"], (what, answer)
            assert post(url, json.dumps(_good()).encode(), "mha")[0] == 200, f"not serving after: {what}"


def _declare_only(url, length):
    """Send only the headers of a request whose declared body is `length` bytes; read the answer."""
    import socket

    host, port = url.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST /v2/models/mha/infer HTTP/1.1\r\nHost: {url}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {length}\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < int(
                re.search(rb"content-length: (\d+)", data, re.I)[1]):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(body)

