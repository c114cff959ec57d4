"""`mask`: the seed's subsequent_mask(size) as a graph: an int64 scalar in, a (1, size, size) uint8 out."""

from __future__ import annotations

import re

import numpy as np

from attn_onnx.errors import UsageError
from attn_onnx.exporter.kinds.base import ModuleKind
from attn_onnx.vocab import GRAPH_MASK


class SubsequentMaskKind(ModuleKind):
    name = "mask"
    flag = "--module mask"
    help = "subsequent_mask(size) as a graph"
    example_dims = {"size": 5}
    case_dims = ("size",)
    metadata_fields = ("output",)

    def input_dims(self, spec):
        return {"size": []}

    def output_dims(self, spec):
        return {"mask": [1, "size", "size"]}

    def value_dims(self, spec):
        return {"size": "size"}

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

    def cases(self, spec, sweep):
        return [(f"size{n}", {"size": n}, GRAPH_MASK) for n in sweep.sizes]

    def parse_case(self, spec, name):
        match = re.fullmatch(r"size(\d+)", name)
        if not match:
            raise UsageError(f"case {name!r} is not of the form size<N> (the mask module's cases)")
        return {"size": int(match[1])}, GRAPH_MASK

    def case_shape(self, name):
        return name

    def vector_cases(self, spec):
        return ("size1", "size5", "size20")

    def describe_case(self, spec, dims, mask):
        return f"subsequent_mask({dims['size']})"

    def mask_contract(self, spec):
        return "no mask input; the output is subsequent_mask(size): 1 (may attend) on and below the diagonal, 0 above"
