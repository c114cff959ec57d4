"""The reference modules keep the seed's semantics exactly (shared/SEED.md)."""

import pytest
import torch

from attn_onnx.models import MASK_FILL, MultiHeadedAttention, attention, causal_mask, subsequent_mask
from tests import seed_class


def test_subsequent_mask_is_the_literal_5x5_lower_triangle():
    expected = torch.tensor(
        [[[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]], dtype=torch.uint8
    )
    mask = subsequent_mask(5)
    assert mask.dtype == torch.uint8 and mask.shape == (1, 5, 5)
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("size", [1, 5, 20])
def test_causal_mask_equals_the_seeds_subsequent_mask(size):
    assert torch.equal(causal_mask(size, size), seed_class.subsequeent_mask(size))


def test_causal_mask_for_cross_lengths_is_top_left_aligned():
    mask = causal_mask(2, 4)[0]
    assert mask.tolist() == [[1, 0, 0, 0], [1, 1, 0, 0]]


def test_mask_fill_is_finite_and_exact_in_float32():
    assert MASK_FILL == -1e9 and torch.tensor(MASK_FILL, dtype=torch.float32).item() == MASK_FILL


def test_all_zero_mask_attends_uniformly_as_in_the_seeds_demo():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 8, 4, 64, generator=gen) for _ in range(3))
    out, p_attn = attention(q, k, v, mask=torch.zeros(2, 1, 4, 4))
    assert torch.allclose(p_attn, torch.full_like(p_attn, 0.25))
    assert torch.allclose(out, v.mean(dim=-2, keepdim=True).expand_as(out), atol=1e-6)
    assert not torch.isnan(out).any()


def test_zero_means_masked_and_nonzero_means_attend():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 1, 3, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    mask = torch.tensor([[[[1, 0, 2]]]])  # any nonzero value attends
    _, p_attn = attention(q, k, v, mask=mask)
    assert torch.all(p_attn[..., 1] == 0)
    assert torch.all(p_attn[..., [0, 2]] > 0)
    assert torch.allclose(p_attn.sum(-1), torch.ones(1, 1, 3, dtype=torch.float64))


def test_heads_must_divide_embedding_dim_with_values_in_the_message():
    with pytest.raises(ValueError, match="embedding_dim=512 is not divisible by heads=7"):
        MultiHeadedAttention(7, 512)


def test_state_dict_keys_are_the_seeds():
    keys = list(MultiHeadedAttention(8, 512).state_dict())
    assert keys == [f"linears.{i}.{p}" for i in range(4) for p in ("weight", "bias")]


def test_seed_checkpoint_loads_unchanged_and_computes_the_same(tmp_path):
    torch.manual_seed(3)
    seed_module = seed_class.MutiHeadedAttention(8, 512, dropout=0.2).eval()
    torch.save(seed_module.state_dict(), tmp_path / "seed.pt")
    ours = MultiHeadedAttention(8, 512, dropout=0.2).eval()
    ours.load_state_dict(torch.load(tmp_path / "seed.pt", weights_only=True), strict=True)
    x = torch.randn(2, 4, 512)
    mask = torch.zeros(2, 4, 4)  # the seed's own example
    expected = seed_module(x, x, x, mask)
    assert torch.equal(ours(x, x, x, mask), expected)
    assert expected.shape == (2, 4, 512)
    assert torch.allclose(ours.attn, torch.full((2, 8, 4, 4), 0.25))


def test_padding_mask_broadcasts_like_the_full_mask():
    torch.manual_seed(4)
    mha = MultiHeadedAttention(4, 32, dropout=0.0).eval()
    q, kv = torch.randn(3, 5, 32), torch.randn(3, 7, 32)
    padding = torch.ones(3, 1, 7)
    padding[1, 0, 4:] = 0
    full = padding.expand(3, 5, 7)
    assert torch.equal(mha(q, kv, kv, padding), mha(q, kv, kv, full))
    assert torch.all(mha.attn[1, :, :, 4:] == 0)


@pytest.mark.parametrize("q_len, kv_len", [(1, 1), (3, 3), (2, 5), (1, 7), (5, 2)])
def test_bottom_right_puts_query_i_at_position_kv_len_minus_q_len_plus_i(q_len, kv_len):
    mask = causal_mask(q_len, kv_len, "bottom-right")[0]
    expected = torch.tensor(
        [[int(j <= kv_len - q_len + i) for j in range(kv_len)] for i in range(q_len)], dtype=torch.uint8
    )
    assert torch.equal(mask, expected)
    if q_len == kv_len:
        assert torch.equal(mask, causal_mask(q_len, kv_len)[0])  # the alignments agree on a square
    if q_len == 1:
        assert bool(mask.all())  # the newest token sees every key: the decode step


def test_bottom_right_with_more_queries_than_keys_masks_the_first_rows_whole():
    mask = causal_mask(5, 2, "bottom-right")[0]
    assert mask[:3].sum() == 0 and mask[3:].sum() > 0  # rows 0..2 have no key: they attend uniformly


def test_an_unknown_alignment_is_refused():
    with pytest.raises(ValueError, match="align='middle'"):
        causal_mask(2, 2, "middle")
