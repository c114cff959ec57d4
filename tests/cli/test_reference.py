"""docs/cli.md is every command's --help as it prints it today."""

from pathlib import Path

from attn_onnx.cli.reference import every_command, reference

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_docs_cli_md_is_the_help_of_every_command():
    assert DOC.read_text() == reference(), "run: python -m attn_onnx.cli.reference > docs/cli.md"


def test_every_option_of_every_command_is_in_the_reference():
    text = DOC.read_text()
    for name, command in every_command().items():
        assert f"## {name}\n" in text
        for param in command.params:
            for opt in getattr(param, "opts", []):
                assert opt in text, (name, opt)
