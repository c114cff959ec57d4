"""Run a CLI in a fresh Python process and report what it imported: a refusal that comes before any work
leaves torch and onnxruntime unimported."""

import subprocess
import sys
from dataclasses import dataclass


@dataclass
class Fresh:
    code: int | str | None  # the exit code
    torch: bool  # torch was imported
    onnxruntime: bool  # onnxruntime was imported
    stderr: str


def run_fresh(cli: str, args: list[str]) -> Fresh:
    """`attn_onnx.cli.<cli>.main(args)` in a new interpreter."""
    code = (
        f"import sys\nfrom attn_onnx.cli.{cli} import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit as exc:\n    code = exc.code\n"
        "print('exit', code, 'torch' in sys.modules, 'onnxruntime' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    last = (result.stdout.strip().splitlines() or [""])[-1].split()
    assert len(last) == 4 and last[0] == "exit", result.stdout + result.stderr
    return Fresh(
        int(last[1]) if last[1].isdigit() else last[1], last[2] == "True", last[3] == "True", result.stderr.strip()
    )
