"""A corpus of hostile and edge-case bundles and golden vector files, generated from one small valid bundle by
`write_corpus` (nothing hand-edited: every byte is written here, TensorProtos by the small protobuf writer below).

Each entry states its verdict, the one every verifier (Python's check_bundle, Node's verify.js, the C++
verify_bundle, the browser page) must give (tests/deploy/test_corpus.py runs them all):

- BUNDLES: a bundle folder each, made from a copy of the base bundle (`--kv-cache --mask input`: five sets and four
  decode steps, outputs `output`, `present_key`, `present_value`, a bool `mask`). `PASS`, `error(PATH)` (refused
  before any number is compared, the error naming PATH: a file's path as the manifest writes it, or
  manifest.json), or `failed(FOLDER)` (read, run, and the set or step in FOLDER fails on the numbers).
- TENSORS: one TensorProto file each, for the decoders alone: the element types and fields no exported model
  carries (float16, float64, uint8, int64; float_data, int32_data, int64_data, double_data, raw_data). `values(...)`
  (what it decodes to) or `refused(WORDS)` (every decoder refuses it, saying WORDS).

- LENGTHS: one request each to a static cache's model (mha-static, max_len 32), for the `lengths` rule alone (a
  dims contract's rule on past_len's values: exporter/kinds/dims.py). `says`: the words every checker (Python's
  values_problem, the Triton model's copy, Node's valuesProblem) refuses it with, or None where it is within the
  rule. No folder: each checker takes the contract, or the manifest made of it, and the arrays.

Layout of the corpus folder: one folder per bundle entry, `tensors/NAME.pb`, `outside/` (what the escaping
symlinks and paths point at), and `index.json` (what the browser page reads).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

# --- a small protobuf writer, enough for TensorProto ------------------------------------------------------------


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32/int64 values take ten bytes, as protobuf writes them
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def key(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def length_delimited(number: int, payload: bytes) -> bytes:
    return key(number, 2) + varint(len(payload)) + payload


(
    DIMS,
    DATA_TYPE,
    SEGMENT,
    FLOAT_DATA,
    INT32_DATA,
    STRING_DATA,
    INT64_DATA,
    NAME,
    RAW_DATA,
    DOUBLE_DATA,
    UINT64_DATA,
    DOC_STRING,
    EXTERNAL_DATA,
    DATA_LOCATION,
) = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14


def tensor(
    name: str,
    data_type: int,
    dims,
    *,
    raw: bytes | None = None,
    floats=None,
    doubles=None,
    int32s=None,
    int64s=None,
    packed: bool = True,
    extra: bytes = b"",
    packed_dims: bool = False,
) -> bytes:
    """A serialized TensorProto: its dims, type, name, and values in the fields given (packed or one per key)."""
    out = bytearray()
    if packed_dims:
        out += length_delimited(DIMS, b"".join(varint(d) for d in dims))
    else:
        out += b"".join(key(DIMS, 0) + varint(d) for d in dims)
    out += key(DATA_TYPE, 0) + varint(data_type)
    if floats is not None:
        out += (
            length_delimited(FLOAT_DATA, b"".join(struct.pack("<f", v) for v in floats))
            if packed
            else b"".join(key(FLOAT_DATA, 5) + struct.pack("<f", v) for v in floats)
        )
    if doubles is not None:
        out += (
            length_delimited(DOUBLE_DATA, b"".join(struct.pack("<d", v) for v in doubles))
            if packed
            else b"".join(key(DOUBLE_DATA, 1) + struct.pack("<d", v) for v in doubles)
        )
    for number, values in ((INT32_DATA, int32s), (INT64_DATA, int64s)):
        if values is not None:
            out += (
                length_delimited(number, b"".join(varint(int(v)) for v in values))
                if packed
                else b"".join(key(number, 0) + varint(int(v)) for v in values)
            )
    out += length_delimited(NAME, name.encode())
    if raw is not None:
        out += length_delimited(RAW_DATA, raw)
    return bytes(out + extra)


def from_array(array: np.ndarray, name: str, field: str = "raw", packed: bool = True, **kw) -> bytes:
    """`array` as a TensorProto with its values in `field`: raw, float_data, double_data, int32_data (bool, uint8,
    float16 as its bits) or int64_data."""
    array = np.ascontiguousarray(array)
    data_type = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
    flat = array.ravel()
    if field == "raw":
        return tensor(name, data_type, array.shape, raw=flat.tobytes(), **kw)
    if field == "int32_data":
        values = flat.view(np.uint16) if array.dtype == np.float16 else flat.astype(np.int64)
        return tensor(name, data_type, array.shape, int32s=[int(v) for v in values], packed=packed, **kw)
    values = {"float_data": "floats", "double_data": "doubles", "int64_data": "int64s"}[field]
    return tensor(name, data_type, array.shape, packed=packed, **{values: flat.tolist()}, **kw)


def read(path: Path) -> tuple[str, np.ndarray]:
    proto = onnx.TensorProto()
    proto.ParseFromString(path.read_bytes())
    return proto.name, onnx.numpy_helper.to_array(proto)


# --- verdicts ---------------------------------------------------------------------------------------------------

PASS = ("pass", "")


def error(path: str) -> tuple[str, str]:
    """Refused before any number is compared, by an error that names `path` (as the manifest writes it)."""
    return ("error", path)


def failed(folder: str) -> tuple[str, str]:
    """Read and run; the set or decode step in `folder` fails on the numbers, and no other."""
    return ("failed", folder)


@dataclass(frozen=True)
class Bundle:
    name: str
    what: str  # what is wrong with it (or what it shows), in words
    expect: tuple[str, str]
    make: Callable[[Path, Path], None] = lambda folder, root: None  # changes the copy `folder` (the corpus: root)
    says: str = ""  # words every verifier's error holds, after the path (docs/reliability.md shows them)


@dataclass(frozen=True)
class Tensor:
    name: str
    data: bytes
    expect: tuple  # ("values", type, dims, values) or ("refused", words)
    what: str = ""


def values(array: np.ndarray) -> tuple:
    """What a decoder gives for `array`: its type, dims and values as numbers (NaN and infinities as text)."""
    numbers = [
        v if math.isfinite(v) else ("NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity"))
        for v in np.asarray(array, np.float64).ravel().tolist()
    ]
    return ("values", str(array.dtype), list(array.shape), numbers)


def refused(words: str) -> tuple:
    return ("refused", words)


# --- changing a bundle ------------------------------------------------------------------------------------------


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def write_manifest(folder: Path, manifest: dict, text: Callable[[str], str] = lambda t: t) -> None:
    """The manifest, every sha256 in it set to its file's (whatever path it names), as JSON (Python's json writes
    NaN and Infinity as those tokens; `text` may change the text further)."""
    for entry in _file_entries(manifest):
        path = Path(entry["file"]) if os.path.isabs(entry["file"]) else folder / entry["file"]
        if path.is_file():
            entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(text(json.dumps(manifest, indent=1)))


def _file_entries(manifest: dict) -> list[dict]:
    entries = [manifest["model"]] + ([manifest["model"]["data"]] if "data" in manifest["model"] else [])
    for entry in manifest.get("test_data_sets", []) + manifest.get("decode", {}).get("steps", []):
        entries += entry.get("inputs", []) + entry.get("outputs", [])
    return entries


def rewrite(relative: str, make: Callable[[str, np.ndarray], bytes]) -> Callable[[Path, Path], None]:
    """Replace the vector at `relative` with make(name, array) of its own values, and re-hash."""

    def change(folder: Path, root: Path) -> None:
        name, array = read(folder / relative)
        (folder / relative).write_bytes(make(name, array))
        write_manifest(folder, manifest_of(folder))

    return change


def edit(change: Callable[[dict], None], text: Callable[[str], str] = lambda t: t) -> Callable[[Path, Path], None]:
    """Change the manifest (then every sha256 set to its file's)."""

    def make(folder: Path, root: Path) -> None:
        manifest = manifest_of(folder)
        change(manifest)
        write_manifest(folder, manifest, text)

    return make


def both(*makes: Callable[[Path, Path], None]) -> Callable[[Path, Path], None]:
    def make(folder: Path, root: Path) -> None:
        for m in makes:
            m(folder, root)

    return make


def moved_value(relative: str, to: float = 123.0) -> Callable[[Path, Path], None]:
    """The first value of the vector at `relative` set to `to`, re-hashed: only the numbers can tell."""

    def make(name, array):
        array = array.copy()
        array.flat[0] = to
        return from_array(array, name)

    return rewrite(relative, make)


def linked_out(relative: str) -> Callable[[Path, Path], None]:
    """`relative` replaced by a symlink to an identical copy outside the bundle (its sha256 as the manifest's)."""

    def make(folder: Path, root: Path) -> None:
        target = root / "outside" / f"{folder.name}-{relative.replace('/', '-')}"
        shutil.copyfile(folder / relative, target)
        (folder / relative).unlink()
        (folder / relative).symlink_to(target)

    return make


def linked_inside(folder: Path, root: Path) -> None:
    """test_data_set_2/input_0.pb moved to shared/, a relative symlink in its place; test_data_set_3 renamed,
    a symlink to the folder in its place: both targets inside the bundle."""
    (folder / "shared").mkdir()
    (folder / "test_data_set_2" / "input_0.pb").rename(folder / "shared" / "query.pb")
    (folder / "test_data_set_2" / "input_0.pb").symlink_to(Path("..") / "shared" / "query.pb")
    (folder / "test_data_set_3").rename(folder / "real_set_3")
    (folder / "test_data_set_3").symlink_to("real_set_3", target_is_directory=True)


def path_to(make_path: Callable[[Path, Path], str], where=("test_data_sets", 0, "inputs", 0)) -> Callable:
    """The manifest's path of one file changed to make_path(folder, root), with a file there whose sha256 is the
    manifest's."""

    def make(folder: Path, root: Path) -> None:
        manifest = manifest_of(folder)
        entry = manifest[where[0]][where[1]][where[2]][where[3]]
        source = folder / entry["file"]
        entry["file"] = make_path(folder, root)
        target = Path(entry["file"]) if os.path.isabs(entry["file"]) else folder / entry["file"]
        if not target.exists():
            shutil.copyfile(source, target)
        write_manifest(folder, manifest)

    return make


def _outside_copy(folder: Path, root: Path) -> str:
    shutil.copyfile(folder / "test_data_set_0" / "input_0.pb", root / "outside" / f"{folder.name}.pb")
    return f"../outside/{folder.name}.pb"


def _drop_output(entries: list[dict], name: str) -> None:
    entries[:] = [f for f in entries if f["name"] != name]


# (2^32 + 1)(2^32 - 1) = 2^64 - 1, which is -1 modulo 2^64: twice, and the product wraps to exactly 1
WRAP = [2**32 + 1, 2**32 - 1, 2**32 + 1, 2**32 - 1]

BUNDLES = [
    Bundle("valid", "the bundle as export-attn writes it", PASS),
    Bundle(
        "float-data",
        "a query in float_data (packed), as onnx.helper.make_tensor writes it",
        PASS,
        rewrite("test_data_set_0/input_0.pb", lambda n, a: from_array(a, n, "float_data")),
    ),
    Bundle(
        "float-data-one-per-key",
        "an expected output in float_data, one value per key",
        PASS,
        rewrite("test_data_set_1/output_0.pb", lambda n, a: from_array(a, n, "float_data", packed=False)),
    ),
    Bundle(
        "bool-int32-data",
        "a mask in int32_data (packed)",
        PASS,
        rewrite("test_data_set_0/input_5.pb", lambda n, a: from_array(a, n, "int32_data")),
    ),
    Bundle(
        "bool-int32-data-one-per-key",
        "a decode step's mask in int32_data, one value per key",
        PASS,
        rewrite("decode/step_1/input_3.pb", lambda n, a: from_array(a, n, "int32_data", packed=False)),
    ),
    Bundle(
        "unknown-tensor-field",
        "a vector with a doc_string and its dims packed: fields a reader skips",
        PASS,
        rewrite(
            "test_data_set_4/output_1.pb",
            lambda n, a: from_array(a, n, packed_dims=True, extra=length_delimited(DOC_STRING, b"golden")),
        ),
    ),
    Bundle(
        "extra-manifest-fields",
        "fields the schema does not name, at the top, in a set and in a file entry",
        PASS,
        edit(
            lambda m: (
                m.__setitem__("x_note", {"any": [1]}),
                m["test_data_sets"][0].__setitem__("x", 1),
                m["test_data_sets"][0]["inputs"][0].__setitem__("x", "y"),
            )
        ),
    ),
    Bundle(
        "symlinks-inside",
        "a vector and a set's folder that are symlinks to targets inside the bundle",
        PASS,
        linked_inside,
    ),
    Bundle(
        "changed-value",
        "an expected output's first value set to 123, its sha256 updated",
        failed("test_data_set_2"),
        moved_value("test_data_set_2/output_0.pb"),
    ),
    Bundle(
        "changed-decode-value",
        "a decode step's expected present_key moved, its sha256 updated",
        failed("decode/step_1"),
        moved_value("decode/step_1/output_1.pb"),
    ),
    # --- the manifest's JSON and schema
    Bundle(
        "atol-nan",
        "tolerance.atol NaN (not JSON; Python's json reads it), and a value changed to 123",
        error("manifest.json"),
        both(moved_value("test_data_set_2/output_0.pb"), edit(lambda m: m["tolerance"].__setitem__("atol", math.nan))),
        "manifest.json is not valid JSON",
    ),
    Bundle(
        "rtol-infinity",
        "tolerance.rtol Infinity (not JSON), and a value changed to 123",
        error("manifest.json"),
        both(moved_value("test_data_set_2/output_0.pb"), edit(lambda m: m["tolerance"].__setitem__("rtol", math.inf))),
        "manifest.json is not valid JSON",
    ),
    Bundle(
        "atol-overflow",
        "tolerance.atol 1e999 (JSON, past a double: infinite where it is read)",
        error("manifest.json"),
        both(
            moved_value("test_data_set_2/output_0.pb"),
            edit(lambda m: m["tolerance"].__setitem__("atol", math.inf), lambda t: t.replace("Infinity", "1e999")),
        ),
        "manifest.json is ",
    ),
    Bundle(
        "atol-negative",
        "tolerance.atol -1",
        error("manifest.json"),
        edit(lambda m: m["tolerance"].__setitem__("atol", -1)),
        "is malformed: tolerance.atol: ",
    ),
    Bundle(
        "no-mask-convention",
        "no mask_convention (a field the schema requires)",
        error("manifest.json"),
        edit(lambda m: m.pop("mask_convention")),
        "is malformed: the manifest lacks 'mask_convention'",
    ),
    Bundle(
        "set-without-folder",
        "a set without its folder (required: every verifier labels its lines with it)",
        error("manifest.json"),
        edit(lambda m: m["test_data_sets"][1].pop("folder")),
        "is malformed: test_data_sets[1] lacks 'folder'",
    ),
    Bundle(
        "no-sets",
        "no test set at all (the decode steps kept)",
        error("manifest.json"),
        edit(lambda m: m.__setitem__("test_data_sets", [])),
        "is malformed: test_data_sets: ",
    ),
    Bundle(
        "set-without-outputs",
        "a set whose outputs list is empty",
        error("manifest.json"),
        edit(lambda m: m["test_data_sets"][0].__setitem__("outputs", [])),
        "is malformed: test_data_sets[0].outputs: ",
    ),
    Bundle(
        "step-without-inputs",
        "a decode step whose inputs list is empty",
        error("manifest.json"),
        edit(lambda m: m["decode"]["steps"][0].__setitem__("inputs", [])),
        "is malformed: decode.steps[0].inputs: ",
    ),
    Bundle(
        "duplicate-folder",
        "two sets with the same folder",
        error("manifest.json"),
        edit(lambda m: m["test_data_sets"][1].__setitem__("folder", "test_data_set_0")),
        "is malformed: test_data_sets[1].folder 'test_data_set_0' is also test_data_sets[0]'s",
    ),
    # --- every set compares every output of the model
    Bundle(
        "set-missing-an-output",
        "a set that does not compare present_value",
        error("manifest.json"),
        edit(lambda m: _drop_output(m["test_data_sets"][1]["outputs"], "present_value")),
        "is malformed: test_data_sets[1].outputs lacks the model's output 'present_value'",
    ),
    Bundle(
        "step-missing-an-output",
        "a decode step that does not compare present_key",
        error("manifest.json"),
        edit(lambda m: _drop_output(m["decode"]["steps"][2]["outputs"], "present_key")),
        "is malformed: decode.steps[2].outputs lacks the model's output 'present_key'",
    ),
    Bundle(
        "unknown-output",
        "a set naming an output the model does not give",
        error("manifest.json"),
        edit(
            lambda m: m["test_data_sets"][3]["outputs"].append(dict(m["test_data_sets"][3]["outputs"][0], name="nope"))
        ),
        "is malformed: test_data_sets[3].outputs names 'nope', which the model does not give",
    ),
    Bundle(
        "output-twice",
        "a set comparing present_key twice",
        error("manifest.json"),
        edit(lambda m: m["test_data_sets"][4]["outputs"].append(m["test_data_sets"][4]["outputs"][1])),
        "is malformed: test_data_sets[4].outputs names 'present_key' more than once",
    ),
    Bundle(
        "manifest-outputs-short",
        "the manifest's outputs list without present_value",
        error("manifest.json"),
        edit(lambda m: _drop_output(m["outputs"], "present_value")),
        "is malformed: outputs names 'output', 'present_key'; the model gives 'output', 'present_key', 'present_value'",
    ),
    Bundle(
        "thread-unknown-output",
        "a decode thread from an output the model does not give",
        error("manifest.json"),
        edit(lambda m: m["decode"]["thread"].__setitem__("nope", "past_value")),
        "is malformed: decode.thread names 'nope', which the model does not give",
    ),
    # --- paths and symlinks
    Bundle(
        "dotdot-path",
        "a file at ../outside/... (the same bytes)",
        error("../outside/dotdot-path.pb"),
        path_to(_outside_copy),
        "(outside the bundle)",
    ),
    Bundle(
        "dotdot-inside",
        "a file at test_data_set_0/../test_data_set_0/input_0.pb (inside, but not plain)",
        error("test_data_set_0/../test_data_set_0/input_0.pb"),
        path_to(lambda folder, root: "test_data_set_0/../test_data_set_0/input_0.pb"),
        "(outside the bundle)",
    ),
    Bundle(
        "absolute-path",
        "a file named by its absolute path (inside the bundle)",
        error("/ABSOLUTE"),
        path_to(lambda folder, root: str(folder.resolve() / "test_data_set_0" / "input_0.pb")),
        "(outside the bundle)",
    ),
    Bundle(
        "symlink-out",
        "a vector that is a symlink to an identical file outside the bundle",
        error("test_data_set_1/input_1.pb"),
        linked_out("test_data_set_1/input_1.pb"),
        "(outside the bundle)",
    ),
    Bundle(
        "model-symlink-out",
        "model.onnx a symlink to an identical model outside the bundle",
        error("model.onnx"),
        linked_out("model.onnx"),
        "(outside the bundle)",
    ),
    Bundle(
        "manifest-symlink-out",
        "manifest.json a symlink to an identical manifest outside the bundle",
        error("manifest.json"),
        linked_out("manifest.json"),
        "manifest.json is outside the bundle",
    ),
    Bundle(
        "missing-file",
        "a vector the manifest names, deleted",
        error("test_data_set_3/output_2.pb"),
        lambda folder, root: (folder / "test_data_set_3" / "output_2.pb").unlink(),
        "(missing)",
    ),
    # --- the vectors
    Bundle(
        "bool-256",
        "a mask value 256 in int32_data (a byte of it is 0)",
        error("test_data_set_0/input_5.pb"),
        rewrite(
            "test_data_set_0/input_5.pb",
            lambda n, a: tensor(n, TensorProto.BOOL, a.shape, int32s=[256] + a.ravel().astype(int).tolist()[1:]),
        ),
        "int32_data[0] = 256 is not a bool value",
    ),
    Bundle(
        "bool-raw-2",
        "a mask byte 2 in raw_data",
        error("test_data_set_1/input_5.pb"),
        rewrite(
            "test_data_set_1/input_5.pb",
            lambda n, a: tensor(
                n, TensorProto.BOOL, a.shape, raw=bytes([2]) + a.ravel().astype(np.uint8).tobytes()[1:]
            ),
        ),
        "raw_data[0] = 2 is not a bool value",
    ),
    Bundle(
        "int32-mask",
        "a decode step's mask as int32 (an element type no bundle uses)",
        error("decode/step_0/input_3.pb"),
        rewrite(
            "decode/step_0/input_3.pb",
            lambda n, a: tensor(n, TensorProto.INT32, a.shape, int32s=a.ravel().astype(int).tolist()),
        ),
        "unsupported ONNX data type 6 (int32)",
    ),
    Bundle(
        "negative-dims",
        "a query's dims (2, 4, 16) written as (-2, -4, 16): the product is right",
        error("test_data_set_1/input_0.pb"),
        rewrite("test_data_set_1/input_0.pb", lambda n, a: tensor(n, TensorProto.FLOAT, [-2, -4, 16], raw=a.tobytes())),
        "dims[0] = -2 is negative",
    ),
    Bundle(
        "dims-wrap",
        "an output's dims whose product wraps 2^64 to its 80 values",
        error("test_data_set_0/output_0.pb"),
        rewrite("test_data_set_0/output_0.pb", lambda n, a: tensor(n, TensorProto.FLOAT, [*WRAP, 80], raw=a.tobytes())),
        "hold more than 2^63-1 elements",
    ),
    Bundle(
        "bytes-wrap",
        "an output's dims 2^62 + 80: times 4 bytes, 2^64 + 320, which wraps to its 320",
        error("test_data_set_0/output_0.pb"),
        rewrite(
            "test_data_set_0/output_0.pb", lambda n, a: tensor(n, TensorProto.FLOAT, [2**62 + 80], raw=a.tobytes())
        ),
        f"values for shape [{2**62 + 80}]",
    ),
    Bundle(
        "raw-short",
        "an output's raw_data one float short",
        error("test_data_set_2/output_0.pb"),
        rewrite(
            "test_data_set_2/output_0.pb", lambda n, a: tensor(n, TensorProto.FLOAT, a.shape, raw=a.tobytes()[:-4])
        ),
        "191 values for shape [2,6,16]",
    ),
    Bundle(
        "raw-ragged",
        "an output's raw_data one byte short",
        error("test_data_set_2/output_0.pb"),
        rewrite(
            "test_data_set_2/output_0.pb", lambda n, a: tensor(n, TensorProto.FLOAT, a.shape, raw=a.tobytes()[:-1])
        ),
        "is not whole float32 elements",
    ),
    Bundle(
        "segment",
        "an output with a segment field (and its values)",
        error("test_data_set_3/output_0.pb"),
        rewrite(
            "test_data_set_3/output_0.pb",
            lambda n, a: from_array(
                a, n, extra=length_delimited(SEGMENT, key(1, 0) + varint(0) + key(2, 0) + varint(a.size))
            ),
        ),
        "stored in segments",
    ),
    Bundle(
        "external-data",
        "a vector marked data_location EXTERNAL",
        error("test_data_set_3/input_0.pb"),
        rewrite("test_data_set_3/input_0.pb", lambda n, a: from_array(a, n, extra=key(DATA_LOCATION, 0) + varint(1))),
        "stored in external data",
    ),
    Bundle(
        "string-data-too",
        "an output whose float32 values are in raw_data, and a string in string_data",
        error("test_data_set_4/output_0.pb"),
        rewrite(
            "test_data_set_4/output_0.pb", lambda n, a: from_array(a, n, extra=length_delimited(STRING_DATA, b"x"))
        ),
        "float32 values in string_data",
    ),
    Bundle(
        "truncated-vector",
        "a vector cut in the middle of its raw_data",
        error("decode/step_3/output_2.pb"),
        rewrite("decode/step_3/output_2.pb", lambda n, a: from_array(a, n)[:-7]),
        "TensorProto",
    ),
]

BUNDLE_NAMES = [b.name for b in BUNDLES]


# --- single golden vector files ---------------------------------------------------------------------------------

ARRAYS = {  # (2, 3) of each type a vector may hold, edge values included
    "float32": np.array([[-1.5, 0.0, 3.25], [1e-30, -7e12, 0.1]], np.float32),
    "float16": np.array([[1.0, -2.0, 6.1e-05], [65504.0, 6e-08, 0.1]], np.float16),
    "float64": np.array([[0.1, -2.0, 1e-300], [1e300, -0.0, 3.0]], np.float64),
    "bool": np.array([[True, False, True], [True, False, False]]),
    "uint8": np.array([[0, 1, 127], [128, 200, 255]], np.uint8),
    "int64": np.array([[-(2**40), -1, 0], [1, 2**40, 7]], np.int64),
}
FIELD_OF = {
    "float32": "float_data",
    "float64": "double_data",
    "int64": "int64_data",
    "bool": "int32_data",
    "uint8": "int32_data",
    "float16": "int32_data",
}


def _typed_tensors() -> list[Tensor]:
    out = []
    for dtype, array in ARRAYS.items():
        out.append(Tensor(f"{dtype}-raw_data", from_array(array, dtype), values(array)))
        out.append(Tensor(f"{dtype}-{FIELD_OF[dtype]}", from_array(array, dtype, FIELD_OF[dtype]), values(array)))
        out.append(
            Tensor(
                f"{dtype}-{FIELD_OF[dtype]}-one-per-key",
                from_array(array, dtype, FIELD_OF[dtype], packed=False),
                values(array),
            )
        )
    return out


F = TensorProto.FLOAT
TENSORS = _typed_tensors() + [
    Tensor("scalar", tensor("s", F, [], raw=struct.pack("<f", 2.5)), values(np.array(2.5, np.float32))),
    Tensor("empty", tensor("e", F, [2, 0]), values(np.zeros((2, 0), np.float32))),
    Tensor(
        "nan-and-infinities",
        from_array(np.array([np.nan, np.inf, -np.inf], np.float32), "f"),
        values(np.array([np.nan, np.inf, -np.inf], np.float32)),
        "decoding is not judging: compare() refuses NaN",
    ),
    Tensor(
        "int32-low-bits",
        tensor("b", TensorProto.BOOL, [1], int32s=[2**32 + 1]),
        values(np.array([True])),
        "an int32_data varint past 32 bits: its low 32 bits, as protobuf reads it",
    ),
    Tensor("bool-2", tensor("b", TensorProto.BOOL, [2], int32s=[1, 2]), refused("int32_data[1] = 2 is not a bool")),
    Tensor("bool-256", tensor("b", TensorProto.BOOL, [1], int32s=[256]), refused("int32_data[0] = 256 is not a bool")),
    Tensor("bool-negative", tensor("b", TensorProto.BOOL, [1], int32s=[-1]), refused("int32_data[0] = -1 is not a")),
    Tensor("bool-raw-2", tensor("b", TensorProto.BOOL, [3], raw=b"\x01\x00\x02"), refused("raw_data[2] = 2 is not")),
    Tensor("uint8-256", tensor("u", TensorProto.UINT8, [1], int32s=[256]), refused("256 is not a uint8 value")),
    Tensor("uint8-negative", tensor("u", TensorProto.UINT8, [1], int32s=[-1]), refused("-1 is not a uint8 value")),
    Tensor("float16-65536", tensor("h", TensorProto.FLOAT16, [1], int32s=[65536]), refused("is not a float16 value")),
    Tensor("dims-negative", tensor("f", F, [-1, -3], floats=[1, 2, 3]), refused("dims[0] = -1 is negative")),
    Tensor("dims-wrap", tensor("f", F, [*WRAP, 3], floats=[1, 2, 3]), refused("hold more than 2^63-1 elements")),
    Tensor("dims-bytes-wrap", tensor("f", F, [2**62 + 3], raw=b"\0" * 12), refused(f"values for shape [{2**62 + 3}]")),
    Tensor(
        "dims-past-int64",
        tensor("f", F, [2**62, 4, 0]),
        refused("hold more than 2^63-1 elements"),
        "the product, dim by dim, passes 2^63-1 before the 0",
    ),
    Tensor("zero-dim-with-values", tensor("f", F, [0], raw=b"\0" * 4), refused("1 values for shape [0]")),
    Tensor("raw-ragged", tensor("f", F, [1], raw=b"\0\0\0"), refused("raw_data of 3 bytes is not whole float32")),
    Tensor("raw-long", tensor("f", F, [1], raw=b"\0" * 8), refused("2 values for shape [1]")),
    Tensor("typed-short", tensor("f", F, [3], floats=[1]), refused("1 values for shape [3]")),
    Tensor(
        "segment",
        tensor("f", F, [1], raw=b"\0" * 4, extra=length_delimited(SEGMENT, key(1, 0) + varint(0))),
        refused("stored in segments"),
    ),
    Tensor(
        "external-location",
        tensor("f", F, [1], extra=key(DATA_LOCATION, 0) + varint(1)),
        refused("stored in external data"),
    ),
    Tensor(
        "external-data-field",
        tensor(
            "f",
            F,
            [1],
            raw=b"\0" * 4,
            extra=length_delimited(EXTERNAL_DATA, length_delimited(1, b"location") + length_delimited(2, b"x.bin")),
        ),
        refused("stored in external data"),
    ),
    Tensor("int32-type", tensor("i", TensorProto.INT32, [1], int32s=[1]), refused("unsupported ONNX data type 6")),
    Tensor(
        "bfloat16-type",
        tensor("b", TensorProto.BFLOAT16, [1], int32s=[1]),
        refused("unsupported ONNX data type 16 (bfloat16)"),
    ),
    Tensor(
        "string-type",
        tensor("s", TensorProto.STRING, [1], extra=length_delimited(STRING_DATA, b"x")),
        refused("unsupported ONNX data type 8 (string)"),
    ),
    Tensor("no-type", tensor("n", 0, [1], raw=b"\0" * 4), refused("unsupported ONNX data type 0")),
    Tensor(
        "int64-in-float_data", tensor("i", TensorProto.INT64, [1], floats=[1]), refused("int64 values in float_data")
    ),
    Tensor(
        "float32-in-uint64_data",
        tensor("f", F, [1], extra=key(UINT64_DATA, 0) + varint(1)),
        refused("float32 values in uint64_data"),
    ),
    Tensor(
        "raw-and-typed",
        tensor("f", F, [1], raw=b"\0" * 4, floats=[1]),
        refused("values in both raw_data and float_data"),
    ),
    Tensor("truncated", tensor("f", F, [2], raw=b"\0" * 8)[:-3], refused("TensorProto")),
    Tensor(
        "packed-float-partial", tensor("f", F, [1]) + length_delimited(FLOAT_DATA, b"\0" * 6), refused("TensorProto")
    ),
]

TENSOR_NAMES = [t.name for t in TENSORS]


# --- a static cache's lengths: one request each, for the `lengths` rule ------------------------------------------

MAX_LEN = 32
FULL = ", past the cache's max_len 32: the cache is full (reset the sequence, or export with a larger --max-len)"


@dataclass(frozen=True)
class Lengths:
    name: str
    what: str
    past_len: tuple[int, ...]
    q_len: int
    says: str | None  # the refusal's words; None: within the rule
    rule: dict | None = None  # past_len's rule in place of mha-static's own


def _over(past: int, sequence: int, q_len: int) -> str:
    return f"input 'past_len' is {past} for sequence {sequence}, and {past} + q_len {q_len} is {past + q_len}{FULL}"


def _under(past: int, sequence: int) -> str:
    return f"input 'past_len' is {past} for sequence {sequence}: a length is at least 0"


LENGTHS = [
    Lengths("fills-exactly", "30 + 2 new tokens: the cache filled to its last position", (30, 0), 2, None),
    Lengths("prefill-fills", "a prefill of 32 tokens into an empty cache", (0,), 32, None),
    Lengths("no-sequences", "a batch of 0", (), 1, None),
    Lengths("one-past", "31 + 2: one position past the cache", (31,), 2, _over(31, 0, 2)),
    Lengths("full-then-one", "a full cache handed one more token", (32,), 1, _over(32, 0, 1)),
    Lengths("second-sequence", "the second sequence past the cache, the first within it", (3, 31), 2, _over(31, 1, 2)),
    Lengths("q-alone-too-long", "33 new tokens into an empty cache of 32", (0,), 33, _over(0, 0, 33)),
    Lengths("negative", "a length of -1", (-1,), 1, _under(-1, 0)),
    Lengths("negative-second", "the second sequence's length negative", (4, -2), 1, _under(-2, 1)),
    Lengths(
        "first-broken-first",
        "past the cache at sequence 0, negative at 1: sequence 0 is named",
        (40, -1),
        1,
        _over(40, 0, 1),
    ),
    Lengths("int64-max", "2^63-1 + 2: exact, no wrap to a negative", (2**63 - 1,), 2, _over(2**63 - 1, 0, 2)),
    Lengths("int64-min", "-2^63", (-(2**63),), 1, _under(-(2**63), 0)),
    Lengths(
        "rule-without-plus",
        "a rule of at_most alone, without the words: the plain message",
        (11,),
        1,
        "input 'past_len' is 11 for sequence 0, past the model's limit 10",
        {"description": "at most 10", "at_most": 10},
    ),
    Lengths(
        "rule-without-at-least",
        "a rule with no lower bound takes -5",
        (-5,),
        1,
        None,
        {"description": "at most 10", "at_most": 10},
    ),
    Lengths(
        "rule-plus-unknown-dim",
        "a rule whose `plus` dim the request does not set: the upper bound unchecked",
        (50,),
        1,
        None,
        {"description": "", "plus": "kv_len", "at_most": 10},
    ),
]
LENGTHS_NAMES = [e.name for e in LENGTHS]


def lengths_contract(entry: Lengths) -> dict:
    """The dims contract of a static cache's model (heads 2, width 16, max_len 32), its past_len rule replaced by
    the entry's where it has one: plain JSON."""
    from attn_onnx.exporter.spec import ExportSpec

    spec = ExportSpec(
        module="mha-static", heads=2, embedding_dim=16, mask="causal", causal_align="bottom-right", max_len=MAX_LEN
    )
    contract = json.loads(json.dumps(spec.kind.dims_contract(spec)))
    if entry.rule is not None:
        contract["lengths"] = {"past_len": entry.rule}
    return contract


def lengths_manifest(contract: dict) -> dict:
    """What a bundle manifest says of the same contract: inputs[i].dims, dims, lengths (what Node reads)."""
    return {
        "inputs": [{"name": name, "dims": dims} for name, dims in contract["inputs"].items()],
        "dims": contract["dims"],
        "lengths": contract["lengths"],
    }


def lengths_arrays(entry: Lengths) -> dict[str, np.ndarray]:
    """The request's query (which sets q_len; its values do not matter) and past_len."""
    batch = len(entry.past_len)
    return {
        "query": np.zeros((batch, entry.q_len, 16), np.float32),
        "past_len": np.array(entry.past_len, np.int64).reshape(batch),
    }


# --- the corpus -------------------------------------------------------------------------------------------------


def write_corpus(base: Path, root: Path) -> Path:
    """Every entry under `root` (made here), from the valid bundle `base`; returns root."""
    root.mkdir(parents=True)
    (root / "outside").mkdir()
    for entry in BUNDLES:
        folder = root / entry.name
        shutil.copytree(base, folder, symlinks=True)
        entry.make(folder, root)
    (root / "tensors").mkdir()
    for t in TENSORS:
        (root / "tensors" / f"{t.name}.pb").write_bytes(t.data)
    (root / "index.json").write_text(
        json.dumps({"bundles": BUNDLE_NAMES, "tensors": [f"tensors/{t.name}.pb" for t in TENSORS]})
    )
    return root


def expected_path(entry: Bundle, root: Path) -> str:
    """The path the entry's error names, as its manifest writes it (the absolute path's own, for that entry)."""
    if entry.expect[1] == "/ABSOLUTE":
        return str((root / entry.name).resolve() / "test_data_set_0" / "input_0.pb")
    return entry.expect[1]
