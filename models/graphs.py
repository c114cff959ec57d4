"""What is exported, as PyTorch modules: the seed's modules wrapped with their mask mode and outputs.

The runtime check's float64 golden runs these very wrappers, so the reference and the export can never
disagree on how a built-in mask or an extra output is made.
"""

from __future__ import annotations

import torch
from torch import nn

from attn_onnx.models.attention import attention, causal_mask


class MhaGraph(nn.Module):
    """MultiHeadedAttention with its mask mode (`input`, `causal`, `none`) and optionally `attn_probs`."""

    def __init__(self, mha: nn.Module, mask: str, attn_probs: bool, causal_align: str = "top-left"):
        super().__init__()
        self.mha, self.mask, self.attn_probs, self.causal_align = mha, mask, attn_probs, causal_align

    def forward(self, query, key, value, mask=None):
        if self.mask == "causal":
            mask = causal_mask(query.size(1), key.size(1), self.causal_align)  # (1, q_len, kv_len)
        output = self.mha(query, key, value, mask)  # (B, q_len, embedding_dim)
        return (output, self.mha.attn) if self.attn_probs else output


class AttentionGraph(nn.Module):
    """The bare masked scaled dot-product attention on (batch, heads, len, d_k); both outputs."""

    def __init__(self, mask: str, causal_align: str = "top-left"):
        super().__init__()
        self.mask, self.causal_align = mask, causal_align

    def forward(self, query, key, value, mask=None):
        if self.mask == "causal":
            mask = causal_mask(query.size(-2), key.size(-2), self.causal_align).unsqueeze(0)  # (1, 1, q, kv)
        return attention(query, key, value, mask=mask)  # (B, h, q_len, d_k), (B, h, q_len, kv_len)


class SubsequentMaskGraph(nn.Module):
    """subsequent_mask(size) for an int64 scalar `size`: (1, size, size) uint8."""

    def forward(self, size):
        n = size.item()
        torch._check(n >= 0)
        return causal_mask(n, n)  # (1, size, size) uint8


class MhaCacheGraph(nn.Module):
    """One decoding step of MultiHeadedAttention with a cache of the projected keys and values.

    New tokens (batch, q_len, E) come in with the cache of earlier ones, past_key and past_value
    (batch, heads, past_len, d_k); the step projects the new keys and values, appends them, and attends over
    all past_len + q_len with the causal mask bottom-right aligned (query i sits at past_len + i), or with
    the mask input (batch, q_len or 1, past_len + q_len). Returns
    (output, present_key, present_value), the presents being the next step's pasts.
    """

    def __init__(self, mha: nn.Module, mask: str = "causal"):
        super().__init__()
        self.mha, self.mask = mha, mask

    def forward(self, query, key, value, past_key, past_value, mask=None):
        mha, b = self.mha, query.size(0)
        q, k, v = (
            lin(x).view(b, -1, mha.head, mha.d_k).transpose(1, 2)  # (B, h, len, d_k)
            for lin, x in zip(mha.linears, (query, key, value))
        )
        present_key = torch.cat([past_key, k], dim=2)  # (B, h, past_len + q_len, d_k)
        present_value = torch.cat([past_value, v], dim=2)
        if self.mask == "causal":
            mask = causal_mask(q.size(2), present_key.size(2), "bottom-right").unsqueeze(0)  # (1, 1, q_len, total)
        else:  # the mask input: (B, q_len or 1, past_len + q_len)
            mask = mask.unsqueeze(1)
        x, _ = attention(q, present_key, present_value, mask=mask)  # (B, h, q_len, d_k)
        x = x.transpose(1, 2).contiguous().view(b, -1, mha.head * mha.d_k)
        return mha.linears[3](x), present_key, present_value


class MhaSelfGraph(MhaGraph):
    """Self-attention: MultiHeadedAttention on one input x, as query, key and value (the usual encoder or
    decoder block); the mask input is (batch, len or 1, len)."""

    def forward(self, x, mask=None):
        return super().forward(x, x, x, mask)


class MhaStaticGraph(nn.Module):
    """One decoding step of MultiHeadedAttention with a static cache: fixed buffers written in place.

    The cache is past_key and past_value (batch, heads, max_len, d_k), of which each sequence's first past_len[b]
    positions hold its earlier tokens (past_len (batch,) int64, the sequences' lengths may differ). The step
    projects the q_len new tokens, writes their keys and values at positions past_len[b] .. past_len[b] + q_len - 1
    (PyTorch's static caches: `index_copy_`; here a scatter, as the graph must return its buffers), and attends
    over each sequence's valid keys only: new token i of sequence b sits at past_len[b] + i and attends keys
    0..past_len[b] + i (the causal mask bottom-right aligned, per sequence). Returns (output, present_key,
    present_value); the presents are the buffers after the write, positions past each sequence's length as
    they were. A write past max_len raises (torch's scatter refuses an index out of range); a negative past_len is
    outside the contract (exported, ScatterElements counts it from the buffer's end).
    """

    def __init__(self, mha: nn.Module, max_len: int):
        super().__init__()
        self.mha, self.max_len = mha, max_len

    def forward(self, query, key, value, past_key, past_value, past_len):
        mha, b, q_len = self.mha, query.size(0), query.size(1)
        q, k, v = (
            lin(x).view(b, -1, mha.head, mha.d_k).transpose(1, 2)  # (B, h, q_len, d_k)
            for lin, x in zip(mha.linears, (query, key, value))
        )
        positions = past_len.unsqueeze(1) + torch.arange(q_len, device=query.device)  # (B, q_len)
        index = positions[:, None, :, None].expand(b, mha.head, q_len, mha.d_k)
        present_key = past_key.scatter(2, index, k)  # (B, h, max_len, d_k)
        present_value = past_value.scatter(2, index, v)
        keys = torch.arange(self.max_len, device=query.device)
        mask = (keys[None, None, :] <= positions[:, :, None]).unsqueeze(1)  # (B, 1, q_len, max_len)
        x, _ = attention(q, present_key, present_value, mask=mask)  # (B, h, q_len, d_k)
        x = x.transpose(1, 2).contiguous().view(b, -1, mha.head * mha.d_k)
        return mha.linears[3](x), present_key, present_value
