"""The decode check of a model with a KV cache: feed a whole sequence through it in chunks, threading each
step's present_key/present_value into the next step's past_key/past_value, and compare the concatenated
outputs with the float64 seed module run on the whole sequence with subsequent_mask.

The chunkings: the whole sequence at once (a prefill from an empty cache), a prefill then one token at a
time (how a decoder generates), and irregular chunks.

With a mask input the sequence's mask is causal and left-padded (example 1's first PAD tokens are padding,
as in batched generation), and each chunk gets its rows of it, up to the keys present so far. A row whose
keys are all masked (a padding token's own query) attends uniformly, as the seed does, but only over the
keys present at its step: the cache cannot see the future, where the whole-sequence module spreads it over
all keys. Equality holds for every row with an allowed key; the others are left out of the comparison and
counted in the case name.
"""

from __future__ import annotations

import numpy as np
import torch

from attn_onnx.errors import short_error
from attn_onnx.models import subsequent_mask
from attn_onnx.runtime_check.compare import OutputComparison, Tolerance
from attn_onnx.runtime_check.report import CaseResult

SEQUENCE = (2, 11)  # batch, length
PAD = (0, 3)  # left padding of each example, with a mask input
THREAD = {"present_key": "past_key", "present_value": "past_value"}  # a step's output -> the next step's input


def empty_cache(batch: int, heads: int, d_k: int, dtype=np.float32) -> dict[str, np.ndarray]:
    """past_key and past_value of a sequence with no tokens yet: (batch, heads, 0, d_k)."""
    return {name: np.zeros((batch, heads, 0, d_k), dtype) for name in THREAD.values()}


def next_past(outputs: dict[str, np.ndarray], thread: dict[str, str] = THREAD) -> dict[str, np.ndarray]:
    """The cache the next step takes: this step's present_key and present_value, as past_key and past_value."""
    return {thread[name]: outputs[name] for name in thread}


def decode_steps(run, x: np.ndarray, chunks, mask: np.ndarray | None, past: dict[str, np.ndarray]):
    """Feed the sequence `x` (B, n, E) through `run` (feeds -> outputs) a chunk at a time, as self-attention,
    threading each step's cache into the next. With `mask` (B, n, n), each step gets its rows over the keys
    present so far. Yields (start, inputs, outputs) per step: `inputs` without the cache."""
    start = 0
    for size in chunks:
        piece = x[:, start : start + size]
        inputs = {"query": piece, "key": piece, "value": piece}
        if mask is not None:  # this chunk's rows, over the keys present so far
            inputs["mask"] = mask[:, start : start + size, : start + size]
        outputs = run({**inputs, **past})
        yield start, inputs, outputs
        past = next_past(outputs)
        start += size


def chunkings(length: int) -> dict[str, list[int]]:
    """name -> chunk lengths summing to `length`."""
    prefill = length // 2
    return {
        f"decode.whole{length}": [length],
        f"decode.prefill{prefill}+{length - prefill}x1": [prefill] + [1] * (length - prefill),
        "decode.irregular" + "+".join(map(str, _irregular(length))): _irregular(length),
        f"decode.{length}x1": [1] * length,
    }


def raised(runner, name: str, shape: str, exc: Exception, where: str) -> CaseResult:
    """A decoding the runtime broke off: its own error, and where in the sequence."""
    return CaseResult(
        runner.name, name, shape, error=f"{runner.name} raised {type(exc).__name__} at {where}: {short_error(exc)}"
    )


def case_names() -> list[str]:
    return list(chunkings(SEQUENCE[1]))


def _irregular(length: int) -> list[int]:
    sizes, left, k = [], length, 0
    while left:
        take = min(left, (2, 3, 1, 4)[k % 4])
        sizes.append(take)
        left, k = left - take, k + 1
    return sizes


def sequence_mask(batch: int, length: int) -> np.ndarray:
    """(batch, length, length) uint8: subsequent_mask and, per example, PAD[b] left-padding keys masked."""
    keys = np.arange(length)[None, :] >= np.array(PAD[:batch])[:, None]  # (B, length)
    return (np.tril(np.ones((length, length), bool))[None] & keys[:, None, :]).astype(np.uint8)


def whole_sequence_golden(module, x: np.ndarray, mask: np.ndarray | None = None):
    """The seed module in float64 on the whole sequence (self-attention; subsequent_mask, or `mask`), and
    the projected keys and values every cache must end with: (output, keys, values)."""
    double = type(module)(module.head, module.embedding_dim, dropout=0.0).double().eval()
    double.load_state_dict({k: v.double() for k, v in module.state_dict().items()})
    t = torch.from_numpy(x).double()
    b, n = x.shape[:2]
    with torch.no_grad():
        whole = subsequent_mask(n) if mask is None else torch.from_numpy(mask)
        output = double(t, t, t, whole).numpy()  # (B, n, E)
        keys, values = (
            lin(t).view(b, n, double.head, double.d_k).transpose(1, 2).numpy() for lin in double.linears[1:3]
        )  # (B, h, n, d_k)
    return output, keys, values


def decode_results(runners, module, spec, tolerances: dict[str, Tolerance], seed: int = 0) -> list[CaseResult]:
    """One CaseResult per (runner, chunking): outputs and the final cache against the whole-sequence golden,
    computed once for all runners; `tolerances` by runner name."""
    batch, length = SEQUENCE
    rng = np.random.default_rng([seed, 1001])
    x = rng.standard_normal((batch, length, spec.embedding_dim), dtype=np.float32)
    mask = sequence_mask(batch, length).astype(spec.input_dtypes()["mask"]) if spec.mask == "input" else None
    output, keys, values = whole_sequence_golden(module, x, mask)
    no_key = mask.max(axis=-1) == 0 if mask is not None else np.zeros((batch, length), bool)  # (B, length)
    left_out = f" ({int(no_key.sum())} rows with no key left out)" if no_key.any() else ""
    expected = spec.output_dtypes()  # the dtype each output must have
    results = []
    for runner in runners:
        for name, chunks in chunkings(length).items():
            name += left_out
            shape = f"b{batch}.len{length}"
            outputs, done = [], 0
            try:
                for start, inputs, got in decode_steps(
                    runner.run, x, chunks, mask, empty_cache(batch, spec.heads, spec.d_k)
                ):
                    outputs.append(got["output"])
                    done = start + inputs["query"].shape[1]
            except Exception as exc:  # the runtime's own error is the finding
                results.append(raised(runner, name, shape, exc, f"position {done}"))
                continue
            actual = {
                "output": np.concatenate(outputs, axis=1),
                "present_key": got["present_key"],
                "present_value": got["present_value"],
            }
            actual["output"][no_key] = output[no_key]  # rows with no allowed key: see the module docstring
            golden = {"output": output, "present_key": keys, "present_value": values}
            comparisons = tuple(
                OutputComparison.measure(n, actual[n], golden[n], expected[n], tolerances[runner.name]) for n in golden
            )
            results.append(CaseResult(runner.name, name, shape, comparisons))
    return results
