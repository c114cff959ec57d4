"""Broken models, built the way real exports go wrong, for runtime_check to catch."""

import dataclasses
import importlib
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from attn_onnx.deploy import export_model
from attn_onnx.exporter.kinds import KINDS
from attn_onnx.exporter.spec import ExportSpec
from attn_onnx.exporter.variants import VARIANTS, Variant
from attn_onnx.models import MultiHeadedAttention


@dataclasses.dataclass(frozen=True)
class BiasMoved(Variant):
    """torch-export's graph with the output projection's bias moved by 0.5: as fast as the straight export, builds
    and runs, and is wrong."""

    def build(self, spec, module):
        built = VARIANTS["torch-export"].build(spec.replace(variant="torch-export"), module)
        entry = built.weights["linears.3.bias"]
        init = next(i for i in built.proto.graph.initializer if i.name == entry["initializer"])
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + np.float32(0.5), init.name))
        return built


def bias_moved(name: str) -> BiasMoved:
    """The broken variant, to register in VARIANTS under `name` for a test."""
    return BiasMoved(name, "torch_export", "broken on purpose")


class NegInfFillMHA(MultiHeadedAttention):
    """The same module, but masked scores filled with -inf: NaN on every fully-masked row."""

    def forward(self, query, key, value, mask=None):
        impl = importlib.import_module("attn_onnx.models.attention")  # the module, not the function
        saved, impl.mask_fill = impl.mask_fill, lambda dtype: float("-inf")
        try:
            return super().forward(query, key, value, mask)
        finally:
            impl.mask_fill = saved


def neg_inf_fill_model(path: Path, spec: ExportSpec, module: MultiHeadedAttention) -> Path:
    bad = NegInfFillMHA(spec.heads, spec.embedding_dim, dropout=0.0).eval()
    bad.load_state_dict(module.state_dict())
    export_model(spec, path, module=bad, check=False)  # it would fail the check: that is the point
    return path


def baked_reshape_model(src: Path, dst: Path, bake: str) -> Path:
    """Replace every Reshape's computed target shape with the one it had at the export's example shape.

    bake="batch": `view(2, -1, h, d_k)` (the example batch baked in, the length free);
    bake="length": `view(-1, 3, h, d_k)`; bake="all": right at the example shape only.
    """
    model = onnx.load(str(src))
    width = model.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    b, q, kv = KINDS["mha"].example_dims.values()  # (2, 3, 4)
    rng = np.random.default_rng(0)
    feeds = {
        "query": rng.standard_normal((b, q, width), dtype=np.float32),
        "key": rng.standard_normal((b, kv, width), dtype=np.float32),
        "value": rng.standard_normal((b, kv, width), dtype=np.float32),
        "mask": np.ones((b, q, kv), bool),
    }
    values = ReferenceEvaluator(model).run(None, feeds, intermediate=True)
    for i, node in enumerate(n for n in model.graph.node if n.op_type == "Reshape"):
        shape = np.array(values[node.output[0]].shape, dtype=np.int64)  # as reshaped at the example shape
        if bake == "batch":
            shape[1] = -1
        elif bake == "length":
            shape[0] = -1
        name = f"baked_shape_{i}"
        model.graph.initializer.append(numpy_helper.from_array(shape, name))
        node.input[1] = name
    onnx.save(model, str(dst))
    return dst


def perturbed_weights_model(src: Path, dst: Path, spec: ExportSpec, amount: float = 1e-3) -> Path:
    """The output projection's weights moved by +-amount: invisible to a reference rebuilt from the file."""
    model = onnx.load(str(src))
    name = spec.weights["linears.3.weight"]["initializer"]
    for i, init in enumerate(model.graph.initializer):
        if init.name == name:
            array = numpy_helper.to_array(init)
            signs = np.where(np.random.default_rng(0).random(array.shape) < 0.5, -1, 1).astype(array.dtype)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(array + amount * signs, name))
    onnx.save(model, str(dst))
    return dst


# --- mutants of control-flow paths: one path's output moved by 0.01, as a bug on that path alone would show ---

MUTATION = 0.01


def path_mutants(proto: onnx.ModelProto) -> dict[str, onnx.ModelProto]:
    """{what was mutated: the model}, one mutant per control-flow path of `proto`, at any depth of If branches:
    each If branch's output + 0.01; each Loop's scan output + 0.01 on the first iteration, on every later one,
    on a middle one (neither first nor last), and on the last one where it is partial (the Loop's `coverage:`
    hint, runtime_check.coverage)."""
    mutants = {}
    for where in _control_flow(proto.graph, []):
        *path, (node_index, kind) = where
        inside = " in ".join(
            f"{_graph_at(proto.graph, path[:k]).node[i].output[0]}.{attr}"
            for k, (i, attr) in reversed(list(enumerate(path)))
        )
        for variant in ("then", "else") if kind == "If" else ("first", "later", "middle", "last partial"):
            copy = onnx.ModelProto()
            copy.CopyFrom(proto)
            graph = _graph_at(copy.graph, path)
            node = graph.node[node_index]
            if kind == "If":
                _shift_output(next(a.g for a in node.attribute if a.name == f"{variant}_branch"), 0, None, None)
            elif not _mutate_loop(graph, node, variant):
                continue  # no hint of a partial last iteration
            mutants[f"{kind} {node.output[0]}{' in ' + inside if inside else ''}: {variant}"] = copy
    return mutants


def _control_flow(graph: onnx.GraphProto, path: list) -> list[list]:
    """Every If and Loop: [branch steps..., (node index, op)], a branch step being (node index, attribute)."""
    found = []
    for i, node in enumerate(graph.node):
        if node.op_type in ("If", "Loop"):
            found.append([*path, (i, node.op_type)])
        for attr in node.attribute:
            if attr.HasField("g"):
                found += _control_flow(attr.g, [*path, (i, attr.name)])
    return found


def _graph_at(graph: onnx.GraphProto, path: list) -> onnx.GraphProto:
    for i, attr in path:
        graph = next(a.g for a in graph.node[i].attribute if a.name == attr)
    return graph


def _shift_output(graph: onnx.GraphProto, index: int, when: str | None, nodes_before: list | None) -> None:
    """Output `index` of `graph` + 0.01 (times the bool `when`, if given)."""
    out = graph.output[index]
    elem = out.type.tensor_type.elem_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
    make = onnx.helper.make_node
    nodes = list(nodes_before or [])
    delta = f"{out.name}_mutation"
    nodes.append(make("Constant", [], [delta], value=numpy_helper.from_array(np.array(MUTATION, dtype), delta)))
    if when is not None:
        nodes.append(make("Cast", [when], [f"{delta}_on"], to=elem))
        nodes.append(make("Mul", [delta, f"{delta}_on"], [f"{delta}_gated"]))
        delta = f"{delta}_gated"
    nodes.append(make("Add", [out.name, delta], [f"{out.name}_mutated"]))
    graph.node.extend(nodes)
    out.name = f"{out.name}_mutated"


def _mutate_loop(graph: onnx.GraphProto, node: onnx.NodeProto, variant: str) -> bool:
    """The Loop's first scan output + 0.01 on the iterations `variant` names; False where it cannot apply."""
    from attn_onnx.runtime_check.coverage import partial_hint

    make = onnx.helper.make_node
    body = next(a.g for a in node.attribute if a.name == "body")
    counter, count = body.input[0].name, node.input[0]  # this iteration; the trip count (outer scope)
    carried = len(node.input) - 2
    stem = f"mutant_{variant.replace(' ', '_')}"
    int64 = lambda name, v: make("Constant", [], [name], value=numpy_helper.from_array(np.array(v, np.int64), name))  # noqa: E731
    nodes = [int64(f"{stem}_0", 0), int64(f"{stem}_1", 1)]
    nodes.append(make("Sub", [count, f"{stem}_1"], [f"{stem}_last"]))
    if variant == "first":
        nodes.append(make("Equal", [counter, f"{stem}_0"], [f"{stem}_on"]))
    elif variant == "later":
        nodes.append(make("GreaterOrEqual", [counter, f"{stem}_1"], [f"{stem}_on"]))
    elif variant == "middle":
        nodes += [
            make("GreaterOrEqual", [counter, f"{stem}_1"], [f"{stem}_after_first"]),
            make("Less", [counter, f"{stem}_last"], [f"{stem}_before_last"]),
            make("And", [f"{stem}_after_first", f"{stem}_before_last"], [f"{stem}_on"]),
        ]
    else:  # the last iteration, where the hint says it is partial (computed in the Loop's own graph)
        pairs = partial_hint(node)
        if not pairs:
            return False
        flags = []
        for k, (size, block) in enumerate(pairs):
            graph.node.extend(
                [
                    int64(f"{stem}_zero_{k}", 0),
                    make("Mod", [size, block], [f"{stem}_rest_{k}"]),
                    make("Greater", [f"{stem}_rest_{k}", f"{stem}_zero_{k}"], [f"{stem}_partial_{k}"]),
                ]
            )
            flags.append(f"{stem}_partial_{k}")
        graph.node.append(
            make("Or", flags, [f"{stem}_partial"])
            if len(flags) == 2
            else make("Identity", flags[:1], [f"{stem}_partial"])
        )
        nodes += [
            make("Equal", [counter, f"{stem}_last"], [f"{stem}_is_last"]),
            make("And", [f"{stem}_is_last", f"{stem}_partial"], [f"{stem}_on"]),
        ]
    _shift_output(body, 1 + carried, f"{stem}_on", nodes)
    if variant == "last partial":
        _move_before_users(graph, node)  # last: it copies the nodes, `node` and `body` among them
    return True


def _move_before_users(graph: onnx.GraphProto, loop: onnx.NodeProto) -> None:
    """The nodes appended to `graph` moved to just before `loop` (they read what comes before it)."""
    nodes = list(graph.node)
    at = next(i for i, n in enumerate(nodes) if n is loop or n == loop)
    tail = [n for n in nodes[at + 1 :] if n.output and n.output[0].startswith("mutant_")]
    rest = [n for n in nodes if not any(n is t for t in tail)]
    at = next(i for i, n in enumerate(rest) if n == loop)
    ordered = rest[:at] + tail + rest[at:]
    copies = [onnx.NodeProto() for _ in ordered]
    for copy, n in zip(copies, ordered):
        copy.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)
