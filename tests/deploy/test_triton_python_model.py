"""The Python-backend model (1/model.py, written by export-attn --triton-backend python) without a server: the
file as written, loaded with a stand-in for Triton's triton_python_backend_utils, fed requests as Triton hands
them over. How it batches, answers and fails; tests/deploy/test_triton_live.py runs it in a real Triton."""

import importlib.util
import json
import sys
import types

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from attn_onnx.cli.export_attn import main as export
from tests.deploy.conftest import SMALL

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] is a test extra")

from google.protobuf import json_format, text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402


class TritonError:
    def __init__(self, message):
        self.message = message


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
    pb.Logger = types.SimpleNamespace(log_info=lambda message: None)
    return pb


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("python-backend")
    for name, args in {"mha": [], "probs": ["--attn-probs"]}.items():
        result = CliRunner().invoke(export, [*SMALL, *args, "--triton-repo", str(folder), "--triton-backend",
                                             "python", "--name", name, "--no-check"])
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


def _args(repo, name, kind="CPU", parameters=""):
    """TritonPythonModel.initialize's args, the config as Triton passes it (JSON of its ModelConfig)."""
    text = (repo / name / "config.pbtxt").read_text() + parameters
    config = json_format.MessageToDict(text_format.Parse(text, model_config_pb2.ModelConfig()),
                                       preserving_proto_field_name=True)
    return {"model_config": json.dumps(config), "model_instance_kind": kind, "model_instance_device_id": "0",
            "model_repository": str(repo / name), "model_version": "1", "model_name": name}


class Counting:
    """A session that counts its runs and the batch of each."""

    def __init__(self, session):
        self.session, self.batches = session, []

    def run(self, names, feeds):
        self.batches.append(len(feeds["query"]))
        return self.session.run(names, feeds)


def _feeds(rng, batch, q_len, kv_len, mask_batch=None, mask_rows=None):
    feeds = {"query": rng.standard_normal((batch, q_len, 16), dtype=np.float32),
             "key": rng.standard_normal((batch, kv_len, 16), dtype=np.float32),
             "value": rng.standard_normal((batch, kv_len, 16), dtype=np.float32),
             "mask": np.ones((mask_batch or batch, mask_rows or q_len, kv_len), bool)}
    feeds["mask"][..., kv_len // 2:] = False
    return feeds


def _model(model_py, repo, name="mha", **options):
    model = model_py.TritonPythonModel()
    model.initialize(_args(repo, name, **options))
    return model


def test_the_written_model_py_is_the_template(repo):
    from importlib.resources import files

    assert (repo / "mha" / "1" / "model.py").read_text() == files("attn_onnx.deploy").joinpath(
        "triton_python_model.py").read_text()


def test_requests_of_one_shape_run_as_one_batch_and_get_their_own_answers(model_py, repo):
    model = _model(model_py, repo)
    alone = ort.InferenceSession(str(repo / "mha" / "1" / "model.onnx"))
    model.session = counting = Counting(model.session)
    rng = np.random.default_rng(0)
    feeds = [_feeds(rng, 1, 5, 7), _feeds(rng, 2, 5, 7), _feeds(rng, 1, 3, 4), _feeds(rng, 1, 5, 7),
             _feeds(rng, 1, 5, 7, mask_rows=1), _feeds(rng, 2, 5, 7, mask_batch=1)]
    responses = model.execute([Request(f) for f in feeds])
    # (5,7) with a full mask: 1+2+1 in one run; (3,4) and the (batch, 1, kv_len) mask each in a run of their
    # own; the mask of batch 1 for a query of 2 runs alone (concatenated, its batch would not line up), and fails
    assert sorted(counting.batches) == [1, 1, 2, 4]
    assert "Attempting to broadcast an axis" in responses[5].error.message
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
    options = model_py.session_options({"parameters": {
        "intra_op_thread_count": {"string_value": "1"}, "inter_op_thread_count": {"string_value": "2"},
        "session.intra_op.allow_spinning": {"string_value": "0"}, "unrelated": {"string_value": "x"}}})
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 2)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_the_written_config_keeps_onnxruntime_s_idle_threads_from_spinning(model_py, repo):
    config = json.loads(_args(repo, "mha")["model_config"])
    options = model_py.session_options(config)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
