"""The Python-backend model (1/model.py, written by export-attn --triton-backend python) without a server: the
file as written, loaded with a stand-in for Triton's triton_python_backend_utils, fed requests as Triton hands
them over. How it batches, answers and fails; tests/deploy/test_triton_live.py runs it in a real Triton."""

import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from attn_onnx.cli.export_attn import main as export
from tests.deploy.conftest import SMALL
from tests.deploy.tamper import change_a_weight, move_a_valid_value, move_a_value, noise_beyond, rehash

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] is a test extra")

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2


class TritonError:
    INTERNAL, INVALID_ARG = "INTERNAL", "INVALID_ARG"  # two of the codes of the 2.51 backend's TritonError

    def __init__(self, message, code="INTERNAL"):
        self.message, self.code = message, code


class Response:
    def __init__(self, output_tensors, error=None):
        self.outputs = {t.name: t.array for t in output_tensors}
        self.error = error


class Tensor:
    def __init__(self, name, array):
        self.name, self.array = name, array

    def as_numpy(self):
        return self.array


class Request:
    def __init__(self, feeds, outputs=()):
        self.tensors = {name: Tensor(name, a) for name, a in feeds.items()}
        self.outputs = list(outputs)

    def requested_output_names(self):
        return self.outputs


def _pb_utils():
    pb = types.ModuleType("triton_python_backend_utils")
    pb.TritonModelException = type("TritonModelException", (Exception,), {})
    pb.TritonError, pb.InferenceResponse, pb.Tensor = TritonError, Response, Tensor
    pb.get_input_tensor_by_name = lambda request, name: request.tensors.get(name)
    pb.lines = []  # what the model logs
    pb.Logger = types.SimpleNamespace(log_info=pb.lines.append)
    return pb


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("python-backend")
    static = ["--kv-cache", "--max-len", "32", "--attention-impl", "ort-gqa"]
    for name, args in {"mha": [], "probs": ["--attn-probs"], "kv": ["--kv-cache"], "static": static}.items():
        result = CliRunner().invoke(
            export,
            [*SMALL, *args, "--triton-repo", str(folder), "--triton-backend", "python", "--name", name, "--no-check"],
        )
        assert result.exit_code == 0, result.output
    return folder


@pytest.fixture
def model_py(repo, monkeypatch):
    """The module 1/model.py, imported as Triton's stub would, with the stand-in utils."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _pb_utils())
    spec = importlib.util.spec_from_file_location("model", repo / "mha" / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(repo, name, kind="CPU", parameters="", budget=None, verify=None):
    """TritonPythonModel.initialize's args, the config as Triton passes it (JSON of its ModelConfig); `budget`
    replaces the written max_request_bytes, and `verify` the written attn_onnx.verify."""
    text = (repo / name / "config.pbtxt").read_text() + parameters
    if verify is not None:
        written = 'key: "attn_onnx.verify" value: { string_value: "true" }'
        assert written in text
        text = text.replace(written, f'key: "attn_onnx.verify" value: {{ string_value: "{verify}" }}')
    if budget is not None:
        written = f'key: "max_request_bytes" value: {{ string_value: "{1 << 30}" }}'
        assert written in text
        text = text.replace(written, f'key: "max_request_bytes" value: {{ string_value: "{budget}" }}')
    config = json_format.MessageToDict(
        text_format.Parse(text, model_config_pb2.ModelConfig()), preserving_proto_field_name=True
    )
    return {
        "model_config": json.dumps(config),
        "model_instance_kind": kind,
        "model_instance_device_id": "0",
        "model_repository": str(repo / name),
        "model_version": "1",
        "model_name": name,
    }


class Counting:
    """A session that counts its runs and the batch of each."""

    def __init__(self, session):
        self.session, self.batches = session, []

    def run(self, names, feeds):
        self.batches.append(len(feeds["query"]))
        return self.session.run(names, feeds)


def _feeds(rng, batch, q_len, kv_len, mask_batch=None, mask_rows=None):
    feeds = {
        "query": rng.standard_normal((batch, q_len, 16), dtype=np.float32),
        "key": rng.standard_normal((batch, kv_len, 16), dtype=np.float32),
        "value": rng.standard_normal((batch, kv_len, 16), dtype=np.float32),
        "mask": np.ones((mask_batch or batch, mask_rows or q_len, kv_len), bool),
    }
    feeds["mask"][..., kv_len // 2 :] = False
    return feeds


def _model(model_py, repo, name="mha", **options):
    model = model_py.TritonPythonModel()
    model.initialize(_args(repo, name, **options))
    return model


def test_the_written_model_py_is_the_template(repo):
    from importlib.resources import files

    assert (repo / "mha" / "1" / "model.py").read_text() == files("attn_onnx.deploy").joinpath(
        "triton_python_model.py"
    ).read_text()


def test_requests_of_one_shape_run_as_one_batch_and_get_their_own_answers(model_py, repo):
    model = _model(model_py, repo)
    alone = ort.InferenceSession(str(repo / "mha" / "1" / "model.onnx"))
    model.session = counting = Counting(model.session)
    rng = np.random.default_rng(0)
    feeds = [
        _feeds(rng, 1, 5, 7),
        _feeds(rng, 2, 5, 7),
        _feeds(rng, 1, 3, 4),
        _feeds(rng, 1, 5, 7),
        _feeds(rng, 1, 5, 7, mask_rows=1),
        _feeds(rng, 2, 5, 7, mask_batch=1),
    ]
    responses = model.execute([Request(f) for f in feeds])
    # (5,7) with a full mask: 1+2+1 in one run; (3,4) and the (batch, 1, kv_len) mask each in a run of their
    # own; the mask of batch 1 for a query of 2 is refused by the dims contract before anything runs
    assert sorted(counting.batches) == [1, 1, 4]
    assert responses[5].error.message == "input 'mask' dim 0 (batch) is 1, but input 'query' dim 0 (batch) is 2"
    for f, response in zip(feeds[:5], responses):
        assert response.error is None
        np.testing.assert_allclose(response.outputs["output"], alone.run(None, f)[0], rtol=1e-4, atol=1e-5)


def test_a_bad_request_gets_its_own_error_and_the_others_their_answers(model_py, repo):
    model = _model(model_py, repo)
    rng = np.random.default_rng(1)
    good, bad = _feeds(rng, 1, 5, 7), _feeds(rng, 1, 5, 7)
    bad.pop("mask")  # an input missing (Triton itself refuses that; the model too)
    responses = model.execute([Request(good), Request(bad), Request(good)])
    assert [r.error is None for r in responses] == [True, False, True]
    assert "mask" in responses[1].error.message and responses[1].outputs == {}
    np.testing.assert_array_equal(responses[0].outputs["output"], responses[2].outputs["output"])


def test_a_batch_that_fails_is_retried_request_by_request(model_py):
    """A group whose one run fails runs again request by request: only the request that fails alone fails."""

    def run(feeds):
        if np.isnan(feeds["x"]).any():
            raise ValueError("a NaN")
        return {"y": feeds["x"] * 2}

    inputs = [{"x": np.ones((1, 3))}, {"x": np.full((2, 3), np.nan)}, {"x": np.zeros((1, 3))}]
    results = model_py.run_grouped(run, inputs, batched=True)
    assert isinstance(results[1], ValueError)
    np.testing.assert_array_equal(results[0]["y"], np.full((1, 3), 2.0))
    np.testing.assert_array_equal(results[2]["y"], np.zeros((1, 3)))


def test_only_the_requested_outputs_come_back(model_py, repo):
    model = _model(model_py, repo, "probs")
    rng = np.random.default_rng(2)
    responses = model.execute([Request(_feeds(rng, 1, 4, 4), ["attn_probs"]), Request(_feeds(rng, 1, 4, 4))])
    assert list(responses[0].outputs) == ["attn_probs"] and responses[0].outputs["attn_probs"].shape == (1, 2, 4, 4)
    assert list(responses[1].outputs) == ["output", "attn_probs"]  # none asked: all


def test_a_gpu_instance_runs_on_cuda_or_says_what_there_is(model_py, repo):
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        assert _model(model_py, repo, kind="GPU").session.get_providers()[0] == "CUDAExecutionProvider"
    else:
        with pytest.raises(Exception, match=r"requested CUDAExecutionProvider; available: \[.*'CPUExecutionProvider'"):
            _model(model_py, repo, kind="GPU")
    assert _model(model_py, repo).session.get_providers() == ["CPUExecutionProvider"]


def test_session_options_come_from_the_config_parameters(model_py):
    options = model_py.session_options(
        {
            "parameters": {
                "intra_op_thread_count": {"string_value": "3"},
                "inter_op_thread_count": {"string_value": "2"},
                "session.intra_op.allow_spinning": {"string_value": "0"},
                "unrelated": {"string_value": "x"},
            }
        }
    )
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (3, 2)  # neither is a default
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_the_written_config_keeps_onnxruntime_s_idle_threads_from_spinning(model_py, repo):
    config = json.loads(_args(repo, "mha")["model_config"])
    options = model_py.session_options(config)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


# --- the dims contract and the work budget (issue 27) ---------------------------------------------------------


def test_the_config_carries_the_dims_contract_and_the_budget(repo):
    from attn_onnx.deploy.triton import dims_parameter
    from attn_onnx.exporter.spec import ExportSpec

    parameters = json.loads(_args(repo, "mha")["model_config"])["parameters"]
    contract = json.loads(parameters["attn_onnx.dims"]["string_value"])
    assert contract == json.loads(dims_parameter(ExportSpec(heads=2, embedding_dim=16)))
    assert contract["dims"]["mask_q_len"] == {"is": "q_len", "or_one": True}
    assert contract["scores"] == ["batch", 2, "q_len", "kv_len"]
    assert parameters["max_request_bytes"]["string_value"] == str(1 << 30)


@pytest.mark.parametrize(
    "shapes, message",
    [
        # a mask of one key for 4 keys: broadcast over the keys, the padding never applied (a 200 with wrong numbers)
        (
            {"query": (2, 3), "key": (2, 4), "mask": (2, 3, 1)},
            "input 'mask' dim 2 (kv_len) is 1, but input 'key' dim 1 (kv_len) is 4",
        ),
        # keys of batch 1 under a query of batch 2, a mask of 2 keys: the graph split one 4-key sequence in two
        (
            {"query": (2, 3), "key": (1, 4), "mask": (2, 1, 2)},
            "input 'key' dim 0 (batch) is 1, but input 'query' dim 0 (batch) is 2",
        ),
        (
            {"query": (2, 3), "key": (2, 4), "mask": (2, 2, 4)},
            "input 'mask' dim 1 (mask_q_len) is 2, but input 'query' dim 1 (q_len) is 3 (mask_q_len is q_len or 1)",
        ),
    ],
)
def test_a_request_whose_inputs_disagree_is_refused_and_the_others_answered(model_py, repo, shapes, message):
    model = _model(model_py, repo)
    rng = np.random.default_rng(3)
    bad = {
        "query": rng.standard_normal((*shapes["query"], 16), dtype=np.float32),
        "key": rng.standard_normal((*shapes["key"], 16), dtype=np.float32),
        "value": rng.standard_normal((*shapes["key"], 16), dtype=np.float32),
        "mask": np.zeros(shapes["mask"], bool),
    }
    good = _feeds(rng, 2, 3, 4)
    responses = model.execute([Request(good), Request(bad), Request(good)])
    assert responses[1].error.message == message and responses[1].error.code == "INVALID_ARG"
    assert responses[1].outputs == {}
    assert responses[0].error is None and responses[2].error is None
    np.testing.assert_array_equal(responses[0].outputs["output"], responses[2].outputs["output"])


def test_a_request_past_the_work_budget_is_refused_naming_the_estimate_and_the_budget(model_py, repo):
    rng = np.random.default_rng(4)
    small, large = _feeds(rng, 1, 3, 4), _feeds(rng, 2, 50, 60)
    # 4 x (2 x batch x heads x q_len x kv_len + inputs + output)
    estimate = 4 * (2 * 2 * 2 * 50 * 60 + sum(a.size for a in large.values()) + 2 * 50 * 16)
    assert model_py.estimated_bytes(_model(model_py, repo).contract, large) == estimate
    model = _model(model_py, repo, budget=estimate - 1)
    responses = model.execute([Request(small), Request(large)])
    assert responses[0].error is None
    assert responses[1].error.code == "INVALID_ARG"
    assert f"{estimate} bytes" in responses[1].error.message and f"budget of {estimate - 1} bytes" in (
        responses[1].error.message
    )
    assert _model(model_py, repo, budget=estimate).execute([Request(large)])[0].error is None
    assert _model(model_py, repo).max_request_bytes == 1 << 30  # the written default: 1 GiB


def test_the_template_s_checker_is_the_package_s(model_py):
    """model.py carries a copy of exporter/kinds/dims.py's contract_problem (it imports nothing of attn_onnx):
    the two give the same answer, shape for shape, for every kind."""
    import itertools

    from attn_onnx.exporter.kinds.dims import contract_problem
    from attn_onnx.exporter.spec import ExportSpec

    specs = [
        ExportSpec(heads=2, embedding_dim=16),
        ExportSpec(module="attention", heads=2, embedding_dim=16),
        ExportSpec(module="mha-self", heads=2, embedding_dim=16),
        ExportSpec(module="mha-cache", heads=2, embedding_dim=16, mask="input"),
    ]
    checked = 0
    for spec in specs:
        contract = json.loads(json.dumps(spec.kind.dims_contract(spec)))
        for sizes in itertools.product((1, 2, 3), repeat=3):  # every named dim of each input from a small set
            b, q, k = sizes
            value = {"batch": b, "q_len": q, "kv_len": k, "past_len": k, "mask_q_len": 1, "total_len": k + q}
            shapes = {
                name: [value[d] if isinstance(d, str) else d for d in dims] for name, dims in contract["inputs"].items()
            }
            for name in shapes:  # each input with each axis off by one, too
                for axis in range(len(shapes[name])):
                    wrong = {**shapes, name: [n + (i == axis) for i, n in enumerate(shapes[name])]}
                    assert model_py.contract_problem(contract, wrong) == contract_problem(contract, wrong)
                    checked += 1
            assert model_py.contract_problem(contract, shapes) is None and contract_problem(contract, shapes) is None
    assert checked > 500


def test_the_estimate_reads_a_cache_step_s_keys_and_the_mask_module_s_size(model_py):
    from attn_onnx.exporter.spec import ExportSpec

    spec = ExportSpec(module="mha-cache", heads=2, embedding_dim=16, mask="causal", causal_align="bottom-right")
    contract = json.loads(json.dumps(spec.kind.dims_contract(spec)))
    feeds = {
        **{n: np.zeros((3, 2, 16), np.float32) for n in ("query", "key", "value")},
        **{n: np.zeros((3, 2, 7, 8), np.float32) for n in ("past_key", "past_value")},
    }
    total = 7 + 2  # total_len = past_len + q_len: the keys, and the presents' length
    assert model_py.estimated_bytes(contract, feeds) == 4 * (
        2 * 3 * 2 * 2 * total + 3 * 2 * 16 * 3 + 3 * 2 * 7 * 8 * 2 + 3 * 2 * 16 + 3 * 2 * total * 8 * 2
    )
    spec = ExportSpec(module="mask")
    contract = json.loads(json.dumps(spec.kind.dims_contract(spec)))
    assert model_py.estimated_bytes(contract, {"size": np.array(20000, np.int64)}) == 4 * (1 + 20000 * 20000)
    assert "past the model's budget of 1073741824 bytes" in model_py.request_problem(
        contract, 1 << 30, {"size": np.array(20000, np.int64)}
    )


# --- a static cache's lengths: past_len[b] >= 0 and past_len[b] + q_len <= max_len, checked on the values ------------

FULL = ", past the cache's max_len 32: the cache is full (reset the sequence, or export with a larger --max-len)"


def _static_feeds(rng, past_len, q_len):
    batch = len(past_len)
    new = {n: rng.standard_normal((batch, q_len, 16), dtype=np.float32) for n in ("query", "key", "value")}
    cache = {n: np.zeros((batch, 2, 32, 8), np.float32) for n in ("past_key", "past_value")}
    return {**new, **cache, "past_len": np.array(past_len, np.int64)}


def test_the_config_carries_a_static_cache_s_lengths_rule(repo):
    from attn_onnx.exporter.spec import ExportSpec

    contract = json.loads(
        json.loads(_args(repo, "static")["model_config"])["parameters"]["attn_onnx.dims"]["string_value"]
    )
    spec = ExportSpec(module="mha-static", heads=2, embedding_dim=16, mask="causal", max_len=32)
    assert contract["lengths"] == spec.kind.dims_contract(spec)["lengths"]
    assert contract["lengths"]["past_len"]["at_most"] == 32 and contract["lengths"]["past_len"]["plus"] == "q_len"
    mha = json.loads(json.loads(_args(repo, "mha")["model_config"])["parameters"]["attn_onnx.dims"]["string_value"])
    assert not mha.get("lengths")


BAD_LENGTHS = [
    ([31], 2, "input 'past_len' is 31 for sequence 0, and 31 + q_len 2 is 33" + FULL),
    ([3, 32], 1, "input 'past_len' is 32 for sequence 1, and 32 + q_len 1 is 33" + FULL),
    ([-1], 1, "input 'past_len' is -1 for sequence 0: a length is at least 0"),
]


@pytest.mark.parametrize("past_len, q_len, message", BAD_LENGTHS, ids=["one-past", "second-full", "negative"])
def test_a_static_step_past_the_cache_or_negative_is_refused_and_one_that_fills_it_answered(
    model_py, repo, past_len, q_len, message
):
    model = _model(model_py, repo, "static")
    rng = np.random.default_rng(6)
    fills = _static_feeds(rng, [30, 29], 2)  # sequence 0 filled to its last position: answered
    bad = _static_feeds(rng, past_len, q_len)
    responses = model.execute([Request(fills), Request(bad), Request(fills)])
    assert (responses[1].error.message, responses[1].error.code) == (message, "INVALID_ARG")
    assert responses[1].outputs == {}
    assert responses[0].error is None and responses[2].error is None
    alone = ort.InferenceSession(str(repo / "static" / "1" / "model.onnx"))
    np.testing.assert_allclose(responses[0].outputs["output"], alone.run(["output"], fills)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("past_len, q_len, message", BAD_LENGTHS, ids=["one-past", "second-full", "negative"])
def test_without_the_lengths_rule_the_bad_step_reaches_onnxruntime(model_py, repo, past_len, q_len, message):
    """The rule is what refuses: the same contract without it lets the request run, and onnxruntime fails it with
    its own words (TensorScatter's or GroupQueryAttention's), an internal error rather than an invalid argument."""
    model = _model(model_py, repo, "static")
    del model.contract["lengths"]
    response = model.execute([Request(_static_feeds(np.random.default_rng(7), past_len, q_len))])[0]
    assert response.error.code == "INTERNAL" and response.error.message != message
    assert "TensorScatter" in response.error.message or "GroupQueryAttention" in response.error.message
    assert (
        model_py.request_problem(model.contract, 1 << 30, _static_feeds(np.random.default_rng(7), past_len, q_len))
        is None
    )


# --- verified before serving: the version folder is a bundle, and initialize runs its golden sets -------------------

RUNTIME = f"onnxruntime {ort.__version__} (CPUExecutionProvider)"


def _tampered(repo, name, tmp_path, change) -> Path:
    """A copy of the repository's model `name` under tmp_path (the repository), its version folder changed."""
    shutil.copytree(repo / name, tmp_path / name)
    change(tmp_path / name / "1")
    return tmp_path


def _moved(relative):
    def change(version):
        move_a_value(version / relative)
        rehash(version)

    return change


def _valid(step, how):
    """A static cache's decode step's present_key changed by `how(path, valid_lengths)` and re-signed."""

    def change(version):
        manifest = json.loads((version / "manifest.json").read_text())
        entry = next(f for f in manifest["decode"]["steps"][step]["outputs"] if f["name"] == "present_key")
        how(version / entry["file"], entry["valid_lengths"])
        rehash(version)

    return change


def _lengths(k, lengths):
    """Golden set k's present_key given valid_lengths that do not fit it."""

    def change(version):
        manifest = json.loads((version / "manifest.json").read_text())
        manifest["test_data_sets"][k]["outputs"][1]["valid_lengths"] = lengths
        (version / "manifest.json").write_text(json.dumps(manifest))

    return change


def _needs(release):
    def change(version):
        manifest = json.loads((version / "manifest.json").read_text())
        manifest["model"]["min_onnxruntime"] = release
        (version / "manifest.json").write_text(json.dumps(manifest))

    return change


@pytest.mark.parametrize("name, sets, steps", [("mha", 5, 0), ("kv", 4, 4), ("static", 7, 6)])
def test_initialize_runs_every_golden_set_and_decode_step_and_logs_the_cost(model_py, repo, name, sets, steps):
    _model(model_py, repo, name)
    lines = sys.modules["triton_python_backend_utils"].lines
    verdict = next(line for line in lines if "passed on" in line)
    assert verdict.startswith(f"{name}: {sets} golden sets and {steps} decode steps passed on {RUNTIME} (max_abs ")
    assert verdict.endswith(" ms")
    manifest = json.loads((repo / name / "1" / "manifest.json").read_text())
    assert len(manifest["test_data_sets"]) == sets and len(manifest.get("decode", {}).get("steps", [])) == steps


@pytest.mark.parametrize(
    "name, change, words",
    [
        (
            "mha",
            _moved("test_data_set_2/output_0.pb"),
            f"golden set test_data_set_2 (b2.q6.kv6.masked_row) fails on {RUNTIME}: output: max_abs=0.001 beyond atol=",
        ),
        (
            "kv",
            _moved("decode/step_2/output_1.pb"),
            f"golden set decode/step_2 (1 new, past 5) fails on {RUNTIME}: present_key: max_abs=0.001 beyond",
        ),
        (
            "static",
            _valid(3, move_a_valid_value),
            f"golden set decode/step_3 (2 new, past [6, 2]) fails on {RUNTIME}: present_key: max_abs=0.001 beyond",
        ),
        (
            "static",
            _lengths(1, [33, 5]),
            f"golden set test_data_set_1 (b2.q1.kv7.graph) fails on {RUNTIME}: present_key: valid_lengths [33,5] do "
            "not fit shape [2,2,32,8]",
        ),
        ("mha", change_a_weight, f"golden set test_data_set_0 (b1.q5.kv5.ones) fails on {RUNTIME}: output: max_abs="),
        (
            "mha",
            lambda version: move_a_value(version / "test_data_set_0" / "input_0.pb"),
            "the bundle was changed after it was written: test_data_set_0/input_0.pb (sha256 ",
        ),
        (
            "mha",
            _needs("99.1.0"),
            f"the bundle needs onnxruntime >= 99.1.0 (its manifest's min_onnxruntime); this server "
            f"runs onnxruntime {ort.__version__}",
        ),
    ],
    ids=[
        "changed-and-re-signed-output",
        "changed-decode-step",
        "changed-static-valid-part",
        "static-valid-lengths-misfit",
        "changed-weights",
        "changed-unsigned",
        "newer-runtime",
    ],
)
def test_a_bundle_that_fails_here_is_not_served(model_py, repo, tmp_path, name, change, words):
    """A vector changed and re-signed (only the numbers can tell), the weights changed, a file changed without
    re-signing, a min_onnxruntime above this runtime: initialize raises (Triton marks the model not ready)."""
    copy = _tampered(repo, name, tmp_path, change)
    with pytest.raises(model_py.pb_utils.TritonModelException) as refused:
        _model(model_py, copy, name)
    message = str(refused.value)
    assert message.startswith(f"{name}: ") and words in message and "not serving" in message, message
    assert "\n" not in message
    if "min_onnxruntime" in words:  # no --no-verify past it: the runtime is too old whatever the sets say
        with pytest.raises(model_py.pb_utils.TritonModelException, match="needs onnxruntime >= 99.1.0"):
            _model(model_py, copy, name, verify="false")


def test_a_static_caches_presents_are_compared_over_their_valid_part_only(model_py, repo, tmp_path):
    """Noise beyond each sequence's length in an expected present (re-signed): not part of the answer, served."""
    copy = _tampered(repo, "static", tmp_path, _valid(3, noise_beyond))
    _model(model_py, copy, "static")
    lines = sys.modules["triton_python_backend_utils"].lines
    assert any(line.startswith("static: 7 golden sets and 6 decode steps passed on ") for line in lines), lines


def test_verify_false_serves_a_bundle_that_fails_and_says_so(model_py, repo, tmp_path):
    copy = _tampered(repo, "mha", tmp_path, _moved("test_data_set_2/output_0.pb"))
    model = _model(model_py, copy, "mha", verify="false")
    lines = sys.modules["triton_python_backend_utils"].lines
    assert "mha: verification skipped (attn_onnx.verify is false): the bundle's golden sets were not run" in lines
    assert model.execute([Request(_feeds(np.random.default_rng(0), 1, 3, 4))])[0].error is None


def test_a_runtime_at_the_claim_is_served(model_py, repo, tmp_path):
    copy = _tampered(repo, "mha", tmp_path, _needs(ort.__version__))
    _model(model_py, copy, "mha")
    assert model_py.release_key("1.9.0") < model_py.release_key("1.18.1") < model_py.release_key("1.18.1.dev7") + (1,)
    assert model_py.release_key("1.23.0rc1") == (1, 23, 0)
