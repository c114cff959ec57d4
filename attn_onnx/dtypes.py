"""The float element types an export can have (`--dtype`), in numpy, ONNX and torch terms.

numpy has no bfloat16 of its own; ml_dtypes' (which onnx itself uses) stands in. torch cannot take an
ml_dtypes array, so `to_torch` and `to_numpy` reinterpret its bits as uint16. torch is imported lazily:
this module sits below everything, the CLIs' quick refusals included.
"""

from __future__ import annotations

import numpy as np

from attn_onnx.vocab import DTYPES, ELEMENT_TYPES

FLOAT_DTYPES = {name: ELEMENT_TYPES[name].numpy for name in DTYPES}
ONNX_TYPES = {name: ELEMENT_TYPES[name].onnx for name in DTYPES}


def numpy_dtype(name: str) -> np.dtype:
    return FLOAT_DTYPES[name]


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}[
        name
    ]


def is_bfloat16(array: np.ndarray) -> bool:
    return array.dtype == FLOAT_DTYPES["bfloat16"]


def to_torch(array: np.ndarray):
    """A torch tensor sharing `array`'s memory where it can; bfloat16 through its uint16 bits."""
    import torch

    array = np.require(array, requirements="W")  # torch wants writable memory; a copy only if read-only
    if is_bfloat16(array):
        return torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def to_numpy(tensor) -> np.ndarray:
    """`tensor` as a numpy array; bfloat16 as ml_dtypes' bfloat16."""
    import torch

    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.uint16).numpy().view(FLOAT_DTYPES["bfloat16"])
    return tensor.numpy()
