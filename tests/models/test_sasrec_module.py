"""SASRec module properties the serving side relies on: causality, padding invariance, defined padding output."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tapestry.inference.padding import left_pad
from tapestry.models.sequential.sasrec import SASRec

from .encoder_contract import EncoderContract, perturbed

NUM_ITEMS, DIM, MAX_LEN = 50, 16, 12


@pytest.fixture
def model() -> SASRec:
    torch.manual_seed(0)
    m = SASRec(NUM_ITEMS, hidden_dim=DIM, num_blocks=2, num_heads=2, max_len=MAX_LEN, dropout=0.2)
    return perturbed(m)


def test_causal_later_items_do_not_change_earlier_outputs(model):
    seqs = torch.randint(1, NUM_ITEMS, (3, MAX_LEN))
    changed = seqs.clone()
    changed[:, 7] = (changed[:, 7] % (NUM_ITEMS - 1)) + 1          # a different real item at position 7
    a, b = model(seqs), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])                 # ...and it does change position 7 onwards


def test_padding_width_does_not_change_outputs(model):
    history = [np.array([5, 9, 3, 17, 2])]
    narrow = torch.from_numpy(left_pad(history, MAX_LEN))                   # [1, 5], no padding at all
    wide = torch.from_numpy(left_pad(history, MAX_LEN, width=MAX_LEN))      # [1, 12], 7 padding columns
    assert narrow.shape == (1, 5) and wide.shape == (1, MAX_LEN)
    torch.testing.assert_close(model(narrow), model(wide)[:, -5:])
    torch.testing.assert_close(model.encode(narrow), model.encode(wide))


def test_padding_positions_are_zero_and_all_padding_is_finite(model):
    seqs = torch.zeros(2, MAX_LEN, dtype=torch.long)
    seqs[1, -3:] = torch.tensor([1, 2, 3])
    out = model(seqs)
    assert torch.isfinite(out).all()
    assert not out[0].any()                     # all padding: the defined output is the zero vector
    assert not out[1, :-3].any() and out[1, -3:].abs().sum() > 0
    assert not model.encode(seqs[:1]).any()


def test_all_padding_rows_give_finite_gradients_in_training(model):
    model.train()
    seqs = torch.zeros(2, MAX_LEN, dtype=torch.long)
    seqs[1, -4:] = torch.tensor([7, 8, 9, 10])
    loss = (model(seqs) @ model.item_embeddings().T).logsumexp(-1).sum()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_longer_sequences_use_the_last_max_len_items(model):
    seqs = torch.randint(1, NUM_ITEMS, (2, MAX_LEN + 5))
    torch.testing.assert_close(model(seqs), model(seqs[:, -MAX_LEN:]))


def test_init_item_embeddings_copies(model):
    weights = torch.randn(NUM_ITEMS, DIM)
    model.init_item_embeddings(weights)
    assert torch.equal(model.item_embeddings()[1:], weights[1:])
    assert not model.item_embeddings()[0].any()              # padding row stays zero
    weights.add_(1.0)                                         # a copy, not a view of the caller's tensor
    assert not torch.equal(model.item_embeddings()[1:], weights[1:])
    with pytest.raises(ValueError, match="shape"):
        model.init_item_embeddings(torch.randn(NUM_ITEMS, DIM + 1))


def test_left_pad():
    out = left_pad([np.array([1, 2, 3]), np.array([], np.int64), np.arange(1, 8)], max_len=4)
    assert out.tolist() == [[0, 1, 2, 3], [0, 0, 0, 0], [4, 5, 6, 7]]
    assert left_pad([np.array([], np.int64)], max_len=4).shape == (1, 1)


class TestEncoderContract(EncoderContract):
    def make(self):
        return perturbed(SASRec(NUM_ITEMS, hidden_dim=DIM, num_blocks=2, num_heads=2, max_len=MAX_LEN, dropout=0.2))


@pytest.mark.parametrize("cls_name, fusion", [("SASRec", "add"), ("SASRec", "gate"), ("ComiRecSA", "add")])
def test_item_rows_equal_the_fused_tables_rows_without_building_it(cls_name, fusion):
    """Encoding reads only the history's rows of the fused (ID + projected graph vector) table: the same numbers
    as indexing the whole table, which serving must not build per request."""
    from tapestry.models.sequential.comirec import ComiRecSA

    torch.manual_seed(0)
    if cls_name == "SASRec":
        m = SASRec(NUM_ITEMS, hidden_dim=DIM, max_len=MAX_LEN, side_dim=8, fusion=fusion)
    else:
        m = ComiRecSA(NUM_ITEMS, hidden_dim=DIM, max_len=MAX_LEN, side_dim=8)
    m.set_side_embeddings(torch.randn(NUM_ITEMS, 8))
    torch.nn.init.normal_(m.side_proj.weight)          # zero-initialised: make the fusion visible
    seqs = torch.from_numpy(left_pad([np.array([3, 7, 1]), np.array([5])], MAX_LEN))
    rows = m.item_rows(seqs)
    assert torch.allclose(rows, m.item_table()[seqs], atol=1e-6)
    assert rows[seqs == 0].abs().sum() == 0 and rows[seqs > 0].abs().sum() > 0


def test_encode_runs_only_the_last_position_through_the_final_block_with_the_same_result(model):
    model.eval()
    seqs = torch.from_numpy(left_pad([np.array([3, 7, 1, 9]), np.array([5]), np.arange(1, 30)], MAX_LEN))
    with torch.no_grad():
        assert torch.allclose(model.encode(seqs), model(seqs)[:, -1], atol=1e-5)
        assert torch.allclose(torch.jit.script(model).encode(seqs), model(seqs)[:, -1], atol=1e-5)
