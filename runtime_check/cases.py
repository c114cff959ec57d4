"""The cases a model is checked on: shapes x masks, each with deterministic feeds.

A case's data depends only on the seed and the case's name, so narrowing or widening the sweep never
changes the numbers of the cases that remain. What the inputs look like is the module kind's business
(`exporter/kinds/`); which shapes and masks to try is this file's.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from attn_onnx.errors import UsageError
from attn_onnx.exporter.spec import ExportSpec
from attn_onnx.vocab import GRAPH_MASK, MASK_PATTERNS


@dataclass(frozen=True)
class Sweep:
    """Which cases to run. `shapes` (batch, q_len, kv_len) overrides the batches x lengths grid."""

    batches: tuple[int, ...] = (1, 2, 5)  # batch sizes
    lengths: tuple[int, ...] = (1, 7, 64, 257)  # query and key lengths; pairs q != kv are added for cross
    masks: tuple[str, ...] | None = None  # mask patterns (MASK_PATTERNS); None: every pattern
    shapes: tuple[tuple[int, int, int], ...] | None = None  # explicit (batch, q_len, kv_len) list
    sizes: tuple[int, ...] = (1, 5, 20, 64)  # for the `mask` module: subsequent_mask(size)
    # also the shapes the model's variant names to run its every control-flow path (tiled: 2 tiles, 3 or more
    # ending in a partial one), and the check then fails a path no case ran (runtime_check.coverage); None:
    # unless `shapes` names the shapes to run (a narrowed sweep, whose unrun paths are named, not failed)
    cover: bool | None = None

    @property
    def covers(self) -> bool:
        return self.cover if self.cover is not None else self.shapes is None

    def validate(self) -> Sweep:
        unknown = sorted(set(self.masks or ()) - MASK_PATTERNS.keys())
        if unknown:
            raise UsageError(f"unknown mask pattern(s) {unknown}; choose from {list(MASK_PATTERNS)}")
        dims = [*self.batches, *self.lengths, *(d for s in self.shapes or () for d in s)]
        if any(d < 1 for d in dims) or any(s < 0 for s in self.sizes):
            raise UsageError("batch sizes and lengths must be >= 1, sizes >= 0")
        return self

    def shape_list(self) -> list[tuple[int, int, int]]:
        if self.shapes is not None:
            return list(self.shapes)
        n = len(self.lengths)
        pairs = [(q, q) for q in self.lengths]  # self-attention
        pairs += [(q, self.lengths[(i + 1) % n]) for i, q in enumerate(self.lengths) if n > 1]  # cross
        return [(b, q, kv) for b in self.batches for q, kv in pairs]


# The gate: the one sweep export-attn runs before it writes a model, --attention-impl auto runs on each
# candidate, and check-attn --quick runs. Shapes unlike the export's example (2, 3, 4); cross-attention
# lengths; a square batch of 3 with distinct padding lengths (causal+padding there is ort-gqa's
# GroupQueryAttention branch); every mask pattern, causal and causal+padding (the ones auto times) included; and,
# through `cover`, the shapes that run the variant's every control-flow path, proven by the coverage probe.
QUICK = Sweep(shapes=((3, 11, 5), (1, 17, 6), (3, 9, 9)), sizes=(1, 5, 20), cover=True)
# The masks a variant's coverage shapes run with (their paths are the shapes'; the masks' own paths, a fully-
# masked row say, the small shapes run): keys padded away, causal reach, holes and a fully-masked row.
COVER_MASKS = ("causal+padding", "padding", "masked_row")


@dataclass(frozen=True)
class Case:
    """One input set: its name says shape and mask pattern, e.g. `b3.q11.kv5.padding`, or `size20`."""

    name: str
    spec: ExportSpec = field(repr=False)
    batch: int = 0
    q_len: int = 0
    kv_len: int = 0
    pattern: str = GRAPH_MASK  # the mask pattern (MASK_PATTERNS) fed, or the graph's own mask
    size: int = 0  # the `mask` module's input

    @property
    def shape(self) -> str:
        """The name without the mask pattern: `b3.q11.kv5`, or `size20`."""
        return self.spec.kind.case_shape(self.name)

    @property
    def dims(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.spec.kind.case_dims}

    def feeds(self, seed: int) -> dict[str, np.ndarray]:
        """The inputs, generated from (seed, name) alone."""
        rng = np.random.default_rng([seed, zlib.crc32(self.name.encode())])
        mask = None
        if self.spec.mask == "input" and self.pattern != GRAPH_MASK:
            mask = make_mask(self.pattern, self.batch, self.q_len, self.kv_len, rng)  # (B, q_len or 1, kv_len)
        feeds = self.spec.kind.inputs(self.spec, self.dims, rng, mask)
        from attn_onnx.exporter.kinds.base import dims_problem
        from attn_onnx.exporter.kinds.dims import values_problem

        problem = dims_problem(self.spec, {name: np.shape(a) for name, a in feeds.items()})
        problem = problem or values_problem(self.spec.kind.dims_contract(self.spec), feeds)  # mha-static's lengths
        if problem:  # the sweep built inputs the model's contract refuses: a bug here, not in the model
            raise AssertionError(f"case {self.name}: its feeds break the model's dims contract: {problem}")
        return feeds


def make_mask(kind: str, batch: int, q_len: int, kv_len: int, rng: np.random.Generator) -> np.ndarray:
    """A 0/1 mask of `kind`: (batch, q_len, kv_len), or (batch, 1, kv_len) for `padding`."""
    causal = np.tril(np.ones((q_len, kv_len), dtype=np.uint8))  # subsequent_mask, top-left aligned
    if kind in ("padding", "causal+padding"):
        valid = valid_lengths(batch, kv_len, rng)
        padding = (np.arange(kv_len)[None, :] < valid[:, None]).astype(np.uint8)[:, None, :]  # (B, 1, kv_len)
    if kind == "ones":
        return np.ones((batch, q_len, kv_len), np.uint8)
    if kind == "zeros":
        return np.zeros((batch, q_len, kv_len), np.uint8)
    if kind == "causal":
        return np.broadcast_to(causal, (batch, q_len, kv_len)).copy()
    if kind == "padding":
        return padding
    if kind == "causal+padding":
        return causal[None] * padding
    if kind == "masked_row":
        mask = (rng.random((batch, q_len, kv_len)) < 0.7).astype(np.uint8)
        mask[-1, q_len // 2, :] = 0  # this query's keys are all masked
        return mask
    raise UsageError(f"unknown mask pattern {kind!r}; choose from {list(MASK_PATTERNS)}")


def valid_lengths(batch: int, kv_len: int, rng: np.random.Generator) -> np.ndarray:
    """Each example's count of valid (unpadded) keys: at least one example is padded at any batch, and the
    lengths differ wherever kv_len leaves room. At batch > 1 the first example is unpadded (a batch mixes
    lengths); a key of 1 can only be padded whole (0 valid keys: that example's rows attend uniformly)."""
    if batch == 1:
        return np.array([kv_len // 2])  # 0 for kv_len 1
    shorter = np.arange(1, kv_len) if kv_len > 1 else np.array([0])  # the lengths a padded example can have
    picked = rng.permutation(shorter)[: batch - 1]  # distinct while there are enough
    if len(picked) < batch - 1:  # more padded examples than lengths: the rest repeat some
        picked = np.concatenate([picked, rng.choice(shorter, batch - 1 - len(picked))])
    return np.concatenate([[kv_len], picked])


def generate_cases(spec: ExportSpec, sweep: Sweep = Sweep()) -> list[Case]:
    """Every case of `sweep` that applies to a model of `spec` (its kind names them: exporter/kinds/)."""
    sweep.validate()
    cases = spec.kind.cases(spec, sweep)
    if sweep.covers:
        from attn_onnx.exporter.variants import VARIANTS

        masks = tuple(m for m in COVER_MASKS if sweep.masks is None or m in sweep.masks) or sweep.masks
        cases += spec.kind.coverage_cases(spec, VARIANTS[spec.variant].coverage_shapes(spec), masks)
    unique = {name: (dims, mask) for name, dims, mask in reversed(cases)}  # each name once, the first kept
    return [Case(name, spec, pattern=pattern, **dims) for name, (dims, pattern) in reversed(unique.items())]


def parse_case(name: str, spec: ExportSpec) -> Case:
    """The case a name like `b2.q20.kv20.causal+padding` (or `size20`) stands for."""
    dims, pattern = spec.kind.parse_case(spec, name)
    return Case(name, spec, pattern=pattern, **dims)


def default_plot_case(spec: ExportSpec) -> str:
    return "b2.q20.kv20." + ("causal+padding" if spec.mask == "input" else GRAPH_MASK)
