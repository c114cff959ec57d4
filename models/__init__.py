"""PyTorch reference modules of the seed: `subsequent_mask`, `attention`, `MultiHeadedAttention`."""

from models.attention import (
    MASK_CONVENTION,
    MASK_FILL,
    MultiHeadedAttention,
    attention,
    causal_mask,
    clones,
    subsequent_mask,
)

__all__ = [
    "MASK_CONVENTION",
    "MASK_FILL",
    "MultiHeadedAttention",
    "attention",
    "causal_mask",
    "clones",
    "subsequent_mask",
]
