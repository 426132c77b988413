"""Leave-one-out split: per user, the last event (by time, ties by input order) is test, the one before valid."""
from __future__ import annotations

import polars as pl


def leave_one_out(events: pl.LazyFrame, min_user_events: int = 3) -> dict[str, pl.LazyFrame]:
    """`events` needs user_idx, timestamp and source_row. Users with < min_user_events stay wholly in train."""
    ordered = events.sort(["user_idx", "timestamp", "source_row"])
    n = pl.len().over("user_idx")
    from_end = n - pl.int_range(pl.len()).over("user_idx")  # 1 for the last event, 2 for the one before
    tagged = ordered.with_columns(from_end.alias("_from_end"), n.alias("_n"))
    evaluable = pl.col("_n") >= min_user_events
    out = {
        "train": tagged.filter(~evaluable | (pl.col("_from_end") > 2)),
        "valid": tagged.filter(evaluable & (pl.col("_from_end") == 2)),
        "test": tagged.filter(evaluable & (pl.col("_from_end") == 1)),
    }
    return {k: v.drop("_from_end", "_n") for k, v in out.items()}
