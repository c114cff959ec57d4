"""`export-attn --quantize int8`: onnxruntime's dynamic quantization of the projections.

Each MatMul whose B is a weight (the query, key, value and output projections; never the attention's own
Q·Kᵀ or P·V) becomes DynamicQuantizeLinear + MatMulInteger: the weights stored as int8 with a float scale
per output channel (trained weights' channels differ in range; on the random init, whose channels do not,
per-tensor measured the same: max_abs 0.0176 against 0.0180 at (4,128)), the activations quantized to uint8 on
the fly, per tensor. Standard ONNX operators, so onnx.reference checks it too. A projection inside an If
branch (tiled's fully-masked rows) reads the same int8 weight, dequantized, so no float weight stays.

The weights use 7 bits, [-64, 64] (quantize_dynamic's reduce_range), so that the model computes the same
integers on every x86 CPU (FORMAT; docs/precision.md). onnxruntime runs uint8 x int8 in MLAS's u8s8 kernels:
with AVX-512 VNNI or AVX-VNNI (vpdpbusd) and AMX they add the products in int32, exactly; with AVX2 or AVX-512
without VNNI they add each pair of products in int16 first (vpmaddubsw), and that saturates: 255·127·2 =
64770 > 32767. Full-range int8 weights (the format before) lost 0.15-0.29 there (max_abs, the default
block), exact on a VNNI CPU. With |w| <= 64 a pair is at most 255·64·2 = 32640 and fits. uint8 weights (u8u8,
a 16-bit kernel: exact too) keep 8 bits, but give up VNNI's and AMX's int8 instructions, which MLAS has for
u8s8 only; what the seventh bit costs against the float weights is measured in docs/precision.md.

The weight map follows the weights into their quantized form: an entry gains `scale` and `zero_point`
initializers, and `variants.tensor_of` dequantizes, so runtime_check's golden holds exactly the weights
the file holds. What quantizing cost against the float weights is a separate figure (export-attn prints it).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path

import onnx

from attn_onnx.errors import ExportError, first_line

# What an int8 export is, as its metadata (attn_onnx.quantize_format) and its bundle's manifest state it.
FORMAT = (
    "MatMulInteger u8s8: uint8 activations per tensor (dynamic), int8 weights per output channel "
    "in [-64, 64] (7-bit: no int16 saturation on AVX2)"
)
# Files written before the format was recorded: full-range int8 weights (they saturate on AVX2).
UNRECORDED_FORMAT = (
    "unrecorded; written before attn-onnx recorded it: int8 weights per output channel in "
    "[-127, 127] (u8s8: saturates on CPUs without VNNI)"
)
WEIGHT_MAX = 64  # |int8 weight| <= WEIGHT_MAX: 2 * 255 * 64 = 32640 fits int16 (vpmaddubsw)


def quantize(proto: onnx.ModelProto, weights: dict[str, dict]) -> tuple[onnx.ModelProto, dict[str, dict]]:
    """The model with its projection MatMuls quantized to int8, and the weight map pointing at the int8
    tensors with their scales."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="attn_onnx_quantize_") as tmp:
        source, target = Path(tmp, "float.onnx"), Path(tmp, "int8.onnx")
        onnx.save_model(proto, source)
        try:
            with _quiet():
                quantize_dynamic(
                    source,
                    target,
                    weight_type=QuantType.QInt8,
                    op_types_to_quantize=["MatMul"],
                    per_channel=True,
                    reduce_range=True,  # 7-bit weights: FORMAT
                    extra_options={
                        "MatMulConstBOnly": True,  # projections only
                        "DefaultTensorType": onnx.TensorProto.FLOAT,
                    },
                )  # past com.microsoft ops
        except Exception as exc:
            raise ExportError(f"onnxruntime's quantize_dynamic failed: {first_line(exc)}") from exc
        quantized = onnx.load(target)
    names = {init.name for init in quantized.graph.initializer}
    mapped = {}
    for key, entry in weights.items():
        name = entry["initializer"]
        if _int8_form(name) <= names:
            mapped[key] = {
                **entry,
                "initializer": f"{name}_quantized",
                "scale": f"{name}_scale",
                "zero_point": f"{name}_zero_point",
            }
        elif name in names:  # a bias, or a weight the quantizer left alone
            mapped[key] = entry
        else:
            raise ExportError(f"after quantization, weight {key!r} ({name}) is nowhere among the initializers")
    if not any("scale" in entry for entry in mapped.values()):
        raise ExportError("quantize_dynamic quantized none of the projections")
    _check_range(quantized.graph, mapped)
    del quantized.metadata_props[:]  # the exporter writes them again, with `quantize`
    _branches_read_int8(quantized.graph, names)
    _sort_nodes(quantized.graph)
    return quantized, mapped


def _check_range(graph: onnx.GraphProto, mapped: dict[str, dict]) -> None:
    """Every quantized weight within FORMAT's range: a wider one saturates MLAS's u8s8 kernel on AVX2."""
    inits = {init.name: init for init in graph.initializer}
    for key, entry in mapped.items():
        if "scale" in entry:
            array = onnx.numpy_helper.to_array(inits[entry["initializer"]])
            if array.dtype.kind != "i" or int(abs(array.astype("int32")).max(initial=0)) > WEIGHT_MAX:
                raise ExportError(
                    f"quantize_dynamic wrote weight {key!r} as {array.dtype} beyond "
                    f"[-{WEIGHT_MAX}, {WEIGHT_MAX}]: not {FORMAT}"
                )


def _branches_read_int8(graph: onnx.GraphProto, names: set[str]) -> None:
    """quantize_dynamic leaves the graphs of If/Loop nodes alone, so a projection there (tiled's fully-masked
    row: the mean of the value input times W_v^T) would keep reading the float weight, and the file would hold
    it beside its int8 copy. There it reads the int8 weight too, dequantized (per output channel), and float
    weights nothing reads any more are dropped."""

    def rewire(sub: onnx.GraphProto) -> None:
        nodes = []
        for node in sub.node:
            for inner in _subgraphs(node):
                rewire(inner)
            weight = node.input[1] if node.op_type == "MatMul" and len(node.input) > 1 else None
            if weight and _int8_form(weight) <= names:
                # (int8 - zero_point) * scale, the scales per output channel (W^T is (in, out)); spelled out,
                # since onnxruntime's optimizer takes a DequantizeLinear feeding a MatMul for a weight of the
                # branch's own graph and fails to find it (it lives in the main graph)
                stem, make = f"{node.name}_dequantize", onnx.helper.make_node
                int8, zero = f"{stem}_int8", f"{stem}_zero_point"
                centred, node.input[1] = f"{stem}_centred", f"{stem}_weight"
                nodes += [
                    make("Cast", [f"{weight}_quantized"], [int8], name=f"{stem}_cast", to=onnx.TensorProto.FLOAT),
                    make("Cast", [f"{weight}_zero_point"], [zero], name=f"{stem}_cast_zero", to=onnx.TensorProto.FLOAT),
                    make("Sub", [int8, zero], [centred], name=f"{stem}_sub"),
                    make("Mul", [centred, f"{weight}_scale"], [node.input[1]], name=f"{stem}_mul"),
                ]
            nodes.append(node)
        del sub.node[:]
        sub.node.extend(nodes)

    for node in graph.node:  # the main graph's projections are quantized already
        for sub in _subgraphs(node):
            rewire(sub)
    read = set().union(*(_reads(node) for node in graph.node), (out.name for out in graph.output))
    kept = [init for init in graph.initializer if init.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _int8_form(weight: str) -> set[str]:
    """The initializers quantize_dynamic writes for a weight it quantized."""
    return {f"{weight}_quantized", f"{weight}_scale", f"{weight}_zero_point"}


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs a node holds: If branches, a Loop body."""
    return [sub for attr in node.attribute for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)]


def _reads(node: onnx.NodeProto) -> set[str]:
    """The names a node reads, its subgraphs' reads included."""
    names = set(node.input)
    for sub in _subgraphs(node):
        for inner in sub.node:
            names |= _reads(inner)
    return names


def _sort_nodes(graph: onnx.GraphProto) -> None:
    """Order the nodes so that each comes after what it reads, what its If/Loop branches read included:
    quantize_dynamic's own sort sees only a node's inputs and puts a quantized projection after the If
    whose branch reads it."""
    produced = {name for node in graph.node for name in node.output}
    pending = [(node, _reads(node) & produced) for node in graph.node]
    ready: set[str] = set()
    ordered = []
    while pending:
        waiting = []
        for node, needs in pending:
            if needs <= ready:
                ordered.append(node)
                ready.update(node.output)
            else:
                waiting.append((node, needs))
        if len(waiting) == len(pending):
            raise ExportError("after quantization, the graph has a cycle")
        pending = waiting
    nodes = [onnx.NodeProto() for _ in ordered]
    for copy, node in zip(nodes, ordered):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(nodes)


@contextlib.contextmanager
def _quiet():
    """quantize_dynamic logs a pre-processing hint through the root logger on every call."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
