"""The model of a Triton Python-backend repository, as `export-attn --triton-backend python` writes it to
REPO/NAME/1/model.py: onnxruntime runs 1/model.onnx beside it, and the requests that Triton's dynamic batcher
hands over together run as one batch.

This file is a template copied as it is: it runs inside Triton's Python-backend stub, imports nothing of
attn_onnx, and needs numpy (< 2, for the 2.51 stub) and onnxruntime in the stub's Python environment.
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
        pb_utils.Logger.log_info(f"{args['model_name']}: onnxruntime {ort.__version__} on "
                                 f"{self.session.get_providers()[0]}, {'batched' if self.batched else 'unbatched'}")

    def _run(self, feeds: dict) -> dict:
        feeds = {name: a.reshape(()) if name in self.scalars else a for name, a in feeds.items()}
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))

    def execute(self, requests):
        inputs, responses = [], []
        for request in requests:
            tensors = {name: pb_utils.get_input_tensor_by_name(request, name) for name in self.input_names}
            inputs.append({name: t.as_numpy() for name, t in tensors.items() if t is not None})
        for request, result in zip(requests, run_grouped(self._run, inputs, self.batched)):
            if isinstance(result, Exception):
                error = pb_utils.TritonError(f"{type(result).__name__}: {result}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            wanted = set(request.requested_output_names()) or set(self.output_names)
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, np.ascontiguousarray(result[name]))
                                for name in self.output_names if name in wanted]))
        return responses
