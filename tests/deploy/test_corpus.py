"""Four verifiers, one verdict: every entry of the corpus (tests/deploy/corpus.py: hostile and edge-case bundles
and golden vector files, generated from one small valid bundle) through Python's check_bundle, Node's verify.js,
the C++ verify_bundle and the browser page, each giving the entry's own verdict: the same pass, or the same
refusal naming the same file (docs/bundle-format.md, "The rules every verifier applies").

The corpus is written once per session; each verifier reads all of it at once (Node in one process, the browser
in one page load) the first time a test asks for it. Skipped, visibly, per verifier, where its tool is absent:
node and examples/node's packages, the C++ build's tools and headers, chromium and onnxruntime-web."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.deploy import corpus as C
from tests.deploy.test_cpp import build  # noqa: F401 (the session's C++ build, a fixture)
from tests.deploy.test_cpp import pytestmark as CPP_MARKS
from tests.deploy.test_node import NODE, NODE_DIR
from tests.deploy.test_node import pytestmark as NODE_MARKS
from tests.deploy.test_web_page import needs_browser, needs_node, open_page

ROOT = Path(__file__).resolve().parents[2]
VERIFIERS = [
    pytest.param("python", id="python"),
    pytest.param("node", marks=NODE_MARKS, id="node"),
    pytest.param("cpp", marks=CPP_MARKS, id="cpp"),
    pytest.param("browser", marks=[needs_node, needs_browser], id="browser"),
]
BY_NAME = {b.name: b for b in C.BUNDLES}
TENSOR_BY_NAME = {t.name: t for t in C.TENSORS}


# --- each verifier, over the whole corpus: {bundle: (kind, text)} and {tensor: (kind, ...)} ----------------------
# A bundle's outcome: ("pass", ""), ("error", message) for a refusal, ("failed", "FOLDER, ...") for the sets and
# steps that fail on the numbers, or ("crash", what) for anything else (an exception that is not a refusal).


def _failed(lines) -> tuple[str, str]:
    folders = sorted({line.split(" | ")[2].split(" (")[0] for line in lines if line.startswith("FAILED |")})
    return ("failed", ", ".join(folders)) if folders else ("crash", "no set failed, yet the bundle did not pass")


def python_bundle(folder: Path) -> tuple[str, str]:
    from attn_onnx.deploy.bundle import check_bundle
    from attn_onnx.errors import AttnOnnxError

    try:
        report = check_bundle(folder)
    except AttnOnnxError as exc:
        return ("error", str(exc))
    except Exception as exc:
        return ("crash", f"{type(exc).__name__}: {exc}")
    if report.ok:
        return C.PASS
    return ("failed", ", ".join(sorted({r.case.split(" (")[0] for r in report.failed})))


def python_tensor(path: Path) -> tuple:
    from attn_onnx.deploy.bundle import _load_tensor
    from attn_onnx.errors import BundleError

    try:
        return C.values(_load_tensor(path))
    except BundleError as exc:
        return ("refused", str(exc))
    except Exception as exc:
        return ("crash", f"{type(exc).__name__}: {exc}")


NODE_RUN = r"""
const { verify } = require('./verify');
const b = require('./lib/bundle');
(async () => {
  const [bundles, tensors] = JSON.parse(process.argv[1]);
  for (const dir of bundles) {
    const lines = [];
    try {
      const ok = await verify(dir, (line) => lines.push(line));
      console.log(JSON.stringify({ ok, lines }));
    } catch (err) {
      const refusal = err instanceof b.BundleError;
      console.log(JSON.stringify({ error: String(err.message || err).split('\n')[0], refusal }));
    }
  }
  for (const file of tensors) {
    try {
      const t = b.loadTensor(file);
      const values = Array.from(b.numbers(t), (v) => (Number.isFinite(v) ? v : String(v)));
      console.log(JSON.stringify({ name: t.name, type: t.type, dims: t.dims, values }));
    } catch (err) {
      console.log(JSON.stringify({ error: String(err.message || err), refusal: err instanceof b.BundleError }));
    }
  }
})();
"""


def _tensor_outcome(said: dict) -> tuple:
    if "error" in said:
        return ("refused", said["error"]) if said.get("refusal", True) else ("crash", said["error"])
    return ("values", said["type"], said["dims"], said["values"])


def node_corpus(corpus: Path, node_dir: Path = NODE_DIR) -> tuple[dict, dict]:
    bundles = [str(corpus / name) for name in C.BUNDLE_NAMES]
    tensors = [str(corpus / "tensors" / f"{name}.pb") for name in C.TENSOR_NAMES]
    result = subprocess.run(
        [NODE, "-e", NODE_RUN, json.dumps([bundles, tensors])],
        cwd=node_dir,
        capture_output=True,
        text=True,
        timeout=900,
    )
    said = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(said) == len(bundles) + len(tensors), result.stdout[-2000:] + result.stderr[-2000:]
    out = {}
    for name, s in zip(C.BUNDLE_NAMES, said):
        if "error" in s:
            out[name] = ("error" if s["refusal"] else "crash", s["error"])
        else:
            out[name] = C.PASS if s["ok"] else _failed(s["lines"])
    return out, {name: _tensor_outcome(s) for name, s in zip(C.TENSOR_NAMES, said[len(bundles) :])}


def cpp_bundle(binary: Path, folder: Path) -> tuple[str, str]:
    result = subprocess.run([str(binary), str(folder)], capture_output=True, text=True, timeout=120)
    if result.returncode == 0:
        return C.PASS
    if result.returncode == 1 and result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1:
        return ("error", result.stderr[len("Error: ") :].strip())
    if result.returncode == 1 and not result.stderr:
        return _failed(result.stdout.splitlines())
    return ("crash", f"exit {result.returncode}: {result.stderr[-1000:]}")


def cpp_corpus(corpus: Path, build_dir: Path) -> tuple[dict, dict]:
    bundles = {name: cpp_bundle(build_dir / "verify_bundle", corpus / name) for name in C.BUNDLE_NAMES}
    result = subprocess.run(
        [str(build_dir / "read_tensor"), *(str(corpus / "tensors" / f"{n}.pb") for n in C.TENSOR_NAMES)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    said = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.returncode == 0 and len(said) == len(C.TENSOR_NAMES), result.stdout + result.stderr
    return bundles, {name: _tensor_outcome(s) for name, s in zip(C.TENSOR_NAMES, said)}


def browser_corpus(corpus: Path, folder: Path) -> tuple[dict, dict]:
    results, _ = open_page(corpus, folder, option="--corpus", query="?corpus=/corpus/", timeout=600, budget_ms=600000)
    assert results.get("corpus") is True, results
    bundles = {}
    for said in results["bundles"]:
        if said["error"] is not None:
            bundles[said["name"]] = ("error" if said["kind"] == "bundle" else "crash", said["error"])
        elif said["failed"] == 0 and said["passed"] > 0:
            bundles[said["name"]] = C.PASS
        else:
            bundles[said["name"]] = ("failed", ", ".join(sorted({s.split(" (")[0] for s in said["failed_sets"]})))
    tensors = {}
    for said in results["tensors"]:
        name = Path(said["file"]).stem
        crash = "error" in said and said["error"].startswith("unexpected: ")
        tensors[name] = ("crash", said["error"]) if crash else _tensor_outcome(said)
    return bundles, tensors


@pytest.fixture(scope="session")
def corpus(bundle_of, tmp_path_factory) -> Path:
    return C.write_corpus(bundle_of("--kv-cache", "--mask", "input"), tmp_path_factory.mktemp("corpus") / "c")


@pytest.fixture(scope="session")
def outcomes(corpus, request, tmp_path_factory):
    """outcomes(verifier) -> ({bundle: outcome}, {tensor: outcome}): the whole corpus, read once per verifier."""
    cache = {}

    def get(verifier: str):
        if verifier not in cache:
            if verifier == "python":
                cache[verifier] = (
                    {name: python_bundle(corpus / name) for name in C.BUNDLE_NAMES},
                    {name: python_tensor(corpus / "tensors" / f"{name}.pb") for name in C.TENSOR_NAMES},
                )
            elif verifier == "node":
                cache[verifier] = node_corpus(corpus)
            elif verifier == "cpp":
                cache[verifier] = cpp_corpus(corpus, request.getfixturevalue("build"))
            else:
                cache[verifier] = browser_corpus(corpus, tmp_path_factory.mktemp("browser"))
        return cache[verifier]

    return get


def judge(outcome: tuple[str, str], entry: C.Bundle, corpus: Path) -> None:
    """The outcome is the entry's verdict: the same kind, an error naming the entry's file (and saying its words),
    or the same failing set."""
    kind, text = outcome
    assert kind == entry.expect[0], f"{entry.name}: expected {entry.expect}, got {outcome}"
    if kind == "error":
        path = C.expected_path(entry, corpus)
        assert path in text, f"{entry.name}: the error does not name {path}: {text}"
        assert entry.says in text, f"{entry.name}: the error does not say {entry.says!r}: {text}"
    elif kind == "failed":
        assert text == entry.expect[1], f"{entry.name}: expected {entry.expect[1]} to fail, not {text}"


@pytest.mark.parametrize("verifier", VERIFIERS)
@pytest.mark.parametrize("name", C.BUNDLE_NAMES)
def test_every_verifier_gives_each_bundle_its_verdict(outcomes, corpus, verifier, name):
    judge(outcomes(verifier)[0][name], BY_NAME[name], corpus)


@pytest.mark.parametrize("verifier", VERIFIERS)
@pytest.mark.parametrize("name", C.TENSOR_NAMES)
def test_every_decoder_reads_or_refuses_each_vector_alike(outcomes, verifier, name):
    expected, got = TENSOR_BY_NAME[name].expect, outcomes(verifier)[1][name]
    if expected[0] == "refused":
        assert got[0] == "refused" and expected[1] in got[1], f"{name}: expected a refusal, {expected[1]!r}: {got}"
    else:
        assert got == expected, f"{name}: {got}"


# --- the rules are one text, one schema, one table ------------------------------------------------------------


def _shared(path: Path) -> str:
    text = path.read_text()
    start = text.index("// ---- shared: from here to the end mark")
    return text[start : text.index("// ---- shared: end", start)]


def test_node_and_the_browser_apply_the_same_rules_as_one_text():
    """lib/bundle.js and lib/bundle.mjs hold the path rule, the manifest rules beyond the schema, the outputs rule
    and the TensorProto decoder as the same text (the browser cannot require the Node file)."""
    assert _shared(ROOT / "examples/node/lib/bundle.js") == _shared(ROOT / "examples/web/lib/bundle.mjs")


ANNOTATIONS = {
    "$schema",
    "$id",
    "$comment",
    "title",
    "description",
    "default",
    "examples",
    "format",
    "deprecated",
    "readOnly",
    "writeOnly",
}
SUPPORTED = {
    "$ref",
    "type",
    "enum",
    "const",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minLength",
    "maxLength",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "$defs",
}


def _keywords(schema) -> set[str]:
    if not isinstance(schema, dict):
        return set()
    found = set(schema) - ANNOTATIONS
    for keyword in ("properties", "$defs"):
        for sub in schema.get(keyword, {}).values():
            found |= _keywords(sub)
    for keyword in ("additionalProperties", "items", "not"):
        found |= _keywords(schema.get(keyword))
    for keyword in ("allOf", "anyOf", "oneOf"):
        for sub in schema.get(keyword, []):
            found |= _keywords(sub)
    return found


def test_the_schema_uses_only_keywords_every_validator_implements():
    """The C++ verifier (examples/cpp/schema.cc) and the browser page (examples/web/lib/schema.mjs) apply the schema
    with validators of their own; they refuse a keyword they do not implement, so a new one must be added there
    (and to SUPPORTED) before the schema uses it."""
    schema = json.loads((ROOT / "deploy" / "manifest.schema.json").read_text())
    assert _keywords(schema) <= SUPPORTED, _keywords(schema) - SUPPORTED
    for source in (ROOT / "examples/cpp/schema.cc", ROOT / "examples/web/lib/schema.mjs"):
        for keyword in SUPPORTED - {"$defs"}:
            assert f"'{keyword}'" in source.read_text() or f'"{keyword}"' in source.read_text(), (source, keyword)


def test_the_python_reader_refuses_nan_and_infinity_and_an_infinite_tolerance(tmp_path):
    """Python's json reads NaN and Infinity; read_manifest does not. A dict holding NaN (never JSON) is refused too."""
    from attn_onnx.deploy.bundle import manifest_problem, read_manifest
    from attn_onnx.errors import BundleError

    (tmp_path / "manifest.json").write_text('{"format": "attn-onnx-bundle/1", "x": NaN}')
    with pytest.raises(BundleError, match=r"manifest\.json is not valid JSON: NaN is not a JSON value"):
        read_manifest(tmp_path)

    good = {
        "format": "attn-onnx-bundle/1",
        "name": "m",
        "model": {"file": "model.onnx", "sha256": "0" * 64},
        "inputs": [],
        "outputs": [{"name": "o", "dtype": "float32", "datatype": "FP32", "dims": [], "shape": []}],
        "mask_convention": "",
        "tolerance": {"atol": 0.0, "rtol": 0.0},
        "test_data_sets": [
            {
                "folder": "s",
                "case": "c",
                "inputs": [{"file": "a", "sha256": "0" * 64, "name": "i"}],
                "outputs": [{"file": "b", "sha256": "0" * 64, "name": "o"}],
            }
        ],
    }
    assert manifest_problem(good) is None
    assert (
        manifest_problem(dict(good, tolerance={"atol": float("nan"), "rtol": 0}))
        == "tolerance.atol is not a finite number"
    )
    assert manifest_problem(dict(good, tolerance={"atol": 0, "rtol": float("inf")})).startswith("tolerance.rtol: ")


# --- docs/reliability.md: a row for every refusal the corpus holds ---------------------------------------------

HEADING = "## Hostile bundles"


def reliability_rows() -> list[list[str]]:
    text = (ROOT / "docs" / "reliability.md").read_text()
    lines = text.split(HEADING, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def test_docs_reliability_has_a_row_for_every_refused_bundle_and_each_row_is_the_corpus():
    """Each row: the corpus entry, what is wrong with it, the file every verifier names, the words every verifier
    says. The test above runs each row, in every verifier."""
    rows = reliability_rows()
    refused = [b for b in C.BUNDLES if b.expect[0] == "error"]
    assert [re.findall(r"`([^`]+)`", row[0])[0] for row in rows] == [b.name for b in refused]
    for row, entry in zip(rows, refused):
        named = re.findall(r"`([^`]+)`", row[2])
        assert named == [entry.expect[1] if entry.expect[1] != "/ABSOLUTE" else "ABSOLUTE"], (row, entry.expect)
        assert re.findall(r"`([^`]+)`", row[3]) == [entry.says], (row, entry.says)


# --- the Triton Python model's verifier (deploy/triton_python_model.py): it reads only the vectors attn-onnx writes
# (raw_data) and does not validate the manifest against the schema (the exporter that wrote it did); it must
# never serve what the four verifiers refuse on the numbers, the files or the vectors.


def triton_verifier():
    import importlib.util
    import sys
    import types

    stub = types.ModuleType("triton_python_backend_utils")
    saved = sys.modules.get(stub.__name__)
    sys.modules[stub.__name__] = stub
    try:
        spec = importlib.util.spec_from_file_location("triton_model", ROOT / "deploy" / "triton_python_model.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            del sys.modules[stub.__name__]
        else:
            sys.modules[stub.__name__] = saved
    return module


def triton_bundle(model, folder: Path) -> tuple[str, str]:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        return ("pass", model.verify_bundle(folder, session, "onnxruntime"))
    except model.BundleRefused as exc:
        return ("refused", str(exc))
    except Exception as exc:
        return ("refused", f"{type(exc).__name__}: {exc}")


# Entries the four verifiers refuse by the manifest's schema alone, which the Triton model does not judge: their
# vectors and files are the valid bundle's, so serving them is serving a verified model.
TRITON_SERVES = {"no-mask-convention", "duplicate-folder", "manifest-outputs-short"}


def test_the_triton_model_never_serves_what_the_verifiers_fail_on_numbers_files_or_vectors(corpus):
    model = triton_verifier()
    outcomes = {name: triton_bundle(model, corpus / name) for name in C.BUNDLE_NAMES}
    for entry in C.BUNDLES:
        kind, text = outcomes[entry.name]
        if entry.expect == C.PASS:  # or refused for a vector outside raw_data, which it does not read
            assert kind == "pass" or "this reader takes raw_data" in text, f"{entry.name}: {text}"
        elif entry.expect[0] == "failed":  # refused, naming the first set that fails
            first = entry.expect[1].split(", ")[0]
            assert kind == "refused" and f"golden set {first} (" in text, f"{entry.name}: {text}"
    served = {e.name for e in C.BUNDLES if e.expect[0] == "error" and outcomes[e.name][0] == "pass"}
    assert served == TRITON_SERVES, "the refused entries the Triton model serves are not the listed ones"
    assert outcomes["valid"][0] == "pass"


@pytest.mark.parametrize("name", C.TENSOR_NAMES)
def test_the_triton_model_reads_raw_data_alike_and_refuses_the_rest(name):
    model = triton_verifier()
    entry = TENSOR_BY_NAME[name]
    try:
        got = C.values(model.read_tensor(entry.data))
    except model.BundleRefused as exc:
        got = ("refused", str(exc))
    if got[0] == "values":
        assert got == entry.expect, f"{name}: {got}"
    else:  # what the others refuse, and what they read from a typed field
        assert entry.expect[0] == "refused" or "this reader takes raw_data" in got[1], f"{name}: {got}"


# --- a static cache's lengths: Python's values_problem, the Triton model's copy and Node's valuesProblem give each
# request of the corpus the same words (or all let it through)

NODE_LENGTHS = r"""
const ort = require('onnxruntime-node');
const { valuesProblem } = require('./lib/dims');
for (const { manifest, arrays } of JSON.parse(process.argv[1])) {
  const feeds = {};
  for (const [name, a] of Object.entries(arrays)) {
    feeds[name] = a.type === 'int64'
      ? new ort.Tensor('int64', BigInt64Array.from(a.values, BigInt), a.dims)
      : new ort.Tensor('float32', new Float32Array(a.dims.reduce((x, y) => x * y, 1)), a.dims);
  }
  console.log(JSON.stringify({ says: valuesProblem(manifest, feeds) }));
}
"""


def _node_lengths() -> dict:
    requests = []
    for entry in C.LENGTHS:
        arrays = {
            name: {"type": str(a.dtype), "dims": list(a.shape), "values": [str(v) for v in a.ravel().tolist()]}
            for name, a in C.lengths_arrays(entry).items()
        }
        requests.append({"manifest": C.lengths_manifest(C.lengths_contract(entry)), "arrays": arrays})
    result = subprocess.run(
        [NODE, "-e", NODE_LENGTHS, json.dumps(requests)], cwd=NODE_DIR, capture_output=True, text=True, timeout=120
    )
    said = [json.loads(line)["says"] for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(said) == len(C.LENGTHS), result.stdout[-2000:] + result.stderr[-2000:]
    return dict(zip(C.LENGTHS_NAMES, said))


@pytest.fixture(scope="module")
def lengths_said():
    said: dict = {}

    def get(checker: str) -> dict:
        if checker not in said:
            if checker == "node":
                said[checker] = _node_lengths()
            else:
                if checker == "python":
                    from attn_onnx.exporter.kinds.dims import values_problem
                else:
                    values_problem = triton_verifier().values_problem
                said[checker] = {e.name: values_problem(C.lengths_contract(e), C.lengths_arrays(e)) for e in C.LENGTHS}
        return said[checker]

    return get


LENGTHS_BY_NAME = {e.name: e for e in C.LENGTHS}


@pytest.mark.parametrize("checker", ["python", "triton", pytest.param("node", marks=NODE_MARKS, id="node")])
@pytest.mark.parametrize("name", C.LENGTHS_NAMES)
def test_every_checker_gives_each_cache_length_the_same_words(lengths_said, checker, name):
    assert lengths_said(checker)[name] == LENGTHS_BY_NAME[name].says


def test_the_lengths_corpus_refuses_and_passes_both():
    """Requests within the rule (the cache filled exactly among them) and past it, at both bounds."""
    says = [e.says or "" for e in C.LENGTHS]
    assert (
        "" in says and any("a length is at least 0" in s for s in says) and any("the cache is full" in s for s in says)
    )
    exactly = LENGTHS_BY_NAME["fills-exactly"]
    assert exactly.says is None and exactly.past_len[0] + exactly.q_len == C.MAX_LEN
