"""The seed's attention modules: masked scaled dot-product attention and multi-headed attention.

Semantics follow "The Annotated Transformer" exactly as the seed writes them (its attention() and
MultiHeadedAttention; tests/seed_class.py holds the seed's own class, and tests/models compare the two):
a mask value of 0 means "masked", anything else means "may attend", and masked scores are filled with a
finite -1e9, so that a row whose keys are all masked attends uniformly instead of producing NaN.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from attn_onnx.vocab import CAUSAL_ALIGNS, MASK_CONVENTION, MASK_FILL  # noqa: F401  (MASK_CONVENTION re-exported)


def mask_fill(dtype: torch.dtype) -> float:
    """MASK_FILL in `dtype`: float16 cannot hold -1e9 (it would overflow to -inf and turn a fully-masked row
    into NaN), so there the fill is its lowest finite value, -65504. The row stays uniform, and an allowed
    key still wins: exp(-65504 - score) is 0. float32, float64 and bfloat16 hold -1e9 itself."""
    return max(MASK_FILL, torch.finfo(dtype).min)


def subsequent_mask(size: int) -> torch.Tensor:
    """The causal mask of the seed: a (1, size, size) uint8 tensor, 1 on and below the diagonal, 0 above."""
    attn_shape = (1, size, size)
    upper = np.triu(np.ones(attn_shape), k=1).astype("uint8")  # (1, size, size), 1 strictly above diagonal
    return torch.from_numpy(1 - upper)


def causal_mask(q_len: int, kv_len: int, align: str = "top-left") -> torch.Tensor:
    """`subsequent_mask` built with torch ops (traceable by the exporter): (1, q_len, kv_len) uint8. The lengths
    are a tensor's sizes, SymInts while torch.export traces, which torch types as int (Tensor.size(), arange's
    end, Tensor + int): `int | SymInt` here would only mismatch torch's own annotations.

    top-left (the seed's): query i may attend key j when j <= i; for q_len == kv_len this equals
    `subsequent_mask(q_len)`. bottom-right: query i sits at position kv_len - q_len + i, as the newest
    q_len tokens after a prefix do, and may attend j <= kv_len - q_len + i. The two agree when q_len ==
    kv_len. Bottom-right with q_len > kv_len masks the first rows whole: they attend uniformly.
    """
    if align not in CAUSAL_ALIGNS:
        raise ValueError(f"align={align!r} is not one of {CAUSAL_ALIGNS}")
    offset = kv_len - q_len if align == "bottom-right" else 0
    # Comparing positions rather than calling triu: onnxruntime's CPU Trilu has no uint8 kernel.
    allowed = torch.arange(kv_len)[None, :] <= torch.arange(q_len)[:, None] + offset  # (q_len, kv_len)
    return allowed.to(torch.uint8).unsqueeze(0)  # (1, q_len, kv_len)


def attention(query, key, value, mask=None, dropout=None):
    """Scaled dot-product attention; returns (p_attn @ value, p_attn). `mask == 0` marks masked keys."""
    d_k = query.size(-1)
    scores = torch.matmul(query, key.transpose(-2, -1)) / math.sqrt(d_k)  # (..., q_len, kv_len)
    if mask is not None:
        scores = scores.masked_fill(mask == 0, mask_fill(scores.dtype))
    p_attn = F.softmax(scores, dim=-1)  # (..., q_len, kv_len)
    if dropout is not None:
        p_attn = dropout(p_attn)
    return torch.matmul(p_attn, value), p_attn  # (..., q_len, d_v), (..., q_len, kv_len)


def clones(module: nn.Module, N: int) -> nn.ModuleList:
    """N independent deep copies of `module`."""
    return nn.ModuleList([copy.deepcopy(module) for _ in range(N)])


class MultiHeadedAttention(nn.Module):
    """Multi-headed attention of the seed (its `MutiHeadedAttention`), with the same state_dict keys."""

    def __init__(self, head: int, embedding_dim: int, dropout: float = 0.1):
        super().__init__()
        if head <= 0 or embedding_dim <= 0:
            raise ValueError(f"head={head} and embedding_dim={embedding_dim} must both be positive")
        if embedding_dim % head != 0:
            raise ValueError(f"embedding_dim={embedding_dim} is not divisible by heads={head}")
        self.d_k = embedding_dim // head
        self.head = head
        self.embedding_dim = embedding_dim
        # query, key, value and output projections: linears.0 ... linears.3
        self.linears = clones(nn.Linear(embedding_dim, embedding_dim), 4)
        self.attn = None  # the last attention probabilities, (batch, head, q_len, kv_len), as in the seed
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, query, key, value, mask=None):
        if mask is not None:
            # the same mask for every head: (batch, q_len or 1, kv_len) -> (batch, 1, q_len or 1, kv_len)
            mask = mask.unsqueeze(1)
        batch_size = query.size(0)

        # 1) project, then split embedding_dim into head x d_k
        query, key, value = [
            lin(x).view(batch_size, -1, self.head, self.d_k).transpose(1, 2)  # (B, head, len, d_k)
            for lin, x in zip(self.linears, (query, key, value))
        ]

        # 2) attend on every head at once
        x, self.attn = attention(query, key, value, mask=mask, dropout=self.dropout)  # (B, head, q_len, d_k)

        # 3) merge the heads and apply the output projection
        x = x.transpose(1, 2).contiguous().view(batch_size, -1, self.head * self.d_k)  # (B, q_len, embedding_dim)
        return self.linears[-1](x)
