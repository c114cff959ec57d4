"""What every module kind describes. Dims are lists of names (dynamic) and numbers (fixed)."""

from __future__ import annotations

import re

import numpy as np

from attn_onnx.errors import UsageError
from attn_onnx.exporter.kinds.dims import contract_problem
from attn_onnx.vocab import GRAPH_MASK, MASK_FILL, MASK_PATTERNS

# the settings a kind may take beyond those every kind takes (module, variant, opset, optimize): ExportSpec's
# fields, and "weights" (where the weights come from: a checkpoint, or random from a seed)
KIND_SETTINGS = frozenset(
    {
        "heads",
        "embedding_dim",
        "mask",
        "mask_dtype",
        "causal_align",
        "attn_probs",
        "dtype",
        "quantize",
        "weights",
        "max_len",
    }
)


class ModuleKind:
    """Base of the module kinds. Subclasses set the class attributes and implement the dims and graph."""

    name: str = ""
    help: str = ""
    has_weights: bool = False
    example_dims: dict[str, int] = {}  # the dims of the example handed to torch.export
    case_dims: tuple[str, ...] = ()  # the dims a check case sets: ("batch", "q_len", "kv_len") or ("size",)
    settings: frozenset[str] = frozenset()  # which of KIND_SETTINGS apply to this kind
    metadata_fields: tuple[str, ...] = ()  # ExportSpec fields written to (and read from) metadata
    decodes: bool = False  # runtime_check also decodes sequences through its cache (mha-cache, mha-static)
    static_cache: bool = False  # its cache is fixed buffers with per-sequence lengths, written in place (mha-static)
    self_attention: bool = False  # one input x for query, key and value: check cases have q_len == kv_len
    dtypes: tuple[str, ...] = ("float32",)  # the --dtype values it exports
    flag: str = ""  # how the user asks for it, for messages: "--module mha", "--kv-cache"
    extends: str = ""  # a form of another kind, selected by its own flag (mha-cache: --kv-cache on mha)

    def implied(self, settings: dict, given: set[str]) -> dict:
        """What choosing this kind implies for the settings the user did not give: {setting: value}."""
        return {}

    def validate(self, spec) -> None:
        """Raise UsageError naming the value that does not fit this kind."""

    def input_dims(self, spec) -> dict[str, list[str | int]]:
        raise NotImplementedError

    def output_dims(self, spec) -> dict[str, list[str | int]]:
        raise NotImplementedError

    def input_dtypes(self, spec) -> dict[str, str]:
        raise NotImplementedError

    # --- the dims contract: how one request's inputs agree with each other (exporter/kinds/dims.py) ----------

    # what each dim name means, and how it relates to the others: "is" (equal to that dim, or 1 where "or_one")
    # or "sum" (the sum of those dims); a name without a rule is only held equal across the axes that bear it
    DIMS: dict[str, dict] = {
        "batch": {
            "description": "examples in the request: the same in every input and output (a mask of batch 1 "
            "is not broadcast)"
        },
        "q_len": {"description": "query tokens"},
        "kv_len": {
            "description": "key and value tokens; the mask's last axis too (never 1 for more keys: a "
            "broadcast mask would leave the padding unapplied)"
        },
        "mask_q_len": {
            "description": "the mask's rows: q_len (a full mask) or 1 (a padding mask, the same for every query)",
            "is": "q_len",
            "or_one": True,
        },
        "past_len": {"description": "tokens already in the KV cache (0 for the prefill)"},
        "total_len": {
            "description": "past_len + q_len: the keys of this step, the cache's length after it; the mask's last axis",
            "sum": ["past_len", "q_len"],
        },
        "size": {"description": "subsequent_mask's size: the scalar input's value"},
    }

    def dim_rules(self, spec) -> dict[str, dict]:
        """{dim name: {"description", and "is"/"or_one" or "sum"}} for every dim name of the inputs and
        outputs, in the order they first appear."""
        names = [
            d
            for dims in (*self.input_dims(spec).values(), *self.output_dims(spec).values())
            for d in dims
            if isinstance(d, str)
        ]
        return {name: dict(self.DIMS[name]) for name in dict.fromkeys(names)}

    def score_dims(self, spec) -> list[str | int] | None:
        """The dims of the attention scores (batch, heads, q_len, keys), for a request's work estimate; None
        for a kind that computes no attention."""
        return None

    def value_dims(self, spec) -> dict[str, str]:
        """{dim name: scalar input}: dims set by an input's value, not by a shape (the mask module's size)."""
        return {}

    def dims_contract(self, spec) -> dict:
        """The contract exporter/kinds/dims.py checks: the inputs' and outputs' dims, the dims' rules, the
        scores' dims, the dims that are an input's value. Plain JSON. A kind whose inputs' values must keep a rule
        too (mha-static's past_len) adds `lengths` (dims.py's values_problem); the others have none."""
        return {
            "inputs": self.input_dims(spec),
            "outputs": self.output_dims(spec),
            "dims": self.dim_rules(spec),
            "scores": self.score_dims(spec),
            "values": self.value_dims(spec),
        }

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

    def example(self, spec) -> tuple:
        """The example handed to torch.export, as torch tensors in input order: dims unlike 1 and unlike each
        other (example_dims), so none is baked or tied."""
        from attn_onnx.dtypes import to_torch

        feeds = self.inputs(spec, self.example_dims, np.random.default_rng(0))
        return tuple(to_torch(feeds[name]) for name in spec.input_names)

    def inputs(
        self, spec, dims: dict[str, int], rng: np.random.Generator, mask: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Inputs of the given dims. `mask` is a 0/1 (batch, q_len or 1, kv_len) array; all ones if None."""
        raise NotImplementedError

    def valid_lengths(self, spec, feeds: dict[str, np.ndarray]) -> dict[str, list[int]]:
        """{output: [L_0, L_1, ...]} for the outputs of which only part is the answer on these inputs: batch row b's
        positions 0..L_b-1 on axis 2 (mha-static's presents); the rest unspecified. None for most kinds. A bundle
        writes them as its outputs' `valid_lengths`."""
        return {}

    def comparable(self, spec, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The outputs as compared: all of them, with the part valid_lengths() leaves unspecified zeroed."""
        valid = self.valid_lengths(spec, feeds)
        return {name: valid_part(a, valid[name]) if name in valid else a for name, a in outputs.items()}

    def integer_outputs(self, spec) -> bool:
        return all(np.issubdtype(np.dtype(d), np.integer) for d in self.output_dtypes(spec).values())

    # --- check cases, bundle vectors and the contract: what a case of this kind is, said by the kind ------------

    def cases(self, spec, sweep) -> list[tuple[str, dict[str, int], str]]:
        """(name, dims, mask pattern) of every case of `sweep` (runtime_check.cases.Sweep) for a model of `spec`."""
        raise NotImplementedError

    def parse_case(self, spec, name: str) -> tuple[dict[str, int], str]:
        """The dims and mask pattern a case name stands for; UsageError naming the form it should have."""
        raise NotImplementedError

    def case_shape(self, name: str) -> str:
        """The case's name without its mask pattern: `b3.q11.kv5`."""
        return name.rsplit(".", 1)[0]

    def vector_cases(self, spec) -> tuple[str, ...]:
        """The cases a bundle carries golden vectors for: those a service must get right."""
        raise NotImplementedError

    def coverage_cases(self, spec, shapes: tuple, masks: tuple[str, ...]) -> list[tuple[str, dict[str, int], str]]:
        """(name, dims, mask pattern) of the cases at a variant's coverage shapes ((batch, q_len, kv_len): those that
        reach every control-flow path of its graph), with `masks` where the model has a mask input; none for a
        kind whose cases are not of that form."""
        return []

    def describe_case(self, spec, dims: dict[str, int], mask: str) -> str:
        raise NotImplementedError

    def mask_contract(self, spec) -> str:
        """The mask convention, in words, for the people wiring the model into a service."""
        raise NotImplementedError


class AttentionKindBase(ModuleKind):
    """What `mha` and `attention` share: query, key, value, a mask mode, heads and widths."""

    example_dims = {"batch": 2, "q_len": 3, "kv_len": 4}  # all different, none 1: no dim baked or tied
    dtypes: tuple[str, ...] = ("float32", "float16", "bfloat16")
    case_dims = ("batch", "q_len", "kv_len")

    # batch 1; q_len != kv_len with a padding mask; a fully-masked row; the causal case; causal plus padding
    VECTOR_CASES = (
        "b1.q5.kv5.ones",
        "b2.q4.kv7.padding",
        "b2.q6.kv6.masked_row",
        "b2.q6.kv6.causal",
        "b3.q3.kv8.causal+padding",
    )
    # a mask built in, or none; q_len > kv_len: a bottom-right causal mask's fully-masked first rows
    GRAPH_VECTOR_CASES = ("b1.q5.kv5.graph", "b2.q4.kv7.graph", "b3.q6.kv6.graph", "b2.q7.kv3.graph")

    def validate(self, spec) -> None:
        if spec.heads <= 0 or spec.embedding_dim <= 0:
            raise UsageError(f"heads={spec.heads} and embedding_dim={spec.embedding_dim} must both be positive")
        if spec.embedding_dim % spec.heads != 0:
            raise UsageError(f"embedding_dim={spec.embedding_dim} is not divisible by heads={spec.heads}")

    def input_dtypes(self, spec) -> dict[str, str]:
        from attn_onnx.vocab import MASK_DTYPES

        dtypes = {"query": spec.dtype, "key": spec.dtype, "value": spec.dtype}
        if spec.mask == "input":
            dtypes["mask"] = np.dtype(MASK_DTYPES[spec.mask_dtype]).name
        return dtypes

    def output_dtypes(self, spec) -> dict[str, str]:
        return {name: spec.dtype for name in self.output_dims(spec)}

    def _qkv(self, spec, dims, rng, lead: tuple, width: int, mask, mask_lead: tuple) -> dict[str, np.ndarray]:
        from attn_onnx.dtypes import numpy_dtype
        from attn_onnx.vocab import MASK_DTYPES

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
                MASK_DTYPES[spec.mask_dtype]
            )
        return feeds

    def mask_kinds(self, spec) -> list[str]:
        return list(MASK_PATTERNS) if spec.mask == "input" else [GRAPH_MASK]

    def cases(self, spec, sweep):
        return self._grid(spec, sweep.shape_list(), sweep.masks)

    def coverage_cases(self, spec, shapes, masks):
        return self._grid(spec, shapes, masks)

    def _grid(self, spec, shapes, masks) -> list[tuple[str, dict[str, int], str]]:
        """Every (batch, q_len, kv_len) shape with every mask pattern (`masks`, where the model has a mask input)."""
        kinds = list(masks) if masks and spec.mask == "input" else self.mask_kinds(spec)
        if self.self_attention:  # one input: every shape square (b, q, q), each once
            shapes = list(dict.fromkeys((b, q, q) for b, q, _ in shapes))
        return [
            (f"b{b}.q{q}.kv{kv}.{kind}", {"batch": b, "q_len": q, "kv_len": kv}, kind)
            for b, q, kv in shapes
            for kind in kinds
        ]

    def parse_case(self, spec, name):
        match = re.fullmatch(r"b(\d+)\.q(\d+)\.kv(\d+)\.([a-z_+]+)", name)
        kinds = self.mask_kinds(spec)
        if not match or match[4] not in kinds or min(int(match[i]) for i in (1, 2, 3)) < 1:
            raise UsageError(
                f"case {name!r} is not of the form b<batch>.q<q_len>.kv<kv_len>.<kind> with kind in {kinds}"
            )
        return {"batch": int(match[1]), "q_len": int(match[2]), "kv_len": int(match[3])}, match[4]

    def vector_cases(self, spec):
        names = self.VECTOR_CASES if spec.mask == "input" else self.GRAPH_VECTOR_CASES
        if self.self_attention:  # one input: q_len == kv_len, so the cross cases become square ones
            names = tuple(".".join((b, "q" + kv[2:], kv, kind)) for b, _, kv, kind in (n.split(".", 3) for n in names))
        return names

    def score_dims(self, spec):
        keys = (
            "total_len"
            if "past_len" in self.dim_rules(spec)
            else "kv_len"
            if "kv_len" in self.dim_rules(spec)
            else "q_len"
        )  # mha-cache: the cache and the new tokens; mha-self: q_len keys
        return ["batch", spec.heads, "q_len", keys]

    def describe_case(self, spec, dims, mask):
        what = MASK_PATTERNS.get(mask, f"the graph's own mask ({spec.mask})")
        return f"batch {dims['batch']}, q_len {dims['q_len']}, kv_len {dims['kv_len']}; mask: {what}"

    def mask_contract(self, spec):
        from attn_onnx.dtypes import numpy_dtype

        fill = max(MASK_FILL, float(np.finfo(numpy_dtype(spec.dtype)).min))
        fill = "-1e9" if fill == MASK_FILL else f"{fill:g}"  # float16 cannot hold -1e9: its lowest, -65504
        if spec.mask == "causal":
            if spec.causal_align == "bottom-right":
                return (
                    "no mask input: the graph builds the causal mask bottom-right aligned, query i attends keys "
                    "0..kv_len-q_len+i (the newest q_len tokens after a prefix); masked scores are filled with "
                    f"{fill}, so a row with no key (q_len > kv_len) attends uniformly"
                )
            return (
                "no mask input: the graph builds the causal mask, query i attends keys 0..i (top-left aligned); "
                f"masked scores are filled with {fill}"
            )
        if spec.mask == "none":
            return "no mask: every query attends every key"
        dims = self.input_dims(spec)["mask"]  # this kind's own: mha-self's keys are its q_len, mha-cache's total_len
        shape = (
            f"({', '.join('q_len' if d == 'mask_q_len' else str(d) for d in dims)}) (a full mask) or "
            f"({', '.join('1' if d == 'mask_q_len' else str(d) for d in dims)}) (a padding mask)"
        )
        return (
            f"input 'mask' of {spec.mask_dtype} {shape}, the same for every head: a nonzero value means "
            f"'may attend', 0 means 'masked' (its score is replaced by {fill}). A query whose keys are all "
            "masked attends uniformly (its output is the mean of the values): never NaN, never zeros. Bool "
            "tensors are one byte per element (0 or 1)"
        )


def valid_part(array: np.ndarray, lengths: list[int]) -> np.ndarray:
    """`array` with every element outside [b, :, :lengths[b], ...] zeroed (a copy); unchanged where the lengths do
    not fit its shape (the comparison then reports the shape)."""
    array = np.asarray(array)
    if array.ndim < 3 or array.shape[0] != len(lengths):
        return array
    valid = np.arange(array.shape[2])[None, :] < np.asarray(lengths, np.int64)[:, None]  # (B, positions)
    valid = valid.reshape(array.shape[0], 1, array.shape[2], *([1] * (array.ndim - 3)))
    return np.where(valid, array, np.zeros((), array.dtype))


def dims_problem(spec, shapes: dict) -> str | None:
    """What breaks the dims contract of a model of `spec` in a request whose inputs have `shapes`
    ({name: shape}), or None; the message names both inputs and the dim (exporter/kinds/dims.py)."""
    return contract_problem(spec.kind.dims_contract(spec), shapes)
