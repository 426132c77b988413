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
    # The target itself masked: ranked after every item (rank N = 5), a miss at any k <= N.
    assert ranks_from_scores(scores, [1], mask).tolist() == [5]


def test_a_target_left_out_of_a_short_list_is_a_miss_not_a_hit():
    # A ranker scored 2 candidates of 5 items (the rest -inf); the target is not among them. Ranked after the
    # 2 candidates it would be rank 2 < k = 3: a false hit. It must be a miss at every k <= N.
    scores = torch.tensor([[0.9, 0.8, NEG, NEG, NEG]])
    ranks = ranks_from_scores(scores, [3])
    assert ranks.tolist() == [5]
    assert recall_at_k(ranks, 3) == 0.0 and ndcg_at_k(ranks, 5) == 0.0


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


# --- The multi-target protocol (Gowalla) and the cold slices, on a hand-made data set --------------------------
# Items 1..7 (0 = padding), users 1..3 (0 = OOV). Train (= the test-time history; valid is empty):
#   user 1: items 1, 2         (2 events)
#   user 2: item 1             (1 event)
#   user 3: items 1, 2, 3      (3 events)
# Train popularity: item 1 = 3, item 2 = 2, item 3 = 1, items 4..7 = 0.
# The model ranks each user's unseen items in a fixed order (history and item 0 are masked by the evaluation):
ORDER = {1: [7, 4, 6, 3, 5],
         2: [6, 2, 4, 3, 5, 7],
         3: [5, 4, 6, 7]}
TRAIN = {1: [1, 2], 2: [1], 3: [1, 2, 3]}
D = [1 / math.log2(r + 2) for r in range(10)]          # DCG discount of 0-based position r: 1, 1/log2 3, 1/2, ...


class _FixedOrder:
    """Scores item ORDER[u][j] with len - j; history items get a high score too (the evaluation must mask them);
    every other item -1. Records which users it was asked to score."""

    def __init__(self, num_items=8):
        self.num_items = num_items
        self.scored: list[list[int]] = []

    def score(self, user_idx, histories):
        self.scored.append(sorted(int(u) for u in user_idx))
        s = torch.full((len(user_idx), self.num_items), -1.0)
        for row, (u, h) in enumerate(zip(user_idx, histories)):
            order = ORDER[int(u)]
            for j, item in enumerate(order):
                s[row, item] = float(len(order) - j)
            s[row, torch.as_tensor(h, dtype=torch.long)] = 100.0       # seen: must never count
        s[:, 0] = -torch.inf
        return s


def _hand_data(test_targets: dict[int, list[int]]) -> InteractionData:
    import polars as pl

    def frame(rows):
        return pl.DataFrame({"user_idx": [u for u, _, _ in rows], "item_idx": [i for _, i, _ in rows],
                             "timestamp": [t for _, _, t in rows]},
                            schema={"user_idx": pl.Int64, "item_idx": pl.Int64, "timestamp": pl.Int64})

    train = frame([(u, i, t) for u, items in TRAIN.items() for t, i in enumerate(items)])
    test = frame([(u, i, 100 + t) for u, items in test_targets.items() for t, i in enumerate(items)])
    empty = pl.DataFrame()
    return InteractionData(path=None, num_users=4, num_items=8, train=train, valid=frame([]), test=test,
                           items=empty, item_entities=empty, user_entities=empty)


# Several targets per user: |T1| = 3, |T2| = 2, |T3| = 1.
MULTI = {1: [3, 4, 5], 2: [2, 3], 3: [6]}


def test_multi_target_recall_and_ndcg_by_hand():
    from tapestry.training.evaluate import multi_target_metrics

    data = _hand_data(MULTI)
    # k = 2 (smaller than |T1|, equal to |T2|, larger than |T3|):
    #   user 1: top [7, 4] -> hits [0, 1]: recall 1/3; DCG = D1; ideal over min(3, 2) = 2 slots = D0 + D1
    #   user 2: top [6, 2] -> hits [0, 1]: recall 1/2; DCG = D1; ideal over min(2, 2) = 2 slots = D0 + D1
    #   user 3: top [5, 4] -> hits [0, 0]: recall 0;   NDCG 0
    m = multi_target_metrics(_FixedOrder(), data, "test", k=2)
    assert m["num_users"] == 3
    assert m["recall@2"] == pytest.approx((1 / 3 + 1 / 2 + 0) / 3)                 # = 5/18
    assert m["ndcg@2"] == pytest.approx((D[1] / (D[0] + D[1]) + D[1] / (D[0] + D[1]) + 0) / 3)
    # k = 5 (larger than every |T|):
    #   user 1: top [7, 4, 6, 3, 5] -> hits [0, 1, 0, 1, 1]: recall 3/3; DCG = D1 + D3 + D4; ideal = D0 + D1 + D2
    #   user 2: top [6, 2, 4, 3, 5] -> hits [0, 1, 0, 1, 0]: recall 2/2; DCG = D1 + D3;      ideal = D0 + D1
    #   user 3: top [5, 4, 6, 7, (masked)] -> hits [0, 0, 1, 0, 0]: recall 1/1; DCG = D2 = 1/2; ideal = D0 = 1
    m = multi_target_metrics(_FixedOrder(), data, "test", k=5)
    assert m["recall@5"] == pytest.approx(1.0)
    ndcg1 = (D[1] + D[3] + D[4]) / (D[0] + D[1] + D[2])      # (0.6309 + 0.4307 + 0.3869) / 2.1309 = 0.6798
    ndcg2 = (D[1] + D[3]) / (D[0] + D[1])                    # (0.6309 + 0.4307) / 1.6309 = 0.6509
    ndcg3 = 0.5
    assert ndcg1 == pytest.approx(0.6798, abs=1e-4) and ndcg2 == pytest.approx(0.6509, abs=1e-4)
    assert m["ndcg@5"] == pytest.approx((ndcg1 + ndcg2 + ndcg3) / 3)
    # evaluate() takes the multi-target path for this data (more test rows than test users).
    assert evaluate(_FixedOrder(), data, "test", k=5) == m


def test_multi_target_cold_slices_by_hand():
    from tapestry.training.evaluate import evaluate_slices

    data = _hand_data(MULTI)
    model = _FixedOrder()
    # cold_item_max = 0: cold items are 4..7 (never in train). A user is in the slice when any target is cold:
    #   user 1 (targets 3, 4, 5: 4 and 5 cold), user 3 (target 6 cold); not user 2 (targets 2, 3: popularity 2, 1).
    # cold_user_max = 1: users with at most 1 history event: user 2 only (user 1 has 2, user 3 has 3).
    s = evaluate_slices(model, data, "test", k=2, cold_item_max=0, cold_user_max=1)
    assert model.scored == [[1, 2, 3], [1, 3], [2]]          # overall, cold_items, cold_users
    # Per-user values at k = 2 from the test above: user 1 (1/3, D1/(D0+D1)), user 2 (1/2, D1/(D0+D1)), user 3 (0, 0)
    n12 = D[1] / (D[0] + D[1])
    # cold_items: users 1 and 3, each scored on all their targets.
    assert s["cold_items"] == pytest.approx({"recall@2": (1 / 3 + 0) / 2, "ndcg@2": (n12 + 0) / 2, "num_users": 2})
    assert s["cold_users"] == pytest.approx({"recall@2": 1 / 2, "ndcg@2": n12, "num_users": 1})
    assert s["overall"] == pytest.approx({"recall@2": (1 / 3 + 1 / 2) / 3, "ndcg@2": 2 * n12 / 3, "num_users": 3})


def test_leave_one_out_cold_slices_by_hand():
    from tapestry.training.evaluate import evaluate_slices

    # One target per user (ranks follow ORDER after masking the history):
    #   (user 1, item 4): rank 1 (7 ahead), item 4 cold (popularity 0), user 1 not cold (2 events)
    #   (user 2, item 3): rank 3 (6, 2, 4 ahead), item 3 not cold (popularity 1 > 0), user 2 cold (1 event)
    #   (user 3, item 5): rank 0, item 5 cold, user 3 not cold (3 events)
    data = _hand_data({1: [4], 2: [3], 3: [5]})
    s = evaluate_slices(_FixedOrder(), data, "test", k=2, cold_item_max=0, cold_user_max=1)
    # cold_items = pairs (1, 4) and (3, 5): ranks [1, 0]
    assert s["cold_items"] == pytest.approx({"recall@2": 1.0, "ndcg@2": (D[1] + D[0]) / 2, "mrr": (1 / 2 + 1) / 2,
                                             "recall@100": 1.0, "num_users": 2})
    # cold_users = pair (2, 3): rank 3 -> outside the top 2
    assert s["cold_users"] == pytest.approx({"recall@2": 0.0, "ndcg@2": 0.0, "mrr": 1 / 4, "recall@100": 1.0,
                                             "num_users": 1})
    # overall: ranks [1, 3, 0]; coverage@2: top-2 lists [7, 4], [6, 2], [5, 4] -> {2, 4, 5, 6, 7} = 5 of 7 items
    assert s["overall"] == pytest.approx({"recall@2": 2 / 3, "ndcg@2": (D[1] + D[0]) / 3,
                                          "mrr": (1 / 2 + 1 / 4 + 1) / 3, "recall@100": 1.0, "num_users": 3,
                                          "coverage@2": 5 / 7})
