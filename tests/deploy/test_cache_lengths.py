"""A static cache's lengths, refused before running: a step of mha-static (export-attn --kv-cache --max-len N) is
right only when 0 <= past_len[b] and past_len[b] + q_len <= max_len for every sequence b. The kind's dims contract
says so in its `lengths` rule (exporter/kinds/dims.py), the bundle manifest carries it, and the Node service
refuses a request that breaks it with 400 / INVALID_ARGUMENT and the rule's words (HTTP JSON, HTTP binary, gRPC),
where onnxruntime used to fail it with its own (TensorScatter's, GroupQueryAttention's). The Triton python model is
held to the same in test_triton_python_model.py, the three checkers' words to each other in test_corpus.py.

The Node tests are skipped, visibly, where node or the example's node_modules are absent. Loopback only."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest

from tests.deploy.test_node import post, serve
from tests.deploy.test_node import pytestmark as NODE_MARKS
from tests.deploy.test_node_limits import grpc_infer, json_body, refused_everywhere
from tests.deploy.test_static_bundle import GQA, STANDARD

FULL = ", past the cache's max_len 32: the cache is full (reset the sequence, or export with a larger --max-len)"
# (what, past_len, q_len, the refusal's words)
BAD = [
    ("31 + 2 new tokens", [31], 2, "input 'past_len' is 31 for sequence 0, and 31 + q_len 2 is 33" + FULL),
    ("the second sequence full", [3, 32], 1, "input 'past_len' is 32 for sequence 1, and 32 + q_len 1 is 33" + FULL),
    ("a negative length", [-1], 1, "input 'past_len' is -1 for sequence 0: a length is at least 0"),
]
IDS = ["one-past", "second-full", "negative"]


def needs_node(test):
    for mark in NODE_MARKS:  # node, and examples/node's packages
        test = mark(test)
    return test


def step(past_len, q_len, seed=0) -> dict[str, np.ndarray]:
    """A decoding step's inputs for a cache of 32 (heads 2, width 16), its buffers zeros."""
    rng = np.random.default_rng(seed)
    batch = len(past_len)
    new = {n: rng.standard_normal((batch, q_len, 16), dtype=np.float32) for n in ("query", "key", "value")}
    cache = {n: np.zeros((batch, 2, 32, 8), np.float32) for n in ("past_key", "past_value")}
    return {**new, **cache, "past_len": np.array(past_len, np.int64)}


def the_contract() -> dict:
    from attn_onnx.exporter.spec import ExportSpec

    spec = ExportSpec(module="mha-static", heads=2, embedding_dim=16, mask="causal", max_len=32)
    return json.loads(json.dumps(spec.kind.dims_contract(spec)))


# --- the contract and the manifest -------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [GQA, STANDARD], ids=["ort-gqa", "onnx-attention"])
def test_the_manifest_carries_the_kind_s_lengths_rule(bundle_of, args):
    from attn_onnx.deploy.bundle import read_manifest

    manifest = read_manifest(bundle_of(*args))  # read_manifest validates it against the schema
    assert manifest["lengths"] == the_contract()["lengths"]
    assert manifest["lengths"]["past_len"] == {
        "description": manifest["lengths"]["past_len"]["description"],
        "at_least": 0,
        "plus": "q_len",
        "at_most": 32,
        "limit": "the cache's max_len",
        "past_limit": "the cache is full (reset the sequence, or export with a larger --max-len)",
    }
    assert "lengths" not in read_manifest(bundle_of())  # the other kinds have none


def test_the_schema_holds_the_lengths_entries(bundle_of):
    import jsonschema

    from attn_onnx.deploy.bundle import SCHEMA_FILE

    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    manifest = json.loads((bundle_of(*GQA) / "manifest.json").read_text())
    assert validator.is_valid(manifest)
    for broken in (
        {"past_len": {}},
        {"past_len": {"description": 1}},
        {"past_len": {"description": "", "at_most": "32"}},
        {"past_len": {"description": "", "at_least": 0.5}},
        {"past_len": {"description": "", "plus": ["q_len"]}},
        {"past_len": {"description": "", "past_limit": 1}},
        [],
    ):
        assert not validator.is_valid({**manifest, "lengths": broken}), broken


def test_the_golden_sets_and_decode_steps_keep_the_rule(bundle_of):
    """The vectors a bundle carries are within the rule (the cache filled exactly among them): a service that
    checks it refuses none of them."""
    from attn_onnx.deploy.bundle import _load_tensor, read_manifest
    from attn_onnx.exporter.kinds.dims import values_problem

    folder = bundle_of(*GQA)
    manifest = read_manifest(folder)
    contract = the_contract()
    entries = manifest["test_data_sets"] + manifest["decode"]["steps"]
    filled = 0
    for entry in entries:
        arrays = {f["name"]: _load_tensor(folder / f["file"]) for f in entry["inputs"]}
        if "past_len" not in arrays:
            continue
        assert values_problem(contract, arrays) is None, entry.get("folder")
        filled += int((arrays["past_len"] + arrays["query"].shape[1] == 32).any())
    assert filled >= 1  # the check case b2.q1.kv31


def test_without_the_rule_onnxruntime_fails_the_step_in_its_own_words(bundle_of):
    """What the rule stands in front of: each bad step fails inside onnxruntime, for both forms."""
    for args in (GQA, STANDARD):
        session = ort.InferenceSession(str(bundle_of(*args) / "model.onnx"), providers=["CPUExecutionProvider"])
        for _, past_len, q_len, _ in BAD:
            with pytest.raises(Exception, match="TensorScatter|GroupQueryAttention"):
                session.run(None, step(past_len, q_len))


# --- the Node service ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def static_served(bundle_of):
    with serve(bundle_of(*GQA), "--grpc-port", "0") as url:
        yield url


@needs_node
@pytest.mark.parametrize("what, past_len, q_len, error", BAD, ids=IDS)
def test_a_step_past_the_cache_or_negative_is_refused_over_json_binary_and_grpc(
    static_served, what, past_len, q_len, error
):
    refused_everywhere(static_served, step(past_len, q_len), error, what)


@needs_node
def test_a_step_that_fills_the_cache_exactly_is_answered(static_served, bundle_of):
    """past_len + q_len == max_len: the last position written, the step answered as onnxruntime answers it."""
    from tritonclient.grpc import service_pb2

    session = ort.InferenceSession(str(bundle_of(*GQA) / "model.onnx"), providers=["CPUExecutionProvider"])
    for past_len, q_len in (([30, 29], 2), ([0], 32), ([31, 31], 1)):
        arrays = step(past_len, q_len, seed=1)
        expected = session.run(["output"], arrays)[0]
        status, answer = post(static_served, json_body(arrays, outputs=[{"name": "output"}]))
        assert status == 200, answer
        output = np.array(answer["outputs"][0]["data"], np.float32).reshape(expected.shape)
        np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-6)
        answer = grpc_infer(static_served.grpc, arrays, outputs=["output"])
        assert isinstance(answer, service_pb2.ModelInferResponse), answer


@needs_node
def test_without_the_rule_the_service_hands_the_bad_step_to_onnxruntime(bundle_of, tmp_path):
    """The rule is what refuses: the same bundle, its manifest without `lengths`, lets each bad step through to
    onnxruntime, which fails it in its own words (TensorScatter's or GroupQueryAttention's, inside an If node)."""
    copy = tmp_path / "no-lengths"
    shutil.copytree(bundle_of(*GQA), copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["lengths"]
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=2))
    with serve(copy) as url:
        for what, past_len, q_len, error in BAD:
            status, answer = post(url, json_body(step(past_len, q_len)))
            assert status == 400 and answer["error"] != error, what
            assert answer["error"].startswith("onnxruntime could not run these inputs: "), answer
            assert "TensorScatter" in answer["error"] or "GroupQueryAttention" in answer["error"], answer
        assert post(url, json_body(step([30], 2)))[0] == 200
