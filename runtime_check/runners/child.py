"""A runtime in a child process, spoken to in frames over its stdin and stdout: a u32 little-endian header
length, the JSON header, then the payload bytes; each answer's header says how many bytes follow ("bytes").
The web runner (Node, examples/web/runner.js) and the onnxruntime release runner (ort_release_child.py) use it.
"""

from __future__ import annotations

import json
import struct
import subprocess
import tempfile
import weakref
from pathlib import Path
from typing import IO

from attn_onnx.errors import RuntimeFailure


class Child:
    """The process of `command`, alive until close() (or until this object is collected, or Python exits).
    `what` names it in errors: "the onnxruntime-web process"."""

    def __init__(self, command: list[str], what: str, cwd: str | Path | None = None):
        self.what = what
        self._stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            command, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr
        )
        assert self.process.stdin is not None and self.process.stdout is not None  # both PIPE
        self._stdin, self._stdout = self.process.stdin, self.process.stdout
        self._finalizer = weakref.finalize(self, _stop, self.process, self._stdin, self._stdout, self._stderr)

    def request(self, header: dict, payloads: list[bytes]) -> tuple[dict, bytes]:
        """Send one frame (the header, then each payload in order) and return the answer's."""
        text = json.dumps(header).encode()
        try:
            self._stdin.write(struct.pack("<I", len(text)) + text)
            for payload in payloads:
                self._stdin.write(payload)
            self._stdin.flush()
        except (BrokenPipeError, ValueError):  # ValueError: written after close()
            raise RuntimeFailure(f"{self.what} has ended{self.last_words()}") from None
        return self.receive()

    def receive(self) -> tuple[dict, bytes]:
        """The next frame: its header and the payload it declares."""
        header = json.loads(self._read(struct.unpack("<I", self._read(4))[0]))
        return header, self._read(header["bytes"])

    def close(self) -> None:
        self._finalizer()

    def _read(self, n: int) -> bytes:
        data = self._stdout.read(n) if n else b""
        if len(data) != n:
            code = self.process.wait()
            raise RuntimeFailure(f"{self.what} ended (exit {code}){self.last_words()}")
        return data

    def last_words(self) -> str:
        """': ' and the last line the child wrote to stderr, or '' (also once close() has discarded it)."""
        if self._stderr.closed:
            return ""
        self._stderr.seek(0)
        lines = [line for line in self._stderr.read().decode(errors="replace").splitlines() if line.strip()]
        return f": {lines[-1].strip()[:300]}" if lines else ""


def _stop(process: subprocess.Popen[bytes], stdin: IO[bytes], stdout: IO[bytes], stderr: IO[bytes]) -> None:
    """Close the child's stdin (it exits when its queue is done), then make sure it is gone."""
    try:
        stdin.close()
        process.wait(timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        process.kill()
        process.wait()
    stdout.close()
    stderr.close()
