"""The cold-start benchmark's new-tenant data rule (benchmarks/cold_start.py): which training events are kept."""
import importlib.util
from pathlib import Path

import polars as pl
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _cold_start():
    spec = importlib.util.spec_from_file_location("bench_cold_start", BENCHMARKS / "cold_start.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_keeps_a_fraction_of_each_users_events_in_order():
    keep = _cold_start().keep_recent_fraction
    train = pl.DataFrame({"user_idx": [1] * 10 + [2] * 3, "item_idx": list(range(13))})
    assert keep(train, 0.2)["item_idx"].to_list() == [8, 9, 12]          # the newest 2 of 10, at least 1 of 3
    random = keep(train, 0.2, "random")
    assert random.group_by("user_idx").len().sort("user_idx")["len"].to_list() == [2, 1]
    assert random["item_idx"].to_list() == sorted(random["item_idx"].to_list())       # time order kept
    assert random.equals(keep(train, 0.2, "random"))                                  # seeded: the same every arm
    with pytest.raises(ValueError, match="recent"):
        keep(train, 0.2, "oldest")
