"""The graph builder of the hand-built variants of `mha` (every variant but torch-export): a GraphWriter, int64
arithmetic that reads as arithmetic (Int), and what they share: the projections, the mask, the seed's
fully-masked row, and a weight map that says where each state_dict tensor went.

The seed fills masked scores with a finite -1e9 (`masked_fill`), so a row whose keys are all masked holds
equal scores and attends uniformly: its answer is the mean over the keys of the projected values. A fused
kernel does not reproduce that. A boolean mask gives -inf, hence zeros or NaN on such a row; an additive
-1e9 bias gives `score - 1e9`, which float32 rounds to -1e9 only while |score| is small (the ulp of 1e9 is
64), so with large scores the row's softmax follows the scores instead of being uniform. Rows with at least
one allowed key are exact either way: exp(-1e9 - max) is 0 in float32 as in float64. So each fused variant
attends with its kernel and then selects, with a `Where` on "the row has an allowed key", between the
kernel's answer and the mean of the projected values. Exact for any score magnitude, at the cost of one
reduction over the keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from attn_onnx.dtypes import ONNX_TYPES, numpy_dtype, to_numpy
from attn_onnx.vocab import MASK_DTYPES


class GraphWriter:
    """Nodes, initializers and fresh names for one graph; `op` returns the output's name, `ops` their names.

    A `branch()` writes the nodes of an `If` branch or a `Loop` body: its own nodes, the same names and
    initializers (they live in the main graph, which the branch sees)."""

    def __init__(self, parent: GraphWriter | None = None):
        self.nodes: list[onnx.NodeProto] = []
        self.root: GraphWriter = parent.root if parent is not None else self
        if parent is None:
            self.initializers: list[onnx.TensorProto] = []
            self._count = 0
            self._constants: dict[str, np.ndarray] = {}  # name -> value, to refuse a second value

    def fresh(self, stem: str) -> str:
        self.root._count += 1
        return f"{stem}_{self.root._count}"

    def branch(self) -> GraphWriter:
        return GraphWriter(self)

    def subgraph(self, name: str, output: str, elem_type: int) -> onnx.GraphProto:
        """This branch's nodes as an `If` branch with one output."""
        return helper.make_graph(self.nodes, name, [], [helper.make_tensor_value_info(output, elem_type, None)])

    def loop_body(self, name: str, counter: str, cond: str, scan: str, elem_type: int, shape: list) -> onnx.GraphProto:
        """This branch's nodes as a `Loop` body: (iteration number, condition) in, (condition, one scan
        output) out; the condition is passed through unchanged (the trip count ends the loop)."""
        cond_out = self.op("Identity", [cond], stem="cond")
        return helper.make_graph(
            self.nodes,
            name,
            [
                helper.make_tensor_value_info(counter, TensorProto.INT64, []),
                helper.make_tensor_value_info(cond, TensorProto.BOOL, []),
            ],
            [
                helper.make_tensor_value_info(cond_out, TensorProto.BOOL, []),
                helper.make_tensor_value_info(scan, elem_type, shape),
            ],
        )

    def op(self, op_type: str, inputs: Sequence[str | Int], stem: str | None = None, domain: str = "", **attrs) -> str:
        """One node of one output; returns the output's name."""
        return self.ops(op_type, inputs, 1, stem, domain, **attrs)[0]

    def ops(
        self,
        op_type: str,
        inputs: Sequence[str | Int],
        outputs: int,
        stem: str | None = None,
        domain: str = "",
        **attrs,
    ) -> list[str]:
        """One node of `outputs` outputs (a Split); returns their names."""
        names = [self.fresh(stem or op_type.lower()) for _ in range(outputs)]
        input_names = [str(name) for name in inputs]  # an Int is its value's name
        self.nodes.append(
            helper.make_node(op_type, input_names, names, name=self.fresh("n_" + op_type), domain=domain, **attrs)
        )
        return names

    def constant(self, name: str, array: np.ndarray) -> str:
        """An initializer of the main graph. The same name with the same value is one initializer; the same
        name with another value is a builder's bug (ValueError), never the first value silently reused."""
        root, array = self.root, np.asarray(array)
        held = root._constants.get(name)
        if held is None:
            root._constants[name] = array
            root.initializers.append(numpy_helper.from_array(array, name))
        elif held.dtype != array.dtype or held.shape != array.shape or not np.array_equal(held, array):
            raise ValueError(
                f"constant {name!r} is already {held.dtype}{list(held.shape)} {held.ravel()[:4]}; "
                f"asked for {array.dtype}{list(array.shape)} {array.ravel()[:4]} under the same name"
            )
        return name


def int64(w: GraphWriter, value: int) -> str:
    """An int64 scalar constant, one per value (i_3, i_m1)."""
    return w.constant(f"i_{value}".replace("-", "m"), np.array(value, np.int64))


class Int:
    """An int64 tensor of the graph being written, whose arithmetic writes its nodes: index arithmetic then
    reads as arithmetic, `(tile_of * group + e) * tile + t`, instead of nested `w.op` calls. Operands are Ints,
    value names or Python ints (int64 constants); `//` is ONNX's Div (exact for the non-negative indices it
    serves), `%` its Mod."""

    def __init__(self, w: GraphWriter, name: str):
        self.w, self.name = w, name

    def _name(self, other: Int | str | int) -> str:
        if isinstance(other, Int):
            return other.name
        return int64(self.w, other) if isinstance(other, int) else other

    def _op(self, op_type: str, other: Int | str | int, reverse: bool = False) -> Int:
        a, b = self.name, self._name(other)
        return Int(self.w, self.w.op(op_type, [b, a] if reverse else [a, b]))

    def __add__(self, other: Int | str | int) -> Int:
        return self._op("Add", other)

    def __radd__(self, other: Int | str | int) -> Int:
        return self._op("Add", other, reverse=True)

    def __sub__(self, other: Int | str | int) -> Int:
        return self._op("Sub", other)

    def __rsub__(self, other: Int | str | int) -> Int:
        return self._op("Sub", other, reverse=True)

    def __mul__(self, other: Int | str | int) -> Int:
        return self._op("Mul", other)

    def __rmul__(self, other: Int | str | int) -> Int:
        return self._op("Mul", other, reverse=True)

    def __floordiv__(self, other: Int | str | int) -> Int:
        return self._op("Div", other)

    def __mod__(self, other: Int | str | int) -> Int:
        return self._op("Mod", other)

    def min(self, other: Int | str | int) -> Int:
        return self._op("Min", other)

    def max(self, other: Int | str | int) -> Int:
        return self._op("Max", other)

    def named(self, stem: str) -> Int:
        """The same value under a readable name (the node that made it is renamed; nothing is added)."""
        node = self.w.nodes[-1]
        assert node.output[0] == self.name, "named() right after the value is made"
        node.output[0] = self.name = self.w.fresh(stem)
        return self

    def __str__(self) -> str:
        return self.name


class Weights:
    """The module's state_dict as numpy, and the weight map the variant fills while placing tensors."""

    def __init__(self, module) -> None:
        # views, not copies: a 16384-wide block holds 4.3 GB of weights (in the export's dtype already)
        self.state = {k: to_numpy(v) for k, v in module.state_dict().items()}
        self.map: dict[str, dict] = {}

    def place(self, writer: GraphWriter, keys: list[str], name: str, transposed: bool) -> str:
        """One initializer holding `keys` (transposed first, if asked) side by side on the last axis."""
        parts = [self.state[k].T if transposed else self.state[k] for k in keys]
        start = 0
        for key, part in zip(keys, parts):
            entry = {"initializer": name, "transposed": transposed}
            if len(keys) > 1:
                entry["slice"] = [start, start + part.shape[-1]]  # on the stored initializer's last axis
            self.map[key] = entry
            start += part.shape[-1]
        return writer.constant(name, np.ascontiguousarray(np.concatenate(parts, axis=-1)))


def source(spec, role: str) -> str:
    """The graph input that plays `role` (query, key or value): `x` for every role in self-attention."""
    return "x" if spec.kind.self_attention else role


def projections(w: GraphWriter, weights: Weights, packed_bias: bool, spec) -> dict[str, str]:
    """query/key/value times the transposed projection weights; biases added unless packed for the kernel.

    Self-attention (one input x) projects all three with one MatMul on the packed (E, 3E) weight and splits.
    """
    if spec.kind.self_attention:
        weight = weights.place(w, [f"linears.{i}.weight" for i in range(3)], "qkv_weight.T", transposed=True)
        bias = weights.place(w, [f"linears.{i}.bias" for i in range(3)], "qkv_bias", transposed=False)
        qkv = w.op("MatMul", ["x", weight], stem="qkv")  # (B, len, 3E)
        if not packed_bias:
            qkv = w.op("Add", [qkv, bias], stem="qkv")
        width = spec.embedding_dim
        q, k, v = w.ops(
            "Split", [qkv, w.constant("qkv_split", np.array([width] * 3, np.int64))], 3, stem="qkv", axis=-1
        )  # each (B, len, E)
        return {"query": q, "key": k, "value": v, **({"bias": bias} if packed_bias else {})}
    out = {}
    for i, name in enumerate(("query", "key", "value")):
        weight = weights.place(w, [f"linears.{i}.weight"], f"linears.{i}.weight.T", transposed=True)
        projected = w.op("MatMul", [source(spec, name), weight], stem=name[0])  # (B, len, E)
        if not packed_bias:
            projected = w.op(
                "Add",
                [projected, weights.place(w, [f"linears.{i}.bias"], f"linears.{i}.bias", transposed=False)],
                stem=name[0],
            )
        out[name] = projected
    if packed_bias:
        out["bias"] = weights.place(w, [f"linears.{i}.bias" for i in range(3)], "qkv_bias", transposed=False)
    return out


def allowed_mask(w: GraphWriter, spec) -> str | None:
    """A bool "may attend" tensor: (B, mask_q_len, kv_len) from the mask input, (q_len, kv_len) for the built-in
    causal mask (aligned as the spec says), None without a mask."""
    if spec.mask == "input":
        if MASK_DTYPES[spec.mask_dtype] is np.bool_:
            return "mask"
        zero = w.constant("mask_zero", np.zeros((), MASK_DTYPES[spec.mask_dtype]))
        return w.op("Not", [w.op("Equal", ["mask", zero])], stem="allowed")  # nonzero = attend (NaN included)
    if spec.mask == "causal":
        zero, one = w.constant("i64_zero", np.array(0, np.int64)), w.constant("i64_one", np.array(1, np.int64))
        q_len = w.op("Gather", [w.op("Shape", [source(spec, "query")]), one], axis=0)
        kv_len = w.op("Gather", [w.op("Shape", [source(spec, "key")]), one], axis=0)
        rows = w.op("Unsqueeze", [w.op("Range", [zero, q_len, one]), one])  # (q_len, 1)
        if spec.causal_align == "bottom-right":  # query i sits at kv_len - q_len + i
            rows = w.op("Add", [rows, w.op("Sub", [kv_len, q_len])], stem="rows")
        cols = w.op("Range", [zero, kv_len, one])  # (kv_len,)
        return w.op("LessOrEqual", [cols, rows], stem="allowed")  # (q_len, kv_len): key j <= position of i
    return None


def additive_bias(w: GraphWriter, allowed: str, spec, full_rows: bool = True, per_head_dims: bool = True) -> str:
    """0 where allowed, the lowest finite value of the dtype where masked, as (B or 1, 1, q_len, kv_len) (a
    kernel's attention_bias).

    Not the seed's -1e9: that changes nothing on rows with an allowed key (exp of either is 0 in float32)
    and the fully-masked rows are replaced anyway, but -1e9 plus a small score leaves exp() on a slower path
    in onnxruntime's kernel (about 10% at (1, 2048)). (allowed - 1) * FLT_MAX is two cheap elementwise ops,
    where a Where on two scalars cost 4x more. In float16 a masked score plus -65504 may round to -inf; that
    is still exp() = 0 on a row with an allowed key, and a row without one is replaced (uniform_rows).
    Without `per_head_dims`, the bias has the shape of `allowed`.
    """
    dtype = numpy_dtype(spec.dtype)
    ones = w.op("Cast", [allowed], to=ONNX_TYPES[spec.dtype], stem="allowed_f")  # 1 allowed, 0 masked
    shifted = w.op("Sub", [ones, w.constant("f_one", np.array(1, dtype))], stem="bias")  # 0 or -1
    bias = w.op("Mul", [shifted, w.constant("f_max", np.array(ml_dtypes.finfo(dtype).max, dtype))], stem="bias")
    return per_head(w, bias, spec, full_rows) if per_head_dims else bias


def per_head(w: GraphWriter, mask: str, spec, full_rows: bool = True) -> str:
    """(B, mask_q_len, kv_len) -> (B, 1, q_len, kv_len); causal (q_len, kv_len) -> (1, 1, q_len, kv_len).

    onnxruntime's kernels want the mask's query dim full, so a padding mask (mask_q_len 1) is expanded
    unless `full_rows` is False (an Add broadcasts it).
    """
    if spec.mask == "causal":
        return w.op("Unsqueeze", [mask, w.constant("axes_0_1", np.array([0, 1], np.int64))], stem="per_head")
    mask = w.op("Unsqueeze", [mask, w.constant("axes_1", np.array([1], np.int64))], stem="per_head")
    if not full_rows:
        return mask  # (B, 1, mask_q_len, kv_len)
    q_len = w.op(
        "Slice",
        [
            w.op("Shape", [source(spec, "query")]),
            w.constant("i64_1", np.array([1], np.int64)),
            w.constant("i64_2", np.array([2], np.int64)),
        ],
    )
    shape = w.op(
        "Concat",
        [w.constant("ones_2", np.array([1, 1], np.int64)), q_len, w.constant("one_1", np.array([1], np.int64))],
        axis=0,
    )
    return w.op("Expand", [mask, shape], stem="per_head")  # (B, 1, q_len, kv_len)


def can_mask_whole_rows(spec) -> bool:
    """A mask input can; so can a bottom-right causal mask when q_len > kv_len. Top-left lets query i see key 0."""
    return spec.mask == "input" or (spec.mask == "causal" and spec.causal_align == "bottom-right")


def mean_over_keys(w: GraphWriter, value: str) -> str:
    """(B, len, E) -> (B, 1, E)."""
    return w.op("ReduceMean", [value, w.constant("axes_len", np.array([1], np.int64))], keepdims=1)


def uniform_rows(
    w: GraphWriter,
    attended: str,
    allowed: str,
    value: str,
    elem_type: int,
    any_allowed: str | None = None,
    value_mean: Callable[[GraphWriter], str] | None = None,
) -> str:
    """The seed's answer on fully-masked rows: the mean of the projected values, where no key is allowed.
    `any_allowed` (uint8, (B, mask_q_len | q_len, 1): the row allows a key) is read off `allowed` unless the
    variant has it already. `value_mean` writes the mean, (B, 1, E), into the branch it is given, for a variant
    whose `value` is not every key's projection with its bias; by default it is `value`'s mean over the keys.

    Behind an `If`: a mask with a key in every row (causal, causal + padding) skips the mean and the Where."""
    if any_allowed is None:
        any_allowed = w.op(
            "ReduceMax",
            [
                w.op("Cast", [allowed], to=TensorProto.UINT8),  # 12x faster than int32
                w.constant("axes_last", np.array([-1], np.int64)),
            ],
            keepdims=1,
        )
    every_row = w.op("Cast", [w.op("ReduceMin", [any_allowed], keepdims=0)], to=TensorProto.BOOL, stem="every_row")
    keep, fix = w.branch(), w.branch()
    kept = keep.op("Identity", [attended], stem="attended")
    any_allowed = fix.op("Cast", [any_allowed], to=TensorProto.BOOL, stem="any_allowed")  # (B, mask_q_len | q_len, 1)
    mean = value_mean(fix) if value_mean is not None else mean_over_keys(fix, value)  # (B, 1, E)
    fixed = fix.op("Where", [any_allowed, attended, mean], stem="attended")  # (B, q_len, E)
    return w.op(
        "If",
        [every_row],
        stem="attended",
        then_branch=keep.subgraph("keep", kept, elem_type),
        else_branch=fix.subgraph("uniform_rows", fixed, elem_type),
    )


def output_projection(w: GraphWriter, weights: Weights, attended: str) -> None:
    """`output` = attended W_o^T + b_o, (B, q_len, E), computed on (B * q_len, E) rows: onnxruntime fuses a
    2-D MatMul and its bias into one Gemm, where a 3-D one takes a pass more."""
    weight = weights.place(w, ["linears.3.weight"], "linears.3.weight.T", transposed=True)
    bias = weights.place(w, ["linears.3.bias"], "linears.3.bias", transposed=False)
    width = weights.state["linears.3.weight"].shape[0]
    rows = w.op("Reshape", [attended, w.constant("tokens_shape", np.array([-1, width], np.int64))], stem="o")
    projected = w.op("Add", [w.op("MatMul", [rows, weight], stem="o"), bias], stem="o")  # (B * q_len, E)
    w.nodes.append(helper.make_node("Reshape", [projected, w.op("Shape", [attended])], ["output"], name="output"))


def model(w: GraphWriter, spec, opsets: dict[str, int], doc: str) -> onnx.ModelProto:
    """The model with the spec's inputs and outputs (dims are named later by the exporter)."""
    elem = ONNX_TYPES[spec.dtype]
    inputs = []
    dtypes = spec.input_dtypes()  # the float inputs at the spec's dtype; a mask's, mha-static's past_len (int64)
    for name, dims in spec.input_dims().items():
        dtype = ONNX_TYPES.get(dtypes[name]) or helper.np_dtype_to_tensor_dtype(np.dtype(dtypes[name]))
        inputs.append(helper.make_tensor_value_info(name, dtype, dims))
    outputs = [helper.make_tensor_value_info(name, elem, dims) for name, dims in spec.output_dims().items()]
    graph = helper.make_graph(w.nodes, "attn_onnx_" + spec.variant.replace("-", "_"), inputs, outputs, doc_string=doc)
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()], producer_name="attn-onnx"
    )
    proto.ir_version = min(proto.ir_version, 10)  # onnxruntime 1.20 reads IR <= 10
    # The weights go in last, one at a time, each copy dropped as it is made: make_graph and make_model
    # would each copy all of them (three times 4.3 GB for a 16384-wide block).
    w.initializers.reverse()
    while w.initializers:
        proto.graph.initializer.append(w.initializers.pop())
    return proto


def scale(spec) -> float:
    return 1.0 / math.sqrt(spec.d_k)
