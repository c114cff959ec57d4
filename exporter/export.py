"""Export the seed's modules to one self-contained ONNX file with dynamic batch and sequence axes.

    spec = ExportSpec(heads=8, embedding_dim=512)
    module = build_module(spec, seed=0)           # or your own trained MultiHeadedAttention
    result = export_model(spec, "mha.onnx", module=module)
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from exporter.errors import ExportError, OutputExistsError, UsageError, first_line
from exporter.spec import MASK_DTYPES, METADATA_PREFIX, ExportSpec
from models import MultiHeadedAttention, attention, causal_mask

# Example shapes handed to torch.export. Every one differs from 1 (torch.export fixes dims of size 0/1)
# and from the others, so no dim gets tied to another or baked in; the post-export check runs elsewhere.
EXAMPLE_BATCH, EXAMPLE_Q_LEN, EXAMPLE_KV_LEN = 2, 3, 4
MAX_SINGLE_FILE_BYTES = 2**31 - 1  # protobuf's limit for one serialized model (no external data)


@dataclass(frozen=True)
class ExportResult:
    """What was written: the path, the spec (with its weight map) and the file's size."""

    path: Path
    spec: ExportSpec
    size_bytes: int


# --- modules -----------------------------------------------------------------------------------------------

def build_module(spec: ExportSpec, state: dict[str, torch.Tensor] | None = None, seed: int = 0) -> nn.Module:
    """A MultiHeadedAttention in eval mode for `spec`: weights from `state`, else random from `seed`."""
    from exporter.weights import load_into

    if spec.module != "mha":
        raise UsageError(f"module {spec.module!r} has no weights; build_module applies to 'mha'")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = MultiHeadedAttention(spec.heads, spec.embedding_dim, dropout=0.0)
        # The seed's `clones` deep-copies one Linear, so all four start identical; draw each on its own,
        # or a swapped query/key/value projection could never be seen in a parity check.
        for linear in module.linears:
            linear.reset_parameters()
    if state is not None:
        load_into(module, state, source="the given state_dict")
    return module.eval()


class MhaGraph(nn.Module):
    """What is exported for `mha`: the module, its mask mode, and optionally its attention probabilities."""

    def __init__(self, mha: nn.Module, mask: str, attn_probs: bool):
        super().__init__()
        self.mha, self.mask, self.attn_probs = mha, mask, attn_probs

    def forward(self, query, key, value, mask=None):
        if self.mask == "causal":
            mask = causal_mask(query.size(1), key.size(1))  # (1, q_len, kv_len)
        output = self.mha(query, key, value, mask)  # (B, q_len, embedding_dim)
        return (output, self.mha.attn) if self.attn_probs else output


class AttentionGraph(nn.Module):
    """What is exported for `attention`: the bare masked scaled dot-product attention, both outputs."""

    def __init__(self, mask: str):
        super().__init__()
        self.mask = mask

    def forward(self, query, key, value, mask=None):
        if self.mask == "causal":
            mask = causal_mask(query.size(-2), key.size(-2)).unsqueeze(0)  # (1, 1, q_len, kv_len)
        return attention(query, key, value, mask=mask)  # (B, h, q_len, d_k), (B, h, q_len, kv_len)


class SubsequentMaskGraph(nn.Module):
    """What is exported for `mask`: subsequent_mask(size) for an int64 scalar `size`."""

    def forward(self, size):
        n = size.item()
        torch._check(n >= 0)
        return causal_mask(n, n)  # (1, size, size) uint8


# --- export ------------------------------------------------------------------------------------------------

def export_onnx(spec: ExportSpec, module: nn.Module | None = None, seed: int = 0) -> tuple[onnx.ModelProto,
                                                                                        ExportSpec]:
    """Export `spec` to an in-memory model. For mha, `module` is any module with the seed's interface
    (`head`, `linears`, `attn`); without one, random weights from `seed` are used.

    Returns the checked model and the spec completed with its weight map.
    """
    spec.validate()
    if spec.module == "mha":
        if module is None:
            module = build_module(spec, seed=seed)
            spec = spec.replace(weights_source=spec.weights_source or f"random (seed={seed})")
        _check_module(spec, module)
        spec = spec.replace(weights_source=spec.weights_source or "a module passed to the Python API")
    graph, args = _graph_and_example(spec, module)
    graph.eval()
    dynamic = {name: {i: d for i, d in enumerate(dims) if isinstance(d, str)}
               for name, dims in spec.input_dims().items() if name != "size"}
    dynamic = {name: {i: ("q_len" if d == "mask_q_len" else d) for i, d in axes.items()}  # renamed below
               for name, axes in dynamic.items()}
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                graph, args, input_names=spec.input_names, output_names=spec.output_names,
                opset_version=spec.opset, dynamo=True, external_data=False, verbose=False,
                dynamic_shapes=dynamic or None, optimize=True)
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {first_line(exc)}") from exc
    proto = program.model_proto
    if spec.module == "mha":
        spec = spec.replace(weights=_weight_map(proto, module))
    _name_dims(proto, spec)
    _describe(proto, spec)
    if proto.ByteSize() > MAX_SINGLE_FILE_BYTES:
        raise ExportError(f"the model is {proto.ByteSize() / 2**30:.2f} GiB; a single .onnx file holds < 2 GiB")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ExportError(f"onnx.checker rejected the exported model: {first_line(exc)}") from exc
    return proto, spec


def export_model(spec: ExportSpec, out: str | Path, module: nn.Module | None = None, force: bool = False,
                 seed: int = 0) -> ExportResult:
    """Export and write one self-contained .onnx file atomically; refuse to overwrite unless `force`."""
    out = Path(out)
    check_writable(out, force)
    proto, spec = export_onnx(spec, module, seed)
    size = write_atomic(out, proto.SerializeToString(), force)
    return ExportResult(path=out, spec=spec, size_bytes=size)


def check_writable(out: Path, force: bool) -> None:
    """Raise before any work is done if `out` cannot be written as asked."""
    if out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a directory")
    if out.exists() and not force:
        raise OutputExistsError(f"{str(out)!r} exists; pass --force to overwrite it")
    if not out.parent.exists() and str(out.parent):
        raise UsageError(f"the folder of --out {str(out.parent)!r} does not exist")


def write_atomic(out: Path, data: bytes, force: bool) -> int:
    """Write `data` to a temp file beside `out`, then move it into place: never a half-written file.

    Without `force`, an existing `out` is never replaced, even if it appeared while exporting.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent or Path("."))
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


# --- helpers -----------------------------------------------------------------------------------------------

def _check_module(spec: ExportSpec, module: nn.Module) -> None:
    """The module has the seed's interface and the spec's sizes; put it in eval mode."""
    heads = getattr(module, "head", None)
    linears = getattr(module, "linears", None)
    if heads is None or linears is None:
        raise UsageError("the module lacks the seed's interface (attributes `head` and `linears`)")
    width = linears[0].in_features
    if (heads, width) != (spec.heads, spec.embedding_dim):
        raise UsageError(f"the module has heads={heads}, embedding_dim={width} but the spec asks for "
                         f"heads={spec.heads}, embedding_dim={spec.embedding_dim}")
    if module.training:
        module.eval()  # dropout is a training-time op


def _graph_and_example(spec: ExportSpec, module: nn.Module | None) -> tuple[nn.Module, tuple]:
    gen = torch.Generator().manual_seed(0)
    b, q, kv = EXAMPLE_BATCH, EXAMPLE_Q_LEN, EXAMPLE_KV_LEN
    if spec.module == "mask":
        return SubsequentMaskGraph(), (torch.tensor(5, dtype=torch.int64),)
    if spec.module == "mha":
        graph = MhaGraph(module, spec.mask, spec.attn_probs)
        shapes = [(b, q, spec.embedding_dim), (b, kv, spec.embedding_dim), (b, kv, spec.embedding_dim)]
        mask_shape = (b, q, kv)
    else:
        graph = AttentionGraph(spec.mask)
        shapes = [(b, spec.heads, q, spec.d_k), (b, spec.heads, kv, spec.d_k), (b, spec.heads, kv, spec.d_k)]
        mask_shape = (b, 1, q, kv)
    args = [torch.randn(shape, generator=gen) for shape in shapes]
    if spec.mask == "input":
        args.append(torch.from_numpy(np.ones(mask_shape, dtype=MASK_DTYPES[spec.mask_dtype])))
    return graph, tuple(args)


def _weight_map(proto: onnx.ModelProto, module: nn.Module) -> dict[str, dict]:
    """Find each state_dict tensor among the initializers (the exporter may rename or transpose them)."""
    inits = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    found = {}
    for key, tensor in module.state_dict().items():
        value = tensor.detach().cpu().numpy()
        match = next(({"initializer": n, "transposed": False} for n, a in inits.items()
                      if a.shape == value.shape and np.array_equal(a, value)), None)
        if match is None and value.ndim == 2:
            match = next(({"initializer": n, "transposed": True} for n, a in inits.items()
                          if a.shape == value.T.shape and np.array_equal(a, value.T)), None)
        if match is None:
            raise ExportError(f"weight {key!r} is not among the exported initializers; "
                              "the reference cannot be rebuilt from this file")
        found[key] = match
    return found


def _name_dims(proto: onnx.ModelProto, spec: ExportSpec) -> None:
    """Give every input and output the dims of the spec; fail if the exporter fixed a dim we asked free."""
    for values, wanted, is_input in ((proto.graph.input, spec.input_dims(), True),
                                     (proto.graph.output, spec.output_dims(), False)):
        for value in values:
            dims = value.type.tensor_type.shape.dim
            want = wanted[value.name]
            if len(dims) != len(want):
                raise ExportError(f"{value.name!r} has rank {len(dims)}, expected {len(want)}")
            for dim, w in zip(dims, want):
                if isinstance(w, int):
                    if dim.HasField("dim_value") and dim.dim_value != w:
                        raise ExportError(f"{value.name!r} has a dim {dim.dim_value}, expected {w}")
                    dim.dim_value = w
                else:
                    if dim.HasField("dim_value") and is_input:
                        raise ExportError(f"the exporter fixed dim {w!r} of {value.name!r} at {dim.dim_value}")
                    dim.dim_param = w


def _describe(proto: onnx.ModelProto, spec: ExportSpec) -> None:
    import onnxscript

    from exporter import __version__

    props = spec.to_metadata() | {
        METADATA_PREFIX + "producer.attn_onnx": __version__,
        METADATA_PREFIX + "producer.torch": torch.__version__,
        METADATA_PREFIX + "producer.onnx": onnx.__version__,
        METADATA_PREFIX + "producer.onnxscript": onnxscript.__version__,
    }
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    proto.producer_name, proto.producer_version = "attn-onnx", __version__
    what = {"mha": f"MultiHeadedAttention(heads={spec.heads}, embedding_dim={spec.embedding_dim})",
            "attention": f"attention(query, key, value, mask) with heads={spec.heads}, d_k={spec.d_k}",
            "mask": "subsequent_mask(size)"}[spec.module]
    proto.doc_string = (f"{what}, exported by attn-onnx. Inputs: {spec.input_dims()}; outputs: "
                        f"{spec.output_dims()}." + ("" if spec.module == "mask" else
                                                    f" Mask: {spec.mask}; nonzero = attend, 0 = masked."))


@contextlib.contextmanager
def _quiet_exporter():
    """torch's exporter logs progress and warnings that say nothing to our users."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)

