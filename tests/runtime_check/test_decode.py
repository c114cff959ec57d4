"""export-attn --kv-cache and the decode check: a sequence fed through the cache in any chunking equals the
float64 seed module on the whole sequence with subsequent_mask."""

import copy

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

import attn_onnx.models.graphs as graphs
from attn_onnx.cli.check_attn import main as check
from attn_onnx.cli.export_attn import main as export
from attn_onnx.models import MhaCacheGraph
from attn_onnx.runtime_check.check import CheckConfig, check_model
from attn_onnx.runtime_check.compare import FLOAT32
from attn_onnx.runtime_check.decode import SEQUENCE, chunkings, decode_results, whole_sequence_golden

CACHE = {"module": "mha-cache", "mask": "causal", "causal_align": "bottom-right", "heads": 4, "embedding_dim": 32}
MASKED = {"module": "mha-cache", "mask": "input", "heads": 4, "embedding_dim": 32}  # bool mask input


def test_chunkings_cover_the_sequence():
    for name, chunks in chunkings(11).items():
        assert sum(chunks) == 11 and all(c >= 1 for c in chunks), name
    assert [1] * 6 == chunkings(11)["decode.prefill5+6x1"][1:]


def test_the_cached_export_names_its_dims_and_says_what_it_is(exported):
    path, spec, _ = exported(**CACHE)
    proto = onnx.load(path)
    dims = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*proto.graph.input, *proto.graph.output]
    }
    assert dims["past_key"] == ["batch", 4, "past_len", 8] and dims["present_value"] == ["batch", 4, "total_len", 8]
    assert dims["query"] == ["batch", "q_len", 32] and dims["output"] == ["batch", "q_len", 32]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["attn_onnx.module"] == "mha-cache" and meta["attn_onnx.causal_align"] == "bottom-right"


@pytest.mark.parametrize("runtimes", [("onnxruntime",), ("reference",)])
@pytest.mark.parametrize(
    "fields", [CACHE, MASKED, {**MASKED, "mask_dtype": "float32"}], ids=["causal", "mask-bool", "mask-float32"]
)
def test_every_chunking_equals_the_whole_sequence(exported, runtimes, fields):
    path, spec, module = exported(**fields)
    report = check_model(path, CheckConfig(runtimes=runtimes), module=module)
    assert report.ok, [r.line() for r in report.failed]
    decoded = [r for r in report.results if r.case.startswith("decode.")]
    names = {r.case.split(" (")[0] for r in decoded}
    assert names == set(chunkings(SEQUENCE[1]))  # prefill from empty, steps, irregular
    if fields["mask"] == "input":  # example 1's 3 left-padding tokens have no key to attend
        assert all(r.case.endswith("(3 rows with no key left out)") for r in decoded)
    for result in decoded:
        assert {c.output for c in result.comparisons} == {"output", "present_key", "present_value"}
        assert all(c.max_abs < FLOAT32.atol for c in result.comparisons)


class TopLeft:
    """A cache step whose causal mask is top-left aligned: right for the whole sequence, wrong for steps."""

    name = "top-left"

    def __init__(self, module, monkeypatch):
        real = graphs.causal_mask
        monkeypatch.setattr(graphs, "causal_mask", lambda q, k, align="top-left": real(q, k, "top-left"))
        self.graph = MhaCacheGraph(copy.deepcopy(module)).double()  # .double() is in place: not the shared one

    def run(self, feeds):
        with torch.no_grad():
            out = self.graph(
                *(torch.from_numpy(feeds[n]).double() for n in ("query", "key", "value", "past_key", "past_value"))
            )
        return {n: t.float().numpy() for n, t in zip(("output", "present_key", "present_value"), out)}


def test_a_top_left_aligned_cache_fails_every_chunking_but_the_whole(exported, monkeypatch):
    """The trap the alignment guards: token i of a step must sit at past_len + i, not at i."""
    _, spec, module = exported(**CACHE)
    results = {r.case: r for r in decode_results([TopLeft(module, monkeypatch)], module, spec, {"top-left": FLOAT32})}
    assert results[f"decode.whole{SEQUENCE[1]}"].passed  # one chunk from an empty cache: the alignments agree
    assert not any(r.passed for name, r in results.items() if not name.startswith("decode.whole"))


def test_the_golden_is_the_seed_module_on_the_whole_sequence(exported):
    _, _, module = exported(**CACHE)
    x = np.random.default_rng(0).standard_normal((1, 5, 32), dtype=np.float32)
    output, keys, _ = whole_sequence_golden(module, x)
    with torch.no_grad():
        t = torch.from_numpy(x)
        seed = module(t, t, t, torch.tril(torch.ones(1, 5, 5))).numpy()
    np.testing.assert_allclose(output, seed, atol=1e-5)
    assert keys.shape == (1, 4, 5, 8)


def test_check_attn_prints_the_decode_lines(exported):
    path, _, _ = exported(**CACHE)
    result = CliRunner().invoke(check, [str(path), "--runtimes", "onnxruntime", "--quick"])
    assert result.exit_code == 0, result.output
    assert "PASSED | onnxruntime/cpu | decode.prefill5+6x1 |" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mask", "none"], "Error: --kv-cache takes --mask causal, built in and bottom-right aligned"),
        (["--causal-align", "top-left"], "Error: --kv-cache takes --mask causal, built in and bottom-right aligned"),
        (
            ["--attention-impl", "ort-mha"],
            "Error: --attention-impl ort-mha builds --module mha (also with --self-attention), not mha-cache",
        ),
        (["--module", "attention"], "Error: --kv-cache applies to --module mha, not attention"),
        (["--attn-probs"], "Error: --attn-probs does not apply to --module mha-cache"),
    ],
)
def test_what_a_cached_export_cannot_do_is_refused(tmp_path, args, message):
    result = CliRunner().invoke(export, ["--kv-cache", *args, "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2 and result.output.strip().startswith(message), result.output


def test_a_row_with_no_key_attends_over_the_keys_present_so_far(exported):
    """The semantic point of a cache: a padding token's own query (no allowed key) attends uniformly, as the
    seed does, but only over the keys in the cache at its step, not over the whole sequence."""
    import onnxruntime as ort

    from attn_onnx.runtime_check.decode import sequence_mask

    path, spec, module = exported(**MASKED)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((2, 4, 32), dtype=np.float32)
    mask = sequence_mask(2, 4).astype(bool)  # example 1: keys 0..2 are padding
    empty = np.zeros((2, 4, 0, 8), np.float32)
    step0 = session.run(
        None,
        {
            "query": x[:, :1],
            "key": x[:, :1],
            "value": x[:, :1],
            "past_key": empty,
            "past_value": empty,
            "mask": mask[:, :1, :1],
        },
    )[0]
    whole, _, _ = whole_sequence_golden(module, x, mask.astype(np.uint8))
    with torch.no_grad():  # uniform over the one key present: the output projection of token 0's value
        only = module.linears[3](module.linears[2](torch.from_numpy(x[1:2, :1]))).numpy()
    np.testing.assert_allclose(step0[1:2], only, atol=1e-5)
    assert np.abs(step0[1, 0] - whole[1, 0]).max() > 1e-3  # the whole sequence spreads it over all 4 keys
