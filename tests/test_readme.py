"""The README and docs/ are true: their examples run as written, the set-up is what CI runs, the option tables
name every option, every page the README links exists, and nothing points outside the repository."""

import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = {path.name: path.read_text() for path in (ROOT / "docs").glob("*.md")}


def python_block(after_heading: str, page: str = "README.md") -> str:
    text = README if page == "README.md" else DOCS[page]
    section = text.split(after_heading, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S)[1]


def test_nothing_outside_the_repository():
    assert "../" not in README and "shared/" not in README
    for name, text in DOCS.items():  # a page may link up into the repository (../examples/...), never out of it
        assert "shared/" not in text, name
        for link in re.findall(r"\]\((\.\./[^)#]+)", text):
            assert (ROOT / "docs" / link).resolve().is_relative_to(ROOT) and (ROOT / "docs" / link).exists(), link


def test_the_readme_is_short_and_every_page_it_links_exists():
    assert len(README.splitlines()) <= 200
    for link in re.findall(r"\]\((docs/[^)#]+)", README):
        assert (ROOT / link).is_file(), link
    assert set(re.findall(r"\]\(docs/([^)#]+)\)", README)) >= set(DOCS)  # every page is linked
    for name, text in DOCS.items():
        for link in re.findall(r"\]\(([a-z-]+\.md)", text):
            assert link in DOCS, (name, link)


def test_the_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line.strip() for line in README.splitlines() if "pytest -m ''" in line and "setup" in line)
    steps = [step.strip() for step in command.split("&&")]
    assert steps == ["scripts/setup-tests.sh", ".venv/bin/python -m pytest -m ''"]
    for step in steps:
        assert step in ci.splitlines(), step  # each a line of its own there


@pytest.mark.parametrize("command, page", [("export_attn", "export.md"), ("check_attn", "check.md")])
def test_every_option_is_in_its_page(command, page):
    import importlib

    import click

    main = importlib.import_module(f"attn_onnx.cli.{command}").main
    for param in main.params:
        if isinstance(param, click.Option) and param.name not in ("help", "version"):
            assert f"`{max(param.opts, key=len)}" in DOCS[page], param.opts


EXPORTS = {
    "bool": dict(),
    "uint8": dict(mask_dtype="uint8"),
    "int64": dict(mask_dtype="int64"),
    "float32": dict(mask_dtype="float32"),
    "attn-probs": dict(attn_probs=True),
    "causal": dict(mask="causal"),
    "uint8-attn-probs": dict(mask_dtype="uint8", attn_probs=True),
}


@pytest.mark.parametrize("fields", EXPORTS.values(), ids=EXPORTS)
def test_the_onnxruntime_example_runs_as_written(exported, fields, tmp_path, monkeypatch, capsys):
    path, spec, _ = exported(**fields)
    shutil.copy(path, tmp_path / "mha.onnx")
    monkeypatch.chdir(tmp_path)
    exec(python_block("## Running the exported model in onnxruntime", "export.md"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "(3, 11, 512)"
    assert printed[1:] == (["(3, 8, 11, 5)"] if spec.attn_probs else [])


@pytest.mark.slow  # the default sweep at width 512
def test_the_python_api_example_runs_as_written(tmp_path, monkeypatch, capsys):
    import torch

    from attn_onnx.models import MultiHeadedAttention

    block = MultiHeadedAttention(8, 512).state_dict()
    torch.save({f"encoder.layers.0.self_attn.{k}": v for k, v in block.items()}, tmp_path / "model.pt")
    monkeypatch.chdir(tmp_path)
    exec(python_block("## Python API", "export.md"), {})
    assert capsys.readouterr().out.startswith("PASSED | summary | 288 passed, 0 failed, 0 skipped")
    assert (tmp_path / "mha.onnx").is_file()
    assert (tmp_path / "mha-bundle" / "manifest.json").is_file()
    assert (tmp_path / "models" / "mha" / "1" / "model.py").is_file()
