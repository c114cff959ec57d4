"""`--optimize`: the graph as onnxruntime optimizes it offline, at a portable level, with its metadata and a
weight map that still leads back to every state_dict tensor.

The level is ORT_ENABLE_EXTENDED: constant folding, redundant-node removal and fusions into com.microsoft
ops (FusedMatMul and the like), which hold on any machine onnxruntime runs on. ORT_ENABLE_ALL would add
this CPU's memory layouts (NCHWc), which a model file must not bake in. The result runs in onnxruntime only
when a fusion wrote com.microsoft ops (onnx.reference then skips it).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from attn_onnx.errors import ExportError, first_line
from attn_onnx.exporter.variants.base import find_by_value, tensor_of


def optimize(proto: onnx.ModelProto, weights: dict[str, dict]) -> tuple[onnx.ModelProto, dict[str, dict]]:
    """The optimized model, and the weight map re-found in it (the optimizer may rename or fold)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    with tempfile.TemporaryDirectory() as folder:
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        try:
            ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ExportError(f"onnxruntime could not optimize the model: {first_line(exc)}") from exc
        optimized = onnx.load(options.optimized_model_filepath)
    return optimized, _refind(proto, optimized, weights)


def _refind(before: onnx.ModelProto, after: onnx.ModelProto, weights: dict[str, dict]) -> dict[str, dict]:
    old = {init.name: init for init in before.graph.initializer}
    new = {init.name: init for init in after.graph.initializer}
    arrays = None  # the optimized initializers as numpy, read once and only if something moved
    found = {}
    for key, entry in weights.items():
        value = tensor_of(old, entry)
        if entry["initializer"] in new and np.array_equal(tensor_of(new, entry), value):
            found[key] = entry  # kept as it was
            continue
        if arrays is None:
            arrays = {name: numpy_helper.to_array(init) for name, init in new.items()}
        match = find_by_value(arrays, value)
        if match is None:
            raise ExportError(
                f"onnxruntime's optimizer folded weight {key!r} into another tensor, so the "
                "reference cannot be rebuilt from the file; export without --optimize"
            )
        found[key] = match
    return found
