"""The model under check: read once, its spec read from its metadata, its interface compared with that spec
before any case runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from attn_onnx.errors import InterfaceError, MetadataError, first_line
from attn_onnx.exporter.spec import ModelSpec
from attn_onnx.model_files import check_external_data, external_locations


@dataclass(frozen=True)
class LoadedModel:
    """A model's proto, its serialized bytes, a name for reports, and the spec its metadata states.

    A model with external data (weights in `model.onnx.data` beside it) keeps them out of `proto` and
    `data`; runtimes then open it by `path`, and `base_dir` is where its weights are read from.
    """

    proto: onnx.ModelProto
    data: bytes
    name: str  # the file's path, or "<in memory>"
    spec: ModelSpec
    path: Path | None = None
    external: bool = False

    def source(self) -> str | bytes:
        """What a runtime opens: the path for a model with external data (resolved beside it), else bytes."""
        return str(self.path) if self.external else self.data

    @property
    def base_dir(self) -> str:
        return str(self.path.parent) if self.path is not None else ""


def load_model(model: str | Path | onnx.ModelProto) -> LoadedModel:
    """Read `model` and its spec, and compare its interface with that spec: MetadataError for what is not an
    export-attn model, InterfaceError for one whose inputs or outputs are not what its metadata says."""
    path, external = None, False
    if isinstance(model, onnx.ModelProto):
        if external_locations(model):
            raise MetadataError("a model with external data is checked from its file (its weights lie beside it)")
        proto, data, name = model, model.SerializeToString(), "<in memory>"
    else:
        path = Path(model)
        data = path.read_bytes()
        if not data:
            raise MetadataError(f"{path.name!r} is not an ONNX model: the file is empty")
        try:
            proto = onnx.load_from_string(data)
        except Exception as exc:  # protobuf's DecodeError and friends
            raise MetadataError(f"{path.name!r} is not an ONNX model: {first_line(exc)}") from None
        if not proto.graph.node:
            raise MetadataError(f"{path.name!r} is not an ONNX model (its graph is empty)")
        name = str(path)
        external = bool(external_locations(proto))
        if external:
            check_external_data(proto, path.parent, path.name)
    spec = ModelSpec.from_metadata({p.key: p.value for p in proto.metadata_props})
    check_interface(proto, spec)
    return LoadedModel(proto, data, name, spec, path, external)


def check_interface(proto: onnx.ModelProto, spec: ModelSpec) -> None:
    """InterfaceError, naming every difference, unless the graph's inputs and outputs have the names,
    dtypes and ranks its metadata states."""
    problems = []
    initializers = {init.name for init in proto.graph.initializer}
    sides = (
        ("input", [v for v in proto.graph.input if v.name not in initializers], spec.input_dims(), spec.input_dtypes()),
        ("output", list(proto.graph.output), spec.output_dims(), spec.output_dtypes()),
    )
    for side, values, dims, dtypes in sides:
        actual = {v.name: v for v in values}
        for name in dims:
            if name not in actual:
                problems.append(f"missing {side} {name!r} ({dtypes[name]}, rank {len(dims[name])})")
        for name, value in actual.items():
            if name not in dims:
                problems.append(f"unexpected {side} {name!r}")
                continue
            tensor = value.type.tensor_type
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name if tensor.elem_type else "?"
            if dtype != dtypes[name]:
                problems.append(f"{side} {name!r} is {dtype}, expected {dtypes[name]}")
            if tensor.HasField("shape") and len(tensor.shape.dim) != len(dims[name]):
                problems.append(f"{side} {name!r} has rank {len(tensor.shape.dim)}, expected {len(dims[name])}")
    if problems:
        raise InterfaceError("the model's interface does not match its attn_onnx metadata: " + "; ".join(problems))
