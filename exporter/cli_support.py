"""What both CLIs share: one-line `Error: ...` messages with documented exit codes, never a traceback.

Exit codes: 0 success; 1 a failed check, a runtime error or an unreadable input file; 2 a usage error
(a bad option value or combination, an existing output without --force).
"""

from __future__ import annotations

import os
import sys

import click

from exporter.errors import AttnOnnxError, UsageError, first_line

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class OneLineErrorCommand(click.Command):
    """A click command whose every error, click's usage errors included, is one `Error: ...` line."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Abort:
            _fail("aborted", EXIT_FAILURE)
        except click.ClickException as exc:
            _fail(exc.format_message(), EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code)
        except AttnOnnxError as exc:
            _fail(str(exc), EXIT_USAGE if isinstance(exc, UsageError) else EXIT_FAILURE)
        except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
            if os.environ.get("ATTN_ONNX_DEBUG"):
                raise
            _fail(f"unexpected {type(exc).__name__}: {first_line(exc)} (set ATTN_ONNX_DEBUG=1 for a traceback)",
                  EXIT_FAILURE)
        code = rv if isinstance(rv, int) else EXIT_OK
        if standalone_mode:
            sys.exit(code)
        return code


def _fail(message: str, code: int):
    click.echo(f"Error: {' '.join(message.split())}", err=True)
    sys.exit(code)


def comma_list(value: str | None, cast=str) -> tuple:
    """Parse "a,b,c" into a tuple; UsageError names the item that does not parse."""
    if value is None:
        return ()
    items = [item.strip() for item in value.split(",") if item.strip()]
    try:
        return tuple(cast(item) for item in items)
    except ValueError:
        raise UsageError(f"cannot parse {value!r} as a comma-separated list of {cast.__name__}") from None
