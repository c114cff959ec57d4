"""onnx's own ReferenceEvaluator: an independent, spec-following implementation in numpy. It knows the
standard ONNX operators only, so a model onnxruntime optimized offline (com.microsoft.FusedMatMul, say)
is reported SKIPPED here, with the reason, while the other runtimes still check it."""

from __future__ import annotations

import numpy as np
import onnx

from attn_onnx.dtypes import FLOAT_DTYPES
from attn_onnx.errors import UnsupportedModelError, first_line

STANDARD_DOMAINS = ("", "ai.onnx")


class OnnxReferenceRunner:
    name = "onnx-reference"

    def __init__(self, model: onnx.ModelProto, precision: str = "float32"):
        self.precision = precision  # the model's dtype
        from onnx.reference import ReferenceEvaluator

        functions = {(f.domain, f.name) for f in model.functions}
        foreign = sorted(
            {
                f"{n.domain}.{n.op_type}"
                for n in _nodes(model.graph)
                if n.domain not in STANDARD_DOMAINS and (n.domain, n.op_type) not in functions
            }
        )
        if foreign:
            meta = {p.key: p.value for p in model.metadata_props}
            why = (
                f"export-attn --attention-impl {meta['attn_onnx.variant']}, an onnxruntime-only variant"
                if _onnxruntime_only(meta.get("attn_onnx.variant"))
                else "export-attn --optimize"
                if meta.get("attn_onnx.optimize")
                else "an onnxruntime-optimized model?"
            )
            raise UnsupportedModelError(
                f"onnx.reference runs standard ONNX operators only; this model uses {', '.join(foreign)} ({why})"
            )
        opset = next((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), 18)
        new_ops = [_float32_inside(op, opset) for op in ACCUMULATING] if precision == "bfloat16" else None
        try:
            self.evaluator = ReferenceEvaluator(model, new_ops=new_ops)
        except NotImplementedError as exc:
            raise UnsupportedModelError(f"onnx.reference cannot run this model: {first_line(exc)}") from None
        self.output_names = [o.name for o in model.graph.output]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with np.errstate(all="ignore"):  # NaN from a broken model is the finding, not a warning
            return dict(zip(self.output_names, self.evaluator.run(None, feeds)))


# numpy computes an ml_dtypes bfloat16 matmul or sum in bfloat16 itself, rounding every partial sum: over 257
# keys that is 13u of error where a real kernel (float32 accumulators, bfloat16 result) has 1u. These
# operators run in float32 on bfloat16 inputs and round their result, as kernels do.
ACCUMULATING = ("MatMul", "Softmax", "Attention", "ReduceMean", "ReduceSum", "ReduceMax")


def _float32_inside(op_type: str, opset: int):
    """onnx.reference's `op_type` with bfloat16 inputs computed in float32, the outputs rounded back."""
    from onnx.reference.ops import load_op

    base = load_op("", op_type, opset)
    bf16 = FLOAT_DTYPES["bfloat16"]

    def _run(self, *args, **kwargs):
        if not any(isinstance(a, np.ndarray) and a.dtype == bf16 for a in args):
            return base._run(self, *args, **kwargs)
        wide = [a.astype(np.float32) if isinstance(a, np.ndarray) and a.dtype == bf16 else a for a in args]
        return tuple(
            o.astype(bf16) if isinstance(o, np.ndarray) and o.dtype == np.float32 else o
            for o in base._run(self, *wide, **kwargs)
        )

    return type(op_type, (base,), {"op_domain": "", "_run": _run})


def _onnxruntime_only(variant: str | None) -> bool:
    from attn_onnx.exporter.variants import VARIANTS

    return variant in VARIANTS and VARIANTS[variant].runs_in == "onnxruntime only"


def _nodes(graph: onnx.GraphProto):
    """Every node, subgraphs (If, Loop, Scan bodies) included."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                yield from _nodes(sub)


def missing() -> str:
    return ""  # onnx is a dependency of the package


def versions() -> dict[str, str]:
    import onnx

    return {"onnx": onnx.__version__}


def label(provider, config) -> str:
    return OnnxReferenceRunner.name


def make(model, module, config, provider=None) -> OnnxReferenceRunner:
    if model.external:  # its weights, read from beside it (load_model checked where they lie)
        import onnx

        return OnnxReferenceRunner(onnx.load(model.path), model.spec.precision)
    return OnnxReferenceRunner(model.proto, model.spec.precision)
