"""The step of a static cache (mha-static) in hand-built graphs: what onnx-attention and ort-gqa build for it.

Both write the new keys and values into the buffers past_key/past_value (batch, heads, max_len, d_k) at each
sequence's past_len, and return them as present_key/present_value; a runtime that is handed the same buffer as
past and present (IO binding) writes in place.

- `standard`: TensorScatter (opset 24, mode linear, axis 2, write_indices = past_len) and the ONNX Attention op
  (opset 24) over the whole buffer with a boolean mask (batch, 1, q_len, max_len): key j of sequence b allowed
  for new token i iff j <= past_len[b] + i. Runs in any runtime with opset 24; onnxruntime's TensorScatter
  writes in place when bound so. Attention's cost follows max_len, not the valid length.
- `gqa`: onnxruntime's com.microsoft.GroupQueryAttention with seqlens_k = past_len + q_len - 1 and
  total_sequence_length = max(past_len) + q_len: it reads each sequence's valid keys only. onnxruntime
  refuses a step of several tokens into a batch of more than one sequence with a cache ("batch_size must be 1
  when sequence_length > 1 and past context is given"), and GroupQueryAttention handed a step past max_len
  grows its present instead of refusing; so an `If` takes it only for one token, one sequence or an empty
  cache, within max_len, and the standard step otherwise (both write in place inside the If: measured with
  onnxruntime 1.32).

A step past max_len raises in TensorScatter (and in torch-export's ScatterElements): never a write elsewhere. A
negative past_len is outside the contract (the services refuse it: exporter/kinds/dims.py values_problem); the
in-place forms raise on it, while torch-export's ScatterElements takes it as counted from the buffer's end.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from attn_onnx.dtypes import ONNX_TYPES
from attn_onnx.exporter.variants.builder import GraphWriter, scale

PRESENTS = ("present_key", "present_value")


def _shape(w: GraphWriter, spec) -> tuple[str, str]:
    """q_len and batch of the step, int64 scalars."""
    shape = w.op("Shape", ["query"], stem="query_shape")
    batch = w.op("Gather", [shape, w.constant("i_0", np.array(0, np.int64))], axis=0, stem="batch")
    q_len = w.op("Gather", [shape, w.constant("i_1", np.array(1, np.int64))], axis=0, stem="q_len")
    return q_len, batch


def _heads(w: GraphWriter, x: str, spec) -> str:
    """(B, len, E) -> (B, h, len, d_k)."""
    split = w.op("Reshape", [x, w.constant("heads_shape", np.array([0, 0, spec.heads, spec.d_k], np.int64))])
    return w.op("Transpose", [split], perm=[0, 2, 1, 3], stem="per_head")


def standard(w: GraphWriter, spec, p: dict[str, str], presents=PRESENTS) -> str:
    """TensorScatter into the buffers (outputs named `presents`) and Attention-24 over them; returns the attended
    (B, q_len, E)."""
    q_len, _ = _shape(w, spec)
    k, v = _heads(w, p["key"], spec), _heads(w, p["value"], spec)  # (B, h, q_len, d_k)
    for past, new, present in zip(("past_key", "past_value"), (k, v), presents):
        w.nodes.append(
            helper.make_node(
                "TensorScatter",
                [past, new, "past_len"],
                [present],
                name=w.fresh("n_TensorScatter"),
                mode="linear",
                axis=2,
            )
        )
    zero, one = w.constant("i_0", np.array(0, np.int64)), w.constant("i_1", np.array(1, np.int64))
    rows = w.op("Unsqueeze", [w.op("Range", [zero, q_len, one]), w.constant("axes_1", np.array([1], np.int64))])
    first = w.op("Unsqueeze", ["past_len", w.constant("axes_1_2_3", np.array([1, 2, 3], np.int64))])  # (B, 1, 1, 1)
    positions = w.op("Add", [first, rows], stem="positions")  # (B, 1, q_len, 1): new token i at past_len[b] + i
    keys = w.constant("cache_positions", np.arange(spec.max_len, dtype=np.int64))  # (max_len,)
    allowed = w.op("LessOrEqual", [keys, positions], stem="allowed")  # (B, 1, q_len, max_len)
    q = _heads(w, p["query"], spec)
    attended = w.op("Attention", [q, presents[0], presents[1], allowed], stem="attended", scale=scale(spec))
    merged = w.op("Transpose", [attended], perm=[0, 2, 1, 3])  # (B, q_len, h, d_k)
    return w.op("Reshape", [merged, w.constant("merge_shape", np.array([0, 0, spec.embedding_dim], np.int64))])


def gqa_or_standard(w: GraphWriter, spec, p: dict[str, str]) -> str:
    """GroupQueryAttention where onnxruntime takes the step, the standard step otherwise (an If whose outputs are
    the presents); returns the attended (B, q_len, E)."""
    q_len, batch = _shape(w, spec)
    one = w.constant("i_1", np.array(1, np.int64))
    longest = w.op("ReduceMax", ["past_len"], keepdims=0, stem="longest")  # the longest cache, int64 scalar
    total = w.op("Add", [longest, q_len], stem="total")
    fits = w.op("LessOrEqual", [total, w.constant("max_len", np.array(spec.max_len, np.int64))], stem="fits")
    takes = w.op(
        "Or",
        [
            w.op("Or", [w.op("Equal", [q_len, one]), w.op("Equal", [batch, one])]),
            w.op("Equal", [longest, w.constant("i_0", np.array(0, np.int64))]),
        ],
        stem="gqa_takes",
    )  # one new token, one sequence, or a prefill from an empty cache
    fast = w.op("And", [fits, takes], stem="fast")

    gqa = w.branch()
    seqlens = gqa.op("Cast", [gqa.op("Sub", [gqa.op("Add", ["past_len", q_len]), one])], to=TensorProto.INT32)
    gqa_out = gqa.ops(
        "GroupQueryAttention",
        [
            p["query"],
            p["key"],
            p["value"],
            "past_key",
            "past_value",
            seqlens,
            gqa.op("Cast", [total], to=TensorProto.INT32),
        ],
        3,
        stem="gqa",
        domain="com.microsoft",
        num_heads=spec.heads,
        kv_num_heads=spec.heads,
        scale=scale(spec),
    )  # attended (B, q_len, E), present_key, present_value

    std = w.branch()
    std_presents = (std.fresh("present_key"), std.fresh("present_value"))
    std_out = [standard(std, spec, p, std_presents), *std_presents]

    elem = ONNX_TYPES[spec.dtype]
    attended = w.fresh("attended")
    w.nodes.append(
        helper.make_node(
            "If",
            [fast],
            [attended, *PRESENTS],
            name=w.fresh("n_If"),
            then_branch=_subgraph(gqa, "gqa", gqa_out, elem),
            else_branch=_subgraph(std, "scatter_attention", std_out, elem),
        )
    )
    return attended


def _subgraph(b: GraphWriter, name: str, outputs: list[str], elem: int) -> onnx.GraphProto:
    return helper.make_graph(b.nodes, name, [], [helper.make_tensor_value_info(o, elem, None) for o in outputs])


def coverage_shapes(spec) -> tuple[tuple[int, int, int], ...]:
    """(batch, q_len, past) that take each of gqa_or_standard's branches: one token into unequal caches and three
    into one filled cache (GroupQueryAttention, in two of its modes), three into unequal caches (the standard
    step)."""
    return ((2, 1, 5), (1, 3, 4), (2, 3, 5))
