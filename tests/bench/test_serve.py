"""bench-attn serve: the data it feeds perf_analyzer (a real padding mask), its table, its refusals. The run
itself against a live Triton is tests/deploy/test_triton_live.py::test_perf_analyzer_drives_the_server."""

import base64
import json

import numpy as np
import pytest
from click.testing import CliRunner

from attn_onnx.bench.serve import Row, ServeBench, input_data, padding_mask, table
from attn_onnx.cli.bench_attn import main as bench


@pytest.mark.parametrize("batch, length", [(1, 16), (1, 128), (4, 512), (3, 1)])
def test_the_padding_mask_pads_and_never_masks_a_whole_row(batch, length):
    mask = padding_mask(batch, length)
    assert mask.shape == (batch, length, length) and mask.dtype == bool
    kept = mask.sum(axis=2)  # keys each query attends
    assert (kept >= 1).all()  # no row fully masked
    assert (kept == kept[:, :1]).all()  # a sequence's queries share its keys
    assert kept[0, 0] == max(1, 3 * length // 4)  # the first sequence is padded (where there is room)
    if batch > 1:
        assert kept[1, 0] == length  # the second is not


def _decode(entry):
    return {
        name: np.frombuffer(base64.b64decode(t["b64"]), bool if name == "mask" else np.float32).reshape(t["shape"])
        for name, t in entry.items()
    }


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "whole"])
def test_input_data_is_self_attention_with_the_padding_mask(tmp_path, batched):
    input_data(tmp_path / "d.json", 2, 8, 16, batched)
    entries = [_decode(e) for e in json.loads((tmp_path / "d.json").read_text())["data"]]
    if batched:  # one entry per sequence, without the batch dim (perf_analyzer -b 2 makes the batch)
        assert len(entries) == 2 and entries[0]["query"].shape == (8, 16) and entries[0]["mask"].shape == (8, 8)
        mask = np.stack([e["mask"] for e in entries])
    else:
        assert len(entries) == 1 and entries[0]["query"].shape == (2, 8, 16)
        mask = entries[0]["mask"]
    np.testing.assert_array_equal(mask, padding_mask(2, 8))
    for e in entries:
        np.testing.assert_array_equal(e["query"], e["key"])
        np.testing.assert_array_equal(e["query"], e["value"])
        assert np.isfinite(e["query"]).all() and e["query"].std() > 0.5


def test_the_table_has_every_figure_and_says_what_failed():
    result = ServeBench(
        "CPU X",
        8,
        512,
        0,
        rows=[
            Row("triton-http", 1, 16, 4, 1500.0, 2100.0, 9000.0, 850.0, 3000, 1800),
            Row("node-grpc", 1, 16, 1, error="perf_analyzer exited with 99: failed to get model config"),
        ],
        not_run={"node-json": "the Node service exited before it served: Error: unknown option --grpc-port"},
    )
    text = table(result)
    assert "triton-http (1,16)      c4    1500.0     2.10     9.00       850     1800/3000" in text
    assert "node-grpc   (1,16)      c1  failed: perf_analyzer exited with 99: failed to get model config" in text
    assert "node-json   not run: the Node service exited before it served" in text
    assert text.startswith("bench-attn serve: CPU X")


@pytest.mark.parametrize(
    "args, text",
    [
        (
            ["--targets", "triton-http,triton"],
            "--targets 'triton': choose from all, triton-http, triton-grpc, node-http, node-json, node-grpc",
        ),
        (["--shapes", "4"], "--shapes item '4' is not BATCHxLEN with both >= 1 (e.g. 4x512)"),
        (["--heads", "3"], "--embedding-dim 512 is not divisible by --heads 3"),
    ],
)
def test_serve_refusals_come_first(args, text):
    result = CliRunner().invoke(bench, ["serve", *args])
    assert result.exit_code == 2
    assert result.output.strip() == f"Error: {text}"


def test_all_is_every_target_and_a_list_is_taken_in_order_once():
    from attn_onnx.bench.serve import TARGETS

    serve = bench.commands["serve"]
    targets = next(p for p in serve.params if p.name == "targets")
    assert targets.type.convert("all", targets, None) == tuple(TARGETS)
    assert targets.type.convert("node-grpc,triton-http,node-grpc", targets, None) == ("node-grpc", "triton-http")


def test_the_versions_are_asked_of_the_tools(tmp_path):
    """Nothing is recorded that was not measured: a tool that does not state its version is left out."""
    from attn_onnx.bench.serve import tool_version

    says = tmp_path / "says"
    says.write_text("#!/bin/sh\necho 'Perf Analyzer Version 2.51.0 (commit unknown)'\n")
    silent = tmp_path / "silent"
    silent.write_text("#!/bin/sh\necho 'unrecognized option --version'; exit 1\n")
    for path in (says, silent):
        path.chmod(0o755)
    assert tool_version(says) == "2.51.0"
    assert tool_version(silent) is None and tool_version(tmp_path / "absent") is None
    import inspect
    import re

    from attn_onnx.bench import serve

    hand_written = re.compile(r"[\"']\d+\.\d+\.\d+[\"' ]")  # "2.51.0": a version, not 127.0.0.1
    assert hand_written.search('{"perf_analyzer": "2.51.0"}') and not hand_written.search('"127.0.0.1"')
    assert not hand_written.search(inspect.getsource(serve))


def test_the_served_model_is_exported_as_export_attn_writes_it(tmp_path):
    """The bundle for the Node service and the Python-backend repository for Triton, whose model.py verifies
    golden vectors (the export failed without them, so serve measured nothing)."""
    from attn_onnx.bench.serve import MODEL, _export

    bundle, repo = _export(tmp_path, 2, 16, 100)
    assert json.loads((bundle / "manifest.json").read_text())["name"] == MODEL
    assert (repo / MODEL / "1" / "model.py").is_file() and (repo / MODEL / "1" / "manifest.json").is_file()
    assert "max_queue_delay_microseconds: 100" in (repo / MODEL / "config.pbtxt").read_text()
