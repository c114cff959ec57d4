"""The project's closed sets and tables, each defined once: the CLI's choices, the spec, the bundle and the Triton
writer all read them from here. No torch: `--help` and the option checks stay instant.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
from onnx import TensorProto

# --- the mask ------------------------------------------------------------------------------------------------

MASK_MODES = ("input", "causal", "none")  # a `mask` input; built in the graph from the lengths; no mask
CAUSAL_ALIGNS = ("top-left", "bottom-right")  # query i attends keys 0..i; or 0..kv_len-q_len+i (decoding)
# Masked scores are replaced by this value before the softmax. It is finite on purpose: a row whose keys are
# all masked then holds equal scores and attends uniformly (the mean of the values), where -inf would give NaN
# (softmax of all -inf) and a boolean-mask SDPA would give zeros. -1e9 is exact in float32; float16 cannot
# hold it and uses its lowest finite value (models.mask_fill).
MASK_FILL = -1e9
# The mask convention, as stated in every exported model's metadata.
MASK_CONVENTION = "nonzero = attend; 0 = masked, filled with -1e9"

# Mask patterns a check case feeds to a model with a `mask` input (mask == 0 is masked):
MASK_PATTERNS = {
    "ones": "all ones: nothing masked",
    "zeros": "all zeros: everything masked, every row attends uniformly (the seed's own demo)",
    "causal": "subsequent_mask: query i attends keys 0..i",
    "padding": "per-example key padding, a different valid length in each example, as a padding mask "
    "(batch, 1, kv_len)",
    "causal+padding": "causal and key padding together, as a full mask",
    "masked_row": "random holes, plus one query row whose keys are all masked (uniform, never NaN)",
}
GRAPH_MASK = "graph"  # the case kind of a model without a mask input (its mask, if any, is in the graph)

# --- precision -----------------------------------------------------------------------------------------------

DTYPES = ("float32", "float16", "bfloat16")  # --dtype: the float inputs, outputs and weights
MASK_DTYPES = {"bool": np.bool_, "uint8": np.uint8, "int64": np.int64, "float32": np.float32}  # --mask-dtype
QUANTIZE_MODES = ("int8",)  # --quantize (exporter/quantize.py)
OPTIMIZE_LEVELS = ("extended",)  # --optimize (exporter/optimize.py)
TRITON_BACKENDS = ("onnxruntime", "python")  # --triton-backend (deploy/triton.py)
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}  # --providers: onnxruntime's


@dataclass(frozen=True)
class ElementType:
    """One element type in every vocabulary that names it."""

    name: str  # numpy's name, and the manifest's `dtype`
    numpy: np.dtype
    onnx: int  # onnx.TensorProto.DataType
    datatype: str  # the Open Inference Protocol's (KServe v2, Triton's clients)
    triton: str  # Triton's model configuration


ELEMENT_TYPES = {
    t.name: t
    for t in (
        ElementType("float32", np.dtype(np.float32), TensorProto.FLOAT, "FP32", "TYPE_FP32"),
        ElementType("float16", np.dtype(np.float16), TensorProto.FLOAT16, "FP16", "TYPE_FP16"),
        ElementType("bfloat16", np.dtype(ml_dtypes.bfloat16), TensorProto.BFLOAT16, "BF16", "TYPE_BF16"),
        ElementType("float64", np.dtype(np.float64), TensorProto.DOUBLE, "FP64", "TYPE_FP64"),
        ElementType("bool", np.dtype(np.bool_), TensorProto.BOOL, "BOOL", "TYPE_BOOL"),
        ElementType("uint8", np.dtype(np.uint8), TensorProto.UINT8, "UINT8", "TYPE_UINT8"),
        ElementType("int64", np.dtype(np.int64), TensorProto.INT64, "INT64", "TYPE_INT64"),
    )
}
