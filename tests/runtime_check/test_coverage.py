"""runtime_check.coverage: which control-flow paths the cases ran, as data, in the report line and --json; the
gate runs them all; a bundle's sets run them all, its manifest says which set runs which, and check-attn
--bundle fails a bundle whose sets leave one unrun."""

import json
import shutil

import pytest
from click.testing import CliRunner

import attn_onnx.exporter.variants.tiled as tiled
from attn_onnx.cli.check_attn import main as check
from attn_onnx.cli.export_attn import main as export
from attn_onnx.exporter.export import build_module, export_onnx
from attn_onnx.exporter.spec import ExportSpec
from attn_onnx.runtime_check.cases import QUICK, Sweep, generate_cases, parse_case
from attn_onnx.runtime_check.check import QUICK_CONFIG, CheckConfig, check_model
from attn_onnx.runtime_check.coverage import CoverageProbe, instrument

SMALL = ["--heads", "4", "--embedding-dim", "32"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """model(variant, *args) -> (path, spec, proto) of a small export, built once."""
    folder, cache = tmp_path_factory.mktemp("coverage"), {}

    def get(variant, **fields):
        key = (variant, *sorted(fields.items()))
        if key not in cache:
            spec = ExportSpec(heads=4, embedding_dim=32, variant=variant, opset=18, **fields).validate()
            proto, spec = export_onnx(spec, build_module(spec, seed=0))
            path = folder / f"{len(cache)}.onnx"
            path.write_bytes(proto.SerializeToString())
            cache[key] = (path, spec, proto)
        return cache[key]

    return get


@pytest.mark.parametrize(
    "shape, iterations, partial",
    [
        ((1, 5, 5), "1 iteration", False),
        ((2, 65, 65), "2 iterations", True),
        ((2, 128, 128), "2 iterations", False),
        ((2, 129, 129), "3+ iterations", True),
        ((1, 192, 192), "3+ iterations", False),
    ],
)
def test_the_probe_counts_the_tiles_the_loop_runs_and_says_when_the_last_is_partial(model, shape, iterations, partial):
    _, spec, proto = model("tiled", mask="input")
    rows, groups, tile, group = tiled.tiles(spec, *shape)
    b, q, kv = shape
    taken = CoverageProbe(proto).run(parse_case(f"b{b}.q{q}.kv{kv}.causal", spec).feeds(0))
    loop = [p for p in taken if p.startswith("Loop")]
    assert any(p.endswith(iterations) for p in loop), (taken, rows, groups)
    assert any(p.endswith("last iteration partial") for p in loop) == partial, (taken, tile)
    assert {p.split(": ")[1] for p in taken if p.startswith("If")} == {"then"}  # causal: a key in every row


def test_every_if_branch_at_any_depth_is_probed(model):
    """ort-gqa: its If (GroupQueryAttention, or MultiHeadAttention), and uniform_rows' If inside the else branch."""
    _, spec, proto = model("ort-gqa", mask="input")
    copy, probes = instrument(proto)
    assert [p.what for p in probes] == ["If", "If"]
    outer, inner = (p.node for p in probes)
    assert inner.startswith(outer + "/else/If ")
    probe = CoverageProbe(proto)
    assert probe.run(parse_case("b3.q9.kv9.causal+padding", spec).feeds(0)) == {f"{outer}: then"}
    assert probe.run(parse_case("b3.q9.kv9.masked_row", spec).feeds(0)) == {f"{outer}: else", f"{inner}: else"}
    assert probe.run(parse_case("b3.q11.kv5.ones", spec).feeds(0)) == {f"{outer}: else", f"{inner}: then"}


@pytest.mark.parametrize(
    "variant, fields",
    [
        ("tiled", {"mask": "input"}),
        ("tiled", {"mask": "none"}),
        ("tiled", {"mask": "causal"}),
        ("tiled", {"mask": "causal", "causal_align": "bottom-right"}),
        ("tiled", {"mask": "input", "module": "mha-self"}),
        ("ort-gqa", {"mask": "input"}),
        ("ort-gqa", {"mask": "causal"}),
        ("additive-mask", {"mask": "input"}),
    ],
)
def test_the_gate_runs_every_path_of_each_variant(model, variant, fields):
    path, spec, proto = model(variant, **fields)
    report = check_model(path, QUICK_CONFIG)
    assert report.ok and report.coverage.paths and report.coverage.complete, report.coverage.line()
    names = {c.name for c in generate_cases(spec, QUICK)}
    assert {"causal", "causal+padding"} <= {n.rsplit(".", 1)[1] for n in names} or spec.mask != "input"


def test_the_gate_without_the_coverage_shapes_names_what_it_missed_and_fails(model):
    path, spec, proto = model("tiled", mask="input")
    report = check_model(
        path, CheckConfig(runtimes=("onnxruntime",), sweep=Sweep(shapes=QUICK.shapes, sizes=QUICK.sizes, cover=True))
    )
    assert report.ok  # the variant's coverage shapes are added: every path ran
    bare = [s for s in QUICK.shapes]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tiled, "coverage_shapes", lambda spec: [])
        report = check_model(path, CheckConfig(runtimes=("onnxruntime",), sweep=Sweep(shapes=tuple(bare), cover=True)))
    assert not report.failed and not report.ok
    assert {m.split(": ")[1] for m in report.coverage.missing} == {
        "2 iterations",
        "3+ iterations",
        "last iteration partial",
    }
    assert report.status == "FAILED" and "paths: 3 of 6 ran" in report.summary()
    assert report.to_dict()["coverage"]["missing"] == report.coverage.missing


def test_check_attn_prints_and_writes_the_coverage_and_a_narrowed_sweep_names_without_failing(model, tmp_path):
    path, spec, proto = model("tiled", mask="input")
    result = CliRunner().invoke(
        check, [str(path), "--quick", "--runtimes", "onnxruntime", "--json", str(tmp_path / "r.json")]
    )
    assert result.exit_code == 0, result.output
    assert "PASSED | coverage | 6 of 6 control-flow paths ran" in result.output
    paths = json.loads((tmp_path / "r.json").read_text())["coverage"]["paths"]
    assert all(paths.values()) and len(paths) == 6
    result = CliRunner().invoke(check, [str(path), "--shapes", "1x5x5", "--runtimes", "onnxruntime"])
    assert result.exit_code == 0, result.output
    assert "| coverage | 3 of 6 control-flow paths ran | never ran: Loop" in result.output
    assert "(a narrowed sweep: named, not failed)" in result.output


@pytest.fixture(scope="module")
def tiled_bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiled_bundle") / "b"
    result = CliRunner().invoke(export, [*SMALL, "--attention-impl", "tiled", "--bundle", str(folder), "--name", "t"])
    assert result.exit_code == 0, result.output
    return folder


def test_a_bundles_sets_run_every_path_and_its_manifest_says_which(tiled_bundle):
    manifest = json.loads((tiled_bundle / "manifest.json").read_text())
    paths = manifest["coverage"]["paths"]
    assert len(paths) == 6 and all(paths.values())
    sets = {s["folder"]: s["case"] for s in manifest["test_data_sets"]}
    three = next(p for p in paths if p.endswith("3+ iterations"))
    assert all(f in sets for f in paths[three])
    result = CliRunner().invoke(check, ["--bundle", str(tiled_bundle)])
    assert result.exit_code == 0, result.output
    assert "PASSED | coverage | 6 of 6 control-flow paths ran" in result.output


def test_check_attn_fails_a_bundle_whose_sets_leave_a_path_unrun(tiled_bundle, tmp_path):
    """The manifest's claim is not trusted: the sets are run through the probe. A bundle that lost its long sets
    (and whose manifest still claims the paths) fails, naming the paths."""
    bundle = tmp_path / "short"
    shutil.copytree(tiled_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["test_data_sets"] = [s for s in manifest["test_data_sets"] if int(s["case"].split(".")[1][1:]) < 30]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(check, ["--bundle", str(bundle)])
    assert result.exit_code == 1, result.output
    assert "FAILED | coverage | 3 of 6 control-flow paths ran | never ran: Loop" in result.output
    assert "FAILED | summary" in result.output
