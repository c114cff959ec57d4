"""Measure which onnxruntime releases run each bundle right, and write the table the manifests' min_onnxruntime
is read from (deploy/compatibility.json) and docs/compatibility.md.

    scripts/setup/onnxruntime-releases.sh          # every release the table names, under .deps/onnxruntime/
    .venv/bin/python scripts/compat_matrix.py      # heads 8, width 512: the bundles export-attn writes by default

One bundle per row (variant x module kind x dtype, deploy/compatibility.rows), written once; each release then
runs every bundle's golden sets and decode steps in a process of its own (runtime_check/runners/
ort_release_runner.py), --jobs releases at a time. Prints the CPU it ran on; cells do not depend on it unless
a release's kernels do (int8 would: it is not a row).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import platform
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def write_bundles(specs, folder: Path) -> dict[str, tuple[Path, int]]:
    """row key -> (the bundle written for it, its model's IR version)."""
    import onnx

    from attn_onnx.deploy import export_model
    from attn_onnx.deploy.compatibility import row_key
    from attn_onnx.deploy.forms.bundle import Bundle

    bundles = {}
    for k, spec in enumerate(specs):
        target = folder / f"row{k}"
        export_model(spec, Bundle(target, "matrix"), seed=0, check=False)
        bundles[row_key(spec)] = (target, onnx.load(str(target / "model.onnx")).ir_version)
        print(f"  bundle {row_key(spec)} (opset {spec.opset})", file=sys.stderr, flush=True)
    return bundles


def measure_release(version: str, bundles: dict[str, tuple[Path, int]]) -> dict[str, tuple[dict, dict | None]]:
    """Every bundle through one release, in one child process: row key -> (its cell, and where the release
    cannot read the bundle's IR version, the cell of the model lowered to the one it reads)."""
    from attn_onnx.deploy.compatibility import max_ir
    from attn_onnx.deploy.compatibility_measure import measure
    from attn_onnx.runtime_check.runners.ort_release_runner import ReleaseRunner

    runner = ReleaseRunner(version, None)
    cells = {}
    try:
        for key, (folder, ir_version) in bundles.items():
            lowered = measure(folder, runner, lower_for=version).to_json() if max_ir(version) < ir_version else None
            cells[key] = (measure(folder, runner).to_json(), lowered)
    finally:
        runner.close()
    print(f"  onnxruntime {version}: measured", file=sys.stderr, flush=True)
    return cells


def markdown(table: dict) -> str:
    releases = table["releases"]
    lines = [
        "# onnxruntime compatibility, measured",
        "",
        f"Measured {table['measured']} on {table['cpu']} ({table['python']}), heads {table['heads']}, width "
        f"{table['width']}, with `{table['command']}` (after `scripts/setup/onnxruntime-releases.sh`).",
        *(f"Rows added since: {added}." for added in table.get("added", [])),
        "",
        "Each cell: the release running every golden set and decode step of that row's bundle, against the "
        "manifest's tolerance. **wrong numbers** is a release that runs the model without an error and answers "
        "beyond the tolerance. The claim, `min_onnxruntime` in every bundle's manifest, is the oldest release "
        "from which every later one runs right (deploy/compatibility.json holds the same table, with each "
        "release's words). `export-attn --target-onnxruntime X.Y.Z` refuses, before any work, a row this table "
        "says is wrong or unloadable on X.Y.Z, and `check-attn M --runtimes onnxruntime==X.Y.Z` runs a model in "
        "that release (`scripts/setup/onnxruntime-releases.sh X.Y.Z` installs it). A release that cannot read the "
        "model's IR version (1.16 and 1.17 read IR 9; the exporter writes 10) is measured again with the same "
        "model at the IR version it reads (`; IR 9: right`): `--target-onnxruntime` for such a release writes "
        "that model, and its claim is the one in brackets.",
        "",
        "| bundle (variant / kind / dtype) | opset | claim | " + " | ".join(releases) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in releases) + " |",
    ]
    short = {
        "runs right": "right",
        "cannot load": "cannot load",
        "run error": "run error",
        "wrong numbers": "**wrong numbers**",
    }
    for key, row in table["rows"].items():
        cells = []
        for version in releases:
            cell = row["cells"].get(version)
            if cell is None:
                cells.append("")
            elif cell["result"] == "wrong numbers":
                cells.append(f"**wrong** ({cell['detail'].split(' (')[0]})")
            else:
                cells.append(short[cell["result"]])
            low = (row.get("lowered") or {}).get("cells", {}).get(version)
            if low is not None:  # the same model at the IR version this release reads
                said = (
                    f"**wrong** ({low['detail'].split(' (')[0]})"
                    if low["result"] == "wrong numbers"
                    else short[low["result"]]
                )
                cells[-1] += f"; IR {row['lowered']['ir_version']}: {said}"
        claim = row["min"] or "none"
        if row.get("lowered") and row["lowered"]["min"] != row["min"]:
            claim += f" (IR {row['lowered']['ir_version']}: {row['lowered']['min'] or 'none'})"
        lines.append(f"| {key} | {row['opset']} | {claim} | " + " | ".join(cells) + " |")
    from attn_onnx.deploy.compatibility import ORT_FOR_IR, ORT_FOR_OPSET, release_key

    lines += [
        "",
        "## Where the claims moved",
        "",
        "Before this table, `min_onnxruntime` came from the ONNX lookup tables (opset and IR version: 1.18 for "
        "every opset-18 bundle, 1.22 for opset 23). The rows whose measured claim differs:",
        "",
        "| bundle | the ONNX tables said | measured | why |",
        "| --- | --- | --- | --- |",
    ]
    for key, row in table["rows"].items():
        floor = max(ORT_FOR_OPSET.get(row["opset"], "1.22"), ORT_FOR_IR.get(row["ir_version"], "1.22"), key=release_key)
        if row["min"] is None or release_key(row["min"])[:2] != release_key(floor)[:2]:
            bad = [
                f"{v}: {c['result']}"
                for v, c in row["cells"].items()
                if c["result"] != "runs right" and release_key(v) >= release_key(floor)
            ]
            lines.append(f"| {key} | {floor} | {row['min'] or 'none'} | {'; '.join(bad[-3:])} |")
    reasons = {}
    for key, row in table["rows"].items():
        for version, cell in row["cells"].items():
            if cell["result"] in ("cannot load", "run error"):
                said = re.sub(r"^[\w.]+: ", "", cell["detail"])  # the set's folder
                said = re.sub(r"(?i)(name ?:? ?)'[^']*'", r"\1'...'", said)[:220]  # node names differ by row
                reasons.setdefault(said, []).append(f"{key} on {version}")
    lines += ["", "## What the releases said", ""]
    for reason, where in reasons.items():
        lines.append(f"- {reason} ({len(where)} cells, e.g. {where[0]})")
    return "\n".join(lines) + "\n"


def main() -> int:
    from attn_onnx.deploy.compatibility import TABLE, min_release, release_key, rows
    from attn_onnx.runtime_check.runners.ort_release_runner import installed

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--releases", default="", help="comma-separated; default: every one installed")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--embedding-dim", type=int, default=512)
    parser.add_argument("--jobs", type=int, default=2, help="releases measured at once")
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "compatibility.md")
    parser.add_argument("--doc-only", action="store_true", help="write the doc from the table, measuring nothing")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the table's cells of the releases not measured now (re-measure some releases)",
    )
    parser.add_argument(
        "--kinds",
        default="",
        help="comma-separated module kinds: measure only their rows (with --merge, the others are kept as they are)",
    )
    args = parser.parse_args()
    if args.doc_only:
        args.doc.write_text(markdown(json.loads(args.table.read_text())))
        return 0
    releases = args.releases.split(",") if args.releases else installed()
    missing = [v for v in releases if v not in installed()]
    if missing or not releases:
        print(
            f"Error: not installed: {missing or 'any release'}: run scripts/setup/onnxruntime-releases.sh",
            file=sys.stderr,
        )
        return 1
    releases = sorted(releases, key=release_key)
    print(f"CPU: {cpu_model()}; releases: {', '.join(releases)}", file=sys.stderr)
    specs = rows(heads=args.heads, embedding_dim=args.embedding_dim)
    if args.kinds:
        specs = [s for s in specs if s.module in args.kinds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        bundles = write_bundles(specs, Path(tmp))
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:  # the work is in the child processes
            measured = dict(zip(releases, pool.map(lambda v: measure_release(v, bundles), releases)))
    from attn_onnx.deploy.compatibility import Cell, max_ir, row_claim, row_key

    table = {
        "measured": datetime.date.today().isoformat(),
        "cpu": cpu_model(),
        "python": f"Python {platform.python_version()}",
        "heads": args.heads,
        "width": args.embedding_dim,
        "command": "python scripts/compat_matrix.py"
        + (f" --heads {args.heads}" if args.heads != 8 else "")
        + (f" --embedding-dim {args.embedding_dim}" if args.embedding_dim != 512 else ""),
        "releases": releases,
        "rows": {},
    }
    old = json.loads(args.table.read_text()) if args.merge and args.table.is_file() else {"releases": [], "rows": {}}
    table["releases"] = sorted(set(releases) | set(old["releases"]), key=release_key)
    if args.kinds and old["rows"]:  # the rows not measured now as they were, and the table's own record
        table["rows"] = {k: row for k, row in old["rows"].items() if k not in {row_key(s) for s in specs}}
        table.update({k: old[k] for k in ("measured", "cpu", "python", "command") if k in old})
        table["added"] = [  # a kind measured again replaces its line
            *(a for a in old.get("added", []) if not a.startswith(f"{args.kinds} measured ")),
            f"{args.kinds} measured {datetime.date.today().isoformat()} on {cpu_model()} with "
            f"`python scripts/compat_matrix.py --kinds {args.kinds} --merge`",
        ]
    for spec in specs:
        key = row_key(spec)
        kept = old["rows"].get(key, {})
        cells = {**kept.get("cells", {}), **{v: measured[v][key][0] for v in releases}}
        lowered = {
            **(kept.get("lowered") or {}).get("cells", {}),
            **{v: measured[v][key][1] for v in releases if measured[v][key][1] is not None},
        }
        row = {
            "opset": spec.opset,
            "ir_version": bundles[key][1],
            "min": min_release({v: Cell(**c) for v, c in cells.items()}),
            "cells": {v: cells[v] for v in table["releases"] if v in cells},
        }
        if lowered:
            ir = min(max_ir(v) for v in lowered)
            row["lowered"] = {"ir_version": ir, "cells": lowered}
            row["lowered"]["min"] = row_claim(row, ir)
        table["rows"][key] = row
    order = [row_key(s) for s in rows(heads=args.heads, embedding_dim=args.embedding_dim)]
    table["rows"] = dict(
        sorted(table["rows"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))
    )
    args.table.write_text(json.dumps(table, indent=1) + "\n")
    args.doc.write_text(markdown(table))
    print(f"wrote {args.table} and {args.doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
