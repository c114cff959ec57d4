"""Servers run for a measurement or a test, on one harness (ServedProcess): started on 127.0.0.1 with free ports,
ready when GET /v2/health/ready answers 200, stopped by PID (SIGTERM, then SIGKILL to its process group).
- TritonServer: the `tritonserver` of the nvidia-pytriton wheel that scripts/setup/triton.sh unpacks under
  .deps/triton/ (in production, NVIDIA's container runs tritonserver itself);
- NodeService: examples/node/server.js on a bundle, HTTP and gRPC.
bench-attn serve and the live tests use them; nothing beneath bench/ does.
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
NODE_DIR = checkout.path("examples", "node")


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
        raise RuntimeFailure(
            f"{path} is absent: run `{SETUP}` first (it unpacks Triton's wheels there){checkout.note()}"
        )
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


class ServedProcess:
    """`with Server(...) as server:` the process of `command()`, serving once GET /v2/health/ready on
    `server.http` answers 200; stopped on exit (SIGTERM, then SIGKILL to its process group after `stop_s`),
    also when the block raises. Its output goes to `log_path`. A subclass says what to run (`command`, given
    its free ports) and how its log names an error (`log_tail`)."""

    name = "the server"
    ports = 1  # free ports command() takes; the first is HTTP's

    def __init__(self, *, log_path: str | Path, ready_s: float = 90.0, stop_s: float = 15.0, cwd: Path | None = None):
        self.log_path, self.ready_s, self.stop_s, self.cwd = Path(log_path), ready_s, stop_s, cwd
        self.process: subprocess.Popen | None = None

    def command(self, ports: list[int]) -> list[str]:
        raise NotImplementedError

    def __enter__(self):
        for attempt in range(3):  # a port chosen free may be taken before the server binds it
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
        ports = free_ports(self.ports)
        self.http = f"127.0.0.1:{ports[0]}"
        command = self.command(ports)
        with open(self.log_path, "wb") as log:  # the child keeps its own handle
            self.process = subprocess.Popen(
                command,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # its own group
        deadline = time.monotonic() + self.ready_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeFailure(
                    f"{self.name} exited with {self.process.returncode} before it served: {self.log_tail()}"
                )
            try:
                if http_json(f"http://{self.http}/v2/health/ready", timeout=1.0)[0] == 200:
                    return
            except OSError:
                pass  # not listening yet
            time.sleep(0.1)
        raise RuntimeFailure(f"{self.name} was not ready in {self.ready_s:.0f} s: {self.log_tail()}")

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
        try:  # a child left behind by a server that died (a Python-backend stub): its group is ours alone
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return process.returncode

    def log_tail(self, lines: int = 4) -> str:
        """The log's last lines."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return " | ".join(line.strip() for line in text.splitlines()[-lines:])


class TritonServer(ServedProcess):
    """tritonserver on `repository`; `server.http`, `server.grpc` are host:port."""

    name, ports = "tritonserver", 3

    def __init__(
        self,
        repository: str | Path,
        *options: str,
        log_path: str | Path,
        ready_s: float = 90.0,
        stop_s: float = 15.0,
        root: Path | None = None,
    ):
        super().__init__(log_path=log_path, ready_s=ready_s, stop_s=stop_s)
        self.repository, self.options, self.binary = Path(repository), options, tool("tritonserver", root)

    def command(self, ports: list[int]) -> list[str]:
        http, grpc, metrics = ports
        self.grpc, self.metrics = f"127.0.0.1:{grpc}", f"127.0.0.1:{metrics}"
        return [
            str(self.binary),
            "--model-repository",
            str(self.repository),
            "--http-address",
            "127.0.0.1",
            "--grpc-address",
            "127.0.0.1",
            "--metrics-address",
            "127.0.0.1",
            f"--http-port={http}",
            f"--grpc-port={grpc}",
            f"--metrics-port={metrics}",
            "--exit-timeout-secs=5",
            *self.options,
        ]

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


class NodeService(ServedProcess):
    """examples/node/server.js on `bundle`; `server.http`, `server.grpc` are host:port."""

    name, ports = "the Node service", 2

    def __init__(self, bundle: Path, *, log_path: str | Path, ready_s: float = 30.0):
        super().__init__(log_path=log_path, ready_s=ready_s, cwd=NODE_DIR)
        self.bundle = bundle

    def command(self, ports: list[int]) -> list[str]:
        if not (NODE_DIR / "node_modules").is_dir():
            raise RuntimeFailure(
                f"{NODE_DIR}/node_modules is absent: run `npm ci --ignore-scripts --prefix "
                f"examples/node`{checkout.note()}"
            )
        http, grpc = ports
        self.grpc = f"127.0.0.1:{grpc}"
        return [
            "node",
            "server.js",
            "--bundle",
            str(self.bundle),
            "--host",
            "127.0.0.1",
            "--port",
            str(http),
            "--grpc-port",
            str(grpc),
        ]
