"""A Triton model repository: `DIR/<name>/config.pbtxt` and `DIR/<name>/1/model.onnx`, served by Triton's
onnxruntime backend (NVIDIA's containers), or by its Python backend with `1/model.py` beside the model (the
template `triton_python_model.py`: onnxruntime in the backend's own Python, the requests batched). Clients
speak the same Open Inference Protocol to it as to the Node service.

The config is written as protobuf text (the tests read it back with Triton's own model-config protobuf,
tritonclient's, and compare it with the model: tests/deploy/triton_config.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from attn_onnx.errors import UsageError
from attn_onnx.exporter.spec import ExportSpec
from attn_onnx.files import write_folder_atomic
from attn_onnx.model_files import needs_external, save_model
from attn_onnx.vocab import ELEMENT_TYPES, TRITON_BACKENDS

TRITON_TYPES = {name: t.triton for name, t in ELEMENT_TYPES.items()}  # numpy's name -> Triton's
CONFIG_FILE, VERSION = "config.pbtxt", "1"
PYTHON_MODEL = "triton_python_model.py"  # the template, shipped in this package, written as 1/model.py
# the python backend's parameters: the dims contract its model.py checks each request against (JSON of
# exporter/kinds/dims.py's contract, without the descriptions), and the work budget of one request in bytes
DIMS_PARAMETER, BUDGET_PARAMETER = "attn_onnx.dims", "max_request_bytes"
VERIFY_PARAMETER = "attn_onnx.verify"  # "false": model.py serves without running the golden vectors first
MAX_REQUEST_BYTES = 1 << 30  # 1 GiB


def dims_parameter(spec: ExportSpec) -> str:
    """The dims contract of a model of `spec` as the python backend reads it: compact JSON."""
    contract = spec.kind.dims_contract(spec)
    contract["dims"] = {
        name: {k: v for k, v in rule.items() if k != "description"} for name, rule in contract["dims"].items()
    }
    return json.dumps(contract, separators=(",", ":"))


def _pbtxt_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def batched(spec: ExportSpec) -> bool:
    """Whether every input and output leads with the batch dim, so Triton may batch requests."""
    dims = [*spec.input_dims().values(), *spec.output_dims().values()]
    return all(d and d[0] == "batch" for d in dims)


def check_name(name: str) -> None:
    """UsageError unless `name` is safe as a folder, a URL path segment and a Triton model name: the bundle
    manifest schema's own pattern, so a Triton repository and a bundle take the same names."""
    from attn_onnx.deploy.bundle import check_bundle_name

    check_bundle_name(name)


def check_backend(backend: str, dtype: str) -> None:
    """UsageError unless Triton's `backend` can serve a model of `dtype`."""
    if backend not in TRITON_BACKENDS:
        raise UsageError(f"--triton-backend {backend!r}: choose from {list(TRITON_BACKENDS)}")
    if backend == "python" and dtype == "bfloat16":
        raise UsageError(
            "--triton-backend python cannot serve --dtype bfloat16: the Python backend hands tensors "
            "over as numpy arrays, and numpy has no bfloat16; use the onnxruntime backend"
        )


def config_text(
    spec: ExportSpec,
    name: str,
    *,
    max_batch_size: int = 8,
    gpu: bool = False,
    backend: str = "onnxruntime",
    max_queue_delay_us: int = 0,
    max_request_bytes: int = MAX_REQUEST_BYTES,
) -> str:
    """config.pbtxt for the model of `spec`, served by Triton's `backend`. With batching, dims leave out the
    batch dim (Triton adds it); dynamic dims are -1; the dynamic batcher waits up to `max_queue_delay_us`
    for more requests to join a batch. The python backend's model.py also gets the dims contract and the work
    budget of one request (`max_request_bytes`) as parameters."""
    check_name(name)
    check_backend(backend, spec.dtype)
    batching = batched(spec) and max_batch_size > 0
    lines = [f'name: "{name}"', f'backend: "{backend}"', f"max_batch_size: {max_batch_size if batching else 0}"]

    def tensors(kind: str, dims: dict, dtypes: dict) -> None:
        lines.append(f"{kind} [")
        entries = []
        for tensor, tensor_dims in dims.items():
            shown = tensor_dims[1:] if batching else tensor_dims
            shape = ", ".join(str(d) if isinstance(d, int) else "-1" for d in shown)
            reshape = ""
            if not shown:  # a scalar: Triton wants dims [ 1 ] reshaped to [ ]
                shape, reshape = "1", " reshape: { shape: [ ] }"
            entries.append(
                f'  {{ name: "{tensor}" data_type: {TRITON_TYPES[dtypes[tensor]]} dims: [ {shape} ]{reshape} }}'
            )
        lines.append(",\n".join(entries))
        lines.append("]")

    tensors("input", spec.input_dims(), spec.input_dtypes())
    tensors("output", spec.output_dims(), spec.output_dtypes())
    if batching:
        delay = f" max_queue_delay_microseconds: {max_queue_delay_us} " if max_queue_delay_us else " "
        lines.append(f"dynamic_batching {{{delay}}}")
    lines.append(f"instance_group [ {{ kind: {'KIND_GPU' if gpu else 'KIND_CPU'} count: 1 }} ]")
    if backend == "python":  # idle onnxruntime threads that spin hold the cores Triton's own threads need
        lines.append('parameters { key: "session.intra_op.allow_spinning" value: { string_value: "0" } }')
        lines.append(
            "# model.py refuses (INVALID_ARGUMENT) a request whose inputs disagree with each other by this "
            "contract (docs/serving-triton.md)"
        )
        lines.append(
            f'parameters {{ key: "{DIMS_PARAMETER}" value: {{ string_value: {_pbtxt_string(dims_parameter(spec))} }} }}'
        )
        lines.append(
            "# and one whose estimated peak, 4 x (2 x batch x heads x q_len x kv_len + the elements of every "
            "input and output) bytes, is past this budget"
        )
        budget = int(max_request_bytes)
        lines.append(f'parameters {{ key: "{BUDGET_PARAMETER}" value: {{ string_value: "{budget}" }} }}')
        lines.append(
            "# model.py runs the golden vectors of 1/manifest.json when it starts and refuses to serve if one "
            'fails; "false" skips them (and says so in the log)'
        )
        lines.append(f'parameters {{ key: "{VERIFY_PARAMETER}" value: {{ string_value: "true" }} }}')
    return "\n".join(lines) + "\n"


def write_repository(
    repo: str | Path,
    proto: onnx.ModelProto,
    spec: ExportSpec,
    *,
    name: str,
    force: bool = False,
    max_batch_size: int = 8,
    gpu: bool = False,
    external: bool = False,
    backend: str = "onnxruntime",
    max_queue_delay_us: int = 0,
    data: bytes | None = None,
    twin=None,
) -> Path:
    """Write `repo/<name>/` atomically (other models already in `repo` are left alone). With `external` (or
    past 2 GiB) the weights go to `1/model.onnx.data`, where onnxruntime finds them.

    The python backend's version folder is a bundle (deploy/bundle.py: model.onnx, manifest.json and the golden
    vectors of the float64 `twin` module), with `1/model.py` beside it, which verifies it before serving."""
    from importlib.resources import files

    from attn_onnx.deploy.bundle import bundle_builder, check_bundle_dtype

    repo = Path(repo)
    text = config_text(
        spec, name, max_batch_size=max_batch_size, gpu=gpu, backend=backend, max_queue_delay_us=max_queue_delay_us
    )
    code = files(__package__).joinpath(PYTHON_MODEL).read_text() if backend == "python" else None
    external = external or needs_external(proto)
    if code is not None:
        if twin is None:
            raise UsageError("the python backend's model verifies golden vectors: give its PyTorch twin (twin=)")
        check_bundle_dtype(spec.dtype)
        version = bundle_builder(proto, spec, twin, name=name, external=external, data=data)
    else:

        def version(folder: Path) -> None:
            save_model(proto, folder / "model.onnx", external, data)

    created = not repo.exists()
    repo.mkdir(parents=True, exist_ok=True)

    def build(folder: Path) -> None:
        (folder / VERSION).mkdir()
        version(folder / VERSION)
        if code is not None:
            (folder / VERSION / "model.py").write_text(code)
        (folder / CONFIG_FILE).write_text(text)

    try:
        return write_folder_atomic(repo / name, build, force)
    except BaseException:
        if created and not any(repo.iterdir()):
            repo.rmdir()  # a repository made for this model goes with it
        raise
