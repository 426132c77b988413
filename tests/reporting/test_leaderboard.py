"""Leaderboard statistics: the t-interval across seeds and the paired test, against numbers worked out here."""
from __future__ import annotations

import numpy as np
import pytest

from tapestry.reporting.leaderboard import across_seeds, leaderboard_markdown, paired_test


def test_across_seeds_is_the_student_t_interval():
    s = across_seeds([0.10, 0.12, 0.14])
    # mean 0.12, sample sd 0.02, t(0.975, 2) = 4.3027: half-width 4.3027 * 0.02 / sqrt(3) = 0.049683
    assert s["mean"] == pytest.approx(0.12) and s["ci95"] == pytest.approx(0.049683, abs=1e-6)
    assert across_seeds([0.3])["ci95"] == 0.0


def test_paired_test_sees_a_consistent_gain_and_not_noise():
    rng = np.random.default_rng(0)
    base = rng.random(400)
    better = paired_test(base + 0.05 + rng.normal(0, 0.01, 400), base)
    assert better["p_value"] < 1e-6 and better["ci95_diff"][0] > 0.04 and better["mean_diff"] == pytest.approx(
        0.05, abs=0.003)
    same = paired_test(base, base)
    assert same["p_value"] == 1.0 and same["mean_diff"] == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        paired_test(base, base[:10])


def test_markdown_orders_paths_and_marks_the_served_one():
    stat = lambda m: {"mean": m, "ci95": 0.01, "per_seed": [m]}  # noqa: E731
    report = {"dataset": "toy", "seeds": [0], "served": "b", "baseline": "a",
              "paths": {"a": {"ndcg@10": stat(0.1), "recall@10": stat(0.2)},
                        "b": {"ndcg@10": stat(0.3), "recall@10": stat(0.4)}},
              "paired": {"b": {"relative": 2.0, "p_value": 0.001}}}
    rows = [line for line in leaderboard_markdown(report).splitlines() if line.startswith("| ")][1:]
    assert rows[0].startswith("| **b** | 0.3000 ± 0.0100") and "+200.0%" in rows[0] and rows[1].startswith("| a |")
