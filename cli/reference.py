"""docs/cli.md, the CLI reference, made from the commands' own --help (a group's subcommands each under its own
heading) so that it cannot drift from them:

    python -m attn_onnx.cli.reference > docs/cli.md

tests/cli/test_reference.py fails when docs/cli.md differs from what this prints."""

from __future__ import annotations

import click

WIDTH = 110  # the help's line width in the reference, whatever the terminal


def commands() -> dict[str, click.Command]:
    from attn_onnx.cli.bench_attn import main as bench_attn
    from attn_onnx.cli.check_attn import main as check_attn
    from attn_onnx.cli.export_attn import main as export_attn

    return {"export-attn": export_attn, "check-attn": check_attn, "bench-attn": bench_attn}


def reference() -> str:
    parts = [
        "# CLI reference",
        "",
        "Each command's `--help`, as it prints it. Made by `python -m attn_onnx.cli.reference > docs/cli.md`; "
        "a test keeps the two equal. Exit codes and what each bad input gets: [reliability.md](reliability.md).",
        "",
    ]
    for name, command in commands().items():
        context = click.Context(command, info_name=name, terminal_width=WIDTH, max_content_width=WIDTH)
        parts += [f"## {name}", "", "```text", command.get_help(context), "```", ""]
        for sub_name, sub in getattr(command, "commands", {}).items():  # a group's subcommands, in its order
            sub_context = click.Context(
                sub, info_name=sub_name, parent=context, terminal_width=WIDTH, max_content_width=WIDTH
            )
            parts += [f"### {name} {sub_name}", "", "```text", sub.get_help(sub_context), "```", ""]
    return "\n".join(parts)


def every_command() -> dict[str, click.Command]:
    """Every command and subcommand by its full name: `bench-attn`, `bench-attn variants`, ..."""
    found = {}
    for name, command in commands().items():
        found[name] = command
        found.update({f"{name} {sub_name}": sub for sub_name, sub in getattr(command, "commands", {}).items()})
    return found


if __name__ == "__main__":
    click.echo(reference(), nl=False)
