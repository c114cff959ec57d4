"""A config.pbtxt read back with Triton's own ModelConfig protobuf (tritonclient's) and held to the model: the
tests' check that deploy/triton.py writes what Triton reads."""

from __future__ import annotations

import onnx

from attn_onnx.deploy.triton import TRITON_TYPES
from attn_onnx.errors import InterfaceError
from attn_onnx.vocab import TRITON_BACKENDS


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
    if config.backend not in TRITON_BACKENDS and config.platform != "onnxruntime_onnx":
        problems.append(f"backend is {config.backend!r}, not 'onnxruntime' or 'python'")
    batch = config.max_batch_size > 0
    initializers = {i.name for i in proto.graph.initializer}
    model_io = {
        "input": [v for v in proto.graph.input if v.name not in initializers],
        "output": list(proto.graph.output),
    }
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
