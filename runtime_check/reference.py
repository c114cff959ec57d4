"""Rebuild the PyTorch reference of an exported model from the file alone (its metadata and
initializers), or from the user's own checkpoint."""

from __future__ import annotations

from pathlib import Path

import onnx
import torch

from attn_onnx.dtypes import to_torch
from attn_onnx.errors import MetadataError
from attn_onnx.exporter.spec import ModelSpec
from attn_onnx.exporter.variants.base import tensor_of
from attn_onnx.models.weights import load_into, load_state_dict, weights_label

FROM_FILE = (
    "the model's own initializers (a reference rebuilt from the file cannot see weights changed "
    "at or after export; pass --weights with the original checkpoint for that)"
)


def reference_module(
    proto: onnx.ModelProto, spec: ModelSpec, weights: str | Path | None = None, prefix: str = "", base_dir: str = ""
) -> tuple[torch.nn.Module | None, str]:
    """The module a model was exported from (a MultiHeadedAttention for `mha`), and a sentence on whose
    weights it holds. Kinds without weights (`attention`, `mask`) give (None, ...).
    """
    if not spec.kind.has_weights:
        return None, "none (the module has no weights)"
    module = spec.kind.build_module(spec)
    if weights is not None:
        path = Path(weights)
        load_into(module, load_state_dict(path, prefix), source=path.name)
        return module, f"--weights {weights_label(path, prefix)}"
    load_into(module, _state_from_initializers(proto, spec, base_dir), source="the model's initializers")
    return module, FROM_FILE


def model_twin(proto: onnx.ModelProto, spec: ModelSpec, twin: torch.nn.Module | None) -> torch.nn.Module | None:
    """The module holding the weights the model holds, to check it against: `twin` (the module with its
    weights rounded to the model's dtype), or for an int8 model the dequantized weights read back through its
    weight map. The pipeline and auto both hold a model to it."""
    if not spec.quantize:
        return twin
    module, _ = reference_module(proto, spec)
    return module


def _state_from_initializers(proto: onnx.ModelProto, spec: ModelSpec, base_dir: str = "") -> dict[str, torch.Tensor]:
    inits = {init.name: init for init in proto.graph.initializer}
    missing = sorted(entry["initializer"] for entry in spec.weights.values() if entry["initializer"] not in inits)
    if not spec.weights or missing:
        raise MetadataError(
            "the model's weight map names initializers it does not hold "
            f"({missing[:4] or 'map is empty'}); pass --weights to supply the weights"
        )
    return {key: to_torch(tensor_of(inits, entry, base_dir).copy()) for key, entry in spec.weights.items()}
