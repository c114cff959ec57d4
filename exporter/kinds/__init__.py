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
from attn_onnx.exporter.kinds.mha_static import MhaStaticKind

KINDS: dict[str, ModuleKind] = {
    kind.name: kind
    for kind in (MhaKind(), AttentionKind(), SubsequentMaskKind(), MhaCacheKind(), MhaSelfKind(), MhaStaticKind())
}
# --module choices; the forms of mha have flags: mha-cache --kv-cache, mha-self --self-attention, and mha-static
# --kv-cache --max-len N (a form of mha-cache)
MODULES = tuple(name for name, kind in KINDS.items() if not kind.extends)

__all__ = ["KINDS", "MODULES", "ModuleKind"]
