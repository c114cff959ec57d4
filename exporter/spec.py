"""What an exported model is: the export settings, and how they are written into (and read back from)
the model's `metadata_props`, so that runtime_check can rebuild the PyTorch reference from the file alone."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import numpy as np

from exporter.errors import MetadataError, UsageError

MODULES = ("mha", "attention", "mask")
MASK_MODES = ("input", "causal", "none")
MASK_DTYPES = {"bool": np.bool_, "uint8": np.uint8, "int64": np.int64, "float32": np.float32}
OPSETS = tuple(range(17, 24))  # opsets torch's exporter writes and onnxruntime runs
VARIANTS = ("torch-export",)  # graph variants; fused ones (ONNX Attention, ORT MultiHeadAttention) come later
DTYPES = ("float32",)

METADATA_PREFIX = "attn_onnx."
FORMAT_VERSION = "1"


@dataclass(frozen=True)
class ExportSpec:
    """Settings of one export; everything runtime_check needs to know about the graph's interface."""

    module: str = "mha"  # which module: mha (MultiHeadedAttention), attention (bare), mask (subsequent_mask)
    heads: int = 8  # attention heads
    embedding_dim: int = 512  # model width; d_k = embedding_dim // heads
    mask: str = "input"  # input: a `mask` input; causal: built in the graph from the lengths; none
    mask_dtype: str = "bool"  # element type of the `mask` input (nonzero = attend)
    attn_probs: bool = False  # mha only: also output the attention probabilities (always on for `attention`)
    opset: int = 18  # ONNX default-domain opset
    variant: str = "torch-export"  # how the graph is built
    dtype: str = "float32"  # element type of the float inputs and outputs
    weights: dict[str, dict] = field(default_factory=dict, compare=False)  # state_dict key -> initializer
    weights_source: str = field(default="", compare=False)  # where the weights came from, for people

    @property
    def d_k(self) -> int:
        return self.embedding_dim // self.heads

    @property
    def input_names(self) -> list[str]:
        return list(self.input_dims())

    @property
    def output_names(self) -> list[str]:
        return list(self.output_dims())

    def input_dims(self) -> dict[str, list[str | int]]:
        """Each input's dims: names for the dynamic ones, numbers for the fixed ones."""
        if self.module == "mask":
            return {"size": []}
        if self.module == "mha":
            q, kv = ["batch", "q_len", self.embedding_dim], ["batch", "kv_len", self.embedding_dim]
            mask = ["batch", "mask_q_len", "kv_len"]  # mask_q_len is q_len (full mask) or 1 (padding mask)
        else:
            q, kv = ["batch", self.heads, "q_len", self.d_k], ["batch", self.heads, "kv_len", self.d_k]
            mask = ["batch", 1, "mask_q_len", "kv_len"]
        dims = {"query": q, "key": kv, "value": list(kv)}
        if self.mask == "input":
            dims["mask"] = mask
        return dims

    def output_dims(self) -> dict[str, list[str | int]]:
        if self.module == "mask":
            return {"mask": [1, "size", "size"]}
        probs = ["batch", self.heads, "q_len", "kv_len"]
        if self.module == "mha":
            dims = {"output": ["batch", "q_len", self.embedding_dim]}
            return dims | {"attn_probs": probs} if self.attn_probs else dims
        return {"output": ["batch", self.heads, "q_len", self.d_k], "attn_probs": probs}

    def validate(self) -> "ExportSpec":
        """Raise UsageError naming the offending value; return self so calls chain."""
        choices = {"module": MODULES, "mask": MASK_MODES, "mask_dtype": tuple(MASK_DTYPES),
                   "opset": OPSETS, "variant": VARIANTS, "dtype": DTYPES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UsageError(f"{name}={getattr(self, name)!r} is not one of {list(allowed)}")
        if self.attn_probs and self.module != "mha":
            raise UsageError("--attn-probs applies to --module mha (attention always outputs attn_probs)")
        if self.module == "mask":
            return self
        if self.heads <= 0 or self.embedding_dim <= 0:
            raise UsageError(f"heads={self.heads} and embedding_dim={self.embedding_dim} must both be positive")
        if self.embedding_dim % self.heads != 0:
            raise UsageError(f"embedding_dim={self.embedding_dim} is not divisible by heads={self.heads}")
        return self

    # --- metadata --------------------------------------------------------------------------------------

    def to_metadata(self) -> dict[str, str]:
        """The `metadata_props` that describe the model (only the keys that apply to its module)."""
        from models import MASK_CONVENTION

        meta = {"format": FORMAT_VERSION, "module": self.module, "variant": self.variant,
                "opset": str(self.opset)}
        if self.module == "mask":
            meta["output"] = "uint8 (1, size, size): 1 on and below the diagonal, 0 above"
        else:
            meta.update({"heads": str(self.heads), "d_k": str(self.d_k), "dtype": self.dtype,
                         "mask": self.mask, "mask_convention": MASK_CONVENTION})
            if self.mask == "input":
                meta["mask_dtype"] = self.mask_dtype
            if self.module == "mha":
                meta["embedding_dim"] = str(self.embedding_dim)
                meta["attn_probs"] = "true" if self.attn_probs else "false"
                meta["weights"] = json.dumps(self.weights, sort_keys=True)
                meta["weights_source"] = self.weights_source
        return {METADATA_PREFIX + k: v for k, v in meta.items()}

    @classmethod
    def from_metadata(cls, props: dict[str, str]) -> "ExportSpec":
        """Read a spec back from `metadata_props`; MetadataError names what is missing or malformed."""
        meta = {k[len(METADATA_PREFIX):]: v for k, v in props.items() if k.startswith(METADATA_PREFIX)}
        if not meta:
            raise MetadataError(
                f"the model has no {METADATA_PREFIX}* metadata: it was not written by export-attn, so its "
                "PyTorch reference cannot be rebuilt from the file (module, heads, mask mode are unknown)")
        required = {"module", "variant", "opset"}
        module = meta.get("module")
        if module in ("mha", "attention"):
            required |= {"heads", "d_k", "mask", "dtype"}
            if meta.get("mask") == "input":
                required.add("mask_dtype")
        if module == "mha":
            required |= {"embedding_dim", "attn_probs", "weights"}
        missing = sorted(required - meta.keys())
        if missing:
            raise MetadataError("the model's metadata lacks " + ", ".join(METADATA_PREFIX + m for m in missing))
        try:
            kwargs = {"module": module, "variant": meta["variant"], "opset": int(meta["opset"])}
            if module in ("mha", "attention"):
                heads, d_k = int(meta["heads"]), int(meta["d_k"])
                kwargs.update(heads=heads, embedding_dim=int(meta.get("embedding_dim", heads * d_k)),
                              mask=meta["mask"], mask_dtype=meta.get("mask_dtype", "bool"), dtype=meta["dtype"])
            if module == "mha":
                kwargs.update(attn_probs=meta["attn_probs"] == "true", weights=json.loads(meta["weights"]),
                              weights_source=meta.get("weights_source", ""))
            spec = cls(**kwargs)
            spec.validate()
        except (ValueError, UsageError) as exc:
            raise MetadataError(f"the model's {METADATA_PREFIX}* metadata is malformed: {exc}") from None
        return spec

    def replace(self, **changes) -> "ExportSpec":
        return dataclasses.replace(self, **changes)
