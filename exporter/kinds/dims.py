"""The dims contract: how the inputs of one request must agree with each other, and the one function that
checks it. Imports nothing (no numpy, no torch), so any service can take it as it is.

A contract is plain JSON, written by a kind's `dims_contract(spec)` (exporter/kinds/base.py):

    {"inputs":  {"query": ["batch", "q_len", 512], "mask": ["batch", "mask_q_len", "kv_len"], ...},
     "outputs": {"output": ["batch", "q_len", 512], ...},
     "dims":    {"batch": {"description": "..."},
                 "mask_q_len": {"description": "...", "is": "q_len", "or_one": true},
                 "total_len": {"description": "...", "sum": ["past_len", "q_len"]}},
     "scores":  ["batch", 8, "q_len", "kv_len"],
     "lengths": {"past_len": {"description": "...", "at_least": 0, "plus": "q_len", "at_most": 32,
                              "limit": "the cache's max_len", "past_limit": "the cache is full (...)"}}}

The rules: a number is that size exactly; every axis with the same name has the same size, in every input (no
broadcasting: a mask of batch 1, or of 1 key, is refused); a dim with `is` equals that dim, or is 1 where
`or_one`; a dim with `sum` equals the sum of those dims. `scores` are the dims of the attention scores
(batch x heads x q_len x kv_len), for a request's work estimate; null for a kind without attention.

`lengths` (mha-static's; absent or empty for the others) rules an integer input's values, not a shape: each value
of the input (one per sequence) is at least `at_least`, and plus the size of dim `plus` at most `at_most` (a static
cache's past_len: 0 <= past_len[b] and past_len[b] + q_len <= max_len, else the step is wrong or fails inside
onnxruntime). `limit` names the bound and `past_limit` says what being past it means, in the message.
`values_problem` checks it on the values, after `contract_problem` on the shapes.

deploy/triton_python_model.py carries a copy of `contract_problem` and `values_problem` (it imports nothing of
attn_onnx), and examples/node/lib/dims.js a twin of `values_problem` (valuesProblem, reading the manifest's
`lengths`); tests/deploy/test_triton_python_model.py and tests/deploy/test_corpus.py hold them to the same words.
"""

from __future__ import annotations


def contract_problem(contract: dict, shapes: dict) -> str | None:
    """What breaks `contract` in a request whose inputs have `shapes` ({name: shape}), or None: a message
    naming both inputs and the dim, e.g. "input 'mask' dim 2 (kv_len) is 1, but input 'key' dim 1 (kv_len)
    is 4". Inputs absent from `shapes` are not checked (a missing input is another error)."""
    seen: dict[str, tuple[int, str, int]] = {}  # dim name -> (size, input, axis) where it was first seen
    for name, dims in contract["inputs"].items():
        if name not in shapes:
            continue
        shape = [int(n) for n in shapes[name]]
        if len(shape) != len(dims):
            return (
                f"input {name!r} has {len(shape)} dims {shape}, but the model takes {len(dims)}: "
                f"({', '.join(str(d) for d in dims)})"
            )
        for axis, (dim, size) in enumerate(zip(dims, shape)):
            if isinstance(dim, int):
                if size != dim:
                    return f"input {name!r} dim {axis} is {size}, but the model takes {dim} there"
            elif dim in seen and seen[dim][0] != size:
                first, other, other_axis = seen[dim]
                return (
                    f"input {name!r} dim {axis} ({dim}) is {size}, but input {other!r} dim {other_axis} "
                    f"({dim}) is {first}"
                )
            else:
                seen.setdefault(dim, (size, name, axis))

    def where(dim):
        size, name, axis = seen[dim]
        return f"input {name!r} dim {axis} ({dim}) is {size}"

    for dim, rule in contract.get("dims", {}).items():
        if dim not in seen:
            continue
        size = seen[dim][0]
        same = rule.get("is")
        if same is not None and same in seen and size != seen[same][0] and not (rule.get("or_one") and size == 1):
            return f"{where(dim)}, but {where(same)}" + (f" ({dim} is {same} or 1)" if rule.get("or_one") else "")
        parts = rule.get("sum")
        if parts and all(p in seen for p in parts):
            total = sum(seen[p][0] for p in parts)
            if size != total:
                return (
                    f"{where(dim)}, but {' and '.join(where(p) for p in parts)}: {dim} is {' + '.join(parts)} = {total}"
                )
    return None


def resolve(contract: dict, shapes: dict) -> dict:
    """The size of every dim the inputs' `shapes` set, and of the dims that are sums of those."""
    sizes: dict[str, int] = {}
    for name, dims in contract["inputs"].items():
        for dim, size in zip(dims, shapes.get(name, ())):
            if isinstance(dim, str):
                sizes.setdefault(dim, int(size))
    for dim, rule in contract.get("dims", {}).items():
        if dim not in sizes and rule.get("sum") and all(p in sizes for p in rule["sum"]):
            sizes[dim] = sum(sizes[p] for p in rule["sum"])
    return sizes


def values_problem(contract: dict, arrays: dict) -> str | None:
    """What breaks the contract's `lengths` rules in a request of `arrays` ({name: array}: numpy arrays, or
    nested lists), or None. A rule {"at_least": A, "plus": D, "at_most": N, "limit": WORDS, "past_limit": WORDS}
    holds each value v of its integer input (one per sequence: past_len (batch,)) to A <= v and v + D <= N, D the
    size of dim D in this request (0 without "plus"; the upper bound unchecked where D is unknown). Call it after
    contract_problem found nothing. Messages, the same in every copy (lib/dims.js, the Triton model):
    "input 'past_len' is -1 for sequence 0: a length is at least 0" and "input 'past_len' is 31 for sequence 0,
    and 31 + q_len 2 is 33, past the cache's max_len 32: the cache is full (...)"."""
    rules = contract.get("lengths") or {}
    if not rules:
        return None
    sizes = resolve(contract, {name: _shape(a) for name, a in arrays.items()})
    for name, rule in rules.items():
        if name not in arrays:
            continue
        low, high, plus = rule.get("at_least"), rule.get("at_most"), rule.get("plus")
        extra = sizes.get(plus) if plus else 0
        for i, value in enumerate(_flat(arrays[name])):
            try:
                value = int(value)  # truncated, as Node's Math.trunc; NaN and infinities are skipped
            except (TypeError, ValueError, OverflowError):
                continue
            if low is not None and value < low:
                return f"input {name!r} is {value} for sequence {i}: a length is at least {low}"
            if high is not None and extra is not None and value + extra > high:
                sum_ = f", and {value} + {plus} {extra} is {value + extra}" if plus else ""
                limit = rule.get("limit") or "the model's limit"
                after = f": {rule['past_limit']}" if rule.get("past_limit") else ""
                return f"input {name!r} is {value} for sequence {i}{sum_}, past {limit} {high}{after}"
    return None


def _shape(array) -> list[int]:
    if hasattr(array, "shape"):
        return [int(n) for n in array.shape]
    shape = []
    while isinstance(array, (list, tuple)):
        shape.append(len(array))
        array = array[0] if array else None
    return shape


def _flat(array) -> list:
    values = array.tolist() if hasattr(array, "tolist") else array
    if not isinstance(values, list):
        return [values]
    return [v for item in values for v in _flat(item)]
