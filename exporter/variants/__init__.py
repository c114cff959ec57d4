"""Graph variants: each builds the ONNX graph of a spec *and* says where every state_dict tensor went.

A variant is one file here with a `build(spec, module) -> Built` function, listed in
VARIANTS with what it can build (checked before any work, without torch).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from attn_onnx.errors import UsageError
from attn_onnx.exporter.variants.base import Built, find_by_value, tensor_of

__all__ = ["VARIANTS", "DEFAULT", "Built", "Variant", "find_by_value", "tensor_of"]


@dataclass(frozen=True)
class Variant:
    name: str
    file: str  # exporter/variants/<file>.py, imported on first build
    help: str
    modules: tuple[str, ...] = ("mha", "attention", "mask", "mha-cache", "mha-self", "mha-static")  # kinds it builds
    attn_probs: bool = True  # can output the attention probabilities
    min_opset: int = 17
    module_opsets: tuple[tuple[str, int], ...] = ()  # (kind, its min opset) where a kind needs more than min_opset
    runs_in: str = "any ONNX runtime"  # where its graph runs, in words
    dtypes: tuple[str, ...] = ("float32", "float16", "bfloat16")
    masks: tuple[str, ...] = ("input", "causal", "none")  # the mask modes it builds
    d_k_multiple: int = 1  # d_k must be a multiple of this (a kernel's constraint)
    no_dtype: str = ""  # why the other dtypes are refused
    standard_ops: bool = True  # only standard ONNX operators (no com.microsoft): runs beyond onnxruntime

    def check(self, spec) -> None:
        """UsageError where this variant cannot build `spec`."""
        flag = f"--attention-impl {self.name}"
        if spec.module not in self.modules:
            from attn_onnx.exporter.kinds import KINDS

            modules = [m for m in self.modules if not KINDS[m].extends]  # --module values; the others are flags
            forms = [KINDS[m].flag for m in self.modules if KINDS[m].extends]
            also = f" (also with {', '.join(forms)})" if forms else ""
            raise UsageError(f"{flag} builds --module {'/'.join(modules)}{also}, not {spec.module}")
        if spec.attn_probs and not self.attn_probs:
            raise UsageError(
                f"{flag} cannot output attn_probs (its fused kernel does not return the "
                "probabilities); use --attention-impl torch-export with --attn-probs"
            )
        if spec.mask not in self.masks:
            raise UsageError(f"{flag} takes --mask {'/'.join(self.masks)}, not {spec.mask}")
        if spec.d_k % self.d_k_multiple:  # (the kinds it builds all have heads)
            raise UsageError(
                f"{flag} needs d_k (embedding-dim / heads) a multiple of {self.d_k_multiple}, its "
                f"kernel's constraint; got d_k={spec.d_k}"
            )
        if spec.dtype not in self.dtypes:
            raise UsageError(f"{flag} takes --dtype {'/'.join(self.dtypes)}, not {spec.dtype}: {self.no_dtype}")
        if spec.opset < self.min_opset:
            raise UsageError(f"{flag} needs --opset {self.min_opset} or later; got {spec.opset}")
        needs = dict(self.module_opsets).get(spec.module, 0)
        if spec.opset < needs:
            raise UsageError(f"{flag} needs --opset {needs} or later for {spec.kind.flag}; got {spec.opset}")

    def build(self, spec, module) -> Built:
        """The model of `spec` with the weights of `module` (None for a kind without weights)."""
        return importlib.import_module(f"attn_onnx.exporter.variants.{self.file}").build(spec, module)

    def coverage_shapes(self, spec) -> tuple[tuple[int, int, int], ...]:
        """(batch, q_len, kv_len) shapes that run the paths of this variant's graph that small shapes do not
        (tiled: 2 tiles, and 3 or more ending in a partial one): its file's `coverage_shapes(spec)`, if any.
        runtime_check.coverage then proves they do."""
        shapes = getattr(importlib.import_module(f"attn_onnx.exporter.variants.{self.file}"), "coverage_shapes", None)
        return tuple(shapes(spec)) if shapes else ()


VARIANTS = {
    v.name: v
    for v in (
        Variant(
            "torch-export", "torch_export", "attention()'s MatMul/Softmax graph as torch.onnx writes it (the reference)"
        ),
        Variant(
            "additive-mask",
            "additive_mask",
            "attention()'s MatMul/Softmax graph built by hand, the mask added as a bias shared by the heads",
            modules=("mha", "mha-self"),
            attn_probs=False,
            min_opset=18,
        ),
        Variant(
            "onnx-attention",
            "onnx_attention",
            "the standard ONNX Attention op (with a static cache: TensorScatter, written in place, and Attention)",
            modules=("mha", "mha-self", "mha-static"),
            attn_probs=False,
            min_opset=23,
            module_opsets=(("mha-static", 24),),
            runs_in="runtimes with opset 23 (onnxruntime >= 1.23; a static cache: opset 24, onnxruntime >= 1.25)",
        ),
        Variant(
            "tiled",
            "tiled",
            "attention()'s MatMul/Softmax one tile of query rows at a time, each over only the "
            "keys the mask can allow (a causal mask's upper triangle skipped, no (len, len) tensor, the padding's "
            "keys not even projected); a Loop of standard operators",
            modules=("mha", "mha-self"),
            attn_probs=False,
            min_opset=18,
        ),
        Variant(
            "ort-gqa",
            "ort_gqa",
            "onnxruntime's com.microsoft.GroupQueryAttention (no scores tensor, the upper "
            "triangle skipped) where the mask is causal plus key padding, decided at run time; ort-mha's graph "
            "for any other mask; with a static cache, GroupQueryAttention on the shared buffers where it takes the "
            "step",
            modules=("mha", "mha-self", "mha-static"),
            attn_probs=False,
            min_opset=18,
            module_opsets=(("mha-static", 24),),
            runs_in="onnxruntime only",
            standard_ops=False,
            dtypes=("float32",),
            no_dtype="not measured at other dtypes yet",
            masks=("input", "causal"),
            d_k_multiple=8,
        ),
        Variant(
            "ort-mha",
            "ort_mha",
            "onnxruntime's fused com.microsoft.MultiHeadAttention",
            modules=("mha", "mha-self"),
            attn_probs=False,
            min_opset=18,
            runs_in="onnxruntime only",
            standard_ops=False,
            dtypes=("float32", "float16"),
            no_dtype="onnxruntime's CPU has no bfloat16 kernel for it and onnx.reference does not run com.microsoft "
            "operators, so nothing here could check it",
        ),
    )
}
DEFAULT = "torch-export"
