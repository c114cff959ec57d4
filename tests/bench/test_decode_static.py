"""bench-attn decode's static cache (issue 29): at batch 1 every form beside the concat step on the same cache and
token, the batch scenario (the static forms in one call against concat padded and concat per sequence) and the
memory over decoding steps. Consistent data only: the bytes each must read, what it allocates, the ratios between
its figures, the outputs' agreement; never a timing threshold."""

import json

import pytest
from click.testing import CliRunner

from attn_onnx.bench import decode
from attn_onnx.cli.bench_attn import main as bench

HEADS, WIDTH, D_K = 2, 16, 8
PAST_LENS, BATCH_LENS, RSS_STEPS = (0, 16), (3, 7, 16), 20
STATIC = ["static ort-gqa", "static onnx-attention"]
WEIGHTS = 4 * (WIDTH * WIDTH + WIDTH) * 4  # four Linear(16, 16), float32


def kv_bytes(*lengths: int) -> int:
    """Keys and values of (1, HEADS, length, D_K) float32 per sequence."""
    return 2 * HEADS * D_K * 4 * sum(lengths)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("decode") / "d.json"
    args = [
        "decode",
        *("--heads", str(HEADS), "--embedding-dim", str(WIDTH), "--rounds", "2", "--threads", "1"),
        *("--past-lens", ",".join(map(str, PAST_LENS)), "--batch-lens", ",".join(map(str, BATCH_LENS))),
        *("--rss-steps", str(RSS_STEPS), "--json", str(out)),
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(decode, "EVICT_BYTES", 2**16)  # the relations hold at any size; the run is faster
        result = CliRunner().invoke(bench, args)
    assert result.exit_code == 0, result.output
    return result.output, json.loads(out.read_text())


def test_every_form_is_timed_at_every_past_length_on_one_capacity(run):
    _, data = run
    assert data["max_len"] == max(*PAST_LENS, *BATCH_LENS) + 1
    assert [(s["past_len"], s["form"]) for s in data["steps"]] == [
        (past, form) for past in PAST_LENS for form in ["concat", *STATIC]
    ]
    for s in data["steps"]:
        assert s["step_ms"] > 0
        assert (s["recompute_ms"] is None) == (s["form"] != "concat")  # the recompute is the concat row's


def test_each_static_step_reads_its_valid_cache_and_weights_and_allocates_only_its_output(run):
    _, data = run
    rate = data["stream_gib_s"] * 2**30
    for s in data["steps"]:
        beyond_cache = s["read_mib"] * 2**20 - kv_bytes(s["past_len"])  # the valid part, not the max_len buffer
        assert WEIGHTS <= beyond_cache < WEIGHTS + 1024  # the weights and the graph's few small constants
        assert s["limit_ms"] == pytest.approx(s["read_mib"] * 2**20 / rate * 1e3)
        assert s["of_limit"] == pytest.approx(100 * s["limit_ms"] / s["step_ms"])
        presents = kv_bytes(s["past_len"] + 1) if s["form"] == "concat" else 0  # in place: the bound buffers
        assert s["allocated_mib"] * 2**20 == pytest.approx(presents + WIDTH * 4)


def test_the_speed_up_is_over_the_concat_step_on_the_same_cache_and_token(run):
    _, data = run
    for past in PAST_LENS:
        rows = {s["form"]: s for s in data["steps"] if s["past_len"] == past}
        concat = rows["concat"]
        assert concat["vs_recompute"] == pytest.approx(concat["recompute_ms"] / concat["step_ms"])
        for form in STATIC:
            assert rows[form]["vs_concat"] == pytest.approx(concat["step_ms"] / rows[form]["step_ms"])
            assert rows[form]["vs_recompute"] is None
            assert rows[form]["max_abs"] < 1e-5  # the same answer: the comparison is fair


def test_the_batch_scenario_sets_the_static_call_against_concat_padded_and_per_sequence(run):
    _, data = run
    assert data["batch_lens"] == list(BATCH_LENS)
    rows = {b["form"]: b for b in data["batch"]}
    assert list(rows) == ["concat padded", "concat per sequence", *STATIC]
    batch, longest = len(BATCH_LENS), max(BATCH_LENS)
    mask = batch * (longest + 1)  # bool (batch, 1, longest + 1)
    padded, per_sequence = rows["concat padded"], rows["concat per sequence"]
    # what each must read: padded, every cache at the longest length (its padding too) and the mask; per
    # sequence, the valid caches and the weights once a call; static, the valid caches and the weights once
    assert WEIGHTS <= padded["read_mib"] * 2**20 - kv_bytes(*[longest] * batch) - mask < WEIGHTS + 1024
    assert batch * WEIGHTS <= per_sequence["read_mib"] * 2**20 - kv_bytes(*BATCH_LENS) < batch * (WEIGHTS + 1024)
    for form in STATIC:
        assert WEIGHTS <= rows[form]["read_mib"] * 2**20 - kv_bytes(*BATCH_LENS) < WEIGHTS + 1024
    # what their outputs hold, new on every call
    assert padded["allocated_mib"] * 2**20 == pytest.approx(kv_bytes(*[longest + 1] * batch) + batch * WIDTH * 4)
    assert per_sequence["allocated_mib"] * 2**20 == pytest.approx(
        kv_bytes(*[n + 1 for n in BATCH_LENS]) + batch * WIDTH * 4
    )
    rate = data["stream_gib_s"] * 2**30
    for b in rows.values():
        assert b["allocated_mib"] * 2**20 >= batch * WIDTH * 4
        if b["form"] in STATIC:
            assert b["allocated_mib"] * 2**20 == batch * WIDTH * 4
        assert b["vs_padded"] == pytest.approx(padded["step_ms"] / b["step_ms"])
        assert b["vs_per_sequence"] == pytest.approx(per_sequence["step_ms"] / b["step_ms"])
        assert b["limit_ms"] == pytest.approx(b["read_mib"] * 2**20 / rate * 1e3)
        assert b["of_limit"] == pytest.approx(100 * b["limit_ms"] / b["step_ms"])
        assert b["max_abs"] < 1e-5  # every form gives each sequence the answer at its own length


def test_the_static_cache_allocates_no_cache_and_its_rss_stays_flat(run):
    _, data = run
    rows = {m["form"]: m for m in data["memory"]}
    assert list(rows) == ["concat", *STATIC]
    presents = kv_bytes(decode.RSS_PAST + 1)
    for m in rows.values():
        assert (m["past_len"], m["steps"]) == (decode.RSS_PAST, RSS_STEPS)
        assert m["rss_growth_mib"] == pytest.approx(m["rss_after_mib"] - m["rss_before_mib"])
        assert m["rss_before_mib"] > 0
    assert rows["concat"]["outputs_mib"] * 2**20 == pytest.approx(presents + WIDTH * 4)
    # measured: the concat step maps its two new presents every call; in place, no cache-sized buffer at all
    assert rows["concat"]["fresh_mib"] * 2**20 >= presents
    for form in STATIC:
        assert rows[form]["outputs_mib"] * 2**20 == WIDTH * 4
        assert rows[form]["fresh_mib"] * 2**20 < presents / 8
        assert abs(rows[form]["rss_growth_mib"]) < 1


def test_the_table_has_a_block_per_scenario(run):
    output, _ = run
    assert " batch 1:" in output and f" batch {len(BATCH_LENS)}, one new token each" in output
    assert "memory, each form in a fresh process" in output and f"--max-len {max(BATCH_LENS) + 1}" in output
    for form in ["concat padded", "concat per sequence", *STATIC]:
        assert f"  {form} " in output


def test_the_static_cache_example_in_the_docs_runs_as_written(tmp_path, monkeypatch, capsys):
    """docs/decoding.md's StaticCache example, on the model its export command writes (a smaller --max-len)."""
    import re
    from pathlib import Path

    from attn_onnx.cli.export_attn import main as export_attn

    page = (Path(__file__).resolve().parents[2] / "docs" / "decoding.md").read_text()
    section = page.split("## The static cache from Python", 1)[1]
    command = re.search(r"\n    (export-attn --kv-cache --max-len .*)\n", section)[1]
    args = command.split()[1:]
    args[args.index("--max-len") + 1] = "64"  # the example's steps fit; 8 slots of 4096 would be 256 MiB
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(export_attn, args)
    assert result.exit_code == 0, result.output
    exec(re.search(r"```python\n(.*?)```", section, re.S)[1], {})
    printed = capsys.readouterr().out.splitlines()
    assert printed == ["(8, 1, 512) [1 1 1 6 1 1 1 1]", "(8, 0, 64) (8, 1, 64)"]
