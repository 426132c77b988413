"""Ranking metrics against hand-computed values, and the evaluation protocol against oracle models."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tapestry.training.base import Recommender
from tapestry.training.data import InteractionData
from tapestry.training.evaluate import evaluate, evaluation_ranks
from tapestry.training.metrics import mrr, ndcg_at_k, ranks_from_scores, recall_at_k

NEG = -torch.inf


def test_rank_counts_higher_scored_candidates():
    scores = torch.tensor([[NEG, 0.9, 0.5, 0.7, 0.1]])
    assert ranks_from_scores(scores, [2]).tolist() == [2]      # 0.9 and 0.7 ahead
    assert ranks_from_scores(scores, [1]).tolist() == [0]
    assert ranks_from_scores(scores, [4]).tolist() == [3]


def test_ties_are_pessimistic():
    scores = torch.tensor([[NEG, 1.0, 1.0, 1.0, 1.0]])
    # A constant model must not look good: the target is ranked behind every tied candidate.
    assert ranks_from_scores(scores, [3]).tolist() == [3]
    scores = torch.tensor([[NEG, 2.0, 1.0, 1.0, 0.0]])
    assert ranks_from_scores(scores, [2]).tolist() == [2]      # 2.0 ahead, and the tie with item 3


def test_mask_removes_candidates_and_masked_target_is_a_miss():
    scores = torch.tensor([[NEG, 0.9, 0.5, 0.7, 0.1]])
    mask = torch.tensor([[True, True, False, False, False]])
    assert ranks_from_scores(scores, [2], mask).tolist() == [1]    # only 0.7 ahead once item 1 is masked
    # The target itself masked: ranked after all 3 remaining candidates.
    assert ranks_from_scores(scores, [1], mask).tolist() == [3]


def test_nan_scores_are_not_candidates():
    scores = torch.tensor([[NEG, float("nan"), 0.5, 0.7]])
    assert ranks_from_scores(scores, [2]).tolist() == [1]


def test_metric_values_by_hand():
    ranks = np.array([0, 1, 4, 20])
    assert recall_at_k(ranks, 5) == pytest.approx(3 / 4)
    assert recall_at_k(ranks, 1) == pytest.approx(1 / 4)
    assert ndcg_at_k(ranks, 5) == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 4)
    assert ndcg_at_k(ranks, 1) == pytest.approx(1 / 4)
    assert mrr(ranks) == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 21) / 4)


def test_metrics_of_no_users_are_zero():
    assert recall_at_k(np.array([]), 10) == 0.0 and ndcg_at_k(np.array([]), 10) == 0.0 and mrr([]) == 0.0


class _Oracle(Recommender):
    """Scores every history item highest, the split's target second, everything else 0."""

    def __init__(self, data, split, device="cpu", progress=None):
        super().__init__(device=device, progress=progress)
        frame = getattr(data, split)
        self.target = dict(zip(frame["user_idx"].to_list(), frame["item_idx"].to_list()))
        self.num_items = data.num_items

    def fit(self, data, graph=None):
        return self

    def score(self, user_idx, histories):
        s = torch.zeros(len(user_idx), self.num_items)
        for row, (u, h) in enumerate(zip(user_idx, histories)):
            s[row, torch.as_tensor(h, dtype=torch.long)] = 10.0
            s[row, self.target[int(u)]] = 5.0
        return self._mask_padding(s)

    def _get_state(self):
        return {}

    def _set_state(self, state):
        pass


@pytest.mark.parametrize("split", ["valid", "test"])
def test_evaluate_masks_the_history_of_its_split(tiny_etl, split):
    data = InteractionData.load(tiny_etl)
    # Perfect only if the history (train for valid, train + valid for test) is exactly what gets masked.
    m = evaluate(_Oracle(data, split), data, split, k=1)
    assert m == {"recall@1": 1.0, "ndcg@1": 1.0, "mrr": 1.0, "recall@100": 1.0, "num_users": getattr(data, split).height}


def test_coverage_counts_distinct_top_k_items_over_the_catalogue(tiny_etl):
    from tapestry.training.evaluate import evaluate_slices

    data = InteractionData.load(tiny_etl)
    oracle = _Oracle(data, "test")             # each user's top-1 is their own target: coverage = distinct targets
    targets = set(data.test["item_idx"].to_list())
    m = evaluate_slices(oracle, data, "test", k=1)["overall"]
    assert m["coverage@1"] == pytest.approx(len(targets) / (data.num_items - 1))
    assert m["coverage@1"] < 1.0


def test_evaluate_test_split_counts_valid_item_as_history(tiny_etl):
    data = InteractionData.load(tiny_etl)
    # Scoring the VALID item highest must not hurt on the test split: it is part of the test-time history.
    oracle = _Oracle(data, "test")
    valid_item = dict(zip(data.valid["user_idx"].to_list(), data.valid["item_idx"].to_list()))
    base_score = oracle.score

    def score(user_idx, histories):
        s = base_score(user_idx, [h[:-1] for h in histories])      # train only looks "seen" to the oracle
        for row, u in enumerate(user_idx):
            s[row, valid_item[int(u)]] = 100.0
        return s

    oracle.score = score
    assert (evaluation_ranks(oracle, data, "test") == 0).all()
