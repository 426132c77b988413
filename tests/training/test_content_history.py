"""content_history: scores are the served module's inner products, the table is the upstream encoder's, and it
round-trips through save/load; a history-mean query over a frozen table."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tapestry.inference.encoders import check_servable
from tapestry.models.retrieval.history_mean import HistoryMeanEncoder
from tapestry.training.base import Recommender
from tapestry.training.content_history import ContentHistoryRecommender

from .serving_reference import assert_scores_match, brute_force_scores


class _Table:
    """A stand-in upstream item encoder: just an item table (what bind reads)."""
    def __init__(self, table):
        self.table = table

    def item_embeddings(self):
        return self.table


class _Data:
    num_items = 7


def _fitted(decay=1.0):
    table = torch.nn.functional.normalize(torch.randn(7, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    table[0] = 0
    model = ContentHistoryRecommender(device="cpu", max_len=3, recency_decay=decay)
    model.bind({"lightgcn_content": _Table(table)})
    return model.fit(_Data()), table


def test_scores_match_the_served_module_and_the_table_is_the_upstream_one():
    model, table = _fitted(decay=0.5)
    module = model.serving_module()
    check_servable(module)
    assert torch.equal(module.item_embeddings(), table)
    histories = [np.array([1, 2, 3, 4]), np.array([5]), np.array([], dtype=np.int64)]
    assert_scores_match(model.score(np.arange(3), histories), brute_force_scores(module, histories))


def test_the_query_is_the_normalised_recency_weighted_mean_of_the_newest_items():
    enc = HistoryMeanEncoder(4, 2, max_len=2, recency_decay=0.5)
    enc.table.copy_(torch.tensor([[0., 0.], [1., 0.], [0., 1.], [3., 4.]]))
    out = enc.encode(torch.tensor([[3, 1, 2], [0, 0, 0]]))     # max_len 2: item 3 is too old
    np.testing.assert_allclose(out[0].numpy(), (np.array([0.5, 1.0]) / np.hypot(0.5, 1.0)), rtol=1e-6)
    assert torch.equal(out[1], torch.zeros(2))                  # empty history -> zeros


def test_save_load_and_unbound_fit(tmp_path):
    model, table = _fitted()
    loaded = Recommender.load(model.save(tmp_path / "m.pt"), device="cpu")
    assert torch.equal(loaded.serving_module().item_embeddings(), table)
    with pytest.raises(RuntimeError, match="bind"):
        ContentHistoryRecommender(device="cpu").fit(_Data())
    with pytest.raises(ValueError, match="recency_decay"):
        HistoryMeanEncoder(3, 2, recency_decay=0.0)
