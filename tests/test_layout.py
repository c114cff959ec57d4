"""The house: each package imports only the ones beneath it, and everything installs under `attn_onnx`."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import attn_onnx
from tests.house import TOPS, house, imports, modules, room_of

ROOT = Path(__file__).resolve().parents[1]
# every folder of the house (a room) and its floor: a module imports its own room and the rooms beneath it
LAYERS = {
    "attn_onnx": 0,
    "models": 1,
    "exporter/kinds": 2,
    "exporter/variants": 3,
    "exporter": 4,
    "runtime_check/runners": 5,
    "runtime_check": 6,
    "timing": 7,
    "deploy": 8,
    "deploy/forms": 9,
    "bench": 10,
    "cli": 11,
}
SHORT = tuple(f for f in TOPS if f != "attn_onnx")  # names that do not install: attn_onnx.<name> does


def _imports(path: Path):
    """Every module name a file imports, as written (for the short-name check)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


FILES = modules()
SOURCES = [(room_of(m, FILES), p) for m, p in sorted(FILES.items())]
EDGES = imports(FILES)


@pytest.mark.parametrize("module", sorted(FILES))
def test_imports_go_only_downward(module):
    """Function-level imports and the modules a registry imports on first use count too; a package's table of
    lazy names does not (it forwards, it does not depend)."""
    own = room_of(module, FILES)
    for name in _imports(FILES[module]):
        assert name.split(".")[0] not in SHORT, f"{name}: use attn_onnx.{name}"
    for target in sorted(EDGES[module]):
        room = room_of(target, FILES)
        assert room == own or LAYERS[room] < LAYERS[own], f"{module} imports {target}, in {room}: a higher room"


def test_the_house_has_no_circles_and_no_arrow_that_climbs():
    h = house()
    assert (h.file_circles, h.room_circles, h.climbing) == ([], [], [])


def test_the_layout_test_sees_every_room():
    assert {room for room, _ in SOURCES} == set(LAYERS)
    assert len(SOURCES) > 30


def test_the_house_counter_finds_circles_and_climbing_arrows(tmp_path):
    """A house with a circle of files (a <-> b, one import inside a function) and one of rooms: both found."""
    for folder, text in {
        "attn_onnx/__init__.py": "",
        "attn_onnx/a.py": "from attn_onnx import b\n",
        "attn_onnx/b.py": "def f():\n    from attn_onnx.a import x\n",
        "models/__init__.py": "from attn_onnx.exporter import y\n",
        "exporter/__init__.py": "import attn_onnx.models\n",
    }.items():
        (tmp_path / folder).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / folder).write_text(text)
    h = house(tmp_path)
    assert h.file_circles == [["attn_onnx.a", "attn_onnx.b"], ["attn_onnx.exporter", "attn_onnx.models"]]
    assert h.room_circles == [["exporter", "models"]] and len(h.climbing) == 2


def test_everything_installs_under_one_namespace(tmp_path):
    """From a folder that is not the repository: the short names are not installed, the namespaced are."""
    code = (
        "import importlib.util as u\n"
        "print([u.find_spec(n) is not None for n in ('attn_onnx.models', 'attn_onnx.exporter', "
        "'attn_onnx.runtime_check', 'attn_onnx.cli')], "
        "[u.find_spec(n) is not None for n in ('models', 'exporter', 'runtime_check', 'cli')])"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[True, True, True, True] [False, False, False, False]"


def test_one_version_everywhere():
    from importlib.metadata import version

    from click.testing import CliRunner

    from attn_onnx.cli.check_attn import main as check
    from attn_onnx.cli.export_attn import main as export

    assert version("attn-onnx") == attn_onnx.__version__
    for main, name in ((export, "export-attn"), (check, "check-attn")):
        assert CliRunner().invoke(main, ["--version"]).output.strip() == f"{name}, version {attn_onnx.__version__}"


def test_the_built_wheel_holds_and_imports_every_module(tmp_path):
    """The package list is found (setup.py), not written by hand: a subfolder missing from a hand-written list
    worked from a checkout and was silently absent from the wheel. Built here, unpacked, imported from there."""
    import shutil
    import zipfile

    source = tmp_path / "source"  # a copy: setuptools reuses a checkout's build/, with any module deleted since
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", ".deps", "build", "dist", "node_modules", "__pycache__", "*.egg-info"
        ),
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(source),
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("attn_onnx-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp_path / "site")
        inside = {n[:-3].replace("/", ".").removesuffix(".__init__") for n in archive.namelist() if n.endswith(".py")}
    expected = set(FILES)
    assert inside == expected, (sorted(expected - inside), sorted(inside - expected))
    code = (
        "import importlib, sys\n"
        f"names = {sorted(inside)!r}\n"
        "for n in names:\n"
        "    try:\n        importlib.import_module(n)\n"
        "    except ModuleNotFoundError as e:  # the Triton model template runs inside Triton's stub only\n"
        "        if e.name != 'triton_python_backend_utils':\n            raise\n"
        "import attn_onnx\nprint(attn_onnx.__file__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().startswith(str(tmp_path / "site"))  # the wheel's copy, not the checkout


KIND_ATTRIBUTES = {"module", "module_kind", "case_dims"}  # what a switch on the module kind compares
KIND_NAMES = {"mha", "mha-cache", "mha-self"}  # ("mask" and "attention" also name tensors and functions)


def _kind_switches(path: Path) -> list[str]:
    """Comparisons that branch on the module kind: `spec.module == "mha"`, `kind.case_dims == ("size",)`,
    `options["module_kind"] != "mha"`, `name in ("mha", "mha-self")`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        sides = (node.left, *node.comparators)

        def literal(side):  # "mha", ("size",): a value written in the code
            return isinstance(side, ast.Constant) or (
                isinstance(side, (ast.Tuple, ast.List, ast.Set)) and all(isinstance(e, ast.Constant) for e in side.elts)
            )

        def kind_attribute(side):  # spec.module, kind.case_dims, options["module_kind"]
            return (isinstance(side, ast.Attribute) and side.attr in KIND_ATTRIBUTES) or (
                isinstance(side, ast.Subscript)
                and isinstance(side.slice, ast.Constant)
                and side.slice.value in KIND_ATTRIBUTES
            )

        def kind_name(side):
            values = [side] + (list(side.elts) if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [])
            return any(isinstance(v, ast.Constant) and v.value in KIND_NAMES for v in values)

        if (any(map(kind_attribute, sides)) and any(map(literal, sides))) or any(map(kind_name, sides)):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_switch_on_the_module_kind_outside_the_kinds():
    """A kind describes itself (exporter/kinds/): what its cases, vectors, mask contract and CLI flag are. Code
    elsewhere asks the kind instead of testing which kind it is, so a new kind is one new file there."""
    switches = [
        s for folder, path in SOURCES if "kinds" not in path.relative_to(ROOT).parts[:2] for s in _kind_switches(path)
    ]
    assert switches == []


def test_the_kind_switch_finder_finds_switches(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        'if spec.module == "mha": pass\nif kind.case_dims == ("size",): pass\n'
        'if options["module_kind"] != "x": pass\nif name in ("mha", "mha-self"): pass\n'
        'if name != "mask": pass\n'
    )
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert [s.split(":")[1] for s in _kind_switches(sample)] == ["1", "2", "3", "4"]
    finally:
        ROOT = saved
