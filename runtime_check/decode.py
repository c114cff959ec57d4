"""The decode check of a model with a KV cache: feed a whole sequence through it in chunks, threading each
step's present_key/present_value into the next step's past_key/past_value, and compare the concatenated
outputs with the float64 seed module run on the whole sequence with subsequent_mask.

The chunkings: the whole sequence at once (a prefill from an empty cache), a prefill then one token at a
time (how a decoder generates), and irregular chunks. With the built-in causal mask no row is ever fully
masked, so equality is expected at every position.
"""

from __future__ import annotations

import numpy as np
import torch

from attn_onnx.models import subsequent_mask
from attn_onnx.runtime_check.compare import OutputComparison, Tolerance
from attn_onnx.runtime_check.report import CaseResult

SEQUENCE = (2, 11)  # batch, length


def chunkings(length: int) -> dict[str, list[int]]:
    """name -> chunk lengths summing to `length`."""
    prefill = length // 2
    return {
        f"decode.whole{length}": [length],
        f"decode.prefill{prefill}+{length - prefill}x1": [prefill] + [1] * (length - prefill),
        "decode.irregular" + "+".join(map(str, _irregular(length))): _irregular(length),
        f"decode.{length}x1": [1] * length,
    }


def _irregular(length: int) -> list[int]:
    sizes, left, k = [], length, 0
    while left:
        take = min(left, (2, 3, 1, 4)[k % 4])
        sizes.append(take)
        left, k = left - take, k + 1
    return sizes


def whole_sequence_golden(module, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The seed module in float64 on the whole sequence (self-attention, subsequent_mask), and the projected
    keys and values every cache must end with: (output, keys, values)."""
    double = type(module)(module.head, module.embedding_dim, dropout=0.0).double().eval()
    double.load_state_dict({k: v.double() for k, v in module.state_dict().items()})
    t = torch.from_numpy(x).double()
    b, n = x.shape[:2]
    with torch.no_grad():
        output = double(t, t, t, subsequent_mask(n)).numpy()  # (B, n, E)
        keys, values = (lin(t).view(b, n, double.head, double.d_k).transpose(1, 2).numpy()
                        for lin in double.linears[1:3])  # (B, h, n, d_k)
    return output, keys, values


def decode_results(runners, module, spec, tolerance: Tolerance, seed: int = 0) -> list[CaseResult]:
    """One CaseResult per (runner, chunking): outputs and the final cache against the whole-sequence golden."""
    batch, length = SEQUENCE
    rng = np.random.default_rng([seed, 1001])
    x = rng.standard_normal((batch, length, spec.embedding_dim), dtype=np.float32)
    output, keys, values = whole_sequence_golden(module, x)
    expected = spec.output_dtypes()  # the dtype each output must have
    results = []
    for runner in runners:
        for name, chunks in chunkings(length).items():
            shape = f"b{batch}.len{length}"
            past_key = past_value = np.zeros((batch, spec.heads, 0, spec.d_k), np.float32)  # an empty cache
            outputs, start = [], 0
            try:
                for size in chunks:
                    piece = x[:, start:start + size]
                    got = runner.run({"query": piece, "key": piece, "value": piece, "past_key": past_key,
                                      "past_value": past_value})
                    outputs.append(got["output"])
                    past_key, past_value = got["present_key"], got["present_value"]
                    start += size
            except Exception as exc:  # the runtime's own error is the finding
                results.append(CaseResult(runner.name, name, shape,
                                          error=f"{runner.name} raised {type(exc).__name__} at position {start}: "
                                                f"{str(exc).splitlines()[0][:200] if str(exc) else ''}"))
                continue
            actual = {"output": np.concatenate(outputs, axis=1), "present_key": past_key, "present_value": past_value}
            golden = {"output": output, "present_key": keys, "present_value": values}
            comparisons = tuple(OutputComparison.measure(n, actual[n], golden[n], expected[n], tolerance)
                                for n in golden)
            results.append(CaseResult(runner.name, name, shape, comparisons))
    return results
