"""SASRec's loss choice: the full softmax below FULL_SOFTMAX_MAX_ITEMS items, a sampled softmax above (auto), and
the sampled loss's arithmetic on a constructed batch; AdamW with weight decay as an option."""
from __future__ import annotations

import math

import pytest
import torch

from tapestry.training import sasrec as S
from tapestry.training.data import InteractionData


def test_auto_picks_the_full_softmax_for_small_catalogues_and_sampled_for_huge_ones():
    assert S.resolve_loss("auto", 3_616) == "softmax"
    assert S.resolve_loss("auto", S.FULL_SOFTMAX_MAX_ITEMS + 1) == "sampled"
    assert S.resolve_loss("softmax", 10**7) == "softmax"
    with pytest.raises(ValueError, match="loss must be 'auto', 'softmax' or 'sampled', got 'bce'"):
        S.resolve_loss("bce", 10)


def test_sampled_softmax_is_the_cross_entropy_over_target_and_negatives_with_hits_masked(monkeypatch):
    table = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    h = torch.tensor([[2.0, 0.0]])
    # Negatives drawn: items 1 (= the target: masked), 2 and 3.
    monkeypatch.setattr(torch, "randint", lambda low, high, size, device=None: torch.tensor([1, 2, 3]))
    loss = S.sampled_softmax(h, table, torch.tensor([1]), num_negatives=3)
    # logits: target 2.0; negatives: item 2 -> 0.0, item 3 -> 2.0 (item 1 masked): CE = -log(e^2 / (e^2 + 1 + e^2))
    expected = -math.log(math.exp(2) / (2 * math.exp(2) + 1))
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_a_sampled_fit_with_adamw_trains(tiny_etl, monkeypatch):
    data = InteractionData.load(tiny_etl)
    monkeypatch.setattr(S, "FULL_SOFTMAX_MAX_ITEMS", 10)          # the tiny catalogue counts as "huge"
    model = S.SASRecRecommender(hidden_dim=16, num_blocks=1, max_len=20, epochs=4, patience=0, loss="auto",
                                num_negatives=32, optimizer="adamw", weight_decay=0.01, device="cpu",
                                progress=False).fit(data)
    assert model.loss_used_ == "sampled"
    assert isinstance(model.model, torch.nn.Module) and model.loss_history_[-1] < model.loss_history_[0]
    with pytest.raises(ValueError, match="optimizer must be 'adam' or 'adamw', got 'sgd'"):
        S.SASRecRecommender(epochs=1, optimizer="sgd", device="cpu", progress=False).fit(data)
