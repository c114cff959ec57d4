"""The model of a Triton Python-backend repository, as `export-attn --triton-backend python` writes it to
REPO/NAME/1/model.py: onnxruntime runs 1/model.onnx beside it, and the requests that Triton's dynamic batcher
hands over together run as one batch.

This file is a template copied as it is: it runs inside Triton's Python-backend stub, imports nothing of
attn_onnx, and needs numpy (< 2, for the 2.51 stub) and onnxruntime in the stub's Python environment.

Before running, each request is checked on its own: its inputs against each other by the model's dims contract
(config parameter "attn_onnx.dims", written by attn_onnx.deploy.triton; for a static cache, its `lengths` rule
holds each past_len[b] to 0 <= past_len[b] and past_len[b] + q_len <= max_len), and its estimated peak memory
against the budget (config parameter "max_request_bytes", 1 GiB unless set). A request that fails either gets an
INVALID_ARGUMENT error naming the inputs and the dim (or the length and the cache's max_len), or the estimate and
the budget; the others run.

Before serving, `initialize` verifies the version folder, which is an attn-onnx bundle (model.onnx, manifest.json
and golden vectors): it refuses a bundle whose manifest's min_onnxruntime is above this onnxruntime, one whose
files differ from their sha256s, and one whose golden sets or decode steps fail here, by raising
TritonModelException with one line naming the set, the runtime and its version (the model is not ready; with
Triton's default --exit-on-error the server exits). An output with valid_lengths (a static cache's presents) is
compared over each batch row's valid part only. Config parameter "attn_onnx.verify": "false" skips the golden
sets (the log says so); the min_onnxruntime check stays.
"""

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def providers_for(kind: str, device_id: str) -> list:
    """onnxruntime's providers for a Triton instance of `kind` ("GPU" or "CPU"): CUDA on the instance's device
    for a GPU instance (an error listing what is available where CUDA is not), the CPU otherwise."""
    if kind != "GPU":
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise pb_utils.TritonModelException(f"requested CUDAExecutionProvider; available: {available}")
    return [("CUDAExecutionProvider", {"device_id": int(device_id or 0)}), "CPUExecutionProvider"]


def session_options(config: dict) -> ort.SessionOptions:
    """onnxruntime's session options from the config's `parameters`: intra_op_thread_count and
    inter_op_thread_count as Triton's onnxruntime backend reads them, and any "session.*" key as a session config
    entry (e.g. session.intra_op.allow_spinning: "0", so idle pool threads do not spin on cores that the
    server's own threads need)."""
    options = ort.SessionOptions()
    for key, value in config.get("parameters", {}).items():
        value = value["string_value"]
        if key == "intra_op_thread_count":
            options.intra_op_num_threads = int(value)
        elif key == "inter_op_thread_count":
            options.inter_op_num_threads = int(value)
        elif key.startswith("session."):
            options.add_session_config_entry(key, value)
    return options


DEFAULT_MAX_REQUEST_BYTES = 1 << 30


def contract_problem(contract: dict, shapes: dict):
    """What breaks `contract` in a request whose inputs have `shapes`, or None: a copy of
    attn_onnx.exporter.kinds.dims.contract_problem (this file imports nothing of attn_onnx; a test holds the two
    to the same answers). Every axis of one name has one size; "is" (or 1 where "or_one"); "sum"."""
    seen: dict[str, tuple[int, str, int]] = {}  # dim name -> (size, input, axis) where it was first seen
    for name, dims in contract["inputs"].items():
        if name not in shapes:
            continue
        shape = [int(n) for n in shapes[name]]
        if len(shape) != len(dims):
            return (
                f"input {name!r} has {len(shape)} dims {shape}, but the model takes {len(dims)}: "
                f"({', '.join(str(d) for d in dims)})"
            )
        for axis, (dim, size) in enumerate(zip(dims, shape)):
            if isinstance(dim, int):
                if size != dim:
                    return f"input {name!r} dim {axis} is {size}, but the model takes {dim} there"
            elif dim in seen and seen[dim][0] != size:
                first, other, other_axis = seen[dim]
                return (
                    f"input {name!r} dim {axis} ({dim}) is {size}, but input {other!r} dim {other_axis} "
                    f"({dim}) is {first}"
                )
            else:
                seen.setdefault(dim, (size, name, axis))

    def where(dim):
        size, name, axis = seen[dim]
        return f"input {name!r} dim {axis} ({dim}) is {size}"

    for dim, rule in contract.get("dims", {}).items():
        if dim not in seen:
            continue
        size = seen[dim][0]
        same = rule.get("is")
        if same is not None and same in seen and size != seen[same][0] and not (rule.get("or_one") and size == 1):
            return f"{where(dim)}, but {where(same)}" + (f" ({dim} is {same} or 1)" if rule.get("or_one") else "")
        parts = rule.get("sum")
        if parts and all(p in seen for p in parts):
            total = sum(seen[p][0] for p in parts)
            if size != total:
                return (
                    f"{where(dim)}, but {' and '.join(where(p) for p in parts)}: {dim} is {' + '.join(parts)} = {total}"
                )
    return None


def values_problem(contract: dict, arrays: dict):
    """What breaks the contract's `lengths` rules in a request of `arrays`, or None: a copy of
    attn_onnx.exporter.kinds.dims.values_problem (a test holds the two, and Node's valuesProblem, to the same
    words). Each value v of a rule's integer input (one per sequence: a static cache's past_len) is at least
    "at_least", and v plus the size of dim "plus" at most "at_most"."""
    rules = contract.get("lengths") or {}
    if not rules:
        return None
    sizes = _resolve(contract, {name: _shape(a) for name, a in arrays.items()})
    for name, rule in rules.items():
        if name not in arrays:
            continue
        low, high, plus = rule.get("at_least"), rule.get("at_most"), rule.get("plus")
        extra = sizes.get(plus) if plus else 0
        for i, value in enumerate(_flat(arrays[name])):
            try:
                value = int(value)  # truncated, as Node's Math.trunc; NaN and infinities are skipped
            except (TypeError, ValueError, OverflowError):
                continue
            if low is not None and value < low:
                return f"input {name!r} is {value} for sequence {i}: a length is at least {low}"
            if high is not None and extra is not None and value + extra > high:
                sum_ = f", and {value} + {plus} {extra} is {value + extra}" if plus else ""
                limit = rule.get("limit") or "the model's limit"
                after = f": {rule['past_limit']}" if rule.get("past_limit") else ""
                return f"input {name!r} is {value} for sequence {i}{sum_}, past {limit} {high}{after}"
    return None


def _resolve(contract: dict, shapes: dict) -> dict:
    sizes: dict[str, int] = {}
    for name, dims in contract["inputs"].items():
        for dim, size in zip(dims, shapes.get(name, ())):
            if isinstance(dim, str):
                sizes.setdefault(dim, int(size))
    for dim, rule in contract.get("dims", {}).items():
        if dim not in sizes and rule.get("sum") and all(p in sizes for p in rule["sum"]):
            sizes[dim] = sum(sizes[p] for p in rule["sum"])
    return sizes


def _shape(array) -> list:
    if hasattr(array, "shape"):
        return [int(n) for n in array.shape]
    shape = []
    while isinstance(array, (list, tuple)):
        shape.append(len(array))
        array = array[0] if array else None
    return shape


def _flat(array) -> list:
    values = array.tolist() if hasattr(array, "tolist") else array
    if not isinstance(values, list):
        return [values]
    return [v for item in values for v in _flat(item)]


def estimated_bytes(contract: dict, feeds: dict) -> int:
    """A request's peak memory estimate: 4 x (2 x the scores' elements + the elements of every input and
    output), the dims taken from the inputs' shapes (and values, for a scalar that sets a dim); a dim that
    cannot be known counts 1."""
    sizes: dict[str, int] = {}
    for name, dims in contract["inputs"].items():
        if name in feeds:
            for dim, size in zip(dims, np.shape(feeds[name])):
                if isinstance(dim, str):
                    sizes.setdefault(dim, int(size))
    for dim, name in (contract.get("values") or {}).items():
        if name in feeds and np.size(feeds[name]) == 1:
            sizes.setdefault(dim, max(int(np.asarray(feeds[name]).reshape(-1)[0]), 0))
    for dim, rule in contract.get("dims", {}).items():
        if dim not in sizes and rule.get("sum") and all(p in sizes for p in rule["sum"]):
            sizes[dim] = sum(sizes[p] for p in rule["sum"])

    def elements(dims):
        count = 1
        for dim in dims:
            count *= dim if isinstance(dim, int) else sizes.get(dim, 1)
        return count

    scores = contract.get("scores")
    total = 2 * elements(scores) if scores else 0
    total += sum(int(np.size(a)) for a in feeds.values())
    total += sum(elements(dims) for dims in contract.get("outputs", {}).values())
    return 4 * total


def request_problem(contract, budget: int, feeds: dict):
    """Why the request of `feeds` is refused before it runs, or None: its inputs break the dims contract (their
    shapes, then the values its `lengths` rules: a static cache's past_len within the cache), or its estimated
    peak memory is past the budget."""
    if contract is None:
        return None
    problem = contract_problem(contract, {name: np.shape(a) for name, a in feeds.items()})
    if problem:
        return problem
    problem = values_problem(contract, feeds)
    if problem:
        return problem
    estimate = estimated_bytes(contract, feeds)
    if estimate > budget:
        return (
            f"the request's estimated peak memory, {estimate} bytes (4 x (2 x batch x heads x q_len x kv_len "
            f"+ the elements of every input and output)), is past the model's budget of {budget} bytes "
            "(config.pbtxt parameter max_request_bytes)"
        )
    return None


def invalid_argument(message: str):
    """An INVALID_ARGUMENT error (HTTP 400), where this backend's TritonError takes a code (its INVALID_ARG)."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


def group_requests(inputs: list, batched: bool) -> list:
    """Indices of the requests that can run as one batch, in arrival order: those whose inputs agree in
    dtype and in every dim but the first. A request whose inputs disagree on the batch dim (a mask of
    batch 1 broadcast over the query's batch, say) runs alone, as does every request without batching."""
    groups: dict[tuple[object, ...], list[int]] = {}
    for i, feeds in enumerate(inputs):
        leading = {a.shape[0] if a.ndim else None for a in feeds.values()}
        key: tuple[object, ...]
        if not batched or len(leading) != 1 or None in leading:
            key = ("alone", i)
        else:
            key = tuple((name, a.shape[1:], a.dtype.str) for name, a in sorted(feeds.items()))
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def run_grouped(run, inputs: list, batched: bool) -> list:
    """`run(feeds) -> {name: array}` once per group of requests: the group's inputs concatenated along the
    batch dim, the outputs split back at each request's batch size. Returns one dict, or the exception, per
    request. A group whose run fails is run again request by request, so one bad request fails alone."""
    results: list[dict | Exception | None] = [None] * len(inputs)
    for group in group_requests(inputs, batched):
        if len(group) > 1:
            try:
                feeds = {name: np.concatenate([inputs[i][name] for i in group]) for name in inputs[group[0]]}
                outputs = run(feeds)
                edges = np.cumsum([len(next(iter(inputs[i].values()))) for i in group])[:-1]
                pieces = {name: np.split(value, edges) for name, value in outputs.items()}
                for k, i in enumerate(group):
                    results[i] = {name: piece[k] for name, piece in pieces.items()}
                continue
            except Exception:
                pass
        for i in group:
            try:
                results[i] = run(inputs[i])
            except Exception as exc:
                results[i] = exc
    return results


# --- the bundle in the version folder, verified before serving (docs/bundle-format.md states the format). A
# reader of golden vectors that attn-onnx writes: ONNX TensorProto files whose values are in raw_data (what
# onnx.numpy_helper.from_array writes), decoded without the onnx package, which the stub's environment need not
# have. Anything else (values in a typed field, segments, external data, another element type) is refused, so a
# bundle this reader cannot read is never served unverified.

FORMAT = "attn-onnx-bundle/1"
RAW_TYPES = {1: np.float32, 2: np.uint8, 7: np.int64, 9: np.bool_, 10: np.float16, 11: np.float64}
VALUE_FIELDS = {
    3: "segment",
    4: "float_data",
    5: "int32_data",
    6: "string_data",
    7: "int64_data",
    10: "double_data",
    11: "uint64_data",
    13: "external_data",
}


class BundleRefused(Exception):
    """Why the bundle is not served: one line."""


def _varint(data: bytes, pos: int):
    result, shift = 0, 0
    while True:
        if pos >= len(data):
            raise BundleRefused("truncated TensorProto")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result & (2**64 - 1), pos
        shift += 7
        if shift > 63:
            raise BundleRefused("malformed TensorProto: a varint longer than 10 bytes")


def read_tensor(data: bytes) -> np.ndarray:
    """A TensorProto's values (raw_data only), checked: BundleRefused for anything this reader does not take."""
    dims, data_type, name, raw, pos, location = [], 0, "", None, 0, 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            if field == 1:
                dims.append(value - 2**64 if value >= 2**63 else value)
            elif field == 2:
                data_type = value
            elif field == 14:
                location = value
            elif field in VALUE_FIELDS:
                raise BundleRefused(f"tensor {name}: values in {VALUE_FIELDS[field]}; this reader takes raw_data")
        elif wire == 2:
            length, pos = _varint(data, pos)
            if length > len(data) - pos:
                raise BundleRefused("truncated TensorProto")
            payload, pos = data[pos : pos + length], pos + length
            if field == 1:
                at = 0
                while at < len(payload):
                    value, at = _varint(payload, at)
                    dims.append(value - 2**64 if value >= 2**63 else value)
            elif field == 8:
                name = payload.decode("utf-8", "replace")
            elif field == 9:
                raw = payload
            elif field in VALUE_FIELDS:
                raise BundleRefused(f"tensor {name}: values in {VALUE_FIELDS[field]}; this reader takes raw_data")
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > len(data):
                raise BundleRefused("truncated TensorProto")
            if field in VALUE_FIELDS:
                raise BundleRefused(f"tensor {name}: values in {VALUE_FIELDS[field]}; this reader takes raw_data")
            pos += width
        else:
            raise BundleRefused(f"unsupported protobuf wire type {wire} in a TensorProto")
    if location == 1:
        raise BundleRefused(f"tensor {name}: stored in external data, which this reader does not take")
    if data_type not in RAW_TYPES:
        raise BundleRefused(f"tensor {name}: unsupported ONNX data type {data_type}")
    count = 1  # dim by dim, before anything is allocated
    for d in dims:
        count *= d
        if d < 0 or count > 2**63 - 1:
            raise BundleRefused(f"tensor {name}: dims {dims} are negative or hold more than 2^63-1 elements")
    dtype = np.dtype(RAW_TYPES[data_type]).newbyteorder("<")
    if raw is None and count:
        raise BundleRefused(f"tensor {name}: no raw_data")
    raw = raw or b""
    if len(raw) != count * dtype.itemsize:
        raise BundleRefused(f"tensor {name}: {len(raw)} bytes of raw_data for shape {dims} of {dtype.name}")
    if data_type == 9 and any(b > 1 for b in raw):
        raise BundleRefused(f"tensor {name}: raw_data holds a bool byte other than 0 or 1")
    return np.frombuffer(raw, dtype).astype(dtype.newbyteorder("="), copy=True).reshape(dims)


def release_key(version: str) -> tuple:
    """(1, 21, 1) for "1.21.1", "1.21.1.dev2025" and "1.21.1rc1": the leading release numbers, compared part by part."""
    parts = []
    for part in str(version).split("."):
        digits = part[: len(part) - len(part.lstrip("0123456789"))]
        if not digits:
            break
        parts.append(int(digits))
        if digits != part:
            break
    return tuple(parts)


def inside(folder: Path, relative) -> Path:
    """The file a manifest path names inside `folder`: plain (relative, no empty, . or .. part, no backslash or
    NUL) and, symlinks resolved, inside the folder; BundleRefused otherwise."""
    parts = str(relative).split("/")
    root = folder.resolve()
    path = (folder / str(relative)).resolve()
    if "\\" in relative or "\0" in relative or any(p in ("", ".", "..") for p in parts) or root not in path.parents:
        raise BundleRefused(f"{relative} is outside the bundle")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(folder: Path) -> dict:
    """The bundle's manifest, after every file it names is found with its sha256: BundleRefused otherwise."""
    try:
        manifest = json.loads(inside(folder, "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise BundleRefused(f"{folder}/manifest.json cannot be read: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleRefused(f"{folder}/manifest.json is not an attn-onnx bundle manifest (format is not {FORMAT})")
    try:
        files = [manifest["model"]] + ([manifest["model"]["data"]] if "data" in manifest["model"] else [])
        files += [f for _, entry in vector_sets(manifest) for f in entry["inputs"] + entry["outputs"]]
        changed = []
        for entry in files:
            path = inside(folder, entry["file"])
            if not path.is_file():
                changed.append(f"{entry['file']} (missing)")
            elif (actual := _sha256(path)) != entry["sha256"]:
                changed.append(
                    f"{entry['file']} (sha256 {actual[:12]}..., the manifest says {entry['sha256'][:12]}...)"
                )
    except (KeyError, TypeError, AttributeError) as exc:
        raise BundleRefused(f"{folder}/manifest.json is malformed: {type(exc).__name__} {exc}") from None
    if changed:
        raise BundleRefused(f"the bundle was changed after it was written: {'; '.join(changed)}")
    if not manifest["test_data_sets"]:
        raise BundleRefused(f"{folder}/manifest.json is malformed: it has no golden set")
    return manifest


def load(folder: Path, entry: dict) -> np.ndarray:
    """A golden vector the manifest names: BundleRefused naming its file for anything read_tensor refuses."""
    try:
        return read_tensor(inside(folder, entry["file"]).read_bytes())
    except BundleRefused as exc:
        raise BundleRefused(f"{entry['file']}: {exc}") from None


def step_label(step: dict) -> str:
    """A decode step as every verifier names it: `decode/step_1 (1 new, past 4)`; a static cache's past_len, one
    per sequence, as `past [4, 0]`."""
    past = step["past_len"]
    past = f"[{', '.join(map(str, past))}]" if isinstance(past, list) else past
    return f"{step['folder']} ({step['new_tokens']} new, past {past})"


def vector_sets(manifest: dict) -> list:
    """(label, entry) for every golden set and then every decode step, in order."""
    sets = [(f"{s['folder']} ({s['case']})", s) for s in manifest["test_data_sets"]]
    steps = (manifest.get("decode") or {}).get("steps", [])
    return sets + [(step_label(s), s) for s in steps]


def compare(name: str, actual: np.ndarray, expected: np.ndarray, atol: float, rtol: float, lengths=None):
    """Why `actual` misses `expected` by the manifest's rule (|actual - expected| <= atol + rtol * |expected|
    elementwise, no NaN or Inf, the same shape and dtype), or None; and the largest |actual - expected|. With
    `lengths` (the output's valid_lengths, a static cache's presents), only [b, :, :lengths[b], ...] of each batch
    row b is compared (axis 2); the rest is unspecified."""
    if actual.shape != expected.shape:
        return f"{name}: shape {list(actual.shape)} != {list(expected.shape)}", math.inf
    if actual.dtype != expected.dtype:
        return f"{name}: dtype {actual.dtype} != {expected.dtype}", math.inf
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    if lengths is not None:
        lengths = [int(n) for n in lengths]
        if e.ndim < 3 or e.shape[0] != len(lengths) or any(n > e.shape[2] for n in lengths):
            return (
                f"{name}: valid_lengths [{','.join(map(str, lengths))}] do not fit shape "
                f"[{','.join(map(str, e.shape))}]"
            ), math.inf
        valid = np.arange(e.shape[2])[None, :] < np.array(lengths, np.int64)[:, None]  # (B, positions)
        valid = valid.reshape(e.shape[0], 1, e.shape[2], *([1] * (e.ndim - 3)))
        a, e = np.where(valid, a, 0.0), np.where(valid, e, 0.0)  # the unspecified part never counts
    bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
    if bad:
        return f"{name}: {bad} NaN/Inf values", math.inf
    diff = np.abs(a - e)
    max_abs = float(diff.max()) if diff.size else 0.0
    if diff.size and bool((diff > atol + rtol * np.abs(e)).any()):
        return f"{name}: max_abs={max_abs:.3g} beyond atol={atol}, rtol={rtol}", max_abs
    return None, max_abs


def verify_bundle(folder: Path, session, runtime: str) -> str:
    """Run every golden set and decode step of the bundle in `folder` on `session`: the summary line, or
    BundleRefused naming the first set that fails, the runtime and its version."""
    manifest = read_manifest(folder)
    try:
        atol, rtol = float(manifest["tolerance"]["atol"]), float(manifest["tolerance"]["rtol"])
        if not (math.isfinite(atol) and math.isfinite(rtol)):
            raise BundleRefused("the manifest's tolerance is not finite")
        outputs = [o.name for o in session.get_outputs()]
        decode = manifest.get("decode") or {}
        past = {}
        if decode:
            first = decode["first_past"]
            past = {name: np.zeros(first["shape"], first["dtype"]) for name in decode["thread"].values()}
        steps = {id(s) for s in decode.get("steps", [])}
        worst = 0.0
        for label, entry in vector_sets(manifest):
            listed = [f["name"] for f in entry["outputs"]]
            if sorted(listed) != sorted(outputs):
                raise BundleRefused(f"golden set {label} compares outputs {listed}; the model gives {outputs}")
            feeds = {f["name"]: load(folder, f) for f in entry["inputs"]}
            decoding = id(entry) in steps
            try:
                results = dict(zip(outputs, session.run(outputs, {**feeds, **past} if decoding else feeds)))
            except Exception as exc:
                raise BundleRefused(
                    f"golden set {label} fails on {runtime}: {type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}"
                ) from None
            for f in entry["outputs"]:
                why, max_abs = compare(
                    f["name"], results[f["name"]], load(folder, f), atol, rtol, f.get("valid_lengths")
                )
                if why:
                    raise BundleRefused(f"golden set {label} fails on {runtime}: {why}")
                worst = max(worst, max_abs)
            if decoding:
                past = {decode["thread"][present]: results[present] for present in decode["thread"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleRefused(f"{folder}/manifest.json is malformed: {type(exc).__name__} {exc}") from None
    return (
        f"{len(manifest['test_data_sets'])} golden sets and {len(steps)} decode steps passed on {runtime} "
        f"(max_abs {worst:.3g})"
    )


def refused_by_release(manifest_folder: Path, version: str):
    """Why this onnxruntime is too old for the bundle (its manifest's min_onnxruntime), or None."""
    try:
        needs = json.loads((manifest_folder / "manifest.json").read_text())["model"].get("min_onnxruntime")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"{manifest_folder}/manifest.json cannot be read: {type(exc).__name__} {exc}"
    if needs and release_key(version) < release_key(needs):
        return (
            f"the bundle needs onnxruntime >= {needs} (its manifest's min_onnxruntime); this server runs "
            f"onnxruntime {version}"
        )
    return None


class TritonPythonModel:
    """Triton's Python-backend interface: initialize once per instance, execute per list of requests."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.batched = config.get("max_batch_size", 0) > 0
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        providers = providers_for(args["model_instance_kind"], args.get("model_instance_device_id", "0"))
        self.session = ort.InferenceSession(str(path), session_options(config), providers=providers)
        self.input_names = [i["name"] for i in config["input"]]
        self.output_names = [o["name"] for o in config["output"]]
        self.scalars = {i.name for i in self.session.get_inputs() if len(i.shape) == 0}  # sent as dims [ 1 ]
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.contract = json.loads(parameters["attn_onnx.dims"]) if "attn_onnx.dims" in parameters else None
        self.max_request_bytes = int(parameters.get("max_request_bytes", DEFAULT_MAX_REQUEST_BYTES))
        runtime = f"onnxruntime {ort.__version__} ({self.session.get_providers()[0]})"
        name, folder = args["model_name"], path.parent
        problem = refused_by_release(folder, ort.__version__)
        if problem:
            raise pb_utils.TritonModelException(f"{name}: {problem}; not serving")
        if parameters.get("attn_onnx.verify", "true").strip().lower() in ("false", "0", "no", "off"):
            verdict = "verification skipped (attn_onnx.verify is false): the bundle's golden sets were not run"
        else:
            started = time.perf_counter()
            try:
                verdict = verify_bundle(folder, self.session, runtime)
            except BundleRefused as exc:
                raise pb_utils.TritonModelException(
                    f'{name}: {exc}; not serving (config parameter attn_onnx.verify "false" serves anyway)'
                ) from None
            verdict += f" in {(time.perf_counter() - started) * 1000:.0f} ms"
        pb_utils.Logger.log_info(f"{name}: {verdict}")
        pb_utils.Logger.log_info(f"{name}: {runtime}, {'batched' if self.batched else 'unbatched'}")

    def _run(self, feeds: dict) -> dict:
        feeds = {name: a.reshape(()) if name in self.scalars else a for name, a in feeds.items()}
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))

    def execute(self, requests):
        inputs, refused, responses = [], {}, []
        for i, request in enumerate(requests):
            tensors = {name: pb_utils.get_input_tensor_by_name(request, name) for name in self.input_names}
            feeds = {name: t.as_numpy() for name, t in tensors.items() if t is not None}
            shaped = {name: a.reshape(()) if name in self.scalars and a.size == 1 else a for name, a in feeds.items()}
            problem = request_problem(self.contract, self.max_request_bytes, shaped)
            if problem:  # refused before it runs: it joins no batch
                refused[i] = problem
            else:
                inputs.append(feeds)
        results = iter(run_grouped(self._run, inputs, self.batched))
        for i, request in enumerate(requests):
            if i in refused:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=invalid_argument(refused[i])))
                continue
            result = next(results)
            if isinstance(result, Exception):
                error = pb_utils.TritonError(f"{type(result).__name__}: {result}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            wanted = set(request.requested_output_names()) or set(self.output_names)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor(name, np.ascontiguousarray(result[name]))
                        for name in self.output_names
                        if name in wanted
                    ]
                )
            )
        return responses
