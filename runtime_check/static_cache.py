"""Decoding through a static cache in place: the cache's buffers bound as both past and present (IO binding).

A model of `export-attn --kv-cache --max-len N` (mha-static) takes the buffers past_key/past_value
(batch, heads, max_len, d_k) and each sequence's length past_len, and returns the buffers with the new keys and
values written. Bound to the same buffers as its inputs, onnxruntime writes them in place: no cache is copied
or allocated per token. StaticCache holds the buffers and the lengths, one slot per sequence:

    session = onnxruntime.InferenceSession("static.onnx")
    cache = StaticCache(session, batch=8)
    out = cache.step(prompt, slots=[3])     # a prefill of slot 3 alone, writing into its part of the buffers
    out = cache.step(tokens)                # one token for every slot: (8, 1, E) in, (8, 1, E) out
    cache.reset(3)                          # slot 3's sequence is done: the next one starts there

A step that does not fit (a slot's length + q_len > max_len) raises CacheFullError before any work: the
buffers are never written past a sequence's room. `cache.keys(slot)` / `cache.values(slot)` are the slot's
valid part (heads, length, d_k), views of the buffers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from attn_onnx.errors import RuntimeFailure, UsageError


class CacheFullError(UsageError):
    """A step would write past the cache's capacity."""


class StaticCache:
    """The buffers of a static-cache model in one onnxruntime session, stepped in place."""

    def __init__(self, session, batch: int, *, in_place: bool = True):
        import onnxruntime as ort

        self.session, self.ort = session, ort
        inputs = {i.name: i for i in session.get_inputs()}
        if "past_len" not in inputs or "past_key" not in inputs:
            raise UsageError("the model is not a static-cache step (export-attn --kv-cache --max-len N): no past_len")
        _, heads, max_len, d_k = inputs["past_key"].shape
        if not all(isinstance(d, int) for d in (heads, max_len, d_k)):
            raise UsageError(
                f"the model's past_key is {inputs['past_key'].shape}: its heads, max_len and d_k must be fixed"
            )
        self.heads, self.max_len, self.d_k, self.batch = heads, max_len, d_k, batch
        self.in_place = in_place  # False: run plainly, each present copied back (a control, and for comparison)
        self.buffers = {name: np.zeros((batch, heads, max_len, d_k), np.float32) for name in ("past_key", "past_value")}
        self.lengths = np.zeros(batch, np.int64)  # tokens held by each slot

    def step(self, query: np.ndarray, key=None, value=None, slots: Sequence[int] | None = None) -> np.ndarray:
        """q_len new tokens (len(slots), q_len, E) for `slots` (every slot if None, which may be any contiguous
        run of slots); self-attention if key and value are None. Writes their keys and values into the buffers,
        advances the slots' lengths, returns the output (len(slots), q_len, E)."""
        key = query if key is None else key
        value = query if value is None else value
        first, stop = self._run(slots, query.shape[0])
        q_len = query.shape[1]
        lengths = self.lengths[first:stop]
        if (lengths + q_len > self.max_len).any():
            slot = first + int(np.argmax(lengths + q_len > self.max_len))
            raise CacheFullError(
                f"the cache is full: slot {slot} holds {int(self.lengths[slot])} of {self.max_len} tokens, a step of "
                f"{q_len} more does not fit (reset the slot, or export with a larger --max-len)"
            )
        feeds = {"query": query, "key": key, "value": value, "past_len": lengths.copy()}
        views = {name: buffer[first:stop] for name, buffer in self.buffers.items()}  # contiguous: the first axis
        if self.in_place:
            output = self._bound(feeds, views)
        else:
            output, present_key, present_value = self.session.run(
                ["output", "present_key", "present_value"], {**feeds, **views}
            )
            views["past_key"][:] = present_key  # the runtime's new buffers copied back: what in place saves
            views["past_value"][:] = present_value
        self.lengths[first:stop] += q_len
        return output

    def step_at(self, lengths, query: np.ndarray) -> np.ndarray:
        """A step of every slot with their lengths set to `lengths` first: called again and again it writes the same
        positions each time (how a benchmark times one step at a cache length without filling the cache)."""
        self.lengths[:] = lengths
        return self.step(query)

    def _bound(self, feeds: dict[str, np.ndarray], views: dict[str, np.ndarray]) -> np.ndarray:
        ort, binding = self.ort, self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array, np.int64 if name == "past_len" else np.float32))
        for past, present in (("past_key", "present_key"), ("past_value", "present_value")):
            value = ort.OrtValue.ortvalue_from_numpy(views[past])  # wraps the buffer, no copy
            binding.bind_ortvalue_input(past, value)
            binding.bind_ortvalue_output(present, value)  # the same buffer: the step writes in place
        b, q_len, width = feeds["query"].shape
        output = np.empty((b, q_len, width), np.float32)
        binding.bind_ortvalue_output("output", ort.OrtValue.ortvalue_from_numpy(output))
        self.session.run_with_iobinding(binding)
        written = {value.data_ptr() for value in binding.get_outputs()}
        missed = [past for past, view in views.items() if view.ctypes.data not in written]
        if missed:  # onnxruntime put a present elsewhere: the buffers were not written
            raise RuntimeFailure(
                f"onnxruntime did not write {', '.join(missed)} in place: its present was not the buffer"
            )
        return output

    def _run(self, slots: Sequence[int] | None, rows: int) -> tuple[int, int]:
        """The contiguous slots [first, stop) a step of `rows` sequences addresses."""
        if slots is None:
            first, stop = 0, self.batch
        else:
            slots = list(slots)
            if not slots:
                raise UsageError("slots is empty: name the slots the step is for, or leave it out for every slot")
            first, stop = slots[0], slots[-1] + 1
            if slots != list(range(first, stop)) or first < 0 or stop > self.batch:
                raise UsageError(f"slots {slots} are not a contiguous run of 0..{self.batch - 1}")
        if rows != stop - first:
            raise UsageError(f"{rows} sequences in the step, but {stop - first} slots addressed")
        return first, stop

    def reset(self, slot: int) -> None:
        """The slot's sequence is done: the next step writes a new one from position 0."""
        if not 0 <= slot < self.batch:
            raise UsageError(f"slot {slot} is not one of 0..{self.batch - 1}")
        self.lengths[slot] = 0

    def keys(self, slot: int) -> np.ndarray:
        """The slot's valid keys (heads, length, d_k): a view of the buffer."""
        return self.buffers["past_key"][slot, :, : self.lengths[slot]]

    def values(self, slot: int) -> np.ndarray:
        return self.buffers["past_value"][slot, :, : self.lengths[slot]]
