"""The sha256 of every graph the exporter writes, over each variant x module kind x mask mode x dtype that
validates (plus --optimize and --quantize on the default), with the metadata and doc string left out: what
a refactor that changes no behaviour must leave the same.

    .venv/bin/python scripts/graph_digests.py > before.json   # on the old code
    .venv/bin/python scripts/graph_digests.py --against before.json   # on the new: exit 1 on any change

To run it on an older commit: `git worktree add /tmp/old COMMIT`, a folder /tmp/layout/attn_onnx whose entries
link to /tmp/old's files and top-level folders, then from outside the checkout:
`PYTHONPATH=/tmp/layout .venv/bin/python /work/main/scripts/graph_digests.py > before.json`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys

import click


def specs():
    from attn_onnx.errors import UsageError
    from attn_onnx.exporter import ExportSpec
    from attn_onnx.exporter.kinds import KINDS
    from attn_onnx.exporter.variants import VARIANTS

    for kind, variant, mask, dtype in itertools.product(
        KINDS, VARIANTS, ("input", "causal", "none"), ("float32", "float16")
    ):
        fields = {
            "module": kind,
            "variant": variant,
            "dtype": dtype,
            "heads": 2,
            "embedding_dim": 16,
            "opset": max(18, VARIANTS[variant].min_opset),
        }
        if "mask" in KINDS[kind].settings:
            fields["mask"] = mask
        elif mask != "input":
            continue
        if kind in ("mha-cache", "mha-static") and mask == "causal":
            fields["causal_align"] = "bottom-right"
        if KINDS[kind].static_cache:  # a fixed capacity, and the opset of its in-place forms
            fields.update(max_len=16, opset=24)
        for extra in (
            ({},)
            if variant != "torch-export" or dtype != "float32" or mask != "input"
            else ({}, {"optimize": "extended"}, {"quantize": "int8"})
        ):
            spec = ExportSpec(**fields, **extra)
            try:
                spec.validate()
            except UsageError:
                continue
            yield spec


def digest(proto) -> str:
    """The model's bytes without what describes it rather than computes: its metadata and doc string, and each
    node's metadata_props, where torch.onnx records the Python stack trace (file and line) that made the node:
    reformatting models/attention.py moves those lines and nothing else."""
    del proto.metadata_props[:]
    proto.doc_string = ""
    for graph in _graphs(proto.graph):
        for node in graph.node:
            del node.metadata_props[:]
    return hashlib.sha256(proto.SerializeToString(deterministic=True)).hexdigest()


def _graphs(graph):
    """The graph and every subgraph (an If's branches, a Loop's body) in it."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _graphs(sub)


@click.command()
@click.option("--against", type=click.Path(exists=True, dir_okay=False), help="Digests written before: compare.")
def main(against):
    from attn_onnx.exporter.export import export_onnx

    found = {}
    for spec in specs():
        name = ",".join(f"{k}={v}" for k, v in vars(spec).items() if v not in ("", False))
        proto, _ = export_onnx(spec)
        found[name] = digest(proto)
        print(f"{found[name][:12]} {name}", file=sys.stderr)
    if not against:
        print(json.dumps(found, indent=1, sort_keys=True))
        return
    before = json.load(open(against))
    changed = sorted(k for k in before.keys() & found.keys() if before[k] != found[k])
    gone, new = sorted(before.keys() - found.keys()), sorted(found.keys() - before.keys())
    for k in changed:
        print(f"changed: {k}")
    for k in gone:
        print(f"gone: {k}")
    for k in new:
        print(f"new: {k}")
    print(
        f"{len(found)} graphs: {len(found) - len(changed) - len(new)} byte-identical, {len(changed)} changed, "
        f"{len(gone)} gone, {len(new)} new"
    )
    sys.exit(1 if changed or gone else 0)


if __name__ == "__main__":
    main()
