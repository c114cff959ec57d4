"""export-attn as a user meets it: exit codes, one-line errors, weights files, no clobbering."""

import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from attn_onnx.cli.export_attn import main
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
    parity = lines[0]  # checked in memory first; written only once it passed
    assert parity.startswith(
        "parity: onnxruntime/cpu vs PyTorch float64 on 18 cases (b1.q17.kv6, b3.q11.kv5, b3.q9.kv9)"
    )
    assert parity.endswith("PASSED")
    assert lines[1].startswith(f"wrote {out} (4.0 MiB, opset 18, mha, heads 8, mask input)")
    assert "  input  mask       bool     [batch, mask_q_len, kv_len]" in lines
    assert lines[-1] == "  output output     float32  [batch, q_len, 512]"
    assert float(parity.split("max_abs=")[1].split()[0]) < 1e-5


@pytest.mark.parametrize(
    "args, text",
    [
        (["--heads", "7", "--embedding-dim", "512"], "embedding_dim=512 is not divisible by heads=7"),
        (["--module", "foo"], "Invalid value for '--module': 'foo' is not one of 'mha', 'attention', 'mask'."),
        (["--opset", "12"], "Invalid value for '--opset': 12 is not in the range 17<=x<=24."),
        (["--module", "mask", "--attn-probs"], "--attn-probs does not apply to --module mask"),
        (["--module", "attention", "--attn-probs"], "--attn-probs does not apply to --module attention"),
        # options that do not apply are refused, naming them, not silently ignored
        (["--module", "mask", "--heads", "7"], "--heads does not apply to --module mask"),
        (
            ["--module", "mask", "--embedding-dim", "64", "--seed", "3"],
            "--embedding-dim and --seed do not apply to --module mask",
        ),
        (["--module", "attention", "--seed", "3"], "--seed does not apply to --module attention"),
        (
            ["--mask", "causal", "--mask-dtype", "uint8"],
            "--mask-dtype does not apply to --mask causal (the model has no mask input)",
        ),
        (["--weights-prefix", "x."], "--weights-prefix needs --weights"),
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path, args, text):
    out = tmp_path / "m.onnx"
    one_line_error(run(*args, "--out", out), 2, text)
    assert not out.exists()


def test_missing_out_is_a_usage_error():
    result = run("--heads", "8")
    one_line_error(result, 2, "say where to write: --out FILE, --bundle DIR or --triton-repo DIR")


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
    assert result.output.splitlines()[0].endswith("PASSED")
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
    one_line_error(
        wrong,
        1,
        "no key of 'transformer.pt' starts with prefix 'decoder.'; prefixes that hold "
        "attention weights: 'encoder.layers.0.self_attn.', 'encoder.layers.1.self_attn.'",
    )
    # a submodule's path without its trailing dot means the same block
    undotted = run(
        "--weights", weights, "--weights-prefix", "encoder.layers.0.self_attn", *SMALL[:2], "--out", tmp_path / "u.onnx"
    )
    assert undotted.exit_code == 0, undotted.output
    _assert_reproduces(tmp_path / "u.onnx", module)


def test_every_candidate_prefix_is_named_or_counted(tmp_path):
    state = {
        f"decoder.layers.{i}.self_attn.{k}": v
        for i in range(11)
        for k, v in seed_class.MutiHeadedAttention(2, 16).state_dict().items()
    }
    weights = tmp_path / "decoder.safetensors"
    save_file(state, str(weights))
    result = run("--weights", weights, "--weights-prefix", "encoder", *SMALL[:2], "--out", tmp_path / "m.onnx")
    assert result.exit_code == 1
    named = sorted(f"'decoder.layers.{i}.self_attn.'" for i in range(11))[:8]
    assert result.output.strip() == (
        "Error: no key of 'decoder.safetensors' starts with prefix 'encoder.'; "
        f"prefixes that hold attention weights: {', '.join(named)} and 3 more"
    )


class Exploit:
    def __reduce__(self):
        return (print, ("this ran at load time",))


def test_a_pickle_that_runs_code_is_refused(tmp_path, capsys):
    weights = tmp_path / "evil.pt"
    torch.save({"linears.0.weight": Exploit()}, weights)
    result = run("--weights", weights, *SMALL, "--out", tmp_path / "m.onnx")
    assert result.exit_code == 1
    assert result.output.startswith(
        "Error: 'evil.pt' is a pickle that refers to print (not plain tensors); it "
        "was refused because unpickling it could run code. Save a state_dict instead"
    )
    assert "this ran at load time" not in result.output + capsys.readouterr().out
    assert not (tmp_path / "m.onnx").exists()


def test_a_pickled_whole_module_says_what_to_save_instead(tmp_path):
    from attn_onnx.models import MultiHeadedAttention

    weights = tmp_path / "whole.pt"
    torch.save(MultiHeadedAttention(2, 16), weights)
    one_line_error(
        run("--weights", weights, *SMALL, "--out", tmp_path / "m.onnx"),
        1,
        "'whole.pt' is a pickle that refers to attn_onnx.models.attention.MultiHeadedAttention (not "
        "plain tensors); it was refused because unpickling it could run code. Save a state_dict instead "
        "(torch.save(model.state_dict(), path)), or use safetensors",
    )


@pytest.mark.parametrize(
    "content, what",
    [(b"hello, this is text\n", "text"), (b"", "an empty file"), (b"\x00\x01\x02\x03binary", "other data")],
)
def test_a_file_posing_as_pt_is_named_for_what_it_is(tmp_path, content, what):
    weights = tmp_path / "t.pt"
    weights.write_bytes(content)
    one_line_error(
        run("--weights", weights, *SMALL, "--out", tmp_path / "m.onnx"),
        1,
        f"'t.pt' is not a PyTorch checkpoint (it holds {what}, not the zip archive torch.save writes)",
    )


def test_weights_of_another_width_name_the_shapes(tmp_path):
    weights = tmp_path / "w.safetensors"
    save_file(seed_class.MutiHeadedAttention(2, 16).state_dict(), str(weights))
    result = run("--weights", weights, "--heads", "2", "--embedding-dim", "32", "--out", tmp_path / "m.onnx")
    assert result.exit_code == 1
    assert result.output.startswith(
        "Error: weights from the given state_dict have other shapes than the "
        "module (file != module): linears.0.weight: (16, 16) != (32, 32)"
    )


def test_a_corrupt_weights_file_is_one_line(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"\x00" * 20)
    result = run("--weights", weights, *SMALL, "--out", tmp_path / "m.onnx")
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert result.output.startswith("Error: cannot read safetensors file 'w.safetensors'")


def test_every_option_has_help():
    import click

    options = [p for p in main.params if isinstance(p, click.Option) and p.name not in ("version", "help")]
    assert len(options) == 34
    for param in options:
        assert param.help, param.name


def test_help_names_only_module_choices_and_says_how_to_reach_the_other_kinds():
    """--help used to list mha-cache and mha-self under --module, whose choices are mha|attention|mask."""
    import click

    module = next(p for p in main.params if p.name == "module")
    assert list(module.type.choices) == ["mha", "attention", "mask"]
    assert all(f"{name}: " in module.help for name in module.type.choices)
    assert "mha-cache:" not in module.help and "mha-self:" not in module.help  # not values of --module
    assert "--kv-cache (mha-cache in the metadata)" in module.help
    assert "--self-attention (mha-self in the metadata)" in module.help
    for param in main.params:  # [mha, attention, --kv-cache]: each a --module value or a flag that exists
        if isinstance(param, click.Option) and param.help and param.help.startswith("[mha"):
            marks = param.help[1 : param.help.index("]")].split(", ")
            flags = {opt for p in main.params for opt in getattr(p, "opts", ())}
            assert all(m in module.type.choices or m in flags for m in marks), (param.name, marks)


def test_help_does_not_import_torch():
    code = (
        "import sys\nfrom attn_onnx.cli.export_attn import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "False"
    assert "--embedding-dim, --d-model" in result.stdout


def test_out_in_a_missing_folder_is_a_usage_error(tmp_path):
    one_line_error(
        run(*SMALL, "--out", tmp_path / "nope" / "m.onnx"), 2, f"--out: the folder '{tmp_path / 'nope'}' does not exist"
    )


def _no_export(monkeypatch):
    """Make any export an error: a refusal must come before the work."""
    import attn_onnx.exporter.export as export

    def refuse(*args, **kwargs):
        raise AssertionError("exported although the output path was bad")

    monkeypatch.setattr(export, "export_onnx", refuse)


def test_out_under_a_file_is_refused_before_exporting(tmp_path, monkeypatch):
    _no_export(monkeypatch)
    (tmp_path / "afile").write_text("")
    one_line_error(
        run(*SMALL, "--out", tmp_path / "afile" / "m.onnx"), 2, f"--out: '{tmp_path / 'afile'}' is a file, not a folder"
    )
    one_line_error(
        run(*SMALL, "--out", tmp_path / "afile" / "deeper" / "m.onnx"),
        2,
        f"--out: '{tmp_path / 'afile'}' is a file, not a folder",
    )
    one_line_error(run(*SMALL, "--out", tmp_path), 2, f"--out '{tmp_path}' is a folder; give a file name")


@pytest.fixture
def unwritable_folder(tmp_path):
    """A folder this process cannot create files in: by permission bits, or (as root) a read-only mount."""
    import os

    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir(mode=0o500)
        return folder
    probe = __import__("pathlib").Path("/sys")
    try:
        __import__("tempfile").TemporaryFile(dir=probe).close()
    except OSError:
        return probe
    pytest.skip("running as root with no read-only folder to write into")


def test_out_in_an_unwritable_folder_is_refused_before_exporting(unwritable_folder, monkeypatch):
    _no_export(monkeypatch)
    result = run(*SMALL, "--out", unwritable_folder / "m.onnx")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: --out: cannot write to the folder '{unwritable_folder}' (")
    assert "unexpected" not in lines[0] and ".tmp" not in lines[0]


def test_ctrl_c_during_the_check_exits_130_and_writes_nothing(tmp_path, monkeypatch):
    import attn_onnx.runtime_check.check as check

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(check, "check_model", interrupted)
    out = tmp_path / "m.onnx"
    one_line_error(run(*SMALL, "--out", out), 130, f"interrupted; nothing was written to {out}")
    assert list(tmp_path.iterdir()) == []


def test_a_model_that_fails_the_check_is_not_written(tmp_path, monkeypatch):
    import importlib

    impl = importlib.import_module("attn_onnx.models.attention")  # the module, not the function
    monkeypatch.setattr(impl, "mask_fill", lambda dtype: float("-inf"))  # NaN on every fully-masked row
    out = tmp_path / "m.onnx"
    result = run(*SMALL, "--out", out)
    assert result.exit_code == 1
    assert result.output.splitlines()[0].endswith(": FAILED")
    assert any("| b3.q11.kv5.zeros |" in line and "NaN/Inf values" in line for line in result.output.splitlines())
    assert result.output.strip().splitlines()[-1].startswith("Error: the exported model fails the parity check (")
    assert f"nothing was written to {out}" in result.output
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_write_leaves_neither_file_nor_temp(tmp_path, monkeypatch):
    import os

    from attn_onnx.files import write_atomic

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


@pytest.mark.parametrize("form", ["--bundle", "--triton-repo"])
@pytest.mark.parametrize("name", ["café", "ｍｈａ", "-mha", ".mha", "m/ha"])
def test_a_name_outside_the_manifest_schemas_pattern_is_refused_before_any_work(tmp_path, form, name):
    """The bundle's schema takes ^[A-Za-z0-9][A-Za-z0-9._-]*$: str.isalnum() let 'café' through, and export-attn
    then wrote a bundle its own schema refused. Nothing is written."""
    result = CliRunner().invoke(main, [form, str(tmp_path / "out"), "--name", name])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"Error: --name {name!r}") and len(result.output.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def tree(folder):
    """Every file and folder under `folder`, with each file's bytes: what "left as it was" is checked against."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


@pytest.fixture
def no_export(monkeypatch):
    """export_onnx's calls: a refusal before any work never reaches it (a reached export fails the test)."""
    import attn_onnx.exporter.export as export_module

    calls = []

    def refused(*args, **kwargs):
        calls.append(args)
        raise AssertionError("the export ran")

    monkeypatch.setattr(export_module, "export_onnx", refused)
    return calls


@pytest.mark.parametrize("force", [[], ["--force"]], ids=["", "force"])
@pytest.mark.parametrize(
    "forms, text",
    [
        (["--out", "P", "--bundle", "P"], "--out 'P' and --bundle 'P' are the same path"),
        (["--out", "b/model.onnx", "--bundle", "b"], "--out 'b/model.onnx' lies inside --bundle 'b'"),
        (["--bundle", "b", "--out", "b/sub/model.onnx"], "--out 'b/sub/model.onnx' lies inside --bundle 'b'"),
        (
            ["--out", "x.onnx", "--bundle", "x.onnx.data"],
            "the data file of --out, 'x.onnx.data' and --bundle 'x.onnx.data' are the same path",
        ),
        (["--bundle", "r/mha", "--triton-repo", "r"], "--bundle 'r/mha' and --triton-repo 'r/mha' are the same path"),
        (
            ["--out", "r/mha/1/model.onnx", "--triton-repo", "r"],
            "--out 'r/mha/1/model.onnx' lies inside --triton-repo 'r/mha'",
        ),
    ],
    ids=["same", "inside", "deeper", "data-file", "bundle-in-repo", "out-in-repo"],
)
def test_forms_that_collide_are_refused_before_any_work(tmp_path, monkeypatch, no_export, forms, text, force):
    """Two forms at one path (or one inside another, or at another's data file) were written one after the
    other: the first stayed when the second was refused, and with --force the second replaced the first."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "b" / "sub").mkdir(parents=True)  # earlier outputs, and folders the paths need
    (tmp_path / "b" / "model.onnx").write_bytes(b"an earlier bundle's model")
    (tmp_path / "r" / "mha" / "1").mkdir(parents=True)
    (tmp_path / "r" / "mha" / "1" / "model.onnx").write_bytes(b"an earlier Triton model")
    before = tree(tmp_path)
    one_line_error(run(*SMALL, *forms, *force), 2, f"{text}; give each form a path of its own")
    assert no_export == []
    assert tree(tmp_path) == before  # nothing written, nothing replaced, byte for byte


@pytest.mark.parametrize("external", [[], ["--external-data"]], ids=["", "external-data"])
def test_a_stray_data_file_is_refused_before_the_export(tmp_path, no_export, external):
    """m.onnx.data is --out m.onnx's pair: without --force an existing one was found only after the export and
    its check (or never, and a model was written beside weights that are not its own)."""
    import time

    out = tmp_path / "m.onnx"
    (tmp_path / "m.onnx.data").write_bytes(b"someone's weights")
    started = time.monotonic()
    one_line_error(
        run(*SMALL, *external, "--out", out),
        2,
        f"'{out}.data' exists (the data file of --out '{out}'); pass --force to overwrite it",
    )
    assert time.monotonic() - started < 5  # refused at once, not after an export and its check
    assert no_export == []
    assert tree(tmp_path) == {"m.onnx.data": b"someone's weights"}


def test_force_over_a_stray_data_file_writes_the_model_and_removes_it(tmp_path):
    out = tmp_path / "m.onnx"
    (tmp_path / "m.onnx.data").write_bytes(b"someone's weights")
    assert run(*SMALL, "--out", out, "--force", "--no-check").exit_code == 0
    assert sorted(tree(tmp_path)) == ["m.onnx"]  # the weights are inside it; no stale pair, no temp
