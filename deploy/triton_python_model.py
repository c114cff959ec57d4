"""The model of a Triton Python-backend repository, as `export-attn --triton-backend python` writes it to
REPO/NAME/1/model.py: onnxruntime runs 1/model.onnx beside it, and the requests that Triton's dynamic batcher
hands over together run as one batch.

This file is a template copied as it is: it runs inside Triton's Python-backend stub, imports nothing of
attn_onnx, and needs numpy (< 2, for the 2.51 stub) and onnxruntime in the stub's Python environment.

Before running, each request is checked on its own: its inputs against each other by the model's dims contract
(config parameter "attn_onnx.dims", written by attn_onnx.deploy.triton), and its estimated peak memory against
the budget (config parameter "max_request_bytes", 1 GiB unless set). A request that fails either gets an
INVALID_ARGUMENT error naming the inputs and the dim, or the estimate and the budget; the others run.
"""

import json
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
    seen = {}  # dim name -> (size, input, axis) where it was first seen
    for name, dims in contract["inputs"].items():
        if name not in shapes:
            continue
        shape = [int(n) for n in shapes[name]]
        if len(shape) != len(dims):
            return (f"input {name!r} has {len(shape)} dims {shape}, but the model takes {len(dims)}: "
                    f"({', '.join(str(d) for d in dims)})")
        for axis, (dim, size) in enumerate(zip(dims, shape)):
            if isinstance(dim, int):
                if size != dim:
                    return f"input {name!r} dim {axis} is {size}, but the model takes {dim} there"
            elif dim in seen and seen[dim][0] != size:
                first, other, other_axis = seen[dim]
                return (f"input {name!r} dim {axis} ({dim}) is {size}, but input {other!r} dim {other_axis} "
                        f"({dim}) is {first}")
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
                return (f"{where(dim)}, but {' and '.join(where(p) for p in parts)}: {dim} is "
                        f"{' + '.join(parts)} = {total}")
    return None


def estimated_bytes(contract: dict, feeds: dict) -> int:
    """A request's peak memory estimate: 4 x (2 x the scores' elements + the elements of every input and
    output), the dims taken from the inputs' shapes (and values, for a scalar that sets a dim); a dim that
    cannot be known counts 1."""
    sizes = {}
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
    """Why the request of `feeds` is refused before it runs, or None: its inputs break the dims contract, or
    its estimated peak memory is past the budget."""
    if contract is None:
        return None
    problem = contract_problem(contract, {name: np.shape(a) for name, a in feeds.items()})
    if problem:
        return problem
    estimate = estimated_bytes(contract, feeds)
    if estimate > budget:
        return (f"the request's estimated peak memory, {estimate} bytes (4 x (2 x batch x heads x q_len x kv_len "
                f"+ the elements of every input and output)), is past the model's budget of {budget} bytes "
                "(config.pbtxt parameter max_request_bytes)")
    return None


def invalid_argument(message: str):
    """An INVALID_ARGUMENT error (HTTP 400), where this backend's TritonError takes a code (its INVALID_ARG)."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


def group_requests(inputs: list, batched: bool) -> list:
    """Indices of the requests that can run as one batch, in arrival order: those whose inputs agree in
    dtype and in every dim but the first. A request whose inputs disagree on the batch dim (a mask of
    batch 1 broadcast over the query's batch, say) runs alone, as does every request without batching."""
    groups = {}
    for i, feeds in enumerate(inputs):
        leading = {a.shape[0] if a.ndim else None for a in feeds.values()}
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
    results = [None] * len(inputs)
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
            except Exception:  # noqa: BLE001 - find the request that failed: each runs alone below
                pass
        for i in group:
            try:
                results[i] = run(inputs[i])
            except Exception as exc:  # noqa: BLE001 - this request's error, sent back as its response
                results[i] = exc
    return results


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
        pb_utils.Logger.log_info(f"{args['model_name']}: onnxruntime {ort.__version__} on "
                                 f"{self.session.get_providers()[0]}, {'batched' if self.batched else 'unbatched'}")

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
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, np.ascontiguousarray(result[name]))
                                for name in self.output_names if name in wanted]))
        return responses
