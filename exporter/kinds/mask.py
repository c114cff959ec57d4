"""`mask`: the seed's subsequent_mask(size) as a graph: an int64 scalar in, a (1, size, size) uint8 out."""

from __future__ import annotations

import numpy as np

from attn_onnx.exporter.kinds.base import ModuleKind


class SubsequentMaskKind(ModuleKind):
    name = "mask"
    flag = "--module mask"
    help = "subsequent_mask(size) as a graph"
    example_dims = {"size": 5}
    case_dims = ("size",)
    check_options = frozenset({"sizes"})
    metadata_fields = ("output",)

    def input_dims(self, spec):
        return {"size": []}

    def output_dims(self, spec):
        return {"mask": [1, "size", "size"]}

    def input_dtypes(self, spec):
        return {"size": "int64"}

    def output_dtypes(self, spec):
        return {"mask": "uint8"}

    def describe(self, spec):
        return "subsequent_mask(size)"

    def graph(self, spec, module):
        from attn_onnx.models import SubsequentMaskGraph

        return SubsequentMaskGraph()

    def inputs(self, spec, dims, rng, mask=None):
        return {"size": np.array(dims["size"], dtype=np.int64)}
