"""export-attn as a user meets it: exit codes, one-line errors, weights files, no clobbering."""

import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from exporter.cli import main
from tests import seed_class

SMALL = ["--heads", "2", "--embedding-dim", "16"]


def run(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def one_line_error(result, code, text):
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert lines == [f"Error: {text}"], result.output


def test_default_export_writes_checks_and_summarises(tmp_path):
    out = tmp_path / "mha.onnx"
    result = run("--out", out)
    assert result.exit_code == 0, result.output
    assert out.is_file()
    lines = result.output.splitlines()
    assert lines[0].startswith(f"wrote {out} (4.0 MiB, opset 18, mha, heads 8, mask input)")
    assert "  input  mask       bool     [batch, mask_q_len, kv_len]" in lines
    assert "  output output     float32  [batch, q_len, 512]" in lines
    parity = lines[-1]
    assert parity.startswith("parity: onnxruntime/cpu vs PyTorch float64 on 8 cases (b1.q17.kv6, b3.q11.kv5)")
    assert parity.endswith("PASSED")
    assert float(parity.split("max_abs=")[1].split()[0]) < 1e-5


@pytest.mark.parametrize("args, text", [
    (["--heads", "7", "--embedding-dim", "512"], "embedding_dim=512 is not divisible by heads=7"),
    (["--module", "foo"], "Invalid value for '--module': 'foo' is not one of 'mha', 'attention', 'mask'."),
    (["--opset", "12"], "Invalid value for '--opset': 12 is not in the range 17<=x<=23."),
    (["--module", "mask", "--attn-probs"], "--attn-probs applies to --module mha (attention always outputs "
                                           "attn_probs)"),
    (["--weights-prefix", "x."], "--weights-prefix needs --weights"),
])
def test_usage_errors_exit_2_with_one_line(tmp_path, args, text):
    out = tmp_path / "m.onnx"
    one_line_error(run(*args, "--out", out), 2, text)
    assert not out.exists()


def test_missing_out_is_a_usage_error():
    result = run("--heads", "8")
    one_line_error(result, 2, "Missing option '--out'.")


def test_existing_out_is_refused_and_left_byte_identical(tmp_path):
    out = tmp_path / "mha.onnx"
    out.write_bytes(b"precious")
    one_line_error(run(*SMALL, "--out", out), 2, f"'{out}' exists; pass --force to overwrite it")
    assert out.read_bytes() == b"precious"
    assert run(*SMALL, "--out", out, "--force", "--no-check").exit_code == 0
    assert out.read_bytes() != b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mha.onnx"]  # no temp file left behind


def _seed_checkpoint():
    torch.manual_seed(11)
    return seed_class.MutiHeadedAttention(2, 16, dropout=0.2).eval()


def _assert_reproduces(path, module):
    gen = torch.Generator().manual_seed(5)
    q, kv = torch.randn(3, 11, 16, generator=gen), torch.randn(3, 5, 16, generator=gen)
    mask = torch.ones(3, 1, 5, dtype=torch.bool)
    mask[2, 0, 2:] = False
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"query": q.numpy(), "key": kv.numpy(), "value": kv.numpy(), "mask": mask.numpy()})
    with torch.no_grad():
        expected = module.double()(q.double(), kv.double(), kv.double(), mask)
    np.testing.assert_allclose(out, expected.numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_seed_checkpoint_loads_with_weights(tmp_path, fmt):
    module = _seed_checkpoint()
    weights = tmp_path / f"seed.{fmt}"
    if fmt == "pt":
        torch.save(module.state_dict(), weights)
    else:
        save_file(module.state_dict(), str(weights))
    out = tmp_path / "m.onnx"
    result = run("--weights", weights, "--heads", "2", "--out", out)  # width inferred from the weights
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.output.splitlines()[-1]
    _assert_reproduces(out, module)


def test_weights_prefix_takes_the_block_out_of_a_larger_checkpoint(tmp_path):
    module = _seed_checkpoint()
    other = seed_class.MutiHeadedAttention(2, 16)
    state = {f"encoder.layers.0.self_attn.{k}": v for k, v in module.state_dict().items()}
    state |= {f"encoder.layers.1.self_attn.{k}": v for k, v in other.state_dict().items()}
    state["encoder.norm.weight"] = torch.ones(16)
    weights = tmp_path / "transformer.pt"
    torch.save({"model": state, "epoch": 3}, weights)
    out = tmp_path / "m.onnx"
    result = run("--weights", weights, "--weights-prefix", "encoder.layers.0.self_attn.", *SMALL, "--out", out)
    assert result.exit_code == 0, result.output
    _assert_reproduces(out, module)
    wrong = run("--weights", weights, "--weights-prefix", "decoder.", *SMALL, "--out", tmp_path / "w.onnx")
    one_line_error(wrong, 1, "no key of 'transformer.pt' starts with prefix 'decoder.'; prefixes that hold "
                             "attention weights: ['encoder.layers.0.self_attn.', 'encoder.layers.1.self_attn.']")


class Exploit:
    def __reduce__(self):
        return (print, ("this ran at load time",))


def test_a_pickle_that_runs_code_is_refused(tmp_path, capsys):
    weights = tmp_path / "evil.pt"
    torch.save({"linears.0.weight": Exploit()}, weights)
    result = run("--weights", weights, *SMALL, "--out", tmp_path / "m.onnx")
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot load 'evil.pt' with torch.load(weights_only=True)")
    assert "this ran at load time" not in result.output + capsys.readouterr().out
    assert not (tmp_path / "m.onnx").exists()


def test_weights_of_another_width_name_the_shapes(tmp_path):
    weights = tmp_path / "w.safetensors"
    save_file(seed_class.MutiHeadedAttention(2, 16).state_dict(), str(weights))
    result = run("--weights", weights, "--heads", "2", "--embedding-dim", "32", "--out", tmp_path / "m.onnx")
    assert result.exit_code == 1
    assert result.output.startswith("Error: weights from the given state_dict have other shapes than the "
                                    "module (file != module): linears.0.weight: (16, 16) != (32, 32)")


def test_a_corrupt_weights_file_is_one_line(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"\x00" * 20)
    result = run("--weights", weights, *SMALL, "--out", tmp_path / "m.onnx")
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert result.output.startswith("Error: cannot read safetensors file 'w.safetensors'")


def test_every_option_has_help():
    import click

    options = [p for p in main.params if isinstance(p, click.Option) and p.name not in ("version", "help")]
    assert len(options) == 13
    for param in options:
        assert param.help, param.name


def test_help_does_not_import_torch():
    code = ("import sys\nfrom exporter.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "False"
    assert "--embedding-dim, --d-model" in result.stdout


def test_out_in_a_missing_folder_is_a_usage_error(tmp_path):
    one_line_error(run(*SMALL, "--out", tmp_path / "nope" / "m.onnx"), 2,
                   f"the folder of --out '{tmp_path / 'nope'}' does not exist")


def test_an_interrupted_write_leaves_neither_file_nor_temp(tmp_path, monkeypatch):
    import os

    from exporter.export import write_atomic

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(tmp_path / "m.onnx", b"model bytes", force=False)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_export_writes_nothing(tmp_path, monkeypatch):
    import onnx

    def reject(*args, **kwargs):
        raise onnx.checker.ValidationError("bad graph")

    monkeypatch.setattr(onnx.checker, "check_model", reject)
    out = tmp_path / "m.onnx"
    one_line_error(run(*SMALL, "--out", out), 1, "onnx.checker rejected the exported model: bad graph")
    assert list(tmp_path.iterdir()) == []
