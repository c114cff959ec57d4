"""One description per module kind: its inputs and outputs, which options apply, its example inputs, and
the PyTorch graph that is exported and run as the golden. A new kind is one new file here, added to KINDS.

Nothing here imports torch at import time: `--help` and option checks stay instant.
"""

from attn_onnx.exporter.kinds.attention import AttentionKind
from attn_onnx.exporter.kinds.base import ModuleKind
from attn_onnx.exporter.kinds.mask import SubsequentMaskKind
from attn_onnx.exporter.kinds.mha import MhaKind
from attn_onnx.exporter.kinds.mha_cache import MhaCacheKind
from attn_onnx.exporter.kinds.mha_self import MhaSelfKind

KINDS: dict[str, ModuleKind] = {
    kind.name: kind for kind in (MhaKind(), AttentionKind(), SubsequentMaskKind(), MhaCacheKind(), MhaSelfKind())
}
# --module choices; mha-cache is --kv-cache and mha-self --self-attention (forms of mha)
MODULES = tuple(name for name in KINDS if name not in ("mha-cache", "mha-self"))

__all__ = ["KINDS", "MODULES", "ModuleKind"]
