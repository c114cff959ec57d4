"""What an export is asked for (ExportSpec: the settings) and what it produced (ModelSpec: the settings, the
weight map, where the weights came from, auto's record), and how a ModelSpec is written into (and read back
from) the model's `metadata_props`, so that runtime_check can rebuild the PyTorch reference from the file alone.

What differs between module kinds (dims, dtypes, which fields apply) lives in `exporter/kinds/`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Self, TypedDict

from attn_onnx.errors import MetadataError, UsageError
from attn_onnx.vocab import (
    CAUSAL_ALIGNS,
    DTYPES,
    MASK_CONVENTION,
    MASK_DTYPES,
    MASK_MODES,
    OPTIMIZE_LEVELS,
    QUANTIZE_MODES,
)

OPSETS = tuple(range(17, 25))  # opsets torch's exporter writes and onnxruntime runs

METADATA_PREFIX = "attn_onnx."
FORMAT_VERSION = "1"
MASK_OUTPUT = "uint8 (1, size, size): 1 on and below the diagonal, 0 above"


@dataclass(frozen=True, eq=False)
class ExportSpec:
    """Settings of one export; everything runtime_check needs to know about the graph's interface. Two specs
    are equal when their settings are (a ModelSpec's products aside)."""

    module: str = "mha"  # which module kind (exporter/kinds/): mha (MultiHeadedAttention), attention (bare),
    # mask (subsequent_mask), and the forms of mha: mha-cache (--kv-cache), mha-self (--self-attention),
    # mha-static (--kv-cache --max-len N)
    heads: int = 8  # attention heads
    embedding_dim: int = 512  # model width; d_k = embedding_dim // heads
    mask: str = "input"  # input: a `mask` input; causal: built in the graph from the lengths; none
    mask_dtype: str = "bool"  # element type of the `mask` input (nonzero = attend)
    attn_probs: bool = False  # mha only: also output the attention probabilities (always on for `attention`)
    opset: int = 18  # ONNX default-domain opset
    variant: str = "torch-export"  # how the graph is built: a builder in exporter/variants/
    dtype: str = "float32"  # element type of the float inputs, outputs and weights (float32, float16, bfloat16)
    optimize: str = ""  # "": as built; "extended": as onnxruntime optimizes it offline at that level
    quantize: str = ""  # "": float weights; "int8": the projections dynamically quantized (onnxruntime's)
    causal_align: str = "top-left"  # with mask causal: top-left (the seed's subsequent_mask) or bottom-right
    max_len: int = 0  # mha-static (--kv-cache --max-len): the cache's capacity in tokens; 0 for the other kinds

    def settings(self) -> tuple:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(ExportSpec))

    def __eq__(self, other):
        return self.settings() == other.settings() if isinstance(other, ExportSpec) else NotImplemented

    def __hash__(self):
        return hash(self.settings())

    @property
    def kind(self):
        """The description of this spec's module kind (exporter/kinds/)."""
        from attn_onnx.exporter.kinds import KINDS, MODULES

        if self.module not in KINDS:
            raise UsageError(f"module={self.module!r} is not one of {list(MODULES)}")
        return KINDS[self.module]

    @property
    def precision(self) -> str:
        """What the model computes at, for the tolerance profile runners hold it to: its dtype, or int8."""
        return self.quantize or self.dtype

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
        return self.kind.input_dims(self)

    def output_dims(self) -> dict[str, list[str | int]]:
        return self.kind.output_dims(self)

    def input_dtypes(self) -> dict[str, str]:
        return self.kind.input_dtypes(self)

    def output_dtypes(self) -> dict[str, str]:
        return self.kind.output_dtypes(self)

    def validate(self) -> Self:
        """Raise UsageError naming the offending value; return self so calls chain."""
        from attn_onnx.exporter.variants import VARIANTS

        kind = self.kind
        choices = {
            "mask": MASK_MODES,
            "mask_dtype": tuple(MASK_DTYPES),
            "opset": OPSETS,
            "variant": tuple(VARIANTS),
            "dtype": DTYPES,
            "optimize": ("", *OPTIMIZE_LEVELS),
            "causal_align": CAUSAL_ALIGNS,
            "quantize": ("", *QUANTIZE_MODES),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UsageError(f"{name}={getattr(self, name)!r} is not one of {list(allowed)}")
        if self.dtype not in kind.dtypes:
            raise UsageError(f"--dtype {self.dtype} does not apply to {kind.flag}: it takes {'/'.join(kind.dtypes)}")
        if self.quantize and "quantize" not in kind.settings:
            raise UsageError(f"--quantize does not apply to {kind.flag}")
        if self.quantize and self.dtype != "float32":
            raise UsageError(f"--quantize {self.quantize} quantizes float32 weights; not with --dtype {self.dtype}")
        if self.attn_probs and "attn_probs" not in kind.settings:
            raise UsageError(
                f"--attn-probs does not apply to --module {self.module} (mha only; attention always outputs attn_probs)"
            )
        if self.max_len and "max_len" not in kind.settings:
            raise UsageError(
                f"max_len={self.max_len} applies to a static cache (--kv-cache --max-len), not {kind.flag}"
            )
        kind.validate(self)
        if self.causal_align != "top-left" and self.mask != "causal":
            raise UsageError(f"causal_align={self.causal_align!r} applies to mask 'causal' only, not {self.mask!r}")
        VARIANTS[self.variant].check(self)
        return self

    def replace(self, **changes) -> Self:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, eq=False)
class ModelSpec(ExportSpec):
    """What an export produced, as its model's metadata states it: the settings, and what building them gave."""

    weights: dict[str, dict] = field(default_factory=dict)  # state_dict key -> initializer (kinds with weights)
    weights_source: str = ""  # where the weights came from, for people
    tuning: dict = field(default_factory=dict)  # --attention-impl auto: why this variant; {} otherwise
    # --quantize: the integer format the file holds (exporter/quantize.py FORMAT, what a fresh export writes);
    # a file from before it was recorded reads as UNRECORDED_FORMAT
    quantize_format: str = ""

    @classmethod
    def of(cls, settings: ExportSpec, **products) -> ModelSpec:
        """`settings` with what the export produced (weights, weights_source, tuning)."""
        return cls(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(ExportSpec)}, **products)

    # --- metadata --------------------------------------------------------------------------------------

    def to_metadata(self) -> dict[str, str]:
        """The `metadata_props` that describe the model (only the fields its kind carries)."""
        meta = {"format": FORMAT_VERSION, "module": self.module, "variant": self.variant, "opset": str(self.opset)}
        if self.optimize:
            meta["optimize"] = self.optimize
        if self.quantize:
            from attn_onnx.exporter.quantize import FORMAT

            meta["quantize"] = self.quantize
            meta["quantize_format"] = self.quantize_format or FORMAT
        if self.tuning:
            meta["tuning"] = json.dumps(self.tuning, sort_keys=True)
        for name in self.kind.metadata_fields:
            value = _encode(self, name)
            if value is not None:
                meta[name] = value
        return {METADATA_PREFIX + k: v for k, v in meta.items()}

    @classmethod
    def from_metadata(cls, props: dict[str, str]) -> ModelSpec:
        """Read a spec back from `metadata_props`; MetadataError names what is missing or malformed."""
        from attn_onnx.exporter.kinds import KINDS

        meta = {k[len(METADATA_PREFIX) :]: v for k, v in props.items() if k.startswith(METADATA_PREFIX)}
        if not meta:
            raise MetadataError(
                f"the model has no {METADATA_PREFIX}* metadata: it was not written by export-attn, so its "
                "PyTorch reference cannot be rebuilt from the file (module, heads, mask mode are unknown)"
            )
        if meta.get("module") not in KINDS:
            raise MetadataError(
                f"the model's {METADATA_PREFIX}module is {meta.get('module')!r}, not one of {list(KINDS)}"
            )
        kind = KINDS[meta["module"]]
        optional = {"weights_source", "mask_convention", "output", "embedding_dim", "causal_align", "cache_contract"}
        required = {"variant", "opset"} | (set(kind.metadata_fields) - optional)
        if meta.get("mask") != "input":
            required.discard("mask_dtype")
        if "embedding_dim" in kind.metadata_fields:
            required.add("embedding_dim")
        missing = sorted(required - meta.keys())
        if missing:
            raise MetadataError("the model's metadata lacks " + ", ".join(METADATA_PREFIX + m for m in missing))
        try:
            kwargs: _Fields = {
                "module": kind.name,
                "variant": meta["variant"],
                "opset": int(meta["opset"]),
                "optimize": meta.get("optimize", ""),
                "quantize": meta.get("quantize", ""),
            }
            if "heads" in meta:
                kwargs.update(
                    {
                        "heads": int(meta["heads"]),
                        "embedding_dim": int(meta.get("embedding_dim", int(meta["heads"]) * int(meta["d_k"]))),
                        "mask": meta["mask"],
                        "mask_dtype": meta.get("mask_dtype", "bool"),
                        "dtype": meta["dtype"],
                        "causal_align": meta.get("causal_align", "top-left"),
                    }
                )
            if "attn_probs" in meta:
                kwargs["attn_probs"] = meta["attn_probs"] == "true"
            if "max_len" in meta:
                kwargs["max_len"] = int(meta["max_len"])
            if "weights" in meta:
                kwargs.update(
                    {"weights": json.loads(meta["weights"]), "weights_source": meta.get("weights_source", "")}
                )
            if "tuning" in meta:
                kwargs["tuning"] = json.loads(meta["tuning"])
            if kwargs["quantize"]:
                from attn_onnx.exporter.quantize import UNRECORDED_FORMAT

                kwargs["quantize_format"] = meta.get("quantize_format", UNRECORDED_FORMAT)
            spec = cls(**kwargs)
            spec.validate()
        except (ValueError, UsageError) as exc:
            raise MetadataError(f"the model's {METADATA_PREFIX}* metadata is malformed: {exc}") from None
        if "d_k" in meta and int(meta["d_k"]) != spec.d_k:
            raise MetadataError(
                f"the model's metadata is inconsistent: d_k={meta['d_k']} but embedding_dim/heads={spec.d_k}"
            )
        return spec


class _Fields(TypedDict, total=False):
    """The ModelSpec fields from_metadata reads off the metadata; those it leaves out take their defaults."""

    module: str
    variant: str
    opset: int
    optimize: str
    quantize: str
    heads: int
    embedding_dim: int
    mask: str
    mask_dtype: str
    dtype: str
    causal_align: str
    attn_probs: bool
    max_len: int
    weights: dict[str, dict]
    weights_source: str
    tuning: dict
    quantize_format: str


def _encode(spec: ModelSpec, name: str) -> str | None:
    """One field as metadata text; None where it does not apply (mask_dtype without a mask input)."""
    if name == "mask_dtype" and spec.mask != "input":
        return None
    if name == "causal_align" and spec.mask != "causal":
        return None
    if name == "mask_convention":
        return MASK_CONVENTION
    if name == "output":
        return MASK_OUTPUT
    if name == "cache_contract":
        return spec.kind.cache_contract(spec)
    value = spec.d_k if name == "d_k" else getattr(spec, name)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)
