"""A verifiable bundle: the model, a manifest that states its contract, and golden vectors in
onnxruntime's test-data layout, so that a service in any language can prove it computes the same numbers.

    DIR/model.onnx
    DIR/manifest.json
    DIR/test_data_set_N/input_K.pb, output_K.pb   (onnx TensorProto; K in the model's input/output order)

The outputs are the float64 PyTorch module's answers (cast to the output dtype), not the model's own.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from attn_onnx import __version__
from attn_onnx.errors import BundleError, InterfaceError, UsageError
from attn_onnx.exporter.kinds.base import valid_part
from attn_onnx.exporter.spec import ExportSpec
from attn_onnx.files import file_sha256, write_folder_atomic
from attn_onnx.model_files import needs_external, save_model
from attn_onnx.runtime_check.cases import Case, parse_case
from attn_onnx.runtime_check.compare import OutputComparison, Tolerance, tolerance_for
from attn_onnx.runtime_check.coverage import Coverage, CoverageProbe
from attn_onnx.runtime_check.report import CaseResult, Report
from attn_onnx.vocab import ELEMENT_TYPES

FORMAT = "attn-onnx-bundle/1"
MODEL_FILE, MANIFEST_FILE = "model.onnx", "manifest.json"

# The --dtype values a bundle takes. bfloat16 is refused: onnxruntime has no bfloat16 MatMul on a CPU, so
# neither check-attn --bundle nor the Node verifier could run its golden vectors here.
BUNDLE_DTYPES = ("float32", "float16")

# The lowest onnxruntime that implements each default-domain opset, and each ONNX IR version
# (onnxruntime's compatibility table): a model needs the higher of the two.

# A model with a KV cache also gets a decode set: a prefill of 4 tokens from an empty cache, then 3 single
# tokens, each step's present_key/present_value threaded into the next step's past_key/past_value.
DECODE_CHUNKS = (4, 1, 1, 1)
DECODE_FOLDER = "decode"

# A static cache's decode set (mha-static): 2 sequences in one batch, their buffers of max_len threaded the same
# way from zeros, each step (new tokens, past_len of each sequence). Both prefill 4 tokens; slot 1's sequence ends
# with its prompt and a new one starts there at 0 (its old keys stay in the buffer beyond its length, never to be
# read); one token at a time, lengths unequal; two tokens into both caches (ort-gqa's standard branch), filling
# slot 0 to 8; slot 0's sequence ends and a new one starts there. Every length fits the smallest max_len (16).
STATIC_DECODE_STEPS = ((4, (0, 0)), (1, (4, 0)), (1, (5, 1)), (2, (6, 2)), (1, (0, 4)), (1, (1, 5)))


def bundle_cases(spec: ExportSpec) -> list[Case]:
    """The cases a bundle carries vectors for: those its module kind says a service must get right, and the
    shapes its variant names to run every control-flow path (tiled: 2 tiles, and 3 or more ending in a partial
    one), under causal+padding where the mask is an input."""
    from attn_onnx.exporter.variants import VARIANTS

    names = list(spec.kind.vector_cases(spec))
    names += [
        name
        for name, _, _ in spec.kind.coverage_cases(
            spec, VARIANTS[spec.variant].coverage_shapes(spec), ("causal+padding",)
        )
    ]
    return [parse_case(name, spec) for name in dict.fromkeys(names)]


def set_coverage(proto: onnx.ModelProto, sets: list[tuple[str, dict]], base_dir: str = "") -> Coverage:
    """Which control-flow paths of `proto` the sets (label, feeds) run (runtime_check.coverage)."""
    probe = CoverageProbe(proto, base_dir)
    coverage = Coverage(probe.paths)
    for label, feeds in sets:
        coverage.record(label, probe.run(feeds))
    return coverage


def min_onnxruntime(proto: onnx.ModelProto, spec: ExportSpec) -> dict[str, str]:
    """The manifest's claim: the measured one of the model's row (deploy/compatibility.py), else the ONNX
    tables' floor, saying which."""
    from attn_onnx.deploy.compatibility import min_onnxruntime as claim

    release, measured = claim(proto, spec)
    source = (
        (
            "measured: the oldest release from which every later one runs this variant, kind and dtype right "
            "(docs/compatibility.md)"
        )
        if measured
        else (
            "not measured for this model (its opset, IR version, "
            "quantization or optimization): the oldest release its "
            "opset and IR version allow"
        )
    )
    return {"min_onnxruntime": release, "min_onnxruntime_source": source}


def check_bundle_name(name: str) -> None:
    """UsageError unless `name` matches the manifest schema's own pattern for it (before any export work): a
    bundle written under another name would be refused by its own schema. Triton's model names and the
    service's URLs take the same (deploy/triton.py)."""
    import re

    pattern = json.loads(SCHEMA_FILE.read_text())["properties"]["name"]["pattern"]
    if not re.fullmatch(pattern, name, flags=re.ASCII):
        raise UsageError(
            f"--name {name!r}: a model's name matches {pattern} (ASCII letters, digits, '.', '_' and '-', not first)"
        )


def check_bundle_dtype(dtype: str) -> None:
    """UsageError for a --dtype a bundle cannot carry (before any export work)."""
    if dtype not in BUNDLE_DTYPES:
        raise UsageError(
            f"a bundle takes --dtype {' or '.join(BUNDLE_DTYPES)}, not {dtype}: onnxruntime has no "
            f"{dtype} MatMul on a CPU, so its golden vectors could not be checked here; write the "
            f"{dtype} model with --out or --triton-repo"
        )


def mask_contract(spec: ExportSpec) -> str:
    """The mask convention, in words, for the people wiring the model into a service (the kind's own)."""
    return spec.kind.mask_contract(spec)


def _io(values, dims: dict, dtypes: dict) -> list[dict]:
    return [
        {
            "name": v.name,
            "dtype": dtypes[v.name],
            "datatype": ELEMENT_TYPES[dtypes[v.name]].datatype,
            "dims": dims[v.name],
            "shape": [d if isinstance(d, int) else -1 for d in dims[v.name]],
        }
        for v in values
    ]


def manifest_dims(spec: ExportSpec) -> dict[str, dict]:
    """The manifest's `dims`: one entry per dim name the model's inputs use, {"description"}, with "is" and
    "or_one" (equals that dim, or may be 1 where or_one) or "sum" (equals the sum of those dims): the kind's
    dims contract (exporter/kinds/dims.py), which a service checks each request's inputs against."""
    used = {d for dims in spec.input_dims().values() for d in dims if isinstance(d, str)}
    return {name: rule for name, rule in spec.kind.dim_rules(spec).items() if name in used}


def write_bundle(
    target: str | Path,
    proto: onnx.ModelProto,
    spec: ExportSpec,
    module,
    *,
    name: str,
    force: bool = False,
    seed: int = 0,
    external: bool = False,
    data: bytes | None = None,
) -> Path:
    """Write the bundle folder atomically (a temp folder beside `target`, then a rename). With `external`
    (or past 2 GiB), the weights go to `model.onnx.data` beside the model, hashed in the manifest too.

    `module` holds the weights as the model does (dequantized, for an int8 model): the golden vectors are its
    float64 answers, and the manifest's tolerance is the profile of the model's precision. `data`: the model
    serialized already, where the caller holds it."""
    check_bundle_dtype(spec.dtype)
    build = bundle_builder(proto, spec, module, name=name, seed=seed, external=external, data=data)
    return write_folder_atomic(target, build, force)


def bundle_builder(
    proto: onnx.ModelProto,
    spec: ExportSpec,
    module,
    *,
    name: str,
    seed: int = 0,
    external: bool = False,
    data: bytes | None = None,
):
    """build(folder): writes the bundle's files into `folder`, which exists and is empty (write_bundle's folder,
    or a Triton model's version folder, deploy/triton.py)."""
    import torch

    from attn_onnx.runtime_check.runners.torch_runner import TorchRunner

    oracle = TorchRunner(spec, module, torch.float64)  # the float64 PyTorch module: what is right
    external = external or needs_external(proto)
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [v for v in proto.graph.input if v.name not in initializers]

    def build(folder: Path) -> None:
        files = save_model(proto, folder / MODEL_FILE, external, data)
        sets, fed = [], []
        for i, case in enumerate(bundle_cases(spec)):
            feeds = case.feeds(seed)
            fed.append((f"test_data_set_{i}", {v.name: feeds[v.name] for v in inputs}))
            golden = spec.kind.comparable(spec, feeds, oracle.run(feeds))  # an unspecified tail zeroed
            outputs = {k: v.astype(spec.output_dtypes()[k]) for k, v in golden.items()}
            sub = folder / f"test_data_set_{i}"
            sub.mkdir()
            sets.append(
                {
                    "folder": sub.name,
                    "case": case.name,
                    "description": _describe_case(case),
                    "inputs": _write_tensors(folder, sub, "input", {v.name: feeds[v.name] for v in inputs}),
                    "outputs": _write_tensors(
                        folder,
                        sub,
                        "output",
                        {n: outputs[n] for n in spec.output_names},
                        spec.kind.valid_lengths(spec, feeds),
                    ),
                }
            )
        _, tolerance = tolerance_for(spec.precision, spec.kind.integer_outputs(spec))
        coverage = set_coverage(proto, fed, str(folder) if external else "")
        if not coverage.complete:  # a variant's coverage_shapes that no longer run what they should
            raise BundleError(
                f"the bundle's golden sets leave control-flow paths of its model unrun: {'; '.join(coverage.missing)}"
            )
        import onnxruntime
        import onnxscript

        manifest = {
            "format": FORMAT,
            "name": name,
            "description": spec.kind.describe(spec),
            "model": {
                "file": MODEL_FILE,
                "sha256": file_sha256(files[0]),
                "bytes": files[0].stat().st_size,
                "opset": spec.opset,
                "ir_version": proto.ir_version,
                **min_onnxruntime(proto, spec),
            },
            "inputs": _io(inputs, spec.input_dims(), spec.input_dtypes()),
            "outputs": _io(proto.graph.output, spec.output_dims(), spec.output_dtypes()),
            "dims": manifest_dims(spec),
            "mask_convention": mask_contract(spec),
            "tolerance": {
                "atol": tolerance.atol,
                "rtol": tolerance.rtol,
                "rule": "|actual - expected| <= atol + rtol * |expected|, elementwise; no NaN or Inf",
                "expected": "the PyTorch module's answers in float64, cast to the output dtype",
            },
            "test_data_sets": sets,
            "coverage": {
                "description": "the model's control-flow paths (every If branch, every Loop at 1, 2 and "
                "3+ iterations and with a last partial iteration) and the sets that run "
                "each; check-attn --bundle fails a bundle whose sets leave one unrun",
                "paths": {path: coverage.ran[path] for path in coverage.paths},
            },
            "producer": {
                "attn_onnx": __version__,
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxscript": onnxscript.__version__,
                "onnxruntime": onnxruntime.__version__,
            },
            "metadata": {p.key: p.value for p in proto.metadata_props},
        }
        quantization = manifest["metadata"].get("attn_onnx.quantize_format")  # exporter/quantize.py FORMAT
        if spec.quantize and quantization:
            manifest["model"]["quantization"] = quantization
        lengths = spec.kind.dims_contract(spec).get("lengths")
        if lengths:  # a rule on an input's values (mha-static's past_len), checked by the services
            manifest["lengths"] = lengths
        if spec.kind.decodes:
            manifest["decode"] = _write_decode(folder, spec, oracle, seed)
        if external:
            manifest["model"]["data"] = {
                "file": files[1].name,
                "sha256": file_sha256(files[1]),
                "bytes": files[1].stat().st_size,
                "note": "the weights (ONNX external data); keep it beside the model",
            }
        (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")

    return build


def _describe_case(case: Case) -> str:
    return case.spec.kind.describe_case(case.spec, case.dims, case.pattern)


# --- reading and checking ----------------------------------------------------------------------------------


def read_manifest(folder: str | Path) -> dict:
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise BundleError(f"bundle {str(folder)!r} is not a folder")
    if not path.is_file():
        raise BundleError(f"{str(folder)!r} is not a bundle: it has no {MANIFEST_FILE}")
    if _inside(folder, MANIFEST_FILE) is None:
        raise BundleError(f"{path} is outside the bundle: a symlink whose target leaves it")
    try:  # NaN, Infinity and -Infinity are not JSON, though Python's json reads them
        manifest = json.loads(path.read_text(), parse_constant=_not_json)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path} is not an attn-onnx bundle manifest (format is not {FORMAT!r})")
    problem = manifest_problem(manifest)
    if problem:
        raise BundleError(f"{path} is malformed: {problem}")
    return manifest


SCHEMA_FILE = Path(__file__).with_name("manifest.schema.json")  # docs/bundle-format.md; Node validates with it too


@functools.cache
def _validator():
    import jsonschema

    return jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))


def _not_json(token: str):
    raise ValueError(f"{token} is not a JSON value")


def manifest_problem(manifest) -> str | None:
    """The first way `manifest` breaks the bundle format's JSON Schema, in words (`decode.steps[1] lacks
    'inputs'`), or None. The first by position in the document, so the answer does not depend on the validator's
    order. Then what the schema cannot say (docs/bundle-format.md, "The rules every verifier applies")."""
    errors = sorted(
        _validator().iter_errors(manifest), key=lambda e: (len(e.absolute_path), [str(p) for p in e.absolute_path])
    )
    if not errors:
        return _beyond_schema(manifest)
    error = errors[0]
    while error.context:  # an allOf's own failure: say the innermost
        error = min(error.context, key=lambda e: len(e.absolute_path))
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
    where = where or "the manifest"
    if error.validator == "required":
        missing = [key for key in error.validator_value if key not in error.instance]
        return f"{where} lacks {', '.join(repr(key) for key in missing)}"
    if error.validator == "type":
        kinds = {
            "array": "a list",
            "object": "an object",
            "number": "a number",
            "integer": "an integer",
            "string": "a string",
        }
        # the schema's "type": a JSON type's name, or a list of them
        wanted: list[str] = (
            error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        )
        return f"{where} is not {' or '.join(kinds.get(k, k) for k in wanted)}"
    return f"{where}: {error.message[:200]}"


def _beyond_schema(manifest: dict) -> str | None:
    """The rules the schema cannot state: finite tolerances (a dict may hold NaN, which jsonschema's `number`
    takes), and a folder of its own for every set and decode step."""
    import math

    for key in ("atol", "rtol"):
        if not math.isfinite(manifest["tolerance"][key]):
            return f"tolerance.{key} is not a finite number"
    seen: dict[str, str] = {}
    for where, entry in _vector_sets(manifest):
        if entry["folder"] in seen:
            return f"{where}.folder '{entry['folder']}' is also {seen[entry['folder']]}'s"
        seen[entry["folder"]] = where
    return None


def _vector_sets(manifest: dict) -> list[tuple[str, dict]]:
    """Every test set and decode step, with where it is in the manifest (`test_data_sets[2]`)."""
    return [(f"test_data_sets[{k}]", s) for k, s in enumerate(manifest["test_data_sets"])] + [
        (f"decode.steps[{k}]", s) for k, s in enumerate(manifest.get("decode", {}).get("steps", []))
    ]


def outputs_problem(manifest: dict, outputs: list[str]) -> str | None:
    """How the manifest fails to compare every output of the model (`outputs`, in the model's order), or None:
    its `outputs` list names them in order, and every set and decode step names each once and nothing else;
    the decode thread takes its present_* from them."""
    listed = [o["name"] for o in manifest["outputs"]]
    if listed != outputs:
        return (
            f"outputs names {', '.join(repr(n) for n in listed)}; the model gives {', '.join(repr(n) for n in outputs)}"
        )
    for where, entry in _vector_sets(manifest):
        names = [f["name"] for f in entry["outputs"]]
        for name in outputs:
            if name not in names:
                return f"{where}.outputs lacks the model's output '{name}'"
        for name in names:
            if name not in outputs:
                return f"{where}.outputs names '{name}', which the model does not give"
            if names.count(name) > 1:
                return f"{where}.outputs names '{name}' more than once"
    for present in manifest.get("decode", {}).get("thread", {}):
        if present not in outputs:
            return f"decode.thread names '{present}', which the model does not give"
    return None


def check_outputs(folder: str | Path, manifest: dict, outputs: list[str]) -> None:
    """BundleError naming the manifest unless every set and decode step compares every output of the model."""
    problem = outputs_problem(manifest, outputs)
    if problem:
        raise BundleError(f"{Path(folder) / MANIFEST_FILE} is malformed: {problem}")


def _inside(folder: Path, relative: str) -> Path | None:
    """The file a manifest path names, symlinks resolved; None unless the path is plain (relative, `/` between
    parts, none of them empty, `.` or `..`, no backslash or NUL) and its target lies inside the bundle."""
    parts = relative.split("/")
    if "\\" in relative or "\0" in relative or any(part in ("", ".", "..") for part in parts):
        return None
    path = (folder / relative).resolve()
    return path if folder.resolve() in path.parents else None


def verify_hashes(folder: str | Path, manifest: dict) -> None:
    """BundleError naming every file that is missing, outside the bundle (see `_inside`) or whose sha256 differs
    from the manifest's."""
    folder = Path(folder)
    files = [(manifest["model"]["file"], manifest["model"]["sha256"])]
    if "data" in manifest["model"]:  # the weights, as external data beside the model
        files.append((manifest["model"]["data"]["file"], manifest["model"]["data"]["sha256"]))
    files += [(f["file"], f["sha256"]) for s in manifest["test_data_sets"] for f in s["inputs"] + s["outputs"]]
    files += [
        (f["file"], f["sha256"])
        for s in manifest.get("decode", {}).get("steps", [])
        for f in s["inputs"] + s["outputs"]
    ]
    changed = []
    for relative, expected in files:
        path = _inside(folder, relative)
        if path is None:
            changed.append(f"{relative} (outside the bundle)")
        elif not path.is_file():
            changed.append(f"{relative} (missing)")
        elif (actual := file_sha256(path)) != expected:
            changed.append(f"{relative} (sha256 {actual[:12]}..., the manifest says {expected[:12]}...)")
    if changed:
        raise BundleError(f"the bundle was changed after it was written: {'; '.join(changed)}")


def check_bundle(folder: str | Path, config=None) -> Report:
    """Check every hash, then run every vector set in onnxruntime (and any other runtime the config asks
    for), within the manifest's tolerance. BundleError for a changed or malformed bundle."""
    from attn_onnx.runtime_check.check import CheckConfig, make_runners, run_case
    from attn_onnx.runtime_check.model import load_model
    from attn_onnx.runtime_check.reference import reference_module

    folder = Path(folder)
    config = config or CheckConfig(runtimes=("onnxruntime",))
    manifest = read_manifest(folder)
    verify_hashes(folder, manifest)
    loaded = load_model(folder / manifest["model"]["file"])
    check_outputs(folder, manifest, [o.name for o in loaded.proto.graph.output])
    spec = loaded.spec  # its interface compared with it by load_model
    stated = [(io["name"], io["dtype"]) for io in manifest["inputs"]]
    actual = [(n, spec.input_dtypes()[n]) for n in spec.input_names]
    if stated != actual:
        raise InterfaceError(f"the manifest's inputs {stated} differ from the model's {actual}")
    module, reference_weights = reference_module(loaded.proto, spec, base_dir=loaded.base_dir)
    runners, skipped = make_runners(loaded, module, config)
    tolerance = Tolerance(atol=float(manifest["tolerance"]["atol"]), rtol=float(manifest["tolerance"]["rtol"]))
    report = Report(
        model=str(folder),
        sha256=manifest["model"]["sha256"],
        spec=spec,
        reference_weights=f"the bundle's golden vectors (from {reference_weights.split(' (')[0]})",
        seed=0,
        tolerances={r.name: ("bundle", tolerance) for r in runners},
        versions={},
        skip_missing=config.skip_missing,
        skipped=skipped,
    )
    for entry in manifest["test_data_sets"]:
        feeds = {f["name"]: _load_tensor(folder / f["file"]) for f in entry["inputs"]}
        expected = {f["name"]: _load_tensor(folder / f["file"]) for f in entry["outputs"]}
        dtypes = {name: str(array.dtype) for name, array in expected.items()}
        label = f"{entry['folder']} ({entry['case']})"
        bad = [
            f"input {name!r} holds {int(np.size(a) - np.count_nonzero(np.isfinite(a)))} NaN/Inf values"
            for name, a in feeds.items()
            if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all()
        ]
        if bad:  # a finding about the bundle, not a crash: attention of NaN is NaN, whoever computes it
            report.results.extend(CaseResult(r.name, label, entry["case"], error="; ".join(bad)) for r in runners)
            continue
        misfit = valid_lengths_problem(entry, expected)
        if misfit:  # the manifest's valid part does not fit the expected output: nothing to compare against
            report.results.extend(CaseResult(r.name, label, entry["case"], error=misfit) for r in runners)
            continue
        comparable = entry_comparable(entry)
        expected = comparable(expected)
        for runner in runners:
            report.results.append(
                run_case(runner, label, entry["case"], feeds, expected, dtypes, tolerance, comparable)
            )
    if "decode" in manifest:
        report.results.extend(_check_decode(folder, manifest, runners, tolerance))
    # the sets must run every control-flow path of the model: measured here, whatever the manifest claims
    report.coverage = set_coverage(
        loaded.proto,
        [
            (f"{e['folder']} ({e['case']})", {f["name"]: _load_tensor(folder / f["file"]) for f in e["inputs"]})
            for e in manifest["test_data_sets"]
        ],
        loaded.base_dir if loaded.external else "",
    )
    return report


def _write_tensors(
    folder: Path, sub: Path, side: str, arrays: dict[str, np.ndarray], valid: dict[str, list[int]] | None = None
) -> list[dict]:
    """`sub/<side>_K.pb` for each array in order (onnxruntime's test-data layout), and their manifest entries;
    `valid`: the valid_lengths of the outputs only part of which is compared (the kind's valid_lengths())."""
    entries = []
    for k, (name, array) in enumerate(arrays.items()):
        path = sub / f"{side}_{k}.pb"
        path.write_bytes(numpy_helper.from_array(np.ascontiguousarray(array), name).SerializeToString())
        entry = {
            "file": str(path.relative_to(folder)),
            "name": name,
            "dtype": str(array.dtype),
            "shape": list(array.shape),
            "sha256": file_sha256(path),
        }
        if valid and name in valid:
            entry["valid_lengths"] = list(valid[name])
        entries.append(entry)
    return entries


# --- valid_lengths: an output of which each batch row's positions 0..L_b-1 on axis 2 are compared -------------


def valid_lengths_problem(entry: dict, expected: dict[str, np.ndarray]) -> str | None:
    """Why an output's valid_lengths do not fit its expected tensor (rank 3 or more, one length per batch row,
    each within axis 2), in the words every verifier uses, or None."""
    for f in entry["outputs"]:
        lengths, array = f.get("valid_lengths"), expected.get(f["name"])
        if lengths is None or array is None:
            continue
        if array.ndim < 3 or array.shape[0] != len(lengths) or any(n > array.shape[2] for n in lengths):
            return (
                f"{f['name']}: valid_lengths [{','.join(map(str, lengths))}] do not fit shape "
                f"[{','.join(map(str, array.shape))}]"
            )
    return None


def entry_comparable(entry: dict):
    """outputs -> the outputs as a set's or step's manifest entry compares them: each output with valid_lengths
    zeroed beyond each row's length (both sides, so the unspecified part never counts); the others as they are.
    run_case's `comparable`."""
    valid = {f["name"]: f["valid_lengths"] for f in entry["outputs"] if "valid_lengths" in f}

    def comparable(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: valid_part(a, valid[name]) if name in valid else a for name, a in outputs.items()}

    return comparable


def step_label(step: dict) -> str:
    """A decode step as every verifier names it: `decode/step_1 (1 new, past 4)`; a static cache's past_len, one
    per sequence, as `past [4, 0]`."""
    past = step["past_len"]
    past = f"[{', '.join(map(str, past))}]" if isinstance(past, list) else past
    return f"{step['folder']} ({step['new_tokens']} new, past {past})"


def _write_decode(folder: Path, spec: ExportSpec, oracle, seed: int) -> dict:
    """The decode set: the float64 oracle decodes a sequence step by step, threading its own cache."""
    from attn_onnx.runtime_check.decode import SEQUENCE, THREAD, decode_steps, empty_cache, sequence_mask

    if spec.kind.static_cache:
        return _write_static_decode(folder, spec, oracle, seed)

    batch, length = SEQUENCE[0], sum(DECODE_CHUNKS)
    rng = np.random.default_rng([seed, 2002])
    x = rng.standard_normal((batch, length, spec.embedding_dim), dtype=np.float32)
    mask = sequence_mask(batch, length).astype(spec.input_dtypes()["mask"]) if spec.mask == "input" else None
    past = empty_cache(batch, spec.heads, spec.d_k, np.float64)  # the golden keeps its float64 cache
    steps = []
    for k, (start, inputs, outputs) in enumerate(decode_steps(oracle.run, x, DECODE_CHUNKS, mask, past)):
        sub = folder / DECODE_FOLDER / f"step_{k}"
        sub.mkdir(parents=True)
        steps.append(
            {
                "folder": str(sub.relative_to(folder)),
                "new_tokens": DECODE_CHUNKS[k],
                "past_len": start,
                "inputs": _write_tensors(folder, sub, "input", inputs),
                "outputs": _write_tensors(folder, sub, "output", {n: v.astype(np.float32) for n, v in outputs.items()}),
            }
        )
    return {
        "description": f"decode {batch} sequences of {length} tokens: a prefill of {DECODE_CHUNKS[0]} from "
        "an empty cache, then one token at a time",
        "thread": THREAD,
        "first_past": {"shape": [batch, spec.heads, 0, spec.d_k], "dtype": "float32"},
        "how": "run the steps in order; step 0 takes past_key and past_value of first_past's shape (no "
        "elements); every later step takes the previous step's present_key and present_value as its "
        "past_key and past_value. Each step's inputs and expected outputs are in its folder.",
        "steps": steps,
    }


def _write_static_decode(folder: Path, spec: ExportSpec, oracle, seed: int) -> dict:
    """A static cache's decode set (STATIC_DECODE_STEPS): the float64 oracle steps 2 sequences through buffers
    of max_len, from zeros, threading its own float64 buffers; each present compared over each sequence's valid
    positions (valid_lengths), its tail zeroed in the expected file."""
    from attn_onnx.runtime_check.decode import THREAD, next_past

    batch = 2
    shape = [batch, spec.heads, spec.max_len, spec.d_k]
    needs = max(q + max(past) for q, past in STATIC_DECODE_STEPS)
    if needs > spec.max_len:
        raise BundleError(f"the static decode set needs a cache of {needs} tokens; max_len is {spec.max_len}")
    rng = np.random.default_rng([seed, 2003])
    past = {name: np.zeros(shape, np.float64) for name in THREAD.values()}  # the golden keeps its float64 cache
    held = [0] * batch  # what each sequence held after the step before: past_len is that, or 0 for a new one
    steps = []
    for k, (q_len, past_len) in enumerate(STATIC_DECODE_STEPS):
        assert all(p in (0, h) for p, h in zip(past_len, held)), (k, past_len, held)  # continues, or starts anew
        x = rng.standard_normal((batch, q_len, spec.embedding_dim), dtype=np.float32)
        inputs: dict[str, np.ndarray] = {"query": x, "key": x, "value": x, "past_len": np.array(past_len, np.int64)}
        raw = oracle.run({**inputs, **past})
        outputs = spec.kind.comparable(spec, inputs, raw)  # the tails zeroed: not part of the answer
        sub = folder / DECODE_FOLDER / f"step_{k}"
        sub.mkdir(parents=True)
        steps.append(
            {
                "folder": str(sub.relative_to(folder)),
                "new_tokens": q_len,
                "past_len": list(past_len),
                "inputs": _write_tensors(folder, sub, "input", inputs),
                "outputs": _write_tensors(
                    folder,
                    sub,
                    "output",
                    {n: outputs[n].astype(np.float32) for n in spec.output_names},
                    spec.kind.valid_lengths(spec, inputs),
                ),
            }
        )
        past = next_past(raw)  # its own buffers, tails and all: a step never reads beyond a sequence's length
        held = [p + q_len for p in past_len]
    return {
        "description": f"decode {batch} sequences through a static cache of {spec.max_len} tokens: both prefill "
        f"{STATIC_DECODE_STEPS[0][0]} tokens, then the lengths grow unequal and each slot's sequence ends at a "
        "different step, a new one starting there at past_len 0 (its old keys left beyond its length)",
        "thread": THREAD,
        "first_past": {"shape": shape, "dtype": "float32"},
        "how": "run the steps in order; step 0 takes past_key and past_value of zeros of first_past's shape (the "
        "cache's buffers); every later step takes the previous step's present_key and present_value as its "
        "past_key and past_value, and its own past_len (each sequence's length: the previous length, or 0 where a "
        "new sequence starts in that slot). Compare each present over its valid_lengths only.",
        "steps": steps,
    }


def _check_decode(folder: Path, manifest: dict, runners, tolerance: Tolerance) -> list[CaseResult]:
    """Each runner decodes the steps in order, threading its own cache; each step against the golden's."""
    from attn_onnx.errors import short_error
    from attn_onnx.runtime_check.decode import next_past

    decode = manifest["decode"]
    results = []
    for runner in runners:
        past = {name: np.zeros(decode["first_past"]["shape"], np.float32) for name in decode["thread"].values()}
        for k, step in enumerate(decode["steps"]):
            feeds = {f["name"]: _load_tensor(folder / f["file"]) for f in step["inputs"]}
            expected = {f["name"]: _load_tensor(folder / f["file"]) for f in step["outputs"]}
            label, shape = step_label(step), f"decode.step{k}"
            comparable = entry_comparable(step)
            try:
                outputs = runner.run({**feeds, **past})
            except Exception as exc:  # the runtime's own error is the finding; later steps need this one
                results.append(
                    CaseResult(
                        runner.name,
                        label,
                        shape,
                        error=f"{runner.name} raised {type(exc).__name__}: {short_error(exc)}",
                    )
                )
                break
            misfit = valid_lengths_problem(step, expected)
            if misfit:  # nothing to compare against; the next steps thread this one's outputs still
                results.append(CaseResult(runner.name, label, shape, error=misfit))
            else:
                compared, golden = comparable(outputs), comparable(expected)
                results.append(
                    CaseResult(
                        runner.name,
                        label,
                        shape,
                        tuple(
                            OutputComparison.measure(n, compared[n], e, str(e.dtype), tolerance)
                            for n, e in golden.items()
                        ),
                    )
                )
            past = next_past(outputs, decode["thread"])  # the manifest's threading: the bundle is the contract
    return results


# The element types a golden vector may hold, and the TensorProto field that holds each one's values when
# raw_data does not (docs/bundle-format.md: the same rules in lib/bundle.js, bundle.cc and lib/bundle.mjs).
_ELEMENTS = {
    1: ("float32", 4, "float_data"),
    2: ("uint8", 1, "int32_data"),
    7: ("int64", 8, "int64_data"),
    9: ("bool", 1, "int32_data"),
    10: ("float16", 2, "int32_data"),
    11: ("float64", 8, "double_data"),
}
_INT32_RANGE = {"bool": (0, 1), "uint8": (0, 255), "float16": (0, 0xFFFF)}
_VALUE_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
_REFUSED_TYPES = {
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    8: "string",
    12: "uint32",
    13: "uint64",
    14: "complex64",
    15: "complex128",
    16: "bfloat16",
    17: "float8e4m3fn",
    18: "float8e4m3fnuz",
    19: "float8e5m2",
    20: "float8e5m2fnuz",
    21: "uint4",
    22: "int4",
    23: "float4e2m1",
}
_MAX_ELEMENTS = 2**63 - 1


def tensor_problem(tensor: onnx.TensorProto) -> str | None:
    """Why a golden vector is refused, in the words the other verifiers use, or None."""
    if tensor.HasField("segment"):
        return "stored in segments, which this reader does not take"
    if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
        return "stored in external data, which this reader does not take"
    if tensor.data_type not in _ELEMENTS:
        known = f" ({_REFUSED_TYPES[tensor.data_type]})" if tensor.data_type in _REFUSED_TYPES else ""
        return (
            f"unsupported ONNX data type {tensor.data_type}{known}; this reader takes "
            f"{', '.join(kind for kind, _, _ in _ELEMENTS.values())}"
        )
    kind, size, typed = _ELEMENTS[tensor.data_type]
    count = 1
    for k, dim in enumerate(tensor.dims):  # each dim, and the product in order, before anything is allocated
        if dim < 0:
            return f"dims[{k}] = {dim} is negative"
        count *= dim
        if count > _MAX_ELEMENTS:
            return f"dims [{','.join(map(str, tensor.dims))}] hold more than 2^63-1 elements"
    stray = [field for field in _VALUE_FIELDS if field != typed and len(getattr(tensor, field))]
    if stray:
        return f"{kind} values in {', '.join(stray)}"
    values = getattr(tensor, typed)
    if tensor.HasField("raw_data"):
        if len(values):
            return f"values in both raw_data and {typed}"
        if len(tensor.raw_data) % size:
            return f"raw_data of {len(tensor.raw_data)} bytes is not whole {kind} elements"
        found = len(tensor.raw_data) // size
        if kind == "bool" and (bad := np.flatnonzero(np.frombuffer(tensor.raw_data, np.uint8) > 1)).size:
            return f"raw_data[{bad[0]}] = {tensor.raw_data[bad[0]]} is not a bool value"
    else:
        if typed == "int32_data":
            low, high = _INT32_RANGE[kind]
            outside = next((i for i, v in enumerate(values) if not low <= v <= high), None)
            if outside is not None:
                return f"int32_data[{outside}] = {values[outside]} is not a {kind} value"
        found = len(values)
    if found != count:
        return f"{found} values for shape [{','.join(map(str, tensor.dims))}]"
    return None


def _load_tensor(path: Path) -> np.ndarray:
    """A golden vector, read by the rules every verifier applies; BundleError naming the file for anything else."""
    tensor = onnx.TensorProto()
    try:
        tensor.ParseFromString(path.read_bytes())
    except Exception as exc:  # protobuf's DecodeError
        why = (str(exc) or type(exc).__name__).splitlines()[0]
        raise BundleError(f"{path}: malformed TensorProto ({why})") from None
    problem = tensor_problem(tensor)
    if problem:
        raise BundleError(f"{path}: tensor {tensor.name}: {problem}")
    return numpy_helper.to_array(tensor)
