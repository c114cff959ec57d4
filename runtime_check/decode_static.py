"""The decode check of a static-cache model (mha-static): sequences fed through its buffers, in place where the
runtime is onnxruntime on the CPU (runtime_check.static_cache.StaticCache, IO binding), and their outputs and
caches compared with the float64 seed module run on each whole sequence with subsequent_mask.

- The chunkings of the concat cache's check (decode.py): one batch of 2 sequences of 11 tokens, whole, prefill
  then one token at a time, irregular chunks, one token at a time.
- `decode.unequal`: the serving case. 3 slots; each sequence's prompt prefilled in its own slot alone (a step
  of batch 1 into that slot's part of the buffers), then one token a step for every slot together, lengths
  unequal; sequences finish at different steps, and a fourth starts in the first slot that frees (reset to
  length 0, its old keys left in the buffer and never read). A slot with nothing to decode is fed a zero token
  at length 0 and its output ignored.

Every output of every sequence, and each slot's valid cache at the end, must equal the whole-sequence golden.
"""

from __future__ import annotations

import numpy as np

from attn_onnx.runtime_check.compare import OutputComparison, Tolerance
from attn_onnx.runtime_check.decode import SEQUENCE, chunkings, raised, whole_sequence_golden
from attn_onnx.runtime_check.report import CaseResult
from attn_onnx.runtime_check.static_cache import StaticCache

# decode.unequal: (slot, prompt length, total length) per sequence, in the order they start; the fourth takes the
# first slot to free up (slot 1, after 4 tokens)
UNEQUAL = ((0, 5, 11), (1, 2, 4), (2, 1, 8), (1, 3, 6))
SLOTS = 3


def case_names() -> list[str]:
    return [*chunkings(SEQUENCE[1]), "decode.unequal"]


class _Plain:
    """A runner as the session StaticCache steps without binding (runners other than onnxruntime's CPU one)."""

    def __init__(self, runner, spec):
        self.runner, self.spec = runner, spec

    def get_inputs(self):
        from types import SimpleNamespace

        return [SimpleNamespace(name=n, shape=d) for n, d in self.spec.input_dims().items()]

    def run(self, names, feeds):
        outputs = self.runner.run(feeds)
        return [outputs[n] for n in names]


def _cache(runner, spec, batch: int) -> StaticCache:
    """In place for onnxruntime on the CPU (the runner's own session); plainly, presents copied back, otherwise."""
    in_place = getattr(runner, "provider", None) == "cpu" and hasattr(runner, "session")
    return StaticCache(runner.session if in_place else _Plain(runner, spec), batch, in_place=in_place)


def decode_results(runners, module, spec, tolerances: dict[str, Tolerance], seed: int = 0) -> list[CaseResult]:
    batch, length = SEQUENCE
    rng = np.random.default_rng([seed, 1001])
    x = rng.standard_normal((batch, length, spec.embedding_dim), dtype=np.float32)
    output, keys, values = whole_sequence_golden(module, x)
    sequences = [rng.standard_normal((1, total, spec.embedding_dim), dtype=np.float32) for _, _, total in UNEQUAL]
    goldens = [whole_sequence_golden(module, s) for s in sequences]
    results = []
    for runner in runners:
        tolerance = tolerances[runner.name]
        for name, chunks in chunkings(length).items():
            shape = f"b{batch}.len{length}"
            cache, outputs, done = _cache(runner, spec, batch), [], 0
            try:
                for size in chunks:
                    outputs.append(cache.step(x[:, done : done + size]))
                    done += size
            except Exception as exc:  # the runtime's own error is the finding
                results.append(raised(runner, name, shape, exc, f"position {done}"))
                continue
            actual = {
                "output": np.concatenate(outputs, axis=1),
                "present_key": np.stack([cache.keys(b) for b in range(batch)]),
                "present_value": np.stack([cache.values(b) for b in range(batch)]),
            }
            golden = {"output": output, "present_key": keys, "present_value": values}
            results.append(_compared(runner, name, shape, actual, golden, tolerance))
        results.append(_unequal(runner, spec, sequences, goldens, tolerance))
    return results


def _unequal(runner, spec, sequences, goldens, tolerance) -> CaseResult:
    """decode.unequal (module docstring): continuous batching over SLOTS slots."""
    name, shape = "decode.unequal", f"slots{SLOTS}." + "+".join(str(total) for _, _, total in UNEQUAL)
    cache, width = _cache(runner, spec, SLOTS), spec.embedding_dim
    pending = list(range(len(UNEQUAL)))  # sequences not started, in order
    active: dict[int, int] = {}  # slot -> the sequence decoding there
    done = [0] * len(UNEQUAL)  # tokens fed of each sequence
    outputs: list[list[np.ndarray]] = [[] for _ in UNEQUAL]
    caches: list[tuple[np.ndarray, np.ndarray]] = []  # each sequence's valid cache as it finished, in order
    finished: list[int] = []
    steps = 0
    try:
        while pending or active:
            for i in list(pending):  # start every sequence whose slot is free: its prompt alone in its slot
                slot, prompt, _ = UNEQUAL[i]
                if slot in active:
                    continue
                pending.remove(i)
                cache.reset(slot)
                outputs[i].append(cache.step(sequences[i][:, :prompt], slots=[slot]))
                done[i], active[slot] = prompt, i
            tokens = np.zeros((SLOTS, 1, width), np.float32)
            for slot in range(SLOTS):
                if slot in active:
                    i = active[slot]
                    tokens[slot] = sequences[i][0, done[i] : done[i] + 1]
                else:
                    cache.reset(slot)  # idle: a zero token at length 0, its output ignored
            out = cache.step(tokens)
            steps += 1
            for slot, i in list(active.items()):
                outputs[i].append(out[slot : slot + 1])
                done[i] += 1
                if done[i] == UNEQUAL[i][2]:  # finished: its cache kept, the slot freed for the next sequence
                    caches.append((cache.keys(slot)[None].copy(), cache.values(slot)[None].copy()))
                    finished.append(i)
                    del active[slot]
    except Exception as exc:
        return raised(runner, name, shape, exc, f"step {steps}")
    actual = {
        "output": np.concatenate([np.concatenate(o, axis=1) for o in outputs], axis=1),  # (1, every token, E)
        "present_key": np.concatenate([k for k, _ in caches], axis=2),  # (1, h, every token, d_k)
        "present_value": np.concatenate([v for _, v in caches], axis=2),
    }
    golden = {
        "output": np.concatenate([g[0] for g in goldens], axis=1),
        "present_key": np.concatenate([goldens[i][1] for i in finished], axis=2),
        "present_value": np.concatenate([goldens[i][2] for i in finished], axis=2),
    }
    return _compared(runner, name, shape, actual, golden, tolerance)


def _compared(runner, name, shape, actual, golden, tolerance) -> CaseResult:
    comparisons = tuple(
        OutputComparison.measure(n, actual[n], golden[n], "float32", tolerance)
        for n in ("output", "present_key", "present_value")
    )
    return CaseResult(runner.name, name, shape, comparisons)
