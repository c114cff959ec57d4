"""PyTorch reference modules of the seed: `subsequent_mask`, `attention`, `MultiHeadedAttention`."""

from attn_onnx.models.attention import (
    MASK_CONVENTION,
    MASK_FILL,
    MultiHeadedAttention,
    attention,
    causal_mask,
    clones,
    subsequent_mask,
)
from attn_onnx.models.graphs import (
    AttentionGraph,
    MhaCacheGraph,
    MhaGraph,
    MhaSelfGraph,
    MhaStaticGraph,
    SubsequentMaskGraph,
)

__all__ = [
    "AttentionGraph",
    "MhaCacheGraph",
    "MhaGraph",
    "MhaSelfGraph",
    "MhaStaticGraph",
    "SubsequentMaskGraph",
    "MASK_CONVENTION",
    "MASK_FILL",
    "MultiHeadedAttention",
    "attention",
    "causal_mask",
    "clones",
    "subsequent_mask",
]
