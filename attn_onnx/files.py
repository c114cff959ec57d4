"""Files written safely: a temp name beside the target, then a move; and output paths checked before any
work, so that a typo in a path costs nothing."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import os
import secrets
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from attn_onnx.errors import Interrupted, OutputExistsError, UsageError


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_folder_writable(folder: Path, what: str) -> None:
    """UsageError, one plain sentence, unless files can be created in `folder`.

    Tried for real (a temp file made and removed): permission bits say nothing for root, read-only mounts
    or full quotas.
    """
    folder = folder if str(folder) else Path(".")
    if not folder.exists():
        missing = next((p for p in [folder, *folder.parents] if not p.exists() and p.parent.exists()), folder)
        if missing.parent.is_file():
            raise UsageError(f"{what}: {str(missing.parent)!r} is a file, not a folder")
        raise UsageError(f"{what}: the folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise UsageError(f"{what}: {str(folder)!r} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".attn-onnx-probe."):
            pass
    except OSError as exc:
        raise UsageError(f"{what}: cannot write to the folder {str(folder)!r} ({exc.strerror or exc})") from None


def check_output_file(out: Path, force: bool, what: str = "--out") -> None:
    """Raise before any work is done if the file `out` cannot be written as asked."""
    if out.is_dir():
        raise UsageError(f"{what} {str(out)!r} is a folder; give a file name")
    check_folder_writable(out.parent, what)
    if out.exists() and not force:
        raise OutputExistsError(f"{str(out)!r} exists; pass --force to overwrite it")


def check_output_folder(folder: Path, what: str) -> None:
    """Raise unless `folder` is a writable folder, or can be made in a writable one."""
    if folder.exists():
        check_folder_writable(folder, what)
    else:
        check_folder_writable(folder.parent, what)


def check_output_dir(target: Path, force: bool, what: str) -> None:
    """Raise before any work is done if the folder `target` cannot be written (replaced only with force)."""
    if target.exists() and not target.is_dir():
        raise UsageError(f"{what} {str(target)!r} is a file; give a folder")
    check_folder_writable(target.parent, what)
    if target.exists() and not force:
        raise OutputExistsError(f"{str(target)!r} exists; pass --force to replace it")


def write_atomic(out: str | Path, data: bytes, force: bool) -> int:
    """Write `data` to a temp file beside `out`, then move it into place: never a half-written file.

    Without `force`, an existing `out` is never replaced, even if it appeared while working.
    """
    out = Path(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent if str(out.parent) else ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        if force:
            os.replace(tmp, out)
        else:
            try:
                os.link(tmp, out)  # fails if `out` exists: no clobbering
            except FileExistsError:
                raise OutputExistsError(f"{str(out)!r} exists; pass --force to overwrite it") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return len(data)


def write_folder_atomic(target: str | Path, build, force: bool) -> Path:
    """Build a folder with `build(tmp_folder)` under a temp name beside `target`, then rename it into place:
    a failed or interrupted build leaves nothing, and an earlier `target` stays intact unless `force`.

    Within `staging()` the built folder is only staged: the transaction's commit moves it into place, with
    every other output of the export, or none of them."""
    import shutil

    target = Path(target)
    txn = current_staging()
    if txn is not None:
        tmp = txn.temp_folder(target)
        build(tmp)
        txn.put(tmp, target)
        return target
    parent = target.parent if str(target.parent) else Path(".")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
    old = None
    try:
        build(tmp)
        os.chmod(tmp, 0o755)
        if target.exists():
            if not force:
                raise OutputExistsError(f"{str(target)!r} exists; pass --force to replace it")
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=parent))
            os.rename(target, old / target.name)  # aside, in one step, so the swap below is one step too
        try:
            os.rename(tmp, target)
        except OSError:  # it appeared meanwhile (a non-empty folder)
            raise OutputExistsError(f"{str(target)!r} exists; pass --force to replace it") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / target.name).exists() and not target.exists():
            os.rename(old / target.name, target)  # put the earlier folder back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return target


# --- all forms of one export committed together ------------------------------------------------------------

_STAGING: contextvars.ContextVar[Transaction | None] = contextvars.ContextVar("attn_onnx_staging", default=None)


def _lexists(path: Path) -> bool:
    return os.path.lexists(path)


def _aside_name(target: Path) -> Path:
    """A fresh temp name beside `target`, for the content it replaces (kept until every target is in place)."""
    return target.parent / f".{target.name}.{secrets.token_hex(6)}.old"


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


class _signals_held:
    """SIGINT and SIGTERM held back (main thread) while targets are swapped: the handful of renames of a
    commit, or of its rollback, is never cut in the middle. Their Python handlers are swapped for one that
    only records the signal; `take` hands the recorded ones to the caller, who acts on them with `deliver`
    at a point of its choosing.

    Blocking the signals with pthread_sigmask is not enough: it blocks them in the main thread only, and a
    signal sent to the process lands on any thread that does not block it (onnxruntime's and torch's pools);
    Python then runs the handler in the main thread at its next bytecode, in the middle of a step."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> _signals_held:
        self.arrived: list[int] = []
        # signal number -> the handler it had (what signal.signal returns and takes back)
        self.before: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}
        if threading.current_thread() is threading.main_thread():
            for signo in self.SIGNALS:
                handler = signal.getsignal(signo)
                if handler is not None:  # None: a handler not set from Python, which cannot be put back
                    self.before[signo] = signal.signal(signo, self._record)
        return self

    def _record(self, signo, frame):
        self.arrived.append(signo)

    def __exit__(self, *exc):
        for signo, handler in self.before.items():
            signal.signal(signo, handler)

    def take(self) -> list[int]:
        """The signals that arrived so far, each once; they are not delivered on release."""
        taken, self.arrived = self.arrived, []
        return taken


def deliver(signals: list[int]) -> None:
    """Run the handler of each signal taken by `_signals_held.take` (KeyboardInterrupt for SIGINT, the CLI's
    for SIGTERM), now; one without a Python handler is raised again."""
    for signo in signals:
        handler = signal.getsignal(signo)
        if callable(handler):
            handler(signo, None)
        elif handler != signal.SIG_IGN:
            signal.raise_signal(signo)


class Transaction:
    """Every output of one export, staged under temp names beside their targets, then committed together.

    The steps, in the order added:
    - `put(staged, target)`: the staged file or folder takes `target`'s place;
    - `aside(target)`: `target` (if any) leaves (an earlier model's data file, or a model whose new data
      must go in before it).
    Without `force` an existing target is refused (OutputExistsError), even one that appeared while
    working: a file goes in by a hard link, which fails on an existing name. With `force` what a step
    replaces is kept under a temp name beside it (a hard link to a file, so the file itself is swapped
    by one rename and never missing; a folder renamed away) until every step is done, then deleted.

    If any step fails, or a signal arrives during the commit, the steps done are undone in reverse order
    and every target is as it was; the temp names are removed whatever happens.
    """

    def __init__(self, force: bool):
        self.force = force
        self.steps: list[tuple[str, Path | None, Path]] = []
        self.temps: list[Path] = []  # staging folders and files, removed at the end
        self.on_abort: list = []  # callbacks when nothing is committed (a repository folder made for it)
        self.committed = False

    def temp_folder(self, target: Path) -> Path:
        """A new temp folder beside `target`, removed when the transaction ends."""
        parent = target.parent if str(target.parent) else Path(".")
        folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
        self.temps.append(folder)
        return folder

    def put(self, staged: Path, target: Path) -> None:
        self.steps.append(("put", Path(staged), Path(target)))

    def aside(self, target: Path) -> None:
        self.steps.append(("aside", None, Path(target)))

    def _exists(self, target: Path) -> OutputExistsError:
        what = "replace" if target.is_dir() else "overwrite"
        return OutputExistsError(f"{str(target)!r} exists; pass --force to {what} it")

    def _do(
        self, kind: str, staged: Path | None, target: Path, undo: list[Callable[[], object]], kept: list[Path]
    ) -> None:
        if kind == "aside":
            if not _lexists(target):
                return
            if not self.force:
                raise self._exists(target)
            old = _aside_name(target)
            os.rename(target, old)
            kept.append(old)
            undo.append(lambda: os.rename(old, target))
            return
        assert staged is not None  # every step but an aside is a put, which has its staged path
        if staged.is_dir():
            old_folder: Path | None = None
            if _lexists(target):
                if not self.force:
                    raise self._exists(target)
                old_folder = _aside_name(target)
                os.rename(target, old_folder)
                kept.append(old_folder)
            try:
                os.rename(staged, target)
            except OSError:
                appeared = _lexists(target)  # a non-empty folder appeared meanwhile
                if old_folder is not None and not appeared:
                    os.rename(old_folder, target)
                    kept.remove(old_folder)
                elif old_folder is not None:  # put back when the steps before are undone
                    undo.append(lambda: os.rename(old_folder, target) if not _lexists(target) else None)
                    kept.remove(old_folder)
                if appeared:
                    raise self._exists(target) from None
                raise

            def back(old: Path | None = old_folder) -> None:
                os.rename(target, staged)  # the new folder back to its temp name, removed with it
                if old is not None:
                    os.rename(old, target)

            undo.append(back)
            return
        if _lexists(target) and self.force and not target.is_dir():
            old = _aside_name(target)
            os.link(target, old)  # the earlier file kept; the swap below is one rename
            kept.append(old)
            os.replace(staged, target)
            undo.append(lambda: os.replace(old, target))
            return
        try:
            os.link(staged, target)  # fails if `target` exists: no clobbering
        except FileExistsError:
            raise self._exists(target) from None
        undo.append(lambda: os.unlink(target))

    def commit(self) -> None:
        """Do every step, or none: see the class."""
        undo: list[Callable[[], object]] = []
        kept: list[Path] = []

        def rollback():
            while undo:
                with contextlib.suppress(OSError):
                    undo.pop()()
            kept.clear()  # put back where they were: nothing to delete

        with _signals_held() as held:
            try:
                for kind, staged, target in self.steps:
                    if staged is not None:
                        os.chmod(staged, 0o755 if staged.is_dir() else 0o644)
                    self._do(kind, staged, target, undo, kept)
            except BaseException:
                rollback()
                raise
            arrived = held.take()
            if arrived:  # a signal came during the steps: undo them before it is acted on
                rollback()
        if arrived:
            deliver(arrived + held.take())  # raises (KeyboardInterrupt, or the CLI's SIGTERM handler)
            # a signal whose handler did not raise: the steps are undone all the same
            raise Interrupted("interrupted while the outputs were being moved into place; they were not")
        self.committed = True
        for old in kept:
            _remove(old)
        deliver(held.take())  # came after the last step, before the handlers were put back: all is in place

    def close(self) -> None:
        for temp in self.temps:
            _remove(temp)
        if not self.committed:
            for callback in reversed(self.on_abort):
                with contextlib.suppress(OSError):
                    callback()


@contextlib.contextmanager
def staging(force: bool):
    """Within it, write_folder_atomic and model_files.stage_model stage their outputs in the Transaction
    yielded instead of moving them into place; `commit()` then moves all of them, or none."""
    txn = Transaction(force)
    token = _STAGING.set(txn)
    try:
        yield txn
    finally:
        _STAGING.reset(token)
        txn.close()


def current_staging() -> Transaction | None:
    return _STAGING.get()
