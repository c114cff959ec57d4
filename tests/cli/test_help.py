"""Every option of every command and subcommand (export-attn, check-attn, bench-attn and its subcommands) has
help, and a closed set of values is a click.Choice (or a CommaChoice, for a comma-separated list), never free
text: a free-text option is one of FREE_TEXT, each saying why its values are open, and none lists the members of
one of the house's closed sets in its help or its default."""

import re

import click
import pytest

from attn_onnx.bench.serve import TARGETS
from attn_onnx.cli.reference import every_command
from attn_onnx.exporter.kinds import MODULES
from attn_onnx.exporter.variants import VARIANTS
from attn_onnx.vocab import (
    CAUSAL_ALIGNS,
    DTYPES,
    MASK_DTYPES,
    MASK_MODES,
    MASK_PATTERNS,
    PROVIDERS,
    QUANTIZE_MODES,
    TRITON_BACKENDS,
)

# the options whose values are open, and why; any other free-text option fails
FREE_TEXT = {
    "export-attn --tune-shapes": "BATCHxLEN items, any sizes",
    "export-attn --weights-prefix": "a key prefix in the user's own checkpoint",
    "export-attn --name": "a model name the user chooses (checked against the manifest's pattern)",
    "export-attn --target-onnxruntime": "any release X.Y.Z (refused where the table has no column for it)",
    "check-attn --runtimes": "RUNTIMES and onnxruntime==X.Y.Z, any installed release",
    "check-attn --batches": "numbers",
    "check-attn --lengths": "numbers",
    "check-attn --shapes": "BxQxKV items, any sizes",
    "check-attn --sizes": "numbers",
    "check-attn --weights-prefix": "a key prefix in the user's own checkpoint",
    "check-attn --plot-case": "a case name, b2.q20.kv20.causal+padding: sizes and a mask pattern",
    "bench-attn variants --shapes": "BATCHxLEN items, any sizes",
    "bench-attn decode --batch-lens": "cache lengths, any sizes",
    "bench-attn variants --threads": "thread counts",
    "bench-attn variants --memory": "one BATCHxLEN",
    "bench-attn runtimes --shapes": "BATCHxLEN items, any sizes",
    "bench-attn serve --shapes": "BATCHxLEN items, any sizes",
    "bench-attn decode --past-lens": "cache lengths",
}
OPEN_LISTS = {"check-attn --runtimes"}  # names a closed set's members in its help, and is still open (releases)

# the house's closed sets: free text that names two members of one of them should have been a Choice
CLOSED_SETS = {
    "variants": VARIANTS,
    "dtypes": DTYPES,
    "mask patterns": MASK_PATTERNS,
    "mask modes": MASK_MODES,
    "mask dtypes": MASK_DTYPES,
    "providers": PROVIDERS,
    "causal aligns": CAUSAL_ALIGNS,
    "Triton backends": TRITON_BACKENDS,
    "quantize modes": QUANTIZE_MODES,
    "modules": MODULES,
    "serve targets": TARGETS,
}


def problems(name: str, command: click.Command, free_text: dict = FREE_TEXT) -> list[str]:
    """What is wrong with `command`'s options: help missing, or a closed set written as free text."""
    found = []
    for param in command.params:
        if not isinstance(param, click.Option) or param.name in ("help", "version"):
            continue
        flag = f"{name} {max(param.opts, key=len)}"
        if not (param.help or "").strip():
            found.append(f"{flag}: no help")
        if param.is_flag or not isinstance(param.type, click.types.StringParamType):
            continue  # a Choice, CommaChoice, number, path or tolerance
        if flag not in free_text:
            found.append(
                f"{flag}: free text; a Choice if its values are a closed set, else say in FREE_TEXT why they are open"
            )
        if flag in OPEN_LISTS:
            continue
        text = re.sub(r"\[[^\]]*\]", " ", param.help or "") + " " + str(param.default or "")  # not [mha, attention]
        words = set(re.findall(r"[\w+-]+", text))
        for set_name, members in CLOSED_SETS.items():
            named = sorted(words & set(members))
            if len(named) >= 2:
                found.append(f"{flag}: free text naming {set_name} ({', '.join(named)}); make it a Choice")
    return found


COMMANDS = every_command()


def test_every_command_and_subcommand_is_walked():
    assert {
        "export-attn",
        "check-attn",
        "bench-attn",
        "bench-attn variants",
        "bench-attn runtimes",
        "bench-attn serve",
        "bench-attn decode",
    } == set(COMMANDS)
    assert set(FREE_TEXT) <= {
        f"{name} {max(p.opts, key=len)}"
        for name, c in COMMANDS.items()
        for p in c.params
        if isinstance(p, click.Option)
    }  # no stale entry


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_has_help_and_no_closed_set_is_free_text(name):
    assert problems(name, COMMANDS[name]) == []
    assert (COMMANDS[name].help or "").strip(), f"{name}: no help of its own"


def test_the_check_finds_an_option_without_help_and_a_closed_set_written_as_free_text():
    """The check can fail: a command planted with both mistakes (as bench-attn's --heads and --dtypes were)."""

    @click.command("planted")
    @click.option("--heads", type=int, default=8)
    @click.option("--dtypes", default="float32", help="Comma-separated --dtype values: float32, float16.")
    @click.option("--providers", type=click.Choice(list(PROVIDERS)), help="An execution provider.")
    def planted(heads, dtypes, providers):
        """A planted command."""

    assert problems("planted", planted) == [
        "planted --heads: no help",
        "planted --dtypes: free text; a Choice if its values are a closed set, else say in FREE_TEXT why they are open",
        "planted --dtypes: free text naming dtypes (float16, float32); make it a Choice",
    ]
    # said to be open, it still may not list a closed set's members
    assert problems("planted", planted, {"planted --dtypes": "open"})[1:] == [
        "planted --dtypes: free text naming dtypes (float16, float32); make it a Choice"
    ]
