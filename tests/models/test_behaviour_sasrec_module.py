"""Behaviour-aware SASRec module: event types change outputs only when they differ, padding stays masked."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tapestry.inference.padding import left_pad
from tapestry.models.sequential.behaviour_sasrec import BehaviourSASRec
from tapestry.models.sequential.sasrec import SASRec

from .encoder_contract import perturbed

NUM_ITEMS, TYPES, DIM, MAX_LEN = 40, 3, 16, 10


@pytest.fixture
def model() -> BehaviourSASRec:
    torch.manual_seed(0)
    m = perturbed(BehaviourSASRec(NUM_ITEMS, TYPES, hidden_dim=DIM, num_blocks=2, num_heads=2, max_len=MAX_LEN))
    with torch.no_grad():
        m.event_emb.weight[0].zero_()       # the unknown-type row is zero by definition (perturbed() adds noise)
    return m


def test_types_change_outputs_only_when_they_differ(model):
    seqs = torch.randint(1, NUM_ITEMS, (2, MAX_LEN))
    types = torch.randint(1, TYPES + 1, (2, MAX_LEN))
    torch.testing.assert_close(model(seqs, types), model(seqs, types.clone()))
    changed = types.clone()
    changed[:, 6] = changed[:, 6] % TYPES + 1                       # another real type at position 6
    a, b = model(seqs, types), model(seqs, changed)
    torch.testing.assert_close(a[:, :6], b[:, :6])                  # causal: earlier positions unchanged
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_unknown_types_equal_the_item_only_sasrec(model):
    plain = SASRec(NUM_ITEMS, hidden_dim=DIM, num_blocks=2, num_heads=2, max_len=MAX_LEN).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items()
                           if not k.startswith(("event_emb", "type_head"))})
    seqs = torch.randint(1, NUM_ITEMS, (3, MAX_LEN))
    out_of_vocab = torch.full_like(seqs, TYPES + 5)                 # outside the vocabulary = unknown, not a crash
    for events in (None, torch.zeros_like(seqs), out_of_vocab):
        torch.testing.assert_close(model.encode(seqs, events), plain.encode(seqs))


def test_padding_stays_masked_whatever_types_it_carries(model):
    history, types = [np.array([5, 9, 3, 17])], [np.array([1, 2, 2, 3])]
    seqs = torch.from_numpy(left_pad(history, MAX_LEN, width=MAX_LEN))
    ev = torch.from_numpy(left_pad(types, MAX_LEN, width=MAX_LEN))
    noisy = ev.clone()
    noisy[:, :MAX_LEN - 4] = 2                                        # garbage types under the padding
    out = model(seqs, ev)
    assert not out[:, :MAX_LEN - 4].any()                            # padded positions output zeros
    torch.testing.assert_close(out, model(seqs, noisy))
    narrow = model(torch.from_numpy(left_pad(history, MAX_LEN)), torch.from_numpy(left_pad(types, MAX_LEN)))
    torch.testing.assert_close(narrow, out[:, -4:])                  # padding width does not matter


def test_misaligned_types_are_refused(model):
    with pytest.raises(ValueError, match="events has shape"):
        model(torch.ones(1, 4, dtype=torch.long), torch.ones(1, 3, dtype=torch.long))


def test_next_type_head_shape(model):
    h = model(torch.randint(1, NUM_ITEMS, (2, 5)), torch.randint(1, TYPES + 1, (2, 5)))
    assert model.next_type_logits(h).shape == (2, 5, TYPES + 1)
