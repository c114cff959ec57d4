"""Broken models, built the way real exports go wrong, for runtime_check to catch."""

import dataclasses
import importlib
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from attn_onnx.deploy import export_model
from attn_onnx.exporter.kinds import KINDS
from attn_onnx.exporter.spec import ExportSpec
from attn_onnx.exporter.variants import VARIANTS, Variant
from attn_onnx.models import MultiHeadedAttention


@dataclasses.dataclass(frozen=True)
class BiasMoved(Variant):
    """torch-export's graph with the output projection's bias moved by 0.5: as fast as the straight export, builds
    and runs, and is wrong."""

    def build(self, spec, graph, example, module):
        built = VARIANTS["torch-export"].build(spec.replace(variant="torch-export"), graph, example, module)
        entry = built.weights["linears.3.bias"]
        init = next(i for i in built.proto.graph.initializer if i.name == entry["initializer"])
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + np.float32(0.5), init.name))
        return built


def bias_moved(name: str) -> BiasMoved:
    """The broken variant, to register in VARIANTS under `name` for a test."""
    return BiasMoved(name, "torch_export", "broken on purpose")


class NegInfFillMHA(MultiHeadedAttention):
    """The same module, but masked scores filled with -inf: NaN on every fully-masked row."""

    def forward(self, query, key, value, mask=None):
        impl = importlib.import_module("attn_onnx.models.attention")  # the module, not the function
        saved, impl.mask_fill = impl.mask_fill, lambda dtype: float("-inf")
        try:
            return super().forward(query, key, value, mask)
        finally:
            impl.mask_fill = saved


def neg_inf_fill_model(path: Path, spec: ExportSpec, module: MultiHeadedAttention) -> Path:
    bad = NegInfFillMHA(spec.heads, spec.embedding_dim, dropout=0.0).eval()
    bad.load_state_dict(module.state_dict())
    export_model(spec, path, module=bad, check=False)  # it would fail the check: that is the point
    return path


def baked_reshape_model(src: Path, dst: Path, bake: str) -> Path:
    """Replace every Reshape's computed target shape with the one it had at the export's example shape.

    bake="batch": `view(2, -1, h, d_k)` (the example batch baked in, the length free);
    bake="length": `view(-1, 3, h, d_k)`; bake="all": right at the example shape only.
    """
    model = onnx.load(str(src))
    width = model.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    b, q, kv = KINDS["mha"].example_dims.values()  # (2, 3, 4)
    rng = np.random.default_rng(0)
    feeds = {"query": rng.standard_normal((b, q, width), dtype=np.float32),
             "key": rng.standard_normal((b, kv, width), dtype=np.float32),
             "value": rng.standard_normal((b, kv, width), dtype=np.float32),
             "mask": np.ones((b, q, kv), bool)}
    values = ReferenceEvaluator(model).run(None, feeds, intermediate=True)
    for i, node in enumerate(n for n in model.graph.node if n.op_type == "Reshape"):
        shape = np.array(values[node.output[0]].shape, dtype=np.int64)  # as reshaped at the example shape
        if bake == "batch":
            shape[1] = -1
        elif bake == "length":
            shape[0] = -1
        name = f"baked_shape_{i}"
        model.graph.initializer.append(numpy_helper.from_array(shape, name))
        node.input[1] = name
    onnx.save(model, str(dst))
    return dst


def perturbed_weights_model(src: Path, dst: Path, spec: ExportSpec, amount: float = 1e-3) -> Path:
    """The output projection's weights moved by +-amount: invisible to a reference rebuilt from the file."""
    model = onnx.load(str(src))
    name = spec.weights["linears.3.weight"]["initializer"]
    for i, init in enumerate(model.graph.initializer):
        if init.name == name:
            array = numpy_helper.to_array(init)
            signs = np.where(np.random.default_rng(0).random(array.shape) < 0.5, -1, 1).astype(array.dtype)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(array + amount * signs, name))
    onnx.save(model, str(dst))
    return dst
