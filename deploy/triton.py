"""A Triton model repository: `DIR/<name>/config.pbtxt` and `DIR/<name>/1/model.onnx`, served by Triton's
onnxruntime backend. Clients speak the same Open Inference Protocol to it as to the Node service.

The config is written as protobuf text; `check_config` reads it back with Triton's own model-config
protobuf (tritonclient) and compares it with the model.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from attn_onnx.errors import InterfaceError, UsageError
from attn_onnx.exporter.spec import ExportSpec
from attn_onnx.files import write_folder_atomic
from attn_onnx.vocab import ELEMENT_TYPES
from attn_onnx.model_files import needs_external, save_model

TRITON_TYPES = {name: t.triton for name, t in ELEMENT_TYPES.items()}  # numpy's name -> Triton's
CONFIG_FILE, VERSION = "config.pbtxt", "1"


def batched(spec: ExportSpec) -> bool:
    """Whether every input and output leads with the batch dim, so Triton may batch requests."""
    dims = [*spec.input_dims().values(), *spec.output_dims().values()]
    return all(d and d[0] == "batch" for d in dims)


def check_name(name: str) -> None:
    """UsageError unless `name` is safe as a folder, a URL path segment and a Triton model name."""
    if not name or name.startswith(".") or not all(c.isalnum() or c in "-_." for c in name):
        raise UsageError(f"--name {name!r}: use letters, digits, '-', '_' and '.' only")


def config_text(spec: ExportSpec, name: str, *, max_batch_size: int = 8, gpu: bool = False) -> str:
    """config.pbtxt for the model of `spec`. With batching, dims leave out the batch dim (Triton adds it);
    dynamic dims are -1."""
    check_name(name)
    batching = batched(spec) and max_batch_size > 0
    lines = [f'name: "{name}"', 'backend: "onnxruntime"', f"max_batch_size: {max_batch_size if batching else 0}"]

    def tensors(kind: str, dims: dict, dtypes: dict) -> None:
        lines.append(f"{kind} [")
        entries = []
        for tensor, tensor_dims in dims.items():
            shown = tensor_dims[1:] if batching else tensor_dims
            shape = ", ".join(str(d) if isinstance(d, int) else "-1" for d in shown)
            reshape = ""
            if not shown:  # a scalar: Triton wants dims [ 1 ] reshaped to [ ]
                shape, reshape = "1", " reshape: { shape: [ ] }"
            entries.append(f'  {{ name: "{tensor}" data_type: {TRITON_TYPES[dtypes[tensor]]} dims: [ {shape} ]'
                           f"{reshape} }}")
        lines.append(",\n".join(entries))
        lines.append("]")

    tensors("input", spec.input_dims(), spec.input_dtypes())
    tensors("output", spec.output_dims(), spec.output_dtypes())
    if batching:
        lines.append("dynamic_batching { }")
    lines.append(f"instance_group [ {{ kind: {'KIND_GPU' if gpu else 'KIND_CPU'} count: 1 }} ]")
    return "\n".join(lines) + "\n"


def write_repository(repo: str | Path, proto: onnx.ModelProto, spec: ExportSpec, *, name: str, force: bool = False,
                     max_batch_size: int = 8, gpu: bool = False, external: bool = False) -> Path:
    """Write `repo/<name>/` atomically (other models already in `repo` are left alone). With `external` (or
    past 2 GiB) the weights go to `1/model.onnx.data`, where onnxruntime's backend finds them."""
    repo = Path(repo)
    text = config_text(spec, name, max_batch_size=max_batch_size, gpu=gpu)
    external = external or needs_external(proto)
    created = not repo.exists()
    repo.mkdir(parents=True, exist_ok=True)

    def build(folder: Path) -> None:
        (folder / VERSION).mkdir()
        save_model(proto, folder / VERSION / "model.onnx", external)
        (folder / CONFIG_FILE).write_text(text)

    try:
        return write_folder_atomic(repo / name, build, force)
    except BaseException:
        if created and not any(repo.iterdir()):
            repo.rmdir()  # a repository made for this model goes with it
        raise


def check_config(text: str, proto: onnx.ModelProto) -> None:
    """InterfaceError naming every way `text` (a config.pbtxt) disagrees with the model, read with Triton's
    own ModelConfig protobuf."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        config = text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise InterfaceError(f"config.pbtxt does not parse as Triton's ModelConfig: {exc}") from None
    problems = []
    if config.backend != "onnxruntime" and config.platform != "onnxruntime_onnx":
        problems.append(f"backend is {config.backend!r}, not 'onnxruntime'")
    batch = config.max_batch_size > 0
    initializers = {i.name for i in proto.graph.initializer}
    model_io = {"input": [v for v in proto.graph.input if v.name not in initializers],
                "output": list(proto.graph.output)}
    for kind, declared in (("input", config.input), ("output", config.output)):
        values = {v.name: v for v in model_io[kind]}
        names = [t.name for t in declared]
        if sorted(names) != sorted(values):
            problems.append(f"{kind}s {sorted(names)} != the model's {sorted(values)}")
            continue
        for tensor in declared:
            value = values[tensor.name].type.tensor_type
            dtype = onnx.helper.tensor_dtype_to_np_dtype(value.elem_type).name
            wanted = TRITON_TYPES.get(dtype)
            actual = model_config_pb2.DataType.Name(tensor.data_type)
            if actual != wanted:
                problems.append(f"{kind} {tensor.name!r} is {actual}, the model's is {wanted}")
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.shape.dim]
            if batch:
                if not dims or dims[0] != -1:
                    problems.append(f"max_batch_size > 0 but {kind} {tensor.name!r} has no dynamic batch dim")
                    continue
                dims = dims[1:]
            stated = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
            if stated != dims:
                problems.append(f"{kind} {tensor.name!r} has dims {stated}, the model's are {dims}")
    if problems:
        raise InterfaceError("the Triton config does not match the model: " + "; ".join(problems))
