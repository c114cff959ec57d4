"""A real Triton server: the `tritonserver` of the nvidia-pytriton wheel that scripts/setup/triton.sh unpacks
under .deps/triton/, started on 127.0.0.1 with free ports and stopped by its PID. For the live tests and the
serving benchmark; in production, NVIDIA's container runs tritonserver itself.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from attn_onnx import checkout
from attn_onnx.errors import RuntimeFailure

SETUP = "bash scripts/setup/triton.sh"


def deps_root() -> Path:
    """.deps/triton of this source tree, or $ATTN_ONNX_TRITON_DEPS."""
    if os.environ.get("ATTN_ONNX_TRITON_DEPS"):
        return Path(os.environ["ATTN_ONNX_TRITON_DEPS"])
    return checkout.path(".deps", "triton")


def tool(name: str, root: Path | None = None) -> Path:
    """The wrapper `name` (tritonserver or perf_analyzer) from the setup script; RuntimeFailure saying how to get
    it where it is absent."""
    path = (root or deps_root()) / "bin" / name
    if not os.access(path, os.X_OK):
        raise RuntimeFailure(f"{path} is absent: run `{SETUP}` first (it unpacks Triton's wheels there)"
                             f"{checkout.note()}")
    return path


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 now (held together while chosen, so they differ)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def http_json(url: str, body: bytes | None = None, timeout: float = 10.0):
    """(status, parsed JSON or None) of a GET, or a POST with `body`."""
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, text = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read()
    try:
        return status, json.loads(text) if text else None
    except ValueError:
        return status, None


class TritonServer:
    """`with TritonServer(repo) as server:` tritonserver on `repo`, serving once every model it can load is
    loaded; `server.http`, `server.grpc` are host:port. Stopped on exit (SIGTERM, then SIGKILL to its process
    group after `stop_s`), also when the block raises. Its log is `server.log_path`."""

    def __init__(self, repository: str | Path, *options: str, log_path: str | Path, ready_s: float = 90.0,
                 stop_s: float = 15.0, root: Path | None = None):
        self.repository, self.options, self.log_path = Path(repository), options, Path(log_path)
        self.ready_s, self.stop_s, self.binary = ready_s, stop_s, tool("tritonserver", root)
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> TritonServer:
        for attempt in range(3):  # a port chosen free may be taken before tritonserver binds it
            try:
                self.start()
                return self
            except RuntimeFailure as exc:
                self.stop()
                if "already in use" not in str(exc) or attempt == 2:
                    raise
            except BaseException:
                self.stop()
                raise

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        http, grpc, metrics = free_ports(3)
        self.http, self.grpc, self.metrics = (f"127.0.0.1:{p}" for p in (http, grpc, metrics))
        command = [str(self.binary), "--model-repository", str(self.repository),
                   "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1", "--metrics-address", "127.0.0.1",
                   f"--http-port={http}", f"--grpc-port={grpc}", f"--metrics-port={metrics}",
                   "--exit-timeout-secs=5", *self.options]
        with open(self.log_path, "wb") as log:  # the child keeps its own handle
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)  # its own group: the stubs go with it
        deadline = time.monotonic() + self.ready_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeFailure(f"tritonserver exited with {self.process.returncode} before it served: "
                                     f"{self.log_tail()}")
            try:
                if http_json(f"http://{self.http}/v2/health/ready", timeout=1.0)[0] == 200:
                    return
            except OSError:
                pass  # not listening yet
            time.sleep(0.1)
        raise RuntimeFailure(f"tritonserver was not ready in {self.ready_s:.0f} s: {self.log_tail()}")

    def stop(self) -> int | None:
        """SIGTERM and wait; SIGKILL its process group if it has not exited in `stop_s`. Its exit code."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        try:  # a Python-backend stub left behind by a server that died: its group is ours alone
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return process.returncode

    def log_tail(self, lines: int = 4) -> str:
        """The log's error lines (E...), or its last lines where it has none."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        errors = [line for line in text.splitlines() if re.match(r"E\d{4} ", line)]  # Triton's error lines
        return " | ".join(line.strip() for line in (errors or text.splitlines())[-lines:])

    def index(self) -> dict:
        """{model name: its entry} of POST /v2/repository/index (state, and reason where it is not READY)."""
        status, body = http_json(f"http://{self.http}/v2/repository/index", body=b"{}")
        if status != 200:
            raise RuntimeFailure(f"POST /v2/repository/index answered {status}: {body}")
        return {entry["name"]: entry for entry in body}
