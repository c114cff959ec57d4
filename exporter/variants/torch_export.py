"""`torch-export`: the seed's MatMul/Softmax graph as torch.onnx's dynamo exporter writes it (the reference
variant, and the default)."""

from __future__ import annotations

import contextlib
import logging
import warnings

import onnx
import torch
from onnx import numpy_helper

from attn_onnx.dtypes import to_numpy
from attn_onnx.errors import ExportError, first_line
from attn_onnx.exporter.variants.base import Built, find_by_value


def build(spec, module: torch.nn.Module | None) -> Built:
    """Trace the kind's PyTorch graph of `module` on its example inputs, with every named dim of the spec dynamic
    (the one variant that reads a torch graph)."""
    graph, example = spec.kind.graph(spec, module).eval(), spec.kind.example(spec)
    dynamic = {
        name: {i: _dim(d) for i, d in enumerate(dims) if isinstance(d, str)}
        for name, dims in spec.input_dims().items()
        if dims
    }
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                graph,
                example,
                input_names=spec.input_names,
                output_names=spec.output_names,
                opset_version=spec.opset,
                dynamo=True,
                external_data=False,
                verbose=False,
                dynamic_shapes=dynamic or None,
                optimize=True,
            )
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {first_line(exc)}") from exc
    assert program is not None  # torch.onnx.export returns an ONNXProgram with dynamo=True (None is TorchScript's)
    proto = program.model_proto
    return Built(proto, _weight_map(proto, module) if module is not None else {})


def _dim(name: str):
    """The dynamic dim handed to torch.export for a named dim of the spec (named as the spec says afterwards)."""
    if name == "mask_q_len":
        return "q_len"  # the example's mask is a full one
    if name == "total_len":
        return torch.export.Dim.AUTO  # past_len + q_len: a sum torch.export infers but cannot be told
    return name


def _weight_map(proto: onnx.ModelProto, module: torch.nn.Module) -> dict[str, dict]:
    """Find each state_dict tensor among the initializers (the exporter may rename or transpose them)."""
    inits = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    found = {}
    for key, tensor in module.state_dict().items():
        match = find_by_value(inits, to_numpy(tensor))
        if match is None:
            raise ExportError(
                f"weight {key!r} is not among the exported initializers; the reference cannot be rebuilt from this file"
            )
        found[key] = match
    return found


@contextlib.contextmanager
def _quiet_exporter():
    """torch's exporter logs progress and warnings that say nothing to our users."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
