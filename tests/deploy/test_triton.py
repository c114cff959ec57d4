"""export-attn --triton-repo writes a model repository whose config Triton's own protobuf reads and
that agrees with the model; a broken config is caught."""

import pytest
from click.testing import CliRunner

from attn_onnx.cli.export_attn import main as export
from tests.deploy.conftest import SMALL

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] is a test extra")

import onnx
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from attn_onnx.errors import InterfaceError
from tests.deploy.triton_config import check_config

KINDS = {
    "mha": [*SMALL],
    "mha-uint8-probs": [*SMALL, "--mask-dtype", "uint8", "--attn-probs"],
    "attention-causal": [*SMALL, "--module", "attention", "--mask", "causal"],
    "mask": ["--module", "mask"],
    "mha-float16": [*SMALL, "--dtype", "float16"],
    "mha-bfloat16": [*SMALL, "--dtype", "bfloat16"],
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("triton") / "models"
    for name, args in KINDS.items():
        result = CliRunner().invoke(export, [*args, "--triton-repo", str(folder), "--name", name, "--no-check"])
        assert result.exit_code == 0, result.output
    return folder


def read(repo, name):
    text = (repo / name / "config.pbtxt").read_text()
    return text, onnx.load(str(repo / name / "1" / "model.onnx"))


@pytest.mark.parametrize("name", KINDS)
def test_the_config_is_triton_s_and_matches_the_model(repo, name):
    text, model = read(repo, name)
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.name == name and config.backend == "onnxruntime"
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    check_config(text, model)
    if name == "mask":  # a scalar input, no batch dim: no batching
        assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
        assert list(config.input[0].dims) == [1] and list(config.input[0].reshape.shape) == []
    else:
        assert config.max_batch_size == 8 and config.HasField("dynamic_batching")
        rank = len(model.graph.input[0].type.tensor_type.shape.dim)
        assert -1 in config.input[0].dims and len(config.input[0].dims) == rank - 1  # the batch dim left out


def test_the_repository_layout(repo):
    assert sorted(p.name for p in repo.iterdir()) == sorted(KINDS)  # one model each, side by side
    for name in KINDS:
        assert sorted(str(p.relative_to(repo / name)) for p in (repo / name).rglob("*")) == [
            "1",
            "1/model.onnx",
            "config.pbtxt",
        ]


BREAKS = {
    "data_type": ("data_type: TYPE_BOOL", "data_type: TYPE_INT64", "input 'mask' is TYPE_INT64"),
    "dims": (
        'name: "query" data_type: TYPE_FP32 dims: [ -1, 16 ]',
        'name: "query" data_type: TYPE_FP32 dims: [ 16 ]',
        "input 'query' has dims [16]",
    ),
    "name": ('name: "value"', 'name: "values"', "inputs ['key', 'mask', 'query', 'values']"),
    "batch": (
        "max_batch_size: 8",
        "max_batch_size: 0",
        "input 'query' has dims [-1, 16], the model's are [-1, -1, 16]",
    ),
    "backend": ('backend: "onnxruntime"', 'backend: "tensorrt"', "backend is 'tensorrt'"),
    "syntax": ("dynamic_batching { }", "dynamic_batching {", "does not parse"),
}


@pytest.mark.parametrize("old, new, message", BREAKS.values(), ids=BREAKS)
def test_a_broken_config_fails(repo, old, new, message):
    text, model = read(repo, "mha")
    assert old in text
    with pytest.raises(InterfaceError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        check_config(text.replace(old, new, 1), model)


@pytest.mark.parametrize(
    "name, datatype", [("mha", "TYPE_FP32"), ("mha-float16", "TYPE_FP16"), ("mha-bfloat16", "TYPE_BF16")]
)
def test_reduced_precision_models_declare_their_dtype(repo, name, datatype):
    config = text_format.Parse(read(repo, name)[0], model_config_pb2.ModelConfig())
    wanted = model_config_pb2.DataType.Value(datatype)
    assert [t.data_type for t in (*config.input[:3], *config.output)] == [wanted] * 4
    assert config.input[3].data_type == model_config_pb2.DataType.Value("TYPE_BOOL")  # the mask keeps its own


def test_gpu_instances_and_batch_size_when_asked(tmp_path):
    result = CliRunner().invoke(
        export, [*SMALL, "--triton-repo", str(tmp_path), "--triton-gpu", "--triton-max-batch", "32", "--no-check"]
    )
    assert result.exit_code == 0, result.output
    config = text_format.Parse((tmp_path / "mha" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.max_batch_size == 32
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]


def test_an_existing_model_is_refused_and_others_are_left_alone(repo):
    before = (repo / "mha" / "config.pbtxt").read_text()
    result = CliRunner().invoke(export, [*SMALL, "--triton-repo", str(repo), "--name", "mha"])
    assert result.exit_code == 2
    assert result.output.strip() == f"Error: '{repo / 'mha'}' exists; pass --force to replace it"
    assert (repo / "mha" / "config.pbtxt").read_text() == before


@pytest.mark.parametrize(
    "args, text",
    [
        (["--triton-gpu", "--out", "m.onnx"], "--triton-gpu does not apply without --triton-repo"),
        (["--name", "x", "--out", "m.onnx"], "--name does not apply without --bundle or --triton-repo"),
        (
            ["--triton-repo", "r", "--name", "a/b"],
            "--name 'a/b': a model's name matches ^[A-Za-z0-9][A-Za-z0-9._-]*$ (ASCII letters, digits, '.', "
            "'_' and '-', "
            "not first)",
        ),
        ([], "say where to write: --out FILE, --bundle DIR or --triton-repo DIR"),
    ],
)
def test_output_options_are_checked_first(tmp_path, monkeypatch, args, text):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(export, [*SMALL, *args])
    assert result.exit_code == 2
    assert result.output.strip() == f"Error: {text}"
    assert list(tmp_path.iterdir()) == []


def test_the_python_backend_writes_model_py_beside_the_same_config(repo, tmp_path):
    result = CliRunner().invoke(
        export,
        [
            *SMALL,
            "--triton-repo",
            str(tmp_path),
            "--triton-backend",
            "python",
            "--triton-max-queue-delay-us",
            "500",
            "--no-check",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(
        "(python backend: config.pbtxt, 1/model.onnx, 1/model.py, 1/manifest.json and golden vectors)"
    )
    files = sorted(
        str(p.relative_to(tmp_path / "mha")) for p in (tmp_path / "mha").rglob("*") if "test_data_set_" not in str(p)
    )
    assert files == ["1", "1/manifest.json", "1/model.onnx", "1/model.py", "config.pbtxt"]
    # the version folder is a bundle: model.py verifies it before serving, and so can any verifier
    from attn_onnx.deploy.bundle import check_bundle

    report = check_bundle(tmp_path / "mha" / "1")
    assert report.ok and len(report.results) == len(list((tmp_path / "mha" / "1").glob("test_data_set_*"))) > 3
    text, model = read(tmp_path, "mha")
    check_config(text, model)  # the python backend passes the same check
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.backend == "python" and config.dynamic_batching.max_queue_delay_microseconds == 500
    onnxruntime_text = read(repo, "mha")[0]  # but for the backend and the delay, the onnxruntime form's config
    # idle onnxruntime threads in model.py do not spin: at (1,16) and concurrency 4 spinning cost 20-30% of
    # the throughput on 2 cores, where Triton's frontend and the client share the cores
    assert config.parameters["session.intra_op.allow_spinning"].string_value == "0"
    spinning = 'parameters { key: "session.intra_op.allow_spinning" value: { string_value: "0" } }\n'
    tail = text[text.index(spinning) :]  # model.py's parameters: the session's, the dims contract, the budget
    assert (
        text.replace('backend: "python"', 'backend: "onnxruntime"')
        .replace("dynamic_batching { max_queue_delay_microseconds: 500 }", "dynamic_batching { }")
        .removesuffix(tail)
        == onnxruntime_text
    )
    # model.py checks each request by these two (issue 27); the onnxruntime form carries neither
    from attn_onnx.deploy.triton import dims_parameter
    from attn_onnx.exporter.spec import ExportSpec

    assert config.parameters["attn_onnx.dims"].string_value == dims_parameter(ExportSpec(heads=2, embedding_dim=16))
    assert config.parameters["max_request_bytes"].string_value == str(1 << 30)
    assert config.parameters["attn_onnx.verify"].string_value == "true"
    assert "parameters" not in onnxruntime_text


@pytest.mark.parametrize(
    "args, text",
    [
        (["--triton-backend", "python", "--out", "m.onnx"], "--triton-backend does not apply without --triton-repo"),
        (
            ["--triton-max-queue-delay-us", "100", "--bundle", "b"],
            "--triton-max-queue-delay-us does not apply without --triton-repo",
        ),
        (
            ["--triton-repo", "r", "--triton-backend", "python", "--dtype", "bfloat16"],
            "--triton-backend python cannot serve --dtype bfloat16: the Python backend hands tensors over as numpy "
            "arrays, and numpy has no bfloat16; use the onnxruntime backend",
        ),
        (
            ["--triton-repo", "r", "--triton-backend", "tensorrt"],
            "Invalid value for '--triton-backend': 'tensorrt' is not one of 'onnxruntime', 'python'.",
        ),
    ],
)
def test_triton_backend_options_are_checked_first(tmp_path, monkeypatch, args, text):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(export, [*SMALL, *args])
    assert result.exit_code == 2
    assert result.output.strip() == f"Error: {text}"
    assert list(tmp_path.iterdir()) == []
