"""What every variant returns: the model and its weight map (state_dict key -> the initializer that holds it),
and how to read a weight back through that map."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper


@dataclass
class Built:
    """A variant's output: the model, and for each state_dict key the initializer that holds it."""

    proto: onnx.ModelProto
    # key -> {"initializer": name, "transposed": bool, "slice": [start, stop] (optional), "scale": name and
    # "zero_point": name (quantized)}: the tensor is initializer[..., start:stop], dequantized if so marked
    # ((q - zero_point) * scale, per channel of the last axis), transposed if so marked
    weights: dict[str, dict] = field(default_factory=dict)


def tensor_of(inits: dict[str, onnx.TensorProto], entry: dict, base_dir: str = "") -> np.ndarray:
    """The state_dict tensor a weight-map entry points at (its slice, transposed back); external data is read
    from `base_dir`."""
    array = numpy_helper.to_array(inits[entry["initializer"]], base_dir)
    if "scale" in entry:  # int8 with a float scale per output channel (exporter/quantize.py)
        scale = numpy_helper.to_array(inits[entry["scale"]], base_dir).astype(np.float32)
        zero = numpy_helper.to_array(inits[entry["zero_point"]], base_dir).astype(np.float32)
        if scale.ndim == 1 and scale.size == array.shape[0] != array.shape[-1]:  # per channel of the first axis
            scale, zero = scale[:, None], zero[:, None]
        array = (array.astype(np.float32) - zero) * scale
    if "slice" in entry:
        start, stop = entry["slice"]
        array = array[..., start:stop]
    return array.T if entry["transposed"] else array


def find_by_value(arrays: dict[str, np.ndarray], value: np.ndarray) -> dict | None:
    """The weight-map entry of the initializer holding `value` as it is or transposed; None if none does."""
    for transposed, wanted in ((False, value), (True, value.T if value.ndim == 2 else None)):
        if wanted is None:
            continue
        name = next((n for n, a in arrays.items() if a.shape == wanted.shape and np.array_equal(a, wanted)), None)
        if name is not None:
            return {"initializer": name, "transposed": transposed}
    return None
