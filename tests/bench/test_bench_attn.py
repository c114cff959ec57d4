"""bench-attn, a group of subcommands: variants' and decode's figures are consistent data (no timing is asserted),
their refusals come before any work, and each subcommand takes only its own options."""

import json

import pytest
from click.testing import CliRunner

from attn_onnx.bench.bench import flops
from attn_onnx.cli.bench_attn import main as bench
from attn_onnx.exporter.variants import VARIANTS
from attn_onnx.timing.engine import round_order
from tests.cli.fresh import run_fresh

SMALL = ["--heads", "2", "--embedding-dim", "16", "--rounds", "2", "--threads", "1"]
VARIANTS_SMALL = ["variants", *SMALL]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    result = CliRunner().invoke(
        bench,
        [*VARIANTS_SMALL, "--shapes", "1x8,3x5", "--json", str(folder / "b.json"), "--plot", str(folder / "b.png")],
    )
    assert result.exit_code == 0, result.output
    return result.output, json.loads((folder / "b.json").read_text()), (folder / "b.png").read_bytes()


def test_every_contender_is_timed_at_every_shape(results):
    _, data, _ = results
    contenders = {f"ort:{v}" for v in VARIANTS} | {"torch-eager", "torch-sdpa"}
    seen = {(t["contender"], t["batch"], t["length"]) for t in data["timings"]}
    assert seen == {(c, b, n) for c in contenders for b, n in ((1, 8), (3, 5))}
    for t in data["timings"]:
        assert len(t["rounds_ms"]) == 2 and t["median_ms"] > 0
        assert t["gflops"] == pytest.approx(flops(t["batch"], t["length"], 16) / (t["median_ms"] / 1e3) / 1e9)
        assert t["limit_fraction"] == pytest.approx(t["gflops"] / data["sgemm_gflops"]["1"])


def test_ratios_are_to_sdpa_and_to_the_straight_export(results):
    _, data, _ = results
    for shape in ((1, 8), (3, 5)):
        rows = {t["contender"]: t for t in data["timings"] if (t["batch"], t["length"]) == shape}
        assert rows["torch-sdpa"]["vs_sdpa"] == pytest.approx(1.0)
        assert rows["ort:torch-export"]["vs_export"] == pytest.approx(1.0)
        for t in rows.values():
            assert t["vs_sdpa"] == pytest.approx(rows["torch-sdpa"]["median_ms"] / t["median_ms"])


def test_each_contender_counts_the_rounds_it_beat_sdpa_in_the_same_round(results):
    output, data, _ = results
    for shape in ((1, 8), (3, 5)):
        rows = {t["contender"]: t for t in data["timings"] if (t["batch"], t["length"]) == shape}
        sdpa = rows.pop("torch-sdpa")
        assert sdpa["faster_rounds"] is None
        for t in rows.values():
            assert t["faster_rounds"] == sum(a < b for a, b in zip(t["rounds_ms"], sdpa["rounds_ms"]))
    assert "beat sdpa" in output and "rounds)" in output.split("fastest correct at (3,5)")[1]


def test_each_round_starts_one_contender_further_on():
    names = ["a", "b", "c"]
    orders = [round_order(names, r) for r in range(4)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    for place in range(3):  # over len(names) rounds every contender takes every place once
        assert sorted(order[place] for order in orders[:3]) == names


def test_without_the_straight_export_no_ratio_to_it_is_printed():
    result = CliRunner().invoke(bench, [*VARIANTS_SMALL, "--attention-impl", "additive-mask", "--shapes", "1x8"])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("fastest correct at (1,8)"))
    assert "torch-export" not in line and "x SDPA (faster in" in line


def test_each_variant_is_timed_in_three_sessions_taking_turns(monkeypatch):
    """Part of a timing's spread stays with its session: every round uses the next one, so that over 7 rounds
    one slow session holds at most 3 figures and is never the median."""
    import attn_onnx.timing.engine as engine

    runs: dict[int, int] = {}

    class Counted:
        def __init__(self, inner):
            self.inner = inner

        def run(self, *args):
            runs[id(self)] = runs.get(id(self), 0) + 1
            return self.inner.run(*args)

    made = []
    real = engine.session

    def counted(proto, threads):
        made.append(Counted(real(proto, threads)))
        return made[-1]

    monkeypatch.setattr(engine, "session", counted)
    result = CliRunner().invoke(
        bench, [*VARIANTS_SMALL, "--rounds", "3", "--attention-impl", "tiled", "--shapes", "1x8"]
    )
    assert result.exit_code == 0, result.output
    tiled = made[: engine.SESSIONS]  # then the sgemm's
    assert len(tiled) == engine.SESSIONS == 3
    assert all(runs.get(id(s), 0) >= 2 for s in tiled)  # each timed (its warm-up call and at least one timed)


def test_each_variant_is_checked_against_the_float64_seed_on_the_bench_inputs(results):
    _, data, _ = results
    for t in data["timings"]:
        if t["contender"].startswith("ort:"):
            assert t["max_abs"] < 1e-5  # float32 at width 16: the float32 profile's atol
        else:
            assert t["max_abs"] is None


def test_the_table_names_the_cpu_and_the_limit(results):
    output, data, png = results
    assert data["cpu"] and data["cpu"] in output
    assert "sgemm limit (onnxruntime MatMul 2048^3)" in output and "fastest correct at (3,5)" in output
    assert png.startswith(b"\x89PNG")


def test_memory_is_measured_per_variant_in_a_fresh_process(tmp_path):
    """torch-export materializes the (1, 8, 1024, 1024) float32 scores (32 MiB) several times over."""
    out = tmp_path / "m.json"
    result = CliRunner().invoke(
        bench,
        [
            "variants",
            "--heads",
            "8",
            "--embedding-dim",
            "64",
            "--rounds",
            "1",
            "--threads",
            "1",
            "--shapes",
            "1x4",
            "--memory",
            "1x1024",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    memory = json.loads(out.read_text())["memory"]
    assert (memory["batch"], memory["length"]) == (1, 1024) and set(memory["variants"]) == set(VARIANTS)
    for figures in memory["variants"].values():
        assert figures["peak_mib"] >= figures["run_mib"] >= 0
    assert memory["variants"]["torch-export"]["run_mib"] > 32
    assert "peak RSS of one run at (1,1024)" in result.output


def test_self_attention_times_each_variant_in_both_forms(tmp_path):
    out = tmp_path / "s.json"
    result = CliRunner().invoke(
        bench,
        [
            *VARIANTS_SMALL,
            "--attention-impl",
            "torch-export,ort-mha",
            "--shapes",
            "1x6",
            "--self-attention",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = {t["contender"]: t for t in json.loads(out.read_text())["timings"]}
    assert {"ort:torch-export/self", "ort:ort-mha/self", "ort:torch-export"} <= set(rows)
    assert all(rows[n]["max_abs"] < 1e-5 for n in rows if n.startswith("ort:"))  # x fed alone, the same answer


def test_reduced_precision_and_int8_are_timed_beside_float32(tmp_path):
    """Each at its own precision; its max_abs against the float64 module of the float32 weights is what
    the precision costs: float16 within a few u (2^-11), int8 within its profile, never as good as float32."""
    out = tmp_path / "p.json"
    result = CliRunner().invoke(
        bench,
        [
            *VARIANTS_SMALL,
            "--attention-impl",
            "torch-export,ort-mha",
            "--shapes",
            "2x6",
            "--dtypes",
            "float32,float16",
            "--quantize",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = {t["contender"]: t for t in json.loads(out.read_text())["timings"]}
    for variant in ("torch-export", "ort-mha"):
        fp32, fp16, int8 = (rows[f"ort:{variant}{suffix}"] for suffix in ("", "@float16", "@int8"))
        assert fp32["max_abs"] < 1e-5
        assert 1e-5 < fp16["max_abs"] < 8 * 2**-11
        assert 1e-4 < int8["max_abs"] < 0.05
    # the fastest *correct* contender is chosen among float32 ones only
    line = next(line for line in result.output.splitlines() if line.startswith("fastest correct at (2,6)"))
    assert "@" not in line


def test_decode_times_a_cached_step_against_recomputing(tmp_path, monkeypatch):
    """The concat step's row at each past length (the static forms' rows and the batch scenario: test_decode_static):
    its speed-up over recomputing, the bytes it must read, what it allocates, against the run's one rate."""
    from attn_onnx.bench import decode

    monkeypatch.setattr(decode, "EVICT_BYTES", 2**16)  # the relations hold at any size; the run is faster
    out = tmp_path / "d.json"
    args = ["decode", *SMALL, "--past-lens", "0,16", "--batch-lens", "", "--rss-steps", "0", "--json", str(out)]
    result = CliRunner().invoke(bench, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert (data["heads"], data["embedding_dim"], data["threads"], data["rounds"]) == (2, 16, 1, 2) and data["cpu"]
    assert data["max_len"] == 17  # the longest past length and its new token
    assert data["batch"] == [] and data["batch_lens"] == [] and data["memory"] == []  # both asked away
    concat = [s for s in data["steps"] if s["form"] == "concat"]
    assert [s["past_len"] for s in concat] == [0, 16]
    weights = 4 * (16 * 16 + 16) * 4  # four Linear(16, 16), float32
    for s in concat:
        assert s["step_ms"] > 0 and s["vs_recompute"] == pytest.approx(s["recompute_ms"] / s["step_ms"])
        assert s["vs_concat"] == 1.0 and s["max_abs"] == 0.0
        # what the step must read: past_key and past_value (1, 2, past, 8) float32, and the weights once (with
        # the graph's few small constants: its shapes and scale)
        beyond_cache = s["read_mib"] * 2**20 - 2 * (2 * s["past_len"] * 8 * 4)
        assert weights <= beyond_cache < weights + 1024
        # the concat step's outputs, new on every call: present_key and present_value of past + 1 rows, output
        assert s["allocated_mib"] * 2**20 == pytest.approx(2 * (2 * (s["past_len"] + 1) * 8 * 4) + 16 * 4)
        rate = data["stream_gib_s"] * 2**30
        assert s["limit_ms"] == pytest.approx(s["read_mib"] * 2**20 / rate * 1e3)  # the run's one rate, the header's
        assert s["of_limit"] == pytest.approx(100 * s["limit_ms"] / s["step_ms"])
    assert data["stream_gib_s"] > 0.1
    assert (
        "one new token through the KV cache" in result.output and "GiB/s measured in the same rounds" in result.output
    )
    assert " batch 1:" in result.output and "memory, each form" not in result.output


def test_timed_runs_before_untimed_ahead_of_every_call():
    """The decode bench evicts the caches before each call (engine.timed's `before`): each call has its own."""
    from attn_onnx.timing.engine import timed

    events = []
    timed(lambda: events.append("call"), 0.0, settle_s=0.0, before=lambda: events.append("before"))
    assert events == ["before", "call", "before", "call"]  # the untimed call, then the one timed call


@pytest.mark.parametrize(
    "args, message",
    [
        (["decode", "--past-lens", "x"], "Error: cannot parse 'x' as a comma-separated list of int"),
        (["decode", "--past-lens", "-1"], "Error: --past-lens '-1': give cache lengths >= 0"),
        (["decode", "--threads", "0"], "Error: Invalid value for '--threads': 0 is not in the range x>=1."),
        (["decode", "--batch-lens", "8,-1"], "Error: --batch-lens '8,-1': give cache lengths >= 0"),
        (
            ["decode", "--past-lens", "16", "--batch-lens", "8,31", "--max-len", "31"],
            "Error: --max-len 31 does not hold the longest cache length 31 and its new token: give at least 32",
        ),
        (["decode", "--max-len", "4"], "Error: Invalid value for '--max-len': 4 is not in the range x>=16."),
        (["decode", "--rss-steps", "-1"], "Error: Invalid value for '--rss-steps': -1 is not in the range x>=0."),
        (["variants", "--memory", "1x"], "Error: --memory item '1x' is not BATCHxLEN"),
        (["variants", "--memory", "1x8,2x8"], "Error: --memory '1x8,2x8': give one BATCHxLEN"),
        (["variants", "--shapes", "4x"], "Error: --shapes item '4x' is not BATCHxLEN"),
        (["variants", "--shapes", "0x8"], "Error: --shapes item '0x8' is not BATCHxLEN"),
        (
            ["variants", "--attention-impl", "torch-export,flash"],
            f"Error: --attention-impl 'flash': choose from {', '.join(VARIANTS)}",
        ),
        (["variants", "--attention-impl", ","], "Error: --attention-impl ',': choose from torch-export"),
        (["variants", "--plot", "b.jpg"], "Error: --plot 'b.jpg' must end in .png"),
        (["variants", "--threads", "0"], "Error: --threads must be >= 1"),
        (["variants", "--heads", "3"], "Error: --embedding-dim 512 is not divisible by --heads 3"),
        (
            ["variants", "--dtypes", "float32,bfloat16"],
            "Error: --dtypes 'bfloat16': choose from float32, float16 "
            "(bfloat16 has no MatMul kernel in onnxruntime's CPU)",
        ),
        (["runtimes", "--heads", "3"], "Error: --embedding-dim 512 is not divisible by --heads 3"),
        (["nope"], "Error: No such command 'nope'."),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_bad_options_are_refused_before_any_work(args, message):
    """Refused in a fresh process before torch or onnxruntime is even imported: nothing was exported or timed."""
    result = run_fresh("bench_attn", args)
    assert (result.code, result.torch, result.onnxruntime) == (2, False, False), result.stderr
    assert result.stderr.startswith(message), result.stderr
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    "command, option",
    [
        ("runtimes", ["--quantize"]),
        ("runtimes", ["--attention-impl", "tiled"]),
        ("decode", ["--shapes", "1x8"]),
        ("serve", ["--rounds", "3"]),
        ("variants", ["--triton-max-queue-delay-us", "100"]),
        ("variants", ["--past-lens", "1"]),
        ("decode", ["--targets", "all"]),
    ],
)
def test_an_option_of_another_subcommand_is_not_taken(command, option):
    result = CliRunner().invoke(bench, [command, *option])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith(f"Error: No such option '{option[0]}'")


def test_bare_bench_attn_prints_its_help_and_names_every_subcommand():
    result = CliRunner().invoke(bench, [])
    assert result.exit_code == 0 and result.output.startswith("Usage: bench-attn [OPTIONS] COMMAND [ARGS]...")
    assert list(bench.commands) == ["variants", "runtimes", "serve", "decode"]
    commands = result.output.split("Commands:\n", 1)[1]
    assert [line.split()[0] for line in commands.splitlines() if line.startswith("  ") and line[2] != " "] == list(
        bench.commands
    )
    version = CliRunner().invoke(bench, ["--version"])
    assert version.exit_code == 0 and version.output.startswith("bench-attn, version ")


def test_each_subcommand_s_default_shapes_are_its_module_s():
    from attn_onnx.bench import bench as variants
    from attn_onnx.bench import decode, runtimes, serve
    from attn_onnx.cli import bench_attn
    from attn_onnx.cli.common import batch_lengths, comma_list

    assert tuple(batch_lengths(bench_attn.VARIANT_SHAPES, "")) == variants.BenchSettings().shapes
    assert tuple(batch_lengths(bench_attn.RUNTIME_SHAPES, "")) == runtimes.SHAPES
    assert tuple(batch_lengths(bench_attn.SERVE_SHAPES, "")) == serve.SHAPES
    assert comma_list(bench_attn.PAST_LENS, int) == decode.PAST_LENS
    assert comma_list(bench_attn.BATCH_LENS, int) == decode.BATCH_LENS
    rss_steps = next(p for p in bench_attn.decode.params if p.name == "rss_steps")
    assert rss_steps.default == decode.RSS_STEPS and f"from {decode.RSS_PAST} cached tokens" in rss_steps.help
