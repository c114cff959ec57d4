"""The house as data: its rooms (the package folders), the imports between their files (function-level ones
included, and the names a lazy table or a runner registry imports on first use), and what a review counts:
floors, arrows, arrows that climb, and circles.

    .venv/bin/python -m tests.house          # the counts, and every arrow that climbs and every circle

tests/test_layout.py holds the layout to these counts.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the folders that install under attn_onnx (setup.py): folder -> its package
TOPS = {
    "attn_onnx": "attn_onnx",
    "models": "attn_onnx.models",
    "exporter": "attn_onnx.exporter",
    "runtime_check": "attn_onnx.runtime_check",
    "timing": "attn_onnx.timing",
    "deploy": "attn_onnx.deploy",
    "bench": "attn_onnx.bench",
    "cli": "attn_onnx.cli",
}


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every installed module: its dotted name -> its file (a package is its __init__.py)."""
    found = {}
    for folder, package in TOPS.items():
        for path in sorted((root / folder).rglob("*.py")) if (root / folder).is_dir() else ():
            parts = path.relative_to(root / folder).with_suffix("").parts
            found[".".join((package, *parts)).removesuffix(".__init__")] = path
    return found


def room_of(module: str, files: dict[str, Path], root: Path = ROOT) -> str:
    """The folder a module's file lies in, relative to the checkout: "exporter/kinds"."""
    return str(files[module].parent.relative_to(root))


def _lazy_table(tree: ast.Module) -> dict[str, str]:
    """A package's `{"name": "attn_onnx.x.y"}` table (attn_onnx.lazy), name -> module."""
    table = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if (
                    isinstance(key, ast.Constant)
                    and isinstance(value, ast.Constant)
                    and isinstance(value.value, str)
                    and value.value.startswith("attn_onnx.")
                ):
                    table[key.value] = value.value
    return table


def imports(files: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the modules of the house it imports. `from package import name` goes to the module that
    defines `name` where the package's lazy table says, not to the package (which only forwards it)."""
    trees = {m: ast.parse(p.read_text()) for m, p in files.items()}
    tables = {m: _lazy_table(t) for m, t in trees.items() if files[m].name == "__init__.py"}

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {m: set() for m in files}
    for module, tree in trees.items():

        def add(name: str | None, module: str = module):
            target = resolve(name) if name else None
            if target and target != module:
                edges[module].add(target)

        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(alias.name)
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = (
                    node.module
                    if node.level == 0
                    else ".".join(
                        (module if files[module].name == "__init__.py" else module.rpartition(".")[0]).split(".")[
                            : len(module.split(".")) - node.level + (files[module].name == "__init__.py")
                        ]
                        + [node.module]
                    )
                )
                for alias in node.names:
                    if f"{base}.{alias.name}" in files:
                        add(f"{base}.{alias.name}")
                    elif alias.name in tables.get(base, {}):
                        add(tables[base][alias.name])
                    else:
                        add(base)
            elif (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value.startswith("attn_onnx.")
                and node.value in files
            ):
                add(node.value)  # a lazy table's or a registry's module name, imported on first use
            elif (
                isinstance(node, ast.JoinedStr)
                and node.values
                and isinstance(node.values[0], ast.Constant)
                and str(node.values[0].value).startswith("attn_onnx.")
                and str(node.values[0].value).endswith(".")
            ):  # import_module(f"attn_onnx.x.{file}")
                package = node.values[0].value[:-1]
                for other in files:
                    if other.startswith(package + ".") and other.count(".") == package.count(".") + 1:
                        add(other)
    for package, table in tables.items():  # a package forwards names: not an import of its own
        edges[package] -= set(table.values())
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected parts of more than one node (Tarjan): each a circle of imports."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


@dataclass
class House:
    rooms: list[str]
    arrows: set[tuple[str, str]]  # room -> room it imports
    floors: dict[str, int]  # room -> its floor: 0 imports no room, else one above the highest it imports
    climbing: list[tuple[str, str]]  # arrows inside a circle of rooms: one of them goes up
    room_circles: list[list[str]]
    file_circles: list[list[str]]  # of modules, function-level imports included

    def counts(self) -> dict[str, int]:
        return {
            "rooms": len(self.rooms),
            "floors": len(set(self.floors.values())),
            "arrows": len(self.arrows),
            "arrows that climb": len(self.climbing),
            "circles of rooms": len(self.room_circles),
            "circles of files": len(self.file_circles),
        }


def house(root: Path = ROOT) -> House:
    files = modules(root)
    edges = imports(files)
    rooms = sorted({room_of(m, files, root) for m in files})
    arrows = {(room_of(a, files, root), room_of(b, files, root)) for a, targets in edges.items() for b in targets}
    arrows = {(a, b) for a, b in arrows if a != b}
    room_edges = {r: {b for a, b in arrows if a == r} for r in rooms}
    room_circles = circles(room_edges)
    in_circle = {r: i for i, part in enumerate(room_circles) for r in part}
    climbing = sorted((a, b) for a, b in arrows if a in in_circle and in_circle[a] == in_circle.get(b))
    group = {r: in_circle.get(r, f"room {r}") for r in rooms}  # a circle of rooms stands on one floor
    floors: dict[str, int] = {}

    def floor(room):
        if room not in floors:
            floors[room] = 0  # (within a circle, its other rooms are not beneath it)
            floors[room] = 1 + max((floor(b) for b in room_edges[room] if group[b] != group[room]), default=-1)
        return floors[room]

    for room in rooms:
        floor(room)
    for part in room_circles:
        for room in part:
            floors[room] = max(floors[r] for r in part)
    return House(rooms, arrows, floors, climbing, room_circles, circles(edges))


if __name__ == "__main__":
    h = house()
    for name, count in h.counts().items():
        print(f"{name}: {count}")
    for level in sorted(set(h.floors.values())):
        print(f"floor {level}: {', '.join(r for r in h.rooms if h.floors[r] == level)}")
    for a, b in h.climbing:
        print(f"arrow in a circle of rooms: {a} -> {b}")
    for part in h.file_circles:
        print(f"circle of files: {' <-> '.join(part)}")
