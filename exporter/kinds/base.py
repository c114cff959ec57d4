"""What every module kind describes. Dims are lists of names (dynamic) and numbers (fixed)."""

from __future__ import annotations

import numpy as np

from attn_onnx.errors import UsageError

# export-attn options that every kind takes; each kind adds the ones that apply to it
COMMON_EXPORT_OPTIONS = frozenset({"module_kind", "variant", "optimize", "external_data", "opset", "out", "bundle_dir",
                                   "triton_repo", "name", "triton_max_batch", "triton_gpu", "triton_backend",
                                   "triton_max_queue_delay_us", "force", "no_check"})


class ModuleKind:
    """Base of the module kinds. Subclasses set the class attributes and implement the dims and graph."""

    name: str = ""
    help: str = ""
    has_weights: bool = False
    example_dims: dict[str, int] = {}  # the dims of the example handed to torch.export
    case_dims: tuple[str, ...] = ()  # the dims a check case sets: ("batch", "q_len", "kv_len") or ("size",)
    export_options: frozenset[str] = frozenset()  # export-attn options that apply (beyond the common ones)
    check_options: frozenset[str] = frozenset()  # check-attn options that apply to a model of this kind
    metadata_fields: tuple[str, ...] = ()  # ExportSpec fields written to (and read from) metadata
    decodes: bool = False  # runtime_check also decodes sequences through its cache (mha-cache)
    self_attention: bool = False  # one input x for query, key and value: check cases have q_len == kv_len
    dtypes: tuple[str, ...] = ("float32",)  # the --dtype values it exports
    flag: str = ""  # how the user asks for it, for messages: "--module mha", "--kv-cache"

    def validate(self, spec) -> None:
        """Raise UsageError naming the value that does not fit this kind."""

    def input_dims(self, spec) -> dict[str, list[str | int]]:
        raise NotImplementedError

    def output_dims(self, spec) -> dict[str, list[str | int]]:
        raise NotImplementedError

    def input_dtypes(self, spec) -> dict[str, str]:
        raise NotImplementedError

    def output_dtypes(self, spec) -> dict[str, str]:
        raise NotImplementedError

    def describe(self, spec) -> str:
        """What the graph computes, for the model's doc_string."""
        raise NotImplementedError

    def summary(self, spec) -> str:
        """A few words for export-attn's `wrote ...` line."""
        return self.name

    def build_module(self, spec, state=None, seed: int = 0):
        """The trainable PyTorch module (None for kinds without weights)."""
        return None

    def graph(self, spec, module):
        """The torch.nn.Module that is exported, and run in float64 as the golden."""
        raise NotImplementedError

    def inputs(self, spec, dims: dict[str, int], rng: np.random.Generator,
               mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Inputs of the given dims. `mask` is a 0/1 (batch, q_len or 1, kv_len) array; all ones if None."""
        raise NotImplementedError

    def integer_outputs(self, spec) -> bool:
        return all(np.issubdtype(np.dtype(d), np.integer) for d in self.output_dtypes(spec).values())


class AttentionKindBase(ModuleKind):
    """What `mha` and `attention` share: query, key, value, a mask mode, heads and widths."""

    example_dims = {"batch": 2, "q_len": 3, "kv_len": 4}  # all different, none 1: no dim baked or tied
    dtypes = ("float32", "float16", "bfloat16")
    case_dims = ("batch", "q_len", "kv_len")

    def validate(self, spec) -> None:
        if spec.heads <= 0 or spec.embedding_dim <= 0:
            raise UsageError(f"heads={spec.heads} and embedding_dim={spec.embedding_dim} must both be positive")
        if spec.embedding_dim % spec.heads != 0:
            raise UsageError(f"embedding_dim={spec.embedding_dim} is not divisible by heads={spec.heads}")

    def input_dtypes(self, spec) -> dict[str, str]:
        from attn_onnx.exporter.spec import MASK_DTYPES

        dtypes = {"query": spec.dtype, "key": spec.dtype, "value": spec.dtype}
        if spec.mask == "input":
            dtypes["mask"] = np.dtype(MASK_DTYPES[spec.mask_dtype]).name
        return dtypes

    def output_dtypes(self, spec) -> dict[str, str]:
        return {name: spec.dtype for name in self.output_dims(spec)}

    def _qkv(self, spec, dims, rng, lead: tuple, width: int, mask, mask_lead: tuple) -> dict[str, np.ndarray]:
        from attn_onnx.dtypes import numpy_dtype
        from attn_onnx.exporter.spec import MASK_DTYPES

        b, q, kv = dims["batch"], dims["q_len"], dims["kv_len"]
        dtype = numpy_dtype(spec.dtype)  # drawn in float32 and rounded, so every dtype sees the same numbers
        feeds = {
            "query": rng.standard_normal((b, *lead, q, width), dtype=np.float32).astype(dtype),
            "key": rng.standard_normal((b, *lead, kv, width), dtype=np.float32).astype(dtype),
            "value": rng.standard_normal((b, *lead, kv, width), dtype=np.float32).astype(dtype),
        }
        if spec.mask == "input":
            mask = np.ones((b, q, kv), np.uint8) if mask is None else mask  # (B, q_len or 1, kv_len)
            feeds["mask"] = mask.reshape(mask.shape[0], *mask_lead, *mask.shape[1:]).astype(
                MASK_DTYPES[spec.mask_dtype])
        return feeds
