"""Exports are slow (seconds each): every variant is exported once per session and shared, and torch.onnx.export
itself is memoized for the session (see `memoized_torch_export`)."""

import hashlib
import os
import sys
import time
import types

import onnx
import pytest
import torch

from attn_onnx.deploy import export_model
from attn_onnx.exporter.export import build_module
from attn_onnx.exporter.spec import ExportSpec

# --- the suite runs in a few processes side by side (pytest-xdist: -n auto in pyproject.toml) -------------------


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """One worker per core, at most 4: each imports torch and builds the session's models again."""
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 4))


def pytest_configure(config):
    """In a worker, torch and onnxruntime use one thread each, and onnxruntime's pool threads do not spin: the
    workers already fill the cores, and with 2 threads each, spinning pools and OpenMP took a third of the
    suite's time on 2 cores (tests/cli/test_check_attn.py -n 2: 95 s, with one torch thread 67 s). Tests that
    time or set threads pass their own."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    import onnxruntime as ort

    os.environ["OMP_NUM_THREADS"] = "1"  # the processes tests start too
    torch.set_num_threads(1)

    class QuietSessionOptions(ort.SessionOptions):
        def __init__(self):
            super().__init__()
            self.intra_op_num_threads = 1  # no pool, so nothing spins (no config entry set: tests read those)

    ort.SessionOptions = QuietSessionOptions


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """exported(**spec_fields) -> (path, spec, module): the model for that spec, written once."""
    cache = {}
    folder = tmp_path_factory.mktemp("models")

    def get(**fields):
        key = tuple(sorted(fields.items()))
        if key not in cache:
            spec = ExportSpec(**fields).validate()
            module = build_module(spec, seed=0) if spec.kind.has_weights else None
            name = "_".join(f"{k}-{v}" for k, v in key) or "default"
            path = folder / f"{name}.onnx"
            result = export_model(spec, path, seed=0, check=False)  # the same weights as `module`
            cache[key] = (path, result.spec, module)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def small_mha(exported):
    """A small mha (2 heads, 16 wide) for the tests that build broken variants of it."""
    return exported(heads=2, embedding_dim=16)


# --- torch.onnx.export, once per distinct input ---------------------------------------------------------------
# The dynamo exporter takes seconds per call and most CLI tests export the same small spec again; it is the
# largest single cost of the suite. A call is answered from the memo only when everything the export reads is
# the same: the module tree (each module's class, its forward and its plain attributes), the weights' and the
# example's bytes, the arguments, and every function and constant of the package's own modules (a test that
# monkeypatches, say, models.attention.mask_fill gets a new key, so a fresh export). Objects are keyed by id, and
# the memo keeps each one alive, so a later lambda cannot take a freed one's id. What it answers is a copy.

MEMO_STATS = {"hits": 0, "misses": 0, "saved_s": 0.0, "spent_s": 0.0}


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(t).encode())
    return h.hexdigest()


def _plain(value) -> bool:
    return isinstance(value, (int, float, str, bool, type(None), tuple))


def _module_key(graph: torch.nn.Module, alive: list) -> tuple:
    parts = []
    for name, m in graph.named_modules():
        code = (type(m), getattr(type(m), "forward", None), m.__dict__.get("forward"))
        alive.extend(code)
        parts.append(
            (
                name,
                *map(id, code),
                tuple(sorted((k, repr(v)) for k, v in vars(m).items() if not k.startswith("_") and _plain(v))),
            )
        )
    return tuple(parts)


def _package_key(alive: list) -> tuple:
    values = [
        (name, key, value)
        for name, module in list(sys.modules.items())
        if name.startswith("attn_onnx") and module is not None
        for key, value in list(vars(module).items())
        if not key.startswith("__")
    ]
    alive.extend(value for _, _, value in values)
    return tuple(sorted((name, key, id(value)) for name, key, value in values))


@pytest.fixture(scope="session", autouse=True)
def memoized_torch_export():
    if os.environ.get("ATTN_ONNX_TEST_EXPORT_MEMO") == "0":  # to measure the suite without it
        yield
        return
    real, memo = torch.onnx.export, {}

    def export(model, args=(), *rest, **kwargs):
        alive = []  # every object whose id is in the key, kept by the memo: no later object can reuse its id
        key = (
            _module_key(model, alive),
            _digest(model.state_dict().values()),
            _digest(args),
            repr(rest),
            repr(sorted(kwargs.items())),
            _package_key(alive),
        )
        if key not in memo:
            start = time.perf_counter()
            program = real(model, args, *rest, **kwargs)
            kept = onnx.ModelProto()
            kept.CopyFrom(program.model_proto)  # not serialized: tests count SerializeToString calls
            memo[key] = (kept, time.perf_counter() - start, alive)
            MEMO_STATS["misses"] += 1
            MEMO_STATS["spent_s"] += memo[key][1]
        else:
            MEMO_STATS["hits"] += 1
            MEMO_STATS["saved_s"] += memo[key][1]
        answer = onnx.ModelProto()
        answer.CopyFrom(memo[key][0])
        return types.SimpleNamespace(model_proto=answer)

    torch.onnx.export = export
    try:
        yield
    finally:
        torch.onnx.export = real


def pytest_sessionfinish(session):
    if hasattr(session.config, "workeroutput"):  # a pytest-xdist worker: its counts go to the controller
        session.config.workeroutput["export_memo"] = dict(MEMO_STATS)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    for key, value in getattr(node, "workeroutput", {}).get("export_memo", {}).items():
        MEMO_STATS[key] += value


def pytest_terminal_summary(terminalreporter):
    if MEMO_STATS["hits"] or MEMO_STATS["misses"]:
        terminalreporter.write_line(
            f"torch.onnx.export: {MEMO_STATS['misses']} exports ({MEMO_STATS['spent_s']:.0f} s), "
            f"{MEMO_STATS['hits']} answered "
            f"from the session's memo (about {MEMO_STATS['saved_s']:.0f} s saved)"
        )
