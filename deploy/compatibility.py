"""Which onnxruntime releases run a bundle right: measured against the real releases, kept as data.

A row is what a bundle can carry: a variant, a module kind and a dtype (at the variant's opset). A cell is one
release running every golden set and decode step of that row's bundle, one of RESULTS:
- "runs right": every output within the manifest's tolerance;
- "cannot load": the release refuses the model (its words kept);
- "run error": it loads, and a set raises;
- "wrong numbers": it runs, and an output is beyond the tolerance: the case a service would never notice.

The table (compatibility.json beside this file, and docs/compatibility.md) is written by
scripts/compat_matrix.py. `min_onnxruntime` reads it: the oldest release from which every later one runs the
row right. A model whose row was not measured (another opset, say) gets the ONNX lookup tables' claim, marked
unmeasured. A release that cannot read a row's IR version (1.16 and 1.17 read IR 9; the exporter writes 10) is
measured again with the model's IR version lowered to its own (`lowered`): export-attn --target-onnxruntime
writes such a model for such a release.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import onnx

from attn_onnx.exporter.spec import ExportSpec

TABLE = Path(__file__).with_name("compatibility.json")
RESULTS = ("runs right", "cannot load", "run error", "wrong numbers")
DTYPES = ("float32", "float16")  # the dtypes a bundle carries (bundle.BUNDLE_DTYPES)
STATIC_MAX_LEN = 64  # a static cache's row is measured at this capacity (its graph is the same at any other)

# What the ONNX specs say (the oldest release that reads an opset or IR version): a floor, not a proof
ORT_FOR_OPSET = {17: "1.13", 18: "1.14", 19: "1.16", 20: "1.17", 21: "1.18", 22: "1.21", 23: "1.22", 24: "1.24"}
# (24: measured, not from the tables: 1.23.2 refuses opset 24 as "under development", 1.24.4 loads it)
ORT_FOR_IR = {8: "1.13", 9: "1.15", 10: "1.18", 11: "1.22"}
# Operators whose CPU kernel came after their opset's release (measured: 1.24.4 loads opset 24 but has no
# TensorScatter kernel, 1.25.1 runs a static cache's step right: check-attn --runtimes onnxruntime==X.Y.Z)
ORT_FOR_OP = {"TensorScatter": "1.25"}


def release_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def max_ir(release: str) -> int:
    """The newest ONNX IR version onnxruntime `release` reads (ORT_FOR_IR): 9 for 1.16 and 1.17."""
    return max(ir for ir, floor in ORT_FOR_IR.items() if release_key(floor) <= release_key(release))


def lowered_ir(proto: onnx.ModelProto, release: str) -> onnx.ModelProto:
    """`proto` as onnxruntime `release` reads it: its IR version lowered to the release's newest where it is
    above it (the same graph: attn-onnx's models use nothing IR 10 added, int4 types and function overloads,
    which onnx.checker confirms), else `proto` itself."""
    ir = max_ir(release)
    if proto.ir_version <= ir:
        return proto
    lowered = onnx.ModelProto()
    lowered.CopyFrom(proto)
    lowered.ir_version = ir
    onnx.checker.check_model(lowered)  # refuses an IR-10 feature at IR 9
    return lowered


@dataclass(frozen=True)
class Cell:
    result: str  # one of RESULTS
    detail: str = ""  # the release's words, or the worst max_abs

    def to_json(self) -> dict:
        return {"result": self.result, "detail": self.detail}


def row_key(spec: ExportSpec) -> str:
    return f"{spec.variant}/{spec.module}/{spec.dtype}/mask-{spec.mask}"


def _row_spec(variant: str, kind: str, dtype: str, mask: str, opset: int, **fields) -> ExportSpec:
    """The row's settings; a built-in causal mask aligned top-left where the kind takes that, else bottom-right
    (a KV cache's step)."""
    from attn_onnx.errors import AttnOnnxError

    def aligned(align: str) -> ExportSpec:
        return ExportSpec(
            module=kind, variant=variant, dtype=dtype, mask=mask, opset=opset, causal_align=align, **fields
        ).validate()

    try:
        return aligned("top-left")
    except AttnOnnxError:
        if mask != "causal":
            raise
    return aligned("bottom-right")


def rows(**fields) -> list[ExportSpec]:
    """Every variant x module kind x bundle dtype x mask mode that validates, each at opset max(18, the variant's
    minimum) and otherwise the defaults; `fields` (heads, embedding_dim) apply to all."""
    from attn_onnx.errors import AttnOnnxError
    from attn_onnx.exporter.kinds import KINDS
    from attn_onnx.exporter.variants import VARIANTS
    from attn_onnx.vocab import MASK_MODES

    found = []
    for variant in VARIANTS.values():
        for kind in KINDS:
            extra = {"max_len": STATIC_MAX_LEN} if KINDS[kind].static_cache else {}
            opset = max(18, variant.min_opset, 24 if extra else 0)  # a static cache's forms: opset 24
            for dtype in DTYPES:
                for mask in MASK_MODES:
                    try:
                        found.append(_row_spec(variant.name, kind, dtype, mask, opset, **fields, **extra))
                    except AttnOnnxError:
                        continue
    return found


def is_row(spec: ExportSpec) -> bool:
    """Whether `spec` (validated) is its row's model at another width: every other setting as the rows are built
    (no validation here: an export validates its spec once)."""
    aligns = ("top-left", "bottom-right") if spec.mask == "causal" else ("top-left",)
    return ExportSpec.settings(spec) in {
        ExportSpec(
            module=spec.module,
            variant=spec.variant,
            dtype=spec.dtype,
            mask=spec.mask,
            opset=spec.opset,
            causal_align=align,
            heads=spec.heads,
            embedding_dim=spec.embedding_dim,
            max_len=spec.max_len,  # a static cache's capacity, like its width, is any
        ).settings()
        for align in aligns
    }


def min_release(cells: dict[str, Cell]) -> str | None:
    """The oldest measured release from which every later one runs right; None where the newest does not."""
    claim = None
    for version in sorted(cells, key=release_key, reverse=True):
        if cells[version].result != "runs right":
            break
        claim = version
    return claim


def claim_problem(claim: str | None, cells: dict[str, Cell]) -> str | None:
    """What is wrong with `claim` for a row measured as `cells` (release -> Cell): a release at or after it
    that does not run right (the claim is too low), or one before it that does while every later one does
    too (too high); None where the claim is the measured one."""
    later = [v for v in sorted(cells, key=release_key) if claim is not None and release_key(v) >= release_key(claim)]
    wrong = [f"{v}: {cells[v].result} ({cells[v].detail})" for v in later if cells[v].result != "runs right"]
    if wrong:
        return f"claims onnxruntime >= {claim}, but " + "; ".join(wrong)
    measured = min_release(cells)
    if measured != claim:
        return f"claims onnxruntime >= {claim}, but the measured claim is {measured}"
    return None


def load_table(path: Path = TABLE) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {"releases": [], "rows": {}}


def spec_floor(proto: onnx.ModelProto) -> str:
    """The oldest release the model's opset and IR version allow, by the ONNX lookup tables, and its operators
    where a later release brought their kernel (ORT_FOR_OP)."""
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    needs = [ORT_FOR_OPSET.get(opset, "1.22"), ORT_FOR_IR.get(proto.ir_version, "1.22")]
    needs += [ORT_FOR_OP[op] for op in _op_types(proto.graph) if op in ORT_FOR_OP]
    return max(needs, key=release_key)


def _op_types(graph: onnx.GraphProto) -> set[str]:
    """Every operator of the graph and of its subgraphs (If branches, Loop bodies)."""
    found = set()
    for node in graph.node:
        found.add(node.op_type)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                found |= _op_types(sub)
    return found


def row_cells(row: dict, ir_version: int) -> dict[str, dict] | None:
    """The row's cells for a model of `ir_version`: as measured where it is the row's own; where it is lower
    (an export for an older release, lowered_ir), the cells measured at it replace those of the releases that
    cannot read the row's; None where the row was not measured at it."""
    if ir_version == row["ir_version"]:
        return row["cells"]
    lowered = row.get("lowered") or {}
    if lowered.get("ir_version") != ir_version:
        return None
    return {**row["cells"], **lowered["cells"]}


def row_claim(row: dict, ir_version: int) -> str | None:
    cells = row_cells(row, ir_version)
    return None if cells is None else min_release({v: Cell(**c) for v, c in cells.items()})


def min_onnxruntime(proto: onnx.ModelProto, spec: ExportSpec, table: dict | None = None) -> tuple[str, bool]:
    """(release, measured): the measured claim of the model's row where the table has it at the model's opset
    and IR version, else the ONNX lookup tables' floor (measured False)."""
    table = load_table() if table is None else table
    row = table["rows"].get(row_key(spec))
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if row is None or not is_row(spec) or row["opset"] != opset:
        return spec_floor(proto), False
    claim = row_claim(row, proto.ir_version)
    if claim is None:
        return spec_floor(proto), False
    return claim, True


def target_problem(spec: ExportSpec, target: str, table: dict | None = None) -> str | None:
    """Why a model of `spec` would not run right on onnxruntime `target`, from the table (before any export), or
    None. A model that is not a measured row (another mask dtype, int8, ...) is held to its row's claim as a
    lower bound, and to its opset's."""
    table = load_table() if table is None else table
    floor = ORT_FOR_OPSET.get(spec.opset, "1.22")
    if release_key(target) < release_key(floor):
        return f"opset {spec.opset} needs onnxruntime >= {floor}, by the ONNX tables (--opset picks another)"
    row = table["rows"].get(row_key(spec))
    if row is None:
        return None  # nothing measured: the opset's floor is all that is known
    what = f"{spec.variant} ({spec.module}, {spec.dtype}, mask {spec.mask})"
    ir = min(row["ir_version"], max_ir(target))  # the export lowers the IR version to what the target reads
    cells = row_cells(row, ir) or row["cells"]
    claim = min_release({v: Cell(**c) for v, c in cells.items()})
    if claim is None:
        return f"{what} runs right on no measured onnxruntime release (docs/compatibility.md)"
    if release_key(target) >= release_key(claim):
        return None
    measured = [v for v in table["releases"] if release_key(v) <= release_key(target)]
    if measured:
        cell = cells[measured[-1]]
        said = f"{cell['result']} on {measured[-1]}" + (f": {cell['detail']}" if cell["detail"] else "")
    else:
        said = f"older than every release measured, {table['releases'][0]}"
    return (
        f"{what} does not run right on onnxruntime {target} ({said}); it runs right from {claim} "
        "(docs/compatibility.md)"
    )


def check_target(target: str) -> str:
    """`target` as a release number, or UsageError."""
    import re

    from attn_onnx.errors import UsageError

    if not re.fullmatch(r"\d+\.\d+\.\d+", target):
        raise UsageError(f"--target-onnxruntime {target!r}: give a release number, e.g. 1.20.1")
    return target
