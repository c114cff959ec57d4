"""Bundles of a static cache (mha-static, export-attn --kv-cache --max-len N): golden sets and a decode set of
unequal lengths, whose presents are compared over each sequence's valid positions only (the manifest's
valid_lengths). Every verifier (Python's check_bundle and check-attn --bundle, Node's verify.js, the C++
verify_bundle, the browser page) passes the bundle, fails it where a value inside the valid part is wrong, and
passes it whatever lies beyond; the Triton Python model's verifier is held to the same in
test_triton_python_model.py.

Node, C++ and the page are skipped, visibly, where their tools are absent (as in test_node_bundle.py,
test_cpp.py and test_web_page.py)."""

from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from attn_onnx.cli.check_attn import main as check
from attn_onnx.deploy.bundle import check_bundle, read_manifest
from tests.deploy.tamper import change_a_weight, copy_of, move_a_valid_value, noise_beyond, rehash
from tests.deploy.test_cpp import build  # noqa: F401 (the session's C++ build, a fixture)
from tests.deploy.test_cpp import pytestmark as CPP_MARKS
from tests.deploy.test_node import NODE, NODE_DIR
from tests.deploy.test_node import pytestmark as NODE_MARKS
from tests.deploy.test_web_page import needs_browser, needs_node, open_page, set_lines

GQA = ("--kv-cache", "--max-len", "32", "--attention-impl", "ort-gqa")
STANDARD = ("--kv-cache", "--max-len", "32", "--attention-impl", "onnx-attention")
FORMS = pytest.mark.parametrize("args", [GQA, STANDARD], ids=["ort-gqa", "onnx-attention"])
PRESENTS = ("present_key", "present_value")
# the entries the tampering tests change: a golden set's and a decode step's present, each with a tail in both rows
TAMPERED = (("test_data_sets", 1, "present_value"), ("steps", 3, "present_key"))


def tensor(path):
    return numpy_helper.to_array(onnx.load_tensor(str(path)))


def entries(manifest):
    return manifest["test_data_sets"] + manifest["decode"]["steps"]


def label(entry):
    if "case" in entry:
        return f"{entry['folder']} ({entry['case']})"
    past = entry["past_len"]
    return f"{entry['folder']} ({entry['new_tokens']} new, past [{', '.join(map(str, past))}])"


# --- what the bundle holds ---------------------------------------------------------------------------------------


@FORMS
def test_check_attn_bundle_passes_every_set_and_step_and_both_branches_ran(bundle_of, args):
    folder = bundle_of(*args)
    manifest = read_manifest(folder)
    result = CliRunner().invoke(check, ["--bundle", str(folder), "--runtimes", "onnxruntime,torch"])
    assert result.exit_code == 0, result.output
    runs = 2 * len(entries(manifest))
    assert result.output.strip().splitlines()[-1].startswith(f"PASSED | summary | {runs} passed, 0 failed")
    paths = manifest["coverage"]["paths"]
    if args == GQA:  # the If: GroupQueryAttention, and the standard step (several tokens into a batch of caches)
        assert sorted(p.rsplit(": ", 1)[1] for p in paths) == ["else", "then"]
        by_case = {s["folder"]: s["case"] for s in manifest["test_data_sets"]}
        ran = {p.rsplit(": ", 1)[1]: {by_case[f] for f in folders} for p, folders in paths.items()}
        assert {"b1.q5.kv0.graph", "b2.q1.kv7.graph"} <= ran["then"] and "b3.q2.kv6.graph" in ran["else"]
        assert "PASSED | coverage | 2 of 2 control-flow paths ran" in result.output
    else:
        assert paths == {}  # no control flow


def test_the_decode_set_has_unequal_lengths_and_sequences_that_end_at_different_steps(bundle_of):
    folder = bundle_of(*GQA)
    decode = read_manifest(folder)["decode"]
    assert decode["thread"] == {"present_key": "past_key", "present_value": "past_value"}
    assert decode["first_past"] == {"shape": [2, 2, 32, 8], "dtype": "float32"}  # the buffers: verifiers zero them
    steps = decode["steps"]
    lengths = [s["past_len"] for s in steps]
    assert lengths == [[0, 0], [4, 0], [5, 1], [6, 2], [0, 4], [1, 5]]
    assert all(a != b for a, b in lengths[1:])  # unequal from the first step on
    held = [0, 0]
    ended = []  # (step, slot) where a sequence ended and a new one started in its slot
    for k, step in enumerate(steps):
        ended += [(k, b) for b in range(2) if step["past_len"][b] == 0 and held[b] > 0]
        held = [n + step["new_tokens"] for n in step["past_len"]]
        inputs = {f["name"]: tensor(folder / f["file"]) for f in step["inputs"]}
        assert list(inputs) == ["query", "key", "value", "past_len"]  # the cache is threaded, never stored
        assert inputs["past_len"].dtype == np.int64 and inputs["past_len"].tolist() == step["past_len"]
        assert inputs["query"].shape == (2, step["new_tokens"], 16)
    assert ended == [(1, 1), (4, 0)]  # each slot's sequence ends at a step of its own
    assert max(held) <= 8 and any(s["new_tokens"] > 1 and min(s["past_len"]) > 0 for s in steps)  # a standard step


@FORMS
def test_presents_are_compared_over_each_sequences_length_their_tails_zero(bundle_of, args):
    folder = bundle_of(*args)
    manifest = read_manifest(folder)
    for entry in entries(manifest):
        inputs = {f["name"]: tensor(folder / f["file"]) for f in entry["inputs"]}
        lengths = (inputs["past_len"] + inputs["query"].shape[1]).tolist()
        for f in entry["outputs"]:
            if f["name"] not in PRESENTS:
                assert "valid_lengths" not in f
                continue
            assert f["valid_lengths"] == lengths, (entry["folder"], f["name"])
            expected = tensor(folder / f["file"])
            for b, length in enumerate(lengths):
                assert not expected[b, :, length:].any()  # zeroed beyond, for clarity
                assert expected[b, :, :length].all()
        if "case" in entry:  # the golden sets' caches hold noise beyond each length, never to be read
            past = inputs["past_key"]
            assert all(past[b, :, n:].all() for b, n in enumerate(inputs["past_len"]))


def test_the_decode_outputs_are_each_sequences_whole_sequence_answers(bundle_of):
    """Independently of the step-by-step golden: each sequence's outputs, gathered over the steps in its slot,
    are the float64 module's on the whole sequence (subsequent_mask), and so are its keys in the last present."""
    from attn_onnx.runtime_check.decode import whole_sequence_golden
    from attn_onnx.runtime_check.model import load_model
    from attn_onnx.runtime_check.reference import reference_module

    folder = bundle_of(*GQA)
    loaded = load_model(folder / "model.onnx")
    module, _ = reference_module(loaded.proto, loaded.spec)
    steps = read_manifest(folder)["decode"]["steps"]
    sequences: list[tuple[int, list, list]] = []  # (slot, tokens, outputs) in the order they start
    current: dict[int, int] = {}
    for step in steps:
        x = tensor(folder / step["inputs"][0]["file"])
        out = tensor(folder / step["outputs"][0]["file"])
        for b, past in enumerate(step["past_len"]):
            if past == 0:
                current[b] = len(sequences)
                sequences.append((b, [], []))
            sequences[current[b]][1].append(x[b])
            sequences[current[b]][2].append(out[b])
    assert [len(np.concatenate(t)) for _, t, _ in sequences] == [8, 4, 6, 2]
    for _, tokens, outputs in sequences:
        whole = np.concatenate(tokens)[None]
        output, keys, _ = whole_sequence_golden(module, whole)
        np.testing.assert_allclose(np.concatenate(outputs)[None], output, atol=1e-6, rtol=1e-5)
    last = tensor(folder / steps[-1]["outputs"][1]["file"])  # present_key after the last step
    for slot, tokens, _ in sequences[-2:]:  # the sequences still in their slots
        _, keys, _ = whole_sequence_golden(module, np.concatenate(tokens)[None])
        np.testing.assert_allclose(last[slot : slot + 1, :, : len(np.concatenate(tokens))], keys, atol=1e-6)


# --- every verifier, on the bundle and on changed copies of it ---------------------------------------------------


def python_verdict(folder, request) -> tuple[bool, list[str], str]:
    report = check_bundle(folder)
    failed = sorted({r.case for r in report.failed})
    return report.ok, failed, "\n".join(r.line() for r in report.results)


def node_verdict(folder, request) -> tuple[bool, list[str], str]:
    result = subprocess.run([NODE, "verify.js", str(folder)], cwd=NODE_DIR, capture_output=True, text=True, timeout=120)
    assert result.stderr == "" or result.returncode == 1, result.stderr
    return _lines(result)


def cpp_verdict(folder, request) -> tuple[bool, list[str], str]:
    built = request.getfixturevalue("build")  # only where a C++ verdict is asked for
    result = subprocess.run([str(built / "verify_bundle"), str(folder)], capture_output=True, text=True, timeout=120)
    return _lines(result)


def _lines(result) -> tuple[bool, list[str], str]:
    assert not result.stderr.startswith("Error:"), result.stderr
    failed = sorted(line.split(" | ")[2] for line in result.stdout.splitlines() if line.startswith("FAILED |"))
    return result.returncode == 0, failed, result.stdout


VERIFIERS = [
    pytest.param(python_verdict, id="python"),
    pytest.param(node_verdict, marks=NODE_MARKS, id="node"),
    pytest.param(cpp_verdict, marks=CPP_MARKS, id="cpp"),
]


def changed(folder, how):
    """Change the TAMPERED presents' expected files by `how(path, valid_lengths)`, then re-sign: only the numbers
    can tell. The labels of the sets and steps changed."""
    manifest = json.loads((folder / "manifest.json").read_text())
    labels = []
    for where, k, name in TAMPERED:
        entry = (manifest["test_data_sets"] if where == "test_data_sets" else manifest["decode"]["steps"])[k]
        f = next(f for f in entry["outputs"] if f["name"] == name)
        assert min(f["valid_lengths"]) < f["shape"][2]  # a tail to change in every row
        how(folder / f["file"], f["valid_lengths"])
        labels.append(label(entry))
    rehash(folder)
    return sorted(labels)


@pytest.mark.parametrize("verdict", VERIFIERS)
@FORMS
def test_every_verifier_passes_the_bundle(bundle_of, request, verdict, args):
    ok, failed, said = verdict(bundle_of(*args), request)
    assert ok and failed == [], said


@pytest.mark.parametrize("verdict", VERIFIERS)
def test_a_wrong_value_inside_the_valid_part_fails_every_verifier(bundle_of, tmp_path, request, verdict):
    folder = copy_of(bundle_of(*GQA), tmp_path)
    labels = changed(folder, move_a_valid_value)
    ok, failed, said = verdict(folder, request)
    assert not ok and failed == labels, said


@pytest.mark.parametrize("verdict", VERIFIERS)
def test_anything_beyond_the_valid_part_passes_every_verifier(bundle_of, tmp_path, request, verdict):
    folder = copy_of(bundle_of(*GQA), tmp_path)
    changed(folder, noise_beyond)
    ok, failed, said = verdict(folder, request)
    assert ok and failed == [], said


@pytest.mark.parametrize("verdict", VERIFIERS)
def test_without_valid_lengths_the_unspecified_tails_fail(bundle_of, tmp_path, request, verdict):
    """The field is what the verifiers go by: removed, the presents are compared whole, and the noise the sets'
    caches carry beyond each length (and a reused slot's old keys) no longer matches the zeroed expected files.
    onnx-attention's step keeps what its input held there."""
    folder = copy_of(bundle_of(*STANDARD), tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in entries(manifest):
        for f in entry["outputs"]:
            f.pop("valid_lengths", None)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    stale = []  # the steps after which a slot's buffer holds keys beyond its sequence's length (an earlier one's)
    written = [0, 0]  # how far each slot's buffer was ever written
    for step in manifest["decode"]["steps"]:
        lengths = [n + step["new_tokens"] for n in step["past_len"]]
        written = [max(w, n) for w, n in zip(written, lengths)]
        if any(w > n for w, n in zip(written, lengths)):
            stale.append(label(step))
    assert len(stale) == 4  # steps 1, 2, 4 and 5: a slot reused
    ok, failed, said = verdict(folder, request)
    assert not ok and sorted(failed) == sorted([label(e) for e in manifest["test_data_sets"]] + stale), said
    assert "present_key" in said  # the presents fail, not the output


@pytest.mark.parametrize("verdict", VERIFIERS)
@pytest.mark.parametrize(
    "where, k, output, lengths",
    [("test_data_sets", 1, 1, [33, 5]), ("steps", 3, 2, [8])],
    ids=["past-max-len", "one-length-for-two-rows"],
)
def test_valid_lengths_that_do_not_fit_fail_that_set_or_step_alone(
    bundle_of, tmp_path, request, verdict, where, k, output, lengths
):
    folder = copy_of(bundle_of(*GQA), tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    entry = (manifest["test_data_sets"] if where == "test_data_sets" else manifest["decode"]["steps"])[k]
    f = entry["outputs"][output]
    f["valid_lengths"] = lengths
    (folder / "manifest.json").write_text(json.dumps(manifest))
    ok, failed, said = verdict(folder, request)
    assert not ok and failed == [label(entry)], said  # the later steps still thread this one's outputs, and pass
    assert f"{f['name']}: valid_lengths [{','.join(map(str, lengths))}] do not fit shape [2,2,32,8]" in said


@pytest.mark.parametrize("verdict", VERIFIERS)
def test_changed_weights_fail_every_set_and_step(bundle_of, tmp_path, request, verdict):
    folder = copy_of(bundle_of(*GQA), tmp_path)
    change_a_weight(folder)
    ok, failed, said = verdict(folder, request)
    assert not ok and failed == sorted(label(e) for e in entries(read_manifest(folder))), said


@pytest.mark.parametrize("marked", [pytest.param(None, marks=[*NODE_MARKS, *CPP_MARKS], id="node-and-cpp")])
def test_the_cpp_lines_are_verify_js_lines(bundle_of, tmp_path, request, marked):
    """Line for line, a failure's reason and a static step's label (past [4, 0]) included."""
    folder = copy_of(bundle_of(*GQA), tmp_path)
    changed(folder, move_a_valid_value)
    _, _, node = node_verdict(folder, request)
    _, _, cpp = cpp_verdict(folder, request)
    cpp = cpp.replace("onnxruntime-cpp", "RUNTIME")
    assert cpp == node.replace("onnxruntime-node", "RUNTIME")
    assert "FAILED | RUNTIME | decode/step_3 (2 new, past [6, 2]) | max_abs=" in cpp


# --- the browser page ----------------------------------------------------------------------------------------------


@needs_node
@needs_browser
@pytest.mark.parametrize("how", ["valid", "tail"])
def test_the_page_fails_a_wrong_valid_value_and_passes_any_tail(bundle_of, tmp_path, how):
    folder = copy_of(bundle_of(*GQA), tmp_path)
    labels = changed(folder, move_a_valid_value if how == "valid" else noise_beyond)
    total = len(entries(read_manifest(folder)))
    results, _ = open_page(folder, tmp_path)
    assert results["error"] is None, results
    failed = sorted(line.split(" | ")[2] for line in set_lines(results) if line.startswith("FAILED"))
    if how == "valid":
        assert failed == labels and (results["passed"], results["failed"]) == (total - 2, 2)
        assert all(re.search(r"present_(key|value): max_abs=", line) for line in set_lines(results) if "FAILED" in line)
    else:
        assert failed == [] and (results["passed"], results["failed"]) == (total, 0)
