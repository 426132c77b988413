"""benchmarks/tiers.py: the served answers it scores go through the shared evaluation as list positions, so a
target at list position p has rank p and a target the tier did not return ranks after the whole list (the served
lists hold max_k >= k items: a miss at k)."""
import importlib.util
from pathlib import Path

import numpy as np
import polars as pl

from tapestry.training.evaluate import evaluate

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "tiers.py"


def _module():
    spec = importlib.util.spec_from_file_location("bench_tiers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Data:
    """The slice of InteractionData the evaluation reads: 3 users, 8 items, one test target each."""
    num_items = 8
    test = pl.DataFrame({"user_idx": [1, 2, 3], "item_idx": [5, 2, 7]})

    def sequences(self, splits):
        return [np.zeros(0, np.int64), np.array([1]), np.array([3]), np.array([4])]


def test_served_answers_score_by_list_position():
    served = _module().ServedTier({1: np.array([5, 6]), 2: np.array([6, 2, 7]), 3: np.array([6, 1])}, num_items=8)
    scores = served.score(np.array([2]), None)
    assert scores[0, 6] == 0 and scores[0, 2] == -1 and scores[0, 7] == -2 and scores[0, 5] == -np.inf
    metrics = evaluate(served, _Data(), "test", k=2)
    # user 1: rank 0 (hit), user 2: rank 1 (hit), user 3: target 7 not returned (a miss at every cut-off)
    assert metrics["recall@2"] == 2 / 3
    np.testing.assert_allclose(metrics["ndcg@2"], (1 + 1 / np.log2(3)) / 3)
