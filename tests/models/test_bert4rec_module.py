"""BERT4Rec module properties: bidirectional attention, the appended [MASK], padding invariance, defined padding
output, rebuild from init_args."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tapestry.models.sequential.bert4rec import BERT4Rec
from tapestry.inference.padding import left_pad

from .encoder_contract import EncoderContract, perturbed

NUM_ITEMS, DIM, MAX_LEN = 50, 16, 12


@pytest.fixture
def model() -> BERT4Rec:
    torch.manual_seed(0)
    m = BERT4Rec(NUM_ITEMS, hidden_dim=DIM, num_blocks=2, num_heads=2, max_len=MAX_LEN, dropout=0.2)
    return perturbed(m)


def test_shapes_and_mask_row_is_not_a_candidate(model):
    assert model.item_emb.weight.shape == (NUM_ITEMS + 1, DIM)          # + [MASK]
    assert model.item_embeddings().shape == (NUM_ITEMS, DIM) and not model.item_embeddings()[0].any()
    seqs = torch.randint(1, NUM_ITEMS, (3, MAX_LEN - 1))
    assert model(seqs).shape == (3, MAX_LEN - 1, DIM)
    assert model.encode(seqs).shape == (3, DIM)


def test_bidirectional_later_items_change_earlier_outputs(model):
    seqs = torch.randint(1, NUM_ITEMS, (3, MAX_LEN))
    changed = seqs.clone()
    changed[:, 7] = (changed[:, 7] % (NUM_ITEMS - 1)) + 1
    a, b = model(seqs), model(changed)
    for pos in (0, 6, 8, MAX_LEN - 1):                  # before and after the change: no causal mask
        assert not torch.allclose(a[:, pos], b[:, pos])


def test_encode_depends_on_every_history_item(model):
    seqs = torch.randint(1, NUM_ITEMS, (2, MAX_LEN - 1))
    base = model.encode(seqs)
    for pos in (0, (MAX_LEN - 1) // 2, MAX_LEN - 2):    # the oldest, a middle and the newest item
        changed = seqs.clone()
        changed[:, pos] = (changed[:, pos] % (NUM_ITEMS - 1)) + 1
        assert not torch.allclose(model.encode(changed), base)


def test_encode_is_the_output_at_an_appended_mask(model):
    seqs = torch.randint(1, NUM_ITEMS, (2, 5))
    with_mask = torch.cat([seqs, torch.full((2, 1), model.mask_token)], dim=1)
    torch.testing.assert_close(model.encode(seqs), model(with_mask)[:, -1])


def test_padding_width_does_not_change_outputs(model):
    history = [np.array([5, 9, 3, 17, 2])]
    narrow = torch.from_numpy(left_pad(history, MAX_LEN))
    wide = torch.from_numpy(left_pad(history, MAX_LEN, width=MAX_LEN))
    assert narrow.shape == (1, 5) and wide.shape == (1, MAX_LEN)
    torch.testing.assert_close(model(narrow), model(wide)[:, -5:])
    torch.testing.assert_close(model.encode(narrow), model.encode(wide))


def test_encode_uses_the_last_max_len_minus_one_items(model):
    seqs = torch.randint(1, NUM_ITEMS, (2, MAX_LEN + 5))
    torch.testing.assert_close(model.encode(seqs), model.encode(seqs[:, -(MAX_LEN - 1):]))
    changed = seqs.clone()
    changed[:, -MAX_LEN] = (changed[:, -MAX_LEN] % (NUM_ITEMS - 1)) + 1     # just outside the window
    torch.testing.assert_close(model.encode(changed), model.encode(seqs))


def test_padding_positions_are_zero_and_all_padding_is_finite(model):
    seqs = torch.zeros(2, MAX_LEN, dtype=torch.long)
    seqs[1, -3:] = torch.tensor([1, 2, 3])
    out = model(seqs)
    assert torch.isfinite(out).all()
    assert not out[0].any() and not out[1, :-3].any() and out[1, -3:].abs().sum() > 0
    enc = model.encode(seqs)
    assert torch.isfinite(enc).all() and not enc[0].any() and enc[1].abs().sum() > 0
    assert not model.encode(torch.zeros(1, 0, dtype=torch.long)).any()      # zero-width input too


def test_all_padding_rows_give_finite_gradients_in_training(model):
    model.train()
    seqs = torch.zeros(2, MAX_LEN, dtype=torch.long)
    seqs[1, -4:] = torch.tensor([7, model.mask_token, 9, 10])
    loss = (model(seqs) @ model.item_embeddings().T).logsumexp(-1).sum()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_max_len_leaves_room_for_the_mask():
    with pytest.raises(ValueError, match="max_len"):
        BERT4Rec(NUM_ITEMS, max_len=1)


class TestEncoderContract(EncoderContract):
    def make(self):
        return perturbed(BERT4Rec(NUM_ITEMS, hidden_dim=DIM, num_blocks=2, num_heads=2, max_len=MAX_LEN, dropout=0.2))
