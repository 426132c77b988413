"""benchmarks/cold_items_served.py's metric on hand-made vectors: held-out (cold) items ranked over the whole
catalogue and among the cold rows only, the user's own history excluded."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import polars as pl
import torch

_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(_DIR))          # the benchmark imports its sibling cold_items.py
_SPEC = importlib.util.spec_from_file_location("cold_items_served_benchmark", _DIR / "cold_items_served.py")
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def test_cold_recall_ranks_whole_catalogue_and_cold_rows_and_skips_the_history():
    # 60 items: 1..39 warm, 40..59 cold. The user vector points at warm item 3 (seen: excluded), then cold item 55;
    # held-out cold item 58 scores lowest of all.
    table = torch.zeros(60, 60)
    table[torch.arange(1, 60), torch.arange(1, 60)] = 1.0
    user = torch.zeros(1, 60)
    user[0, 3], user[0, 55], user[0, 7], user[0, 58] = 3.0, 2.0, 1.0, -1.0
    targets = pl.DataFrame({"user_idx": [1], "rows": [[55, 58]]})
    seen = [np.array([], dtype=np.int64), np.array([3])]
    out = bench.cold_recall(user, table, targets, seen, num_warm=40)
    assert out["cold_recall@10"] == out["cold_recall@50"] == 0.5
    assert out["cold_only_recall@10"] == 0.5 and out["cold_only_recall@20"] == 1.0
    assert set(out) == {f"{m}@{k}" for m in ("cold_recall", "cold_only_recall") for k in bench.K}
