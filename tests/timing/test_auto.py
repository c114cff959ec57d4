"""export-attn --attention-impl auto: every candidate checked before it is timed, a wrong one never chosen, the
choice recorded in the metadata and shown by check-attn, the standard-operators limit honoured. No timing is
asserted (speed claims live in the closing notes and docs, measured side by side by hand)."""

import json
import re

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from attn_onnx.cli.check_attn import main as check
from attn_onnx.cli.export_attn import main as export
from attn_onnx.exporter.export import export_onnx
from attn_onnx.exporter.variants import VARIANTS
from attn_onnx.runtime_check.model import load_model
from attn_onnx.timing import auto, engine
from tests.runtime_check.broken import bias_moved

SMALL = ["--heads", "2", "--embedding-dim", "16", "--tune-shapes", "1x8,2x5", "--tune-rounds", "2"]


@pytest.fixture(scope="module")
def chosen(tmp_path_factory):
    """One auto export with the broken variant registered, the engine's calls counted."""
    path = tmp_path_factory.mktemp("auto") / "m.onnx"
    engine_calls = []
    real = engine.interleaved
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(VARIANTS, "fast-but-wrong", bias_moved("fast-but-wrong"))
        patch.setattr(
            engine, "interleaved", lambda calls, *a, **k: engine_calls.append(set(calls)) or real(calls, *a, **k)
        )
        result = CliRunner().invoke(export, [*SMALL, "--attention-impl", "auto", "--out", str(path)])
    assert result.exit_code == 0, result.output
    return path, result.output, engine_calls


def test_a_wrong_variant_is_dropped_before_it_is_timed(chosen):
    path, output, engine_calls = chosen
    record = load_model(path).spec.tuning
    assert record["dropped"]["fast-but-wrong"].startswith("failed the check (")
    assert "fast-but-wrong" not in record["geomean_ms"] and record["chosen"] != "fast-but-wrong"
    assert all("fast-but-wrong" not in names for names in engine_calls)  # never raced
    assert "fast-but-wrong  dropped: failed the check (" in output


def test_the_fastest_checked_variant_is_written_and_the_metadata_says_why(chosen):
    path, output, engine_calls = chosen
    spec = load_model(path).spec
    record = spec.tuning
    assert engine_calls == [set(VARIANTS)] * 2  # bench-attn's engine, once per shape, every real variant
    assert set(record["geomean_ms"]) == set(VARIANTS) and spec.variant == record["chosen"]
    assert record["chosen"] == min(record["geomean_ms"], key=record["geomean_ms"].get)
    for variant, per_shape in record["median_ms"].items():  # the geometric mean of the shapes' medians
        assert set(per_shape) == {"1x8", "2x5"}
        geomean = np.sqrt(per_shape["1x8"] * per_shape["2x5"])
        assert record["geomean_ms"][variant] == pytest.approx(geomean, rel=1e-5)
    assert record["shapes"] == ["1x8", "2x5"] and record["rounds"] == 2 and record["mask"] == "causal+padding"
    assert record["cpu"] == engine.cpu_model() and record["runs_in"] == VARIANTS[record["chosen"]].runs_in
    assert record["chosen"] in output and "<- chosen" in output
    assert output.index("<- chosen") < output.index("wrote")


def test_check_attn_shows_the_choice_and_the_model_passes(chosen):
    path, _, _ = chosen
    result = CliRunner().invoke(check, [str(path), "--quick", "--runtimes", "onnxruntime"])
    assert result.exit_code == 0, result.output
    record = load_model(path).spec.tuning
    line = result.output.splitlines()[1]
    assert line.startswith(f"variant {record['chosen']} chosen by --attention-impl auto on {record['cpu']}")
    assert "at 1x8,2x5 (mask causal+padding)" in line and "dropped: fast-but-wrong" in line


def test_standard_ops_limits_the_candidates_and_the_choice_runs_in_onnx_reference(tmp_path):
    path = tmp_path / "m.onnx"
    result = CliRunner().invoke(
        export, [*SMALL, "--tune-shapes", "1x8", "--attention-impl", "auto", "--standard-ops", "--out", str(path)]
    )
    assert result.exit_code == 0, result.output
    record = load_model(path).spec.tuning
    assert record["standard_ops"] is True
    assert {v for v in VARIANTS if not VARIANTS[v].standard_ops} == {"ort-mha", "ort-gqa"}
    assert record["dropped"]["ort-mha"].startswith("not standard ONNX operators")
    assert all(VARIANTS[v].standard_ops for v in record["geomean_ms"])
    assert all(n.domain in ("", "ai.onnx") for n in onnx.load(str(path)).graph.node)
    result = CliRunner().invoke(check, [str(path), "--quick", "--runtimes", "reference"])
    assert result.exit_code == 0, result.output
    assert re.search(r"PASSED \| summary \| \d+ passed, 0 failed, 0 skipped", result.output), result.output


def test_a_kind_one_variant_builds_is_written_untimed(tmp_path):
    path = tmp_path / "m.onnx"
    result = CliRunner().invoke(export, [*SMALL, "--kv-cache", "--attention-impl", "auto", "--out", str(path)])
    assert result.exit_code == 0, result.output
    record = load_model(path).spec.tuning
    assert record["chosen"] == "torch-export" and record["geomean_ms"] == {}
    assert "the only candidate, not timed" in result.output
    json.dumps(record, allow_nan=False)  # no NaN placeholders for the figures it does not have


@pytest.mark.parametrize(
    "args, says",
    [
        (
            ["--tune-shapes", "1x8", "--out", "m.onnx"],
            "Error: --tune-shapes does not apply without --attention-impl auto",
        ),
        (
            ["--attention-impl", "auto", "--tune-shapes", "1x", "--out", "m.onnx"],
            "Error: --tune-shapes item '1x' is not BATCHxLEN with both >= 1 (e.g. 4x512)",
        ),
        (
            ["--attention-impl", "auto", "--mask", "causal", "--tune-mask", "padding", "--out", "m.onnx"],
            "Error: --tune-mask does not apply to --mask causal (the model builds its own mask)",
        ),
        (
            ["--attention-impl", "auto", "--standard-ops", "--optimize", "--out", "m.onnx"],
            "Error: --standard-ops and --optimize exclude each other: the optimized graph holds com.microsoft "
            "operators",
        ),
        (
            ["--attention-impl", "auto", "--dtype", "bfloat16", "--out", "m.onnx"],
            "Error: --attention-impl auto times candidates in onnxruntime, which has no bfloat16 MatMul on a "
            "CPU; choose "
            "a variant by name for --dtype bfloat16",
        ),
    ],
    ids=["tune-without-auto", "bad-shape", "tune-mask-without-input", "standard-and-optimize", "bfloat16"],
)
def test_auto_refusals_are_one_line_before_any_work(tmp_path, monkeypatch, args, says):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(export, ["--heads", "2", "--embedding-dim", "16", *args])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == says
    assert list(tmp_path.iterdir()) == []


def test_every_variant_says_whether_it_is_standard_operators_only(tmp_path):
    """The flag --standard-ops reads must match the graphs: no com.microsoft node in a standard variant."""
    for name, variant in VARIANTS.items():
        spec = auto.candidates(auto.ExportSpec(heads=2, embedding_dim=16))[list(VARIANTS).index(name)].spec
        proto, _ = export_onnx(spec)
        domains = {n.domain for n in proto.graph.node} | {n.domain for n in _subgraph_nodes(proto.graph)}
        assert variant.standard_ops == domains.issubset({"", "ai.onnx"}), (name, domains)


def _subgraph_nodes(graph):
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from sub.node
                yield from _subgraph_nodes(sub)


def test_a_bundle_and_a_triton_repository_ship_the_chosen_variant(tmp_path):
    import json

    result = CliRunner().invoke(
        export,
        [
            *SMALL,
            "--tune-shapes",
            "1x8",
            "--tune-rounds",
            "1",
            "--attention-impl",
            "auto",
            "--bundle",
            str(tmp_path / "b"),
            "--triton-repo",
            str(tmp_path / "t"),
            "--name",
            "m",
        ],
    )
    assert result.exit_code == 0, result.output
    shipped = [
        load_model(tmp_path / "b" / "model.onnx").spec,
        load_model(tmp_path / "t" / "m" / "1" / "model.onnx").spec,
    ]
    chosen = shipped[0].tuning["chosen"]
    assert [s.variant for s in shipped] == [chosen, chosen] and shipped[1].tuning == shipped[0].tuning
    metadata = json.loads((tmp_path / "b" / "manifest.json").read_text())["metadata"]
    assert json.loads(metadata["attn_onnx.tuning"])["chosen"] == chosen


def test_every_candidate_is_timed_on_the_same_inputs_as_bench_attn_s(tmp_path, monkeypatch):
    """A padding mask's lengths are random at batch > 1 and tiled skips what they hide: candidates timed on
    masks of their own would race on different work."""
    handed = []
    real = auto._call
    monkeypatch.setattr(auto, "_call", lambda runs, feeds: handed.append(feeds) or real(runs, feeds))
    result = CliRunner().invoke(
        export, [*SMALL, "--attention-impl", "auto", "--tune-shapes", "4x12", "--out", str(tmp_path / "m.onnx")]
    )
    assert result.exit_code == 0, result.output
    assert len(handed) == len(VARIANTS) and all(feeds is handed[0] for feeds in handed)
    spec = load_model(tmp_path / "m.onnx").spec
    again = engine.feeds_at(spec, 4, 12)  # what bench-attn feeds at (4,12): the same arrays
    assert set(again) == set(handed[0]) and all(np.array_equal(again[k], handed[0][k]) for k in again)
    lengths = handed[0]["mask"][:, -1, :].sum(axis=-1)
    assert lengths[0] == 12 and len(set(lengths.tolist())) == 4  # causal+padding: the first full, all differ


def test_a_static_cache_is_tuned_as_it_serves_one_token_in_place(tmp_path, monkeypatch):
    """auto on --kv-cache --max-len: the forms that build it race, each step a token into caches of the shape's
    length (at most max_len - 1) through StaticCache, bound in place; the choice passes the decode check."""
    from attn_onnx.runtime_check import static_cache

    steps = []
    real = static_cache.StaticCache.step
    monkeypatch.setattr(
        static_cache.StaticCache,
        "step",
        lambda self, query, *a, **k: (
            steps.append((self.in_place, tuple(self.lengths), query.shape)) or real(self, query, *a, **k)
        ),
    )
    path = tmp_path / "s.onnx"
    args = ["--kv-cache", "--max-len", "16", "--heads", "2", "--embedding-dim", "16", "--tune-rounds", "1"]
    result = CliRunner().invoke(
        export, [*args, "--tune-shapes", "2x40", "--attention-impl", "auto", "--out", str(path)]
    )
    assert result.exit_code == 0, result.output
    record = load_model(path).spec.tuning
    assert set(record["geomean_ms"]) == {"ort-gqa", "onnx-attention", "torch-export"}
    assert record["shapes"] == ["2x15"]  # 40 cached tokens do not fit max_len 16: timed at 15, and named so
    timed = [s for s in steps if s[2] == (2, 1, 16) and s[1] == (15, 15)]
    assert timed and all(in_place for in_place, _, _ in timed)
    assert "decode.unequal" in result.output or "slots3" in result.output  # the choice's check decoded
