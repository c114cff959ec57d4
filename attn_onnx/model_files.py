"""ONNX model files with their weights inside, or beside them as external data (`model.onnx.data`, a
relative location), written atomically and read back only from inside their own folder.

A serialized ModelProto cannot pass 2 GiB (protobuf's limit), so a larger model must keep its weights in a
separate file. The data file is named after the model and referenced by a bare file name, so the pair
works wherever the folder is moved.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx

from attn_onnx.errors import MetadataError

MAX_SINGLE_FILE_BYTES = 2**31 - 1  # protobuf's limit for one serialized model
DATA_SUFFIX = ".data"
EXTERNAL_THRESHOLD = 1024  # initializers at least this large go to the data file


def needs_external(proto: onnx.ModelProto) -> bool:
    """Whether the model passes protobuf's limit, counted from its initializers' dims. Not ByteSize():
    protobuf serializes to measure, which took 57 s and 23 GiB for a 4.3 GB model."""
    weights = 0
    for init in proto.graph.initializer:
        if init.data_location != onnx.TensorProto.EXTERNAL:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
            weights += int(np.prod(init.dims, dtype=np.int64)) * itemsize
    return weights + 64 * 2**20 > MAX_SINGLE_FILE_BYTES  # 64 MiB for the graph and the rest


def data_file(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + DATA_SUFFIX)


def save_model(proto: onnx.ModelProto, path: Path, external: bool, data: bytes | None = None) -> list[Path]:
    """Write `proto` to `path`; with `external`, its large initializers go to `path.data`. Returns the files.
    `data`, where the caller holds the model serialized already (not external), is written as it is.

    `proto` is left as it was: each tensor's bytes leave it while the graph is serialized and are read back
    from the data file after, one tensor at a time, so a 4 GB model is never held twice.
    """
    path = Path(path)
    if not external:
        path.write_bytes(proto.SerializeToString() if data is None else data)
        return [path]
    data_path = data_file(path)
    moved = []
    try:
        with open(data_path, "wb") as f:
            for init in proto.graph.initializer:
                if init.data_location == onnx.TensorProto.EXTERNAL or not init.HasField("raw_data"):
                    continue
                raw = init.raw_data
                if len(raw) < EXTERNAL_THRESHOLD:
                    continue
                offset, length = f.seek(0, os.SEEK_END), len(raw)
                f.write(raw)
                moved.append((init, offset, length))
                del raw
                init.ClearField("raw_data")
                init.data_location = onnx.TensorProto.EXTERNAL
                for key, value in (("location", data_path.name), ("offset", str(offset)), ("length", str(length))):
                    entry = init.external_data.add()
                    entry.key, entry.value = key, value
            f.flush()
            os.fsync(f.fileno())
        path.write_bytes(proto.SerializeToString())
    finally:  # the bytes back into the model, read from the data file one tensor at a time
        with open(data_path, "rb") as f:
            for init, offset, length in moved:
                f.seek(offset)
                del init.external_data[:]
                init.data_location = onnx.TensorProto.DEFAULT
                init.raw_data = f.read(length)
    return [path, data_path]


def _commit_steps(txn, files: list[Path], out: Path, external: bool) -> None:
    """The steps that put a staged model (and its data file) at `out`, as a pair: at no instant does a
    model at `out` name a data file that is not its own.

    With external data the earlier model leaves first (kept aside, under a temp name), then the data file
    takes `out.data`'s place, then the model goes in: a crash between any two of those renames leaves
    either no model at `out` or one beside its own data, never the new model with the old weights or the
    old one with the new. Without, the model goes in by one rename, and an earlier export's data file
    (whose model is gone) leaves after it."""
    if external:
        txn.aside(out)
        txn.put(files[1], data_file(out))
        txn.put(files[0], out)
    else:
        txn.put(files[0], out)
        txn.aside(data_file(out))


def stage_model(proto: onnx.ModelProto, out: Path, external: bool, data: bytes | None = None) -> list[Path]:
    """Within files.staging(): save the model under a temp folder beside `out` and add the steps that put it
    (with its data file) in place to the transaction. Returns the staged files."""
    from attn_onnx.files import current_staging

    txn = current_staging()
    assert txn is not None, "stage_model runs within files.staging()"
    out = Path(out)
    files = save_model(proto, txn.temp_folder(out) / out.name, external, data)
    _commit_steps(txn, files, out, external)
    return files


@contextlib.contextmanager
def staged_model(proto: onnx.ModelProto, out: Path, external: bool, data: bytes | None = None):
    """Save the model under a temp folder beside `out` and yield its path there; `commit(force)` moves the
    file(s) into place as a pair (_commit_steps), or nothing: a failed step undoes those before it."""
    from attn_onnx.files import Transaction

    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    try:
        staged = folder / out.name
        files = save_model(proto, staged, external, data)

        def commit(force: bool) -> int:
            """Without `force` nothing existing is replaced, even a file that appeared while working (a hard
            link fails on an existing name); the data's link is undone if the model's fails."""
            size = sum(f.stat().st_size for f in files)
            txn = Transaction(force)
            _commit_steps(txn, files, out, external)
            txn.commit()
            return size

        yield staged, commit
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def external_locations(proto: onnx.ModelProto) -> set[str]:
    """The external-data locations the model's initializers name."""
    return {
        e.value
        for init in proto.graph.initializer
        if init.data_location == onnx.TensorProto.EXTERNAL
        for e in init.external_data
        if e.key == "location"
    }


def check_external_data(proto: onnx.ModelProto, folder: Path, name: str) -> None:
    """MetadataError unless every external tensor lies in a plain file inside `folder`, within its size.

    Checked before any runtime opens the data: an absolute path, `..`, a symlink or a hard link out of the
    folder could make a model read (or leak through its outputs) files it has no business with.
    """
    folder = Path(folder).resolve()
    for init in proto.graph.initializer:
        if init.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in init.external_data}
        location = info.get("location", "")
        where = f"{name!r}: initializer {init.name!r} keeps its data at {location!r}"
        if not location or os.path.isabs(location) or Path(location).name != location or location in (".", ".."):
            raise MetadataError(f"{where}; external data must be a file name beside the model")
        path = folder / location
        if path.is_symlink():
            raise MetadataError(f"{where}, a symlink; external data must be a plain file beside the model")
        if not path.is_file():
            raise MetadataError(f"{where}, which is missing beside the model (move the model with its {location} file)")
        if path.stat().st_nlink > 1:
            raise MetadataError(f"{where}, a file with other hard links; external data must be a plain file")
        try:
            offset, length = int(info.get("offset", 0)), int(info["length"])
        except (KeyError, ValueError):
            raise MetadataError(f"{where} without a valid offset and length") from None
        if offset < 0 or length < 0 or offset + length > path.stat().st_size:
            raise MetadataError(
                f"{where}, bytes {offset}..{offset + length}, past the file's {path.stat().st_size} bytes"
            )
