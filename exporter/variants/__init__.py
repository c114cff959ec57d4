"""Graph variants: each builds the ONNX graph of a spec *and* says where every state_dict tensor went.

A variant is one file here with a `build(spec, graph, example, module) -> Built` function, added to
VARIANTS. Fused variants (ONNX Attention, onnxruntime's MultiHeadAttention, a packed QKV) go here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx


@dataclass
class Built:
    """A variant's output: the model, and for each state_dict key the initializer that holds it."""

    proto: onnx.ModelProto
    weights: dict[str, dict] = field(default_factory=dict)  # key -> {"initializer": name, "transposed": bool}


def _torch_export(*args, **kwargs) -> Built:
    from attn_onnx.exporter.variants.torch_export import build

    return build(*args, **kwargs)


# name -> builder; imported lazily so that listing the variants needs no torch
VARIANTS = {"torch-export": _torch_export}
