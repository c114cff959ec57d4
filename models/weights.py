"""Loading weights safely: .safetensors, or a state_dict saved with torch.save and read with
`torch.load(weights_only=True)` (never a pickle that can run code)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from attn_onnx.errors import WeightsError, first_line
from attn_onnx.files import file_sha256

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_NESTED_KEYS = ("state_dict", "model_state_dict", "model")  # where training scripts often nest the weights


def weights_label(path: Path, prefix: str = "") -> str:
    """How reports and metadata name a weights file: its name, a short sha256, and the prefix taken."""
    where = f", prefix {prefix!r}" if prefix else ""
    return f"{path.name} (sha256 {file_sha256(path)[:16]}{where})"


def load_state_dict(path: str | Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors of a weights file, with `prefix` (e.g. "encoder.layers.0.self_attn.") taken off.

    Only keys that start with the prefix are kept, so a whole Transformer's checkpoint can be given. A
    prefix names a submodule, so its trailing dot may be left off: "encoder.layers.0.self_attn" works too.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        state = _load_safetensors(path)
    elif suffix in TORCH_SUFFIXES:
        state = _load_torch(path)
    else:
        raise WeightsError(
            f"weights file {path.name!r}: unknown suffix {suffix!r}; expected one of "
            f"{list(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES)}"
        )
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(f"weights file {path.name!r} holds no tensors")
    if prefix and not prefix.endswith("."):
        prefix += "."  # a submodule's path; keys continue after a dot
    if prefix:
        picked = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not picked:
            raise WeightsError(
                f"no key of {path.name!r} starts with prefix {prefix!r}; "
                f"prefixes that hold attention weights: {_candidate_prefixes(tensors)}"
            )
        tensors = picked
    return tensors


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into `module` strictly; WeightsError lists missing, unexpected and misshapen keys."""
    expected = module.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        hint = f"; prefixes that hold attention weights: {_candidate_prefixes(state)}" if missing else ""
        raise WeightsError(f"weights from {source} do not fit the module: " + ", ".join(parts) + hint)
    wrong = [
        f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(state[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise WeightsError(
            f"weights from {source} have other shapes than the module (file != module): " + "; ".join(wrong)
        )
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def embedding_dim_of(state: dict[str, torch.Tensor]) -> int | None:
    """The width of an attention block's state_dict (from linears.0.weight), or None if absent."""
    weight = state.get("linears.0.weight")
    return int(weight.shape[1]) if weight is not None and weight.dim() == 2 else None


def _load_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"cannot read safetensors file {path.name!r}: {exc}") from None


def _load_torch(path: Path) -> dict:
    with open(path, "rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive; files of torch < 1.6 start with a pickle's PROTO opcode (0x80)
    if head[:4] != b"PK\x03\x04" and head[:1] != b"\x80":
        printable = head.decode("ascii", "replace").isprintable()
        what = "an empty file" if not head else "text" if printable else "other data"
        raise WeightsError(
            f"{path.name!r} is not a PyTorch checkpoint (it holds {what}, not the zip archive torch.save writes)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if refused:
            raise WeightsError(
                f"{path.name!r} is a pickle that refers to {refused[1]} (not plain tensors); it was refused "
                "because unpickling it could run code. Save a state_dict instead (torch.save(model.state_dict(), "
                "path)), or use safetensors"
            ) from None
        raise WeightsError(
            f"cannot load {path.name!r} with torch.load(weights_only=True) (only plain "
            f"tensors and containers are accepted, never code): {first_line(exc)}"
        ) from None
    if isinstance(obj, dict):
        for key in _NESTED_KEYS:
            if isinstance(obj.get(key), dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
                return obj[key]
        return obj
    raise WeightsError(f"{path.name!r} holds a {type(obj).__name__}, not a state_dict (a dict of tensors)")


def _candidate_prefixes(tensors: dict, shown: int = 8) -> str:
    """The prefixes under which attention weights sit: all of them, or the first few "and N more"."""
    suffix = "linears.0.weight"
    found = sorted(k[: -len(suffix)] for k in tensors if k.endswith(suffix))
    if not found:
        return "none (no key ends in 'linears.0.weight')"
    text = ", ".join(repr(p) for p in found[:shown])
    return text + (f" and {len(found) - shown} more" if len(found) > shown else "")
