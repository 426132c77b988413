"""ComiRec-SA module properties the serving side relies on: K interest vectors, padding invariance, defined
padding output, rebuild from init_args, graph fusion."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tapestry.models.sequential.comirec import ComiRecSA
from tapestry.inference.padding import left_pad

from .encoder_contract import EncoderContract, perturbed

NUM_ITEMS, DIM, K, MAX_LEN = 50, 16, 4, 12


@pytest.fixture
def model() -> ComiRecSA:
    torch.manual_seed(0)
    return perturbed(ComiRecSA(NUM_ITEMS, hidden_dim=DIM, num_interests=K, max_len=MAX_LEN, dropout=0.2))


def test_shapes_and_k_distinct_interests(model):
    seqs = torch.randint(1, NUM_ITEMS, (3, MAX_LEN))
    out = model.encode(seqs)
    assert out.shape == (3, K, DIM)
    assert model.item_embeddings().shape == (NUM_ITEMS, DIM) and not model.item_embeddings()[0].any()
    for row in out:
        dist = torch.cdist(row, row) + torch.eye(K)          # pairwise distances, diagonal masked
        assert dist.min() > 1e-3                              # K different vectors, not one repeated


def test_attention_is_a_distribution_over_real_items_only(model):
    seqs = torch.from_numpy(left_pad([np.array([3, 8, 5])], MAX_LEN, width=MAX_LEN))
    attn, _ = model.attention(seqs)
    assert attn.shape == (1, K, MAX_LEN)
    torch.testing.assert_close(attn.sum(-1), torch.ones(1, K))
    assert not attn[..., :-3].any()                          # padding gets exactly zero weight


def test_padding_width_does_not_change_outputs(model):
    history = [np.array([5, 9, 3, 17, 2])]
    narrow = torch.from_numpy(left_pad(history, MAX_LEN))
    wide = torch.from_numpy(left_pad(history, MAX_LEN, width=MAX_LEN))
    assert narrow.shape == (1, 5) and wide.shape == (1, MAX_LEN)
    torch.testing.assert_close(model.encode(narrow), model.encode(wide))


def test_positions_matter(model):
    seqs = torch.tensor([[4, 9, 2, 7]])
    assert not torch.allclose(model.encode(seqs), model.encode(seqs.flip(1)))


def test_all_padding_rows_are_zero_and_finite(model):
    seqs = torch.zeros(2, MAX_LEN, dtype=torch.long)
    seqs[1, -3:] = torch.tensor([1, 2, 3])
    out = model.encode(seqs)
    assert torch.isfinite(out).all()
    assert not out[0].any() and out[1].abs().sum() > 0


def test_all_padding_rows_give_finite_gradients_in_training(model):
    model.train()
    seqs = torch.zeros(2, MAX_LEN, dtype=torch.long)
    seqs[1, -4:] = torch.tensor([7, 8, 9, 10])
    loss = (model(seqs) @ model.item_embeddings().T).logsumexp(-1).sum()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_longer_sequences_use_the_last_max_len_items(model):
    seqs = torch.randint(1, NUM_ITEMS, (2, MAX_LEN + 5))
    torch.testing.assert_close(model.encode(seqs), model.encode(seqs[:, -MAX_LEN:]))


def test_readout_picks_the_interest_closest_to_the_target():
    interests = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    assert torch.equal(ComiRecSA.readout(interests, torch.tensor([[0.1, 2.0]])), torch.tensor([[0.0, 1.0]]))
    assert torch.equal(ComiRecSA.readout(interests, torch.tensor([[-3.0, 0.5]])), torch.tensor([[-1.0, 0.0]]))


@pytest.mark.parametrize("side_dim", [0, 8])
def test_rebuild_from_init_args_and_state_dict(side_dim):
    torch.manual_seed(1)
    m = ComiRecSA(NUM_ITEMS, hidden_dim=DIM, num_interests=3, max_len=MAX_LEN, side_dim=side_dim, attn_dim=24)
    if side_dim:
        m.set_side_embeddings(torch.randn(NUM_ITEMS, side_dim))
    m = perturbed(m)
    twin = type(m)(**m.init_args)
    twin.load_state_dict(m.state_dict())
    twin.eval()
    seqs = torch.from_numpy(left_pad([np.array([3, 1, 4, 1, 5]), np.array([9]), np.array([], np.int64)], MAX_LEN))
    assert torch.equal(twin.encode(seqs), m.encode(seqs))
    assert torch.equal(twin.item_embeddings(), m.item_embeddings())


def test_side_vectors_are_frozen_and_fused():
    torch.manual_seed(2)
    m = ComiRecSA(NUM_ITEMS, hidden_dim=DIM, side_dim=8)
    side = torch.randn(NUM_ITEMS, 8)
    m.set_side_embeddings(side)
    assert "side_emb" in dict(m.named_buffers()) and "side_emb" not in dict(m.named_parameters())
    # The projection starts at zero: the fused table is the ID table until training moves it.
    torch.testing.assert_close(m.item_embeddings(), m.item_emb.weight)
    with torch.no_grad():
        m.side_proj.weight.normal_()
    expected = m.item_emb.weight + side @ m.side_proj.weight.T
    torch.testing.assert_close(m.item_embeddings()[1:], expected[1:])
    assert not m.item_embeddings()[0].any()                  # padding row stays zero after fusion
    with pytest.raises(ValueError, match="shape"):
        m.set_side_embeddings(torch.randn(NUM_ITEMS, 9))


class TestEncoderContract(EncoderContract):
    def make(self):
        return perturbed(ComiRecSA(NUM_ITEMS, hidden_dim=DIM, num_interests=K, max_len=MAX_LEN, dropout=0.2))
