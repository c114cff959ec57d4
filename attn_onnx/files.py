"""Files written safely: a temp name beside the target, then a move; and output paths checked before any
work, so that a typo in a path costs nothing."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

from attn_onnx.errors import OutputExistsError, UsageError


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
    a failed or interrupted build leaves nothing, and an earlier `target` stays intact unless `force`."""
    import shutil

    target = Path(target)
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
