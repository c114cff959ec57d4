"""Build the ONNX model of a spec in memory, with dynamic batch and sequence axes and the spec in its metadata.

    proto, spec = export_onnx(spec, module)      # spec validated; spec now carries the weight map

The pipeline that validates, checks and writes is attn_onnx.deploy.export_model (export-attn's).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from attn_onnx import __version__
from attn_onnx.dtypes import torch_dtype
from attn_onnx.errors import ExportError, UsageError, first_line
from attn_onnx.exporter.spec import METADATA_PREFIX, ExportSpec, ModelSpec
from attn_onnx.exporter.variants import VARIANTS
from attn_onnx.model_files import needs_external
from attn_onnx.vocab import MASK_CONVENTION


def build_module(spec: ExportSpec, state: dict[str, torch.Tensor] | None = None, seed: int = 0) -> nn.Module:
    """The trainable module of `spec` in eval mode: weights from `state`, else random from `seed`."""
    if not spec.kind.has_weights:
        raise UsageError(f"module {spec.module!r} has no weights; build_module applies to 'mha'")
    return spec.kind.build_module(spec, state, seed)


def example_inputs(spec: ExportSpec) -> tuple[torch.Tensor, ...]:
    """The example handed to torch.export: dims unlike 1 and unlike each other, so none is baked or tied."""
    return spec.kind.example(spec)


def in_dtype(module: nn.Module | None, dtype: str) -> nn.Module | None:
    """`module` with its weights rounded to `dtype` (a copy; the module itself where it is float32 already):
    the weights an export at that dtype holds, and so the golden's."""
    if module is None or all(p.dtype == torch_dtype(dtype) for p in module.parameters()):
        return module
    return copy.deepcopy(module).to(torch_dtype(dtype))


@dataclass(frozen=True)
class Prepared:
    """The weights of one export, prepared once: the module as given or built (checked against the spec, in eval
    mode), the golden (its weights rounded to the spec's dtype: what the model holds), and where they came from.
    All None / "" for a kind without weights."""

    module: nn.Module | None
    twin: nn.Module | None
    source: str


def prepare(
    spec: ExportSpec,
    module: nn.Module | None = None,
    state: dict[str, torch.Tensor] | None = None,
    seed: int = 0,
    weights_source: str = "",
) -> Prepared:
    """The weights of an export of `spec`: `module` (any module with MultiHeadedAttention's interface), else
    `state` (a state_dict), else random from `seed`; `weights_source` says where they came from, for people."""
    kind = spec.kind
    if not kind.has_weights:
        return Prepared(None, None, "")
    if module is None:
        module = kind.build_module(spec, state, seed)
        weights_source = weights_source or ("a state_dict" if state is not None else f"random (seed={seed})")
    module = kind.checked_module(spec, module)
    return Prepared(module, in_dtype(module, spec.dtype), weights_source or "a module passed to the Python API")


def export_onnx(
    spec: ExportSpec, module: nn.Module | None = None, seed: int = 0, weights_source: str = ""
) -> tuple[onnx.ModelProto, ModelSpec]:
    """Export the settings `spec` (validated by the caller: export_model does it once) to an in-memory model.
    For mha, `module` is any module with MultiHeadedAttention's interface (`head`, `linears`, `attn`); without
    one, random weights from `seed` are used. `weights_source` says where the weights came from, for people.

    Returns the model, passed through onnx.checker, and what the export produced: the ModelSpec (the settings
    with the weight map) that its metadata states.
    """
    return export_prepared(spec, prepare(spec, module, seed=seed, weights_source=weights_source))


def export_prepared(spec: ExportSpec, weights: Prepared) -> tuple[onnx.ModelProto, ModelSpec]:
    """export_onnx with the weights prepared already (the pipeline and auto prepare them once per export)."""
    built = VARIANTS[spec.variant].build(spec, weights.twin)
    proto = built.proto
    products = {"weights": built.weights, "weights_source": weights.source}
    spec = ModelSpec.of(spec, **(products if spec.kind.has_weights else {}))
    _name_dims(proto, spec)
    describe(proto, spec)
    check_onnx(proto)
    if spec.optimize:
        from attn_onnx.exporter.optimize import optimize

        proto, spec = _rewritten(optimize, proto, spec)
    if spec.quantize:
        from attn_onnx.exporter.quantize import quantize

        proto, spec = _rewritten(quantize, proto, spec)
    return proto, spec


def _rewritten(rewrite, proto: onnx.ModelProto, spec: ModelSpec) -> tuple[onnx.ModelProto, ModelSpec]:
    """The model after a pass over it (`rewrite(proto, weights) -> (proto, weights)`), described and checked
    again, with the spec's weight map following the weights."""
    proto, weights = rewrite(proto, spec.weights)
    spec = spec.replace(weights=weights)
    describe(proto, spec)
    check_onnx(proto)
    return proto, spec


def check_onnx(proto: onnx.ModelProto | str | Path) -> None:
    """onnx.checker on the model; past 2 GiB only a saved file can be checked (pass its path)."""
    if isinstance(proto, onnx.ModelProto) and needs_external(proto):
        return
    try:
        onnx.checker.check_model(proto if isinstance(proto, onnx.ModelProto) else str(proto), full_check=True)
    except Exception as exc:
        raise ExportError(f"onnx.checker rejected the exported model: {first_line(exc)}") from exc


def _name_dims(proto: onnx.ModelProto, spec: ExportSpec) -> None:
    """Give every input and output the dims of the spec; fail if the exporter fixed a dim we asked free."""
    for values, wanted, is_input in (
        (proto.graph.input, spec.input_dims(), True),
        (proto.graph.output, spec.output_dims(), False),
    ):
        for value in values:
            dims = value.type.tensor_type.shape.dim
            want = wanted[value.name]
            if len(dims) != len(want):
                raise ExportError(f"{value.name!r} has rank {len(dims)}, expected {len(want)}")
            for dim, w in zip(dims, want):
                if isinstance(w, int):
                    if dim.HasField("dim_value") and dim.dim_value != w:
                        raise ExportError(f"{value.name!r} has a dim {dim.dim_value}, expected {w}")
                    dim.dim_value = w
                else:
                    if dim.HasField("dim_value") and is_input:
                        raise ExportError(f"the exporter fixed dim {w!r} of {value.name!r} at {dim.dim_value}")
                    dim.dim_param = w


def describe(proto: onnx.ModelProto, spec: ModelSpec) -> None:
    """Write the spec into the model: its metadata_props (attn_onnx.*, the producers' versions), producer and
    doc_string."""
    import onnxscript

    props = spec.to_metadata() | {
        METADATA_PREFIX + "producer.attn_onnx": __version__,
        METADATA_PREFIX + "producer.torch": torch.__version__,
        METADATA_PREFIX + "producer.onnx": onnx.__version__,
        METADATA_PREFIX + "producer.onnxscript": onnxscript.__version__,
    }
    if spec.optimize:
        import onnxruntime

        props[METADATA_PREFIX + "producer.onnxruntime"] = onnxruntime.__version__  # the optimizer's version
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    proto.producer_name, proto.producer_version = "attn-onnx", __version__
    mask = f" Mask: {spec.mask}; {MASK_CONVENTION}." if "mask" in spec.kind.settings else ""
    proto.doc_string = (
        f"{spec.kind.describe(spec)}, exported by attn-onnx. Inputs: {spec.input_dims()}; "
        f"outputs: {spec.output_dims()}.{mask}"
    )
