"""Which control-flow paths a model's cases ran, as data: every `If` branch, every `Loop` at 1, 2, and 3 or more
iterations, and a `Loop` whose last iteration is partial (tiled's last tile, overlapping the one before).

A parity check that never takes a branch proves nothing about it: tiled's later tiles and ort-gqa's
GroupQueryAttention branch shipped unexercised by the gate until the check said which paths it ran. The
probe is a copy of the model, used only by the check, that also outputs

- each `If`'s condition,
- each `Loop`'s iteration count (a scan output of ones added to its body, counted),
- each `Loop`'s "last iteration partial" flag, where the builder states it on the node (`doc_string`
  `coverage: partial if (SIZE % BLOCK) or ...`, over values of the graph the `Loop` sits in),

recursing into `If` branches: a probe inside a branch becomes an output of that branch, empty where the other
branch ran, so every probe is a 1-D int64 tensor with one entry each time its node ran. Control flow inside a
`Loop` body is not probed; its paths are listed as never run, so a gate cannot pass them unseen.

    probe = CoverageProbe(proto)
    coverage = Coverage(probe.paths)
    coverage.record("b2.q150.kv150.causal", probe.run(feeds))
    coverage.missing  # the paths no case ran
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import onnx
from onnx import TensorProto, helper

PREFIX = "attn_onnx_coverage"
THEN, ELSE = "then", "else"
ITERATIONS = ("1 iteration", "2 iterations", "3+ iterations")  # a Loop's paths by its iteration count
PARTIAL = "last iteration partial"
UNPROBED = "not probed (control flow inside a Loop body)"
_PARTIAL_HINT = re.compile(r"\(\s*([^\s%()]+)\s*%\s*([^\s%()]+)\s*\)")


@dataclass(frozen=True)
class Probe:
    """One probed value: `output` in the instrumented copy, reporting on control-flow node `node` (its op and
    first output, after the branches that hold it: `If attended_9/else/If attended_4`)."""

    output: str
    node: str
    what: str  # "If" (the condition), "Loop" (the iteration count), "partial" (the last iteration's flag)

    def paths(self) -> list[str]:
        if self.what == "If":
            return [f"{self.node}: {THEN}", f"{self.node}: {ELSE}"]
        if self.what == "Loop":
            return [f"{self.node}: {n}" for n in ITERATIONS]
        if self.what == "partial":
            return [f"{self.node}: {PARTIAL}"]
        return [f"{self.node}: {UNPROBED}"]

    def taken(self, values: np.ndarray) -> set[str]:
        """The paths these values (one per time the node ran) show taken."""
        values = np.asarray(values).reshape(-1)
        if self.what == "If":
            return {f"{self.node}: {THEN if v else ELSE}" for v in values}
        if self.what == "Loop":
            return {f"{self.node}: {ITERATIONS[min(int(v), 3) - 1]}" for v in values if v >= 1}
        if self.what == "partial":
            return {f"{self.node}: {PARTIAL}"} if values.any() else set()
        return set()


def control_flow(proto: onnx.ModelProto) -> bool:
    """Whether the model has an If or a Loop anywhere (a model without has one path: nothing to probe)."""
    return _has_control_flow(proto.graph)


def partial_hint(node: onnx.NodeProto) -> list[tuple[str, str]]:
    """The (size, block) value names of a Loop's `coverage: partial if (SIZE % BLOCK) or ...` doc_string: its
    last iteration is partial where any SIZE % BLOCK is not 0."""
    return _PARTIAL_HINT.findall(node.doc_string) if node.doc_string.startswith("coverage:") else []


def instrument(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, list[Probe]]:
    """A copy of `proto` that also outputs a probe per control-flow node, and the probes."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    names = (f"{PREFIX}_{i}" for i in itertools.count())
    found = _instrument(copy.graph, "", names)
    for name, _ in found:
        copy.graph.output.append(helper.make_tensor_value_info(name, TensorProto.INT64, [None]))
    return copy, [probe for _, probe in found]


def _instrument(graph: onnx.GraphProto, where: str, names) -> list[tuple[str, Probe]]:
    """Probe every control-flow node of `graph` (and the If branches within): (value name in `graph`, probe)."""
    nodes, found = [], []
    for node in graph.node:
        nodes.append(node)
        label = f"{where}{node.op_type} {node.output[0]}"
        if node.op_type == "If":
            flag = next(names)
            nodes += [
                _node("Cast", [node.input[0]], [f"{flag}_int"], to=TensorProto.INT64),
                _node("Reshape", [f"{flag}_int", _vector(nodes, f"{flag}_shape", [1])], [flag]),
            ]
            found.append((flag, Probe(flag, label, "If")))
            branches = {a.name: a.g for a in node.attribute if a.name in ("then_branch", "else_branch")}
            inner = {side: _instrument(branches[f"{side}_branch"], f"{label}/{side}/", names) for side in (THEN, ELSE)}
            for side, other in ((THEN, ELSE), (ELSE, THEN)):
                for name, probe in inner[side]:  # the branch that ran says; the other outputs nothing
                    empty = next(names)
                    branches[f"{other}_branch"].node.append(
                        helper.make_node(
                            "Constant", [], [empty], value=helper.make_tensor(empty, TensorProto.INT64, [0], [])
                        )
                    )
                    outer = next(names)
                    for branch, value in ((branches[f"{side}_branch"], name), (branches[f"{other}_branch"], empty)):
                        branch.output.append(helper.make_tensor_value_info(value, TensorProto.INT64, [None]))
                    node.output.append(outer)
                    found.append((outer, Probe(outer, probe.node, probe.what)))
        elif node.op_type == "Loop":
            body = next(a.g for a in node.attribute if a.name == "body")
            unprobed = _has_control_flow(body)
            ones, counted = next(names), next(names)
            body.node.append(
                helper.make_node("Constant", [], [ones], value=helper.make_tensor(ones, TensorProto.INT64, [1], [1]))
            )
            body.output.append(helper.make_tensor_value_info(ones, TensorProto.INT64, [1]))
            node.output.append(counted)  # (iterations, 1): one row of ones per iteration
            count = next(names)
            nodes.append(
                _node(
                    "Slice",
                    [
                        _node_output(nodes, "Shape", [counted]),
                        _vector(nodes, f"{count}_0", [0]),
                        _vector(nodes, f"{count}_1", [1]),
                    ],
                    [count],
                )
            )
            found.append((count, Probe(count, label, "Loop")))
            pairs = partial_hint(node)
            if pairs:
                partial = next(names)
                flags = [
                    _node_output(
                        nodes,
                        "Greater",
                        [_node_output(nodes, "Mod", [size, block]), _scalar(nodes, f"{partial}_zero", 0)],
                    )
                    for size, block in pairs
                ]
                while len(flags) > 1:
                    flags = [_node_output(nodes, "Or", flags[:2])] + flags[2:]
                nodes += [
                    _node("Cast", flags, [f"{partial}_int"], to=TensorProto.INT64),
                    _node("Reshape", [f"{partial}_int", _vector(nodes, f"{partial}_shape", [1])], [partial]),
                ]
                found.append((partial, Probe(partial, label, "partial")))
            if unprobed:
                flag = next(names)
                nodes.append(
                    helper.make_node("Constant", [], [flag], value=helper.make_tensor(flag, TensorProto.INT64, [0], []))
                )
                found.append((flag, Probe(flag, label, "unprobed")))
    del graph.node[:]
    graph.node.extend(nodes)
    return found


def _has_control_flow(graph: onnx.GraphProto) -> bool:
    return any(
        node.op_type in ("If", "Loop", "Scan") or any(_has_control_flow(g) for g in _subgraphs(node))
        for node in graph.node
    )


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [sub for attr in node.attribute for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)]


_counter = itertools.count()


def _node(op: str, inputs: list[str], outputs: list[str], **attrs) -> onnx.NodeProto:
    return helper.make_node(op, inputs, outputs, name=f"{PREFIX}_{op}_{next(_counter)}", **attrs)


def _node_output(nodes: list, op: str, inputs: list[str]) -> str:
    out = f"{PREFIX}_v{next(_counter)}"
    nodes.append(_node(op, inputs, [out]))
    return out


def _vector(nodes: list, name: str, values: list[int]) -> str:
    nodes.append(
        helper.make_node(
            "Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [len(values)], values)
        )
    )
    return name


def _scalar(nodes: list, name: str, value: int) -> str:
    nodes.append(
        helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [], [value]))
    )
    return name


_Run = Callable[[list[str], dict[str, np.ndarray]], list]  # (output names, feeds) -> their values


class CoverageProbe:
    """The instrumented copy of a model, run in onnxruntime's CPU (onnx.reference where onnxruntime has no
    kernel for the model's dtype): `run(feeds)` gives each probe's values. A model without control flow has no
    probes and runs nothing."""

    def __init__(self, proto: onnx.ModelProto, base_dir: str = ""):
        self.probes: list[Probe] = []
        self.session: _Run | None = None
        if not control_flow(proto):
            return
        copy, self.probes = instrument(proto)
        self.session = _session(copy, base_dir)

    @property
    def paths(self) -> list[str]:
        return [path for probe in self.probes for path in probe.paths()]

    def run(self, feeds: dict[str, np.ndarray]) -> set[str]:
        """The paths these feeds take."""
        if not self.probes:
            return set()
        assert self.session is not None  # __init__ gives every probe its session
        try:
            values = self.session([p.output for p in self.probes], feeds)
        except Exception:
            return set()
        return set().union(*(probe.taken(v) for probe, v in zip(self.probes, values)))


def _session(proto: onnx.ModelProto, base_dir: str) -> _Run:
    """A function (output names, feeds) -> values running `proto`."""
    import onnxruntime as ort

    if base_dir:  # external weights are read relative to the model's folder: load it from the proto itself
        onnx.load_external_data_for_model(proto, base_dir)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return lambda names, feeds: session.run(names, feeds)
    except Exception as exc:  # no kernel for this dtype (bfloat16 MatMul on a CPU): the reference evaluator
        if "NOT_IMPLEMENTED" not in str(exc):
            raise
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(proto)
    # run's annotation (a dict, or a list) covers intermediate=True, which gives the dict; this call gives the list
    return lambda names, feeds: cast(list, evaluator.run(names, feeds))


@dataclass
class Coverage:
    """The paths of a model, and which cases ran each."""

    paths: list[str]
    required: bool = True  # a path no case ran fails the check (a sweep the user narrowed only names it)
    ran: dict[str, list[str]] = field(default_factory=dict)  # path -> the cases that took it

    def record(self, case: str, taken: set[str]) -> None:
        for path in self.paths:
            if path in taken:
                self.ran.setdefault(path, []).append(case)

    @property
    def missing(self) -> list[str]:
        """The paths no case ran."""
        return [path for path in self.paths if not self.ran.get(path)]

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def failures(self) -> list[str]:
        """Why the coverage fails the check: the paths no case ran, where the sweep had to run them all."""
        return [f"no case ran {path}" for path in self.missing] if self.required else []

    def line(self) -> str:
        if not self.paths:
            return "PASSED | coverage | no control flow: one path, run by every case"
        status = "FAILED" if self.failures else "PASSED"
        text = (
            f"{status} | coverage | {len(self.paths) - len(self.missing)} of {len(self.paths)} control-flow paths ran"
        )
        if self.missing:
            text += f" | never ran: {'; '.join(self.missing)}"
            text += "" if self.required else " (a narrowed sweep: named, not failed)"
        return text

    def to_dict(self) -> dict:
        return {
            "paths": {path: self.ran.get(path, []) for path in self.paths},
            "missing": self.missing,
            "complete": self.complete,
            "required": self.required,
        }
