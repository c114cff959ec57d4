"""What the CLIs share: one-line `Error: ...` messages with documented exit codes, never a traceback;
list parsing; refusing options that do not apply.

Exit codes: 0 success; 1 a failed check, a runtime error or an unreadable input file; 2 a usage error
(a bad option value or combination, an output path that cannot be written, an existing output without
--force); 130 interrupted (Ctrl-C), 143 terminated (SIGTERM): either way, nothing half-written is left.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import click
from click.core import ParameterSource

from attn_onnx.errors import AttnOnnxError, Interrupted, UsageError, first_line

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
_signal_received = [signal.SIGINT]  # which signal interrupted the command: its exit code is 128 + it


def _terminate(signum, frame):
    """SIGTERM unwinds like Ctrl-C, so every temp file and folder is removed on the way out."""
    _signal_received[0] = signum
    raise KeyboardInterrupt


class _sigterm_unwinds:
    def __enter__(self):
        _signal_received[0] = signal.SIGINT
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, _terminate)

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


class Tolerance(click.ParamType):
    """A tolerance: a finite number >= 0. NaN compares false with everything, so `|a - b| <= NaN` never fails
    and `atol=nan` would pass any model; infinity passes any finite one: both are usage errors."""

    name = "tolerance"

    def convert(self, value, param, ctx):
        import math

        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number) or number < 0:
            self.fail(
                f"{value!r} is not a finite number >= 0 (a NaN or infinite tolerance passes anything)", param, ctx
            )
        return number


class _OneLineErrors:
    """Every error of a click command or group, click's usage errors included, as one `Error: ...` line."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        # the command line as given, for reports that record how they were made
        if args is None:
            self.command_line = [os.path.basename(sys.argv[0]), *sys.argv[1:]]
        else:
            self.command_line = [prog_name or self.name or "", *args]
        try:
            with _sigterm_unwinds():
                rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except (click.exceptions.Abort, KeyboardInterrupt):
            _fail(signal_name(), 128 + _signal_received[0])
        except click.ClickException as exc:
            _fail(exc.format_message(), EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code)
        except Interrupted as exc:
            _fail(str(exc), 128 + _signal_received[0])
        except AttnOnnxError as exc:
            _fail(str(exc), EXIT_USAGE if isinstance(exc, UsageError) else EXIT_FAILURE)
        except Exception as exc:
            if os.environ.get("ATTN_ONNX_DEBUG"):
                raise
            _fail(
                f"unexpected {type(exc).__name__}: {first_line(exc)} (set ATTN_ONNX_DEBUG=1 for a traceback)",
                EXIT_FAILURE,
            )
        code = rv if isinstance(rv, int) else EXIT_OK
        if standalone_mode:
            sys.exit(code)
        return code


class OneLineErrorCommand(_OneLineErrors, click.Command):
    """A click command whose every error, click's usage errors included, is one `Error: ...` line."""


class OneLineErrorGroup(_OneLineErrors, click.Group):
    """A click group whose every error, its subcommands' included, is one `Error: ...` line. Its help lists
    the subcommands in the order they were written (the main one first), not alphabetically."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


class CommaChoice(click.ParamType):
    """A comma-separated list drawn from a closed set, each item checked: `--dtypes float32,float16`. A bad
    item is one line naming it and the choices (`--dtypes 'bfloat16': choose from float32, float16`), with
    `note` after them where the set needs a reason. `every` (e.g. "all") stands for the whole set. The metavar
    lists the choices, `[cpu|cuda],...`, unless `metavar` names them (then the option's help lists them)."""

    name = "list"

    def __init__(self, choices, note: str = "", every: str | None = None, metavar: str | None = None):
        self.choices, self.note, self.every, self.metavar = tuple(choices), note, every, metavar

    def get_metavar(self, param, ctx=None) -> str:
        return self.metavar or "[" + "|".join(([self.every] if self.every else []) + list(self.choices)) + "],..."

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):  # a default given as the list itself
            return value
        items = [item.strip() for item in str(value).split(",") if item.strip()]
        if self.every is not None and items == [self.every]:
            return self.choices
        bad = next((item for item in items if item not in self.choices), None if items else str(value))
        if bad is not None:
            flag = max(param.opts, key=len) if param is not None else "value"
            listed = ", ".join(([self.every] if self.every else []) + list(self.choices))
            raise click.UsageError(f"{flag} {bad!r}: choose from {listed}{self.note}", ctx)
        return tuple(dict.fromkeys(items))


def signal_name() -> str:
    """'interrupted' (Ctrl-C) or 'terminated' (SIGTERM): what stopped the command."""
    return "terminated" if _signal_received[0] == signal.SIGTERM else "interrupted"


def _fail(message: str, code: int):
    click.echo(f"Error: {' '.join(message.split())}", err=True)
    sys.exit(code)


def batch_lengths(text: str, option: str) -> list[tuple[int, int]]:
    """Parse "1x16,4x512" into [(1, 16), (4, 512)]; UsageError names the item that is not BATCHxLEN."""
    shapes = []
    for item in comma_list(text):
        parts = item.lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise UsageError(f"{option} item {item!r} is not BATCHxLEN with both >= 1 (e.g. 4x512)")
        shapes.append((int(parts[0]), int(parts[1])))
    if not shapes:
        raise UsageError(f"{option}: give at least one BATCHxLEN")
    return shapes


def comma_list(value: str | None, cast=str) -> tuple:
    """Parse "a,b,c" into a tuple; UsageError names the item that does not parse."""
    if value is None:
        return ()
    items = [item.strip() for item in value.split(",") if item.strip()]
    try:
        return tuple(cast(item) for item in items)
    except ValueError:
        raise UsageError(f"cannot parse {value!r} as a comma-separated list of {cast.__name__}") from None


def given(ctx: click.Context) -> set[str]:
    """The options the user gave (on the command line or through the environment), not defaults."""
    return {
        name
        for name in ctx.params
        if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    }


def flag(ctx: click.Context, name: str) -> str:
    """How the user spells option `name`: its longest flag, e.g. --mask-dtype."""
    param = next(p for p in ctx.command.params if p.name == name)
    return max(param.opts, key=len)


def refuse(ctx: click.Context, names, why: str) -> None:
    """UsageError naming the first of `names` that the user gave, with why it does not apply."""
    chosen = given(ctx)
    names = [n for n in ctx.params if n in set(names) and n in chosen]  # in the command's order
    if len(names) == 1:
        raise UsageError(f"{flag(ctx, names[0])} does not apply {why}")
    if names:
        flags = [flag(ctx, n) for n in names]
        raise UsageError(f"{', '.join(flags[:-1])} and {flags[-1]} do not apply {why}")
