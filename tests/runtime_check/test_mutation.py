"""Mutation: a check that cannot fail a wrong model proves nothing. Every control-flow path of every variant's
graph is broken on purpose (its output moved by 0.01: an If branch; a Loop's first, later, middle, and partial
last iteration), and each mutant must fail both the gate's sweep (export-attn's pre-write check, auto's, and
check-attn --quick) and the golden sets of a bundle. The kill rate must be 100%.

Before the gate ran the variants' coverage shapes, tiled's later tiles and ort-gqa's GroupQueryAttention
branch survived it, and every tiled mutant of a later tile survived the bundle's sets."""

import pytest

from attn_onnx.deploy.bundle import check_bundle, write_bundle
from attn_onnx.exporter.export import build_module, export_onnx
from attn_onnx.exporter.spec import ExportSpec
from attn_onnx.runtime_check.check import QUICK_CONFIG, check_model
from attn_onnx.runtime_check.coverage import CoverageProbe
from tests.runtime_check.broken import path_mutants

HEADS, WIDTH = 4, 32
SPECS = [  # every variant with control flow, in every mask mode that gives it some
    dict(variant="tiled", mask="input"),
    dict(variant="tiled", mask="causal"),
    dict(variant="tiled", mask="none"),
    dict(variant="tiled", mask="input", module="mha-self"),
    dict(variant="tiled", mask="causal", causal_align="bottom-right"),
    dict(variant="ort-gqa", mask="input"),
    dict(variant="ort-gqa", mask="causal"),
    dict(variant="additive-mask", mask="input"),
    dict(variant="ort-mha", mask="input"),
    dict(variant="onnx-attention", mask="input", opset=23),
    dict(variant="ort-gqa", mask="input", module="mha-self"),
]


def _name(fields: dict) -> str:
    return ",".join(f"{v}" for v in fields.values())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(spec, module, proto, bundle folder) per spec, built once."""
    cache = {}

    def get(fields):
        key = _name(fields)
        if key not in cache:
            spec = ExportSpec(heads=HEADS, embedding_dim=WIDTH, **{"opset": 18, **fields}).validate()
            module = build_module(spec, seed=0)
            proto, model_spec = export_onnx(spec, module)
            cache[key] = (model_spec, module, proto, tmp_path_factory.mktemp("mutation"))
        return cache[key]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("fields", SPECS, ids=_name)
def test_every_control_flow_mutant_fails_the_gate_and_the_bundle(exported, fields):
    spec, module, proto, folder = exported(fields)
    assert check_model(proto, QUICK_CONFIG, module=module).ok  # the straight export passes both
    mutants = path_mutants(proto)
    paths = CoverageProbe(proto).paths
    assert mutants and paths  # every spec here has control flow
    survivors = []
    for what, mutant in mutants.items():
        gate = check_model(mutant, QUICK_CONFIG, module=module)
        if gate.ok or not gate.failed:  # killed by a wrong value, not by a path left unrun
            survivors.append(f"{what}: survives the gate")
        target = folder / what.replace(" ", "_").replace("/", "_").replace(":", "")
        write_bundle(target, mutant, spec, module, name="mutant")  # the golden sets: the float64 module's
        bundle = check_bundle(target)
        if bundle.ok or not bundle.failed:
            survivors.append(f"{what}: survives the bundle's sets")
    kill_rate = 1 - len(survivors) / (2 * len(mutants))
    assert not survivors, f"kill rate {kill_rate:.0%} of {len(mutants)} mutants x 2: {survivors}"


def test_the_mutants_cover_a_later_a_middle_and_a_partial_last_tile_and_each_branch(exported):
    spec, module, proto, _ = exported(SPECS[0])
    kinds = sorted(what.rsplit(": ", 1)[1] for what in path_mutants(proto))
    assert kinds == sorted(["then", "else", "first", "later", "middle", "last partial"])
    spec, module, proto, _ = exported(SPECS[5])  # ort-gqa: its If, and uniform_rows' If inside the else branch
    assert sorted(what.rsplit(": ", 1)[1] for what in path_mutants(proto)) == ["else", "else", "then", "then"]


def test_a_sweep_of_small_shapes_alone_lets_a_later_tile_mutant_through(exported):
    """What the gate looked like before: its shapes all fit in one tile, so a later tile's bug passed."""
    import dataclasses

    spec, module, proto, _ = exported(SPECS[0])
    later = next(m for what, m in path_mutants(proto).items() if what.endswith(": later"))
    old_gate = dataclasses.replace(QUICK_CONFIG, sweep=dataclasses.replace(QUICK_CONFIG.sweep, cover=False))
    report = check_model(later, old_gate, module=module)
    assert report.ok and not report.failed  # every case right: the bug is in tiles it never ran
    assert any("2 iterations" in p for p in report.coverage.missing)  # which the coverage names
    assert check_model(later, QUICK_CONFIG, module=module).failed  # the gate runs those tiles, and fails it
