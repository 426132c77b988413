"""Train/valid/test splits of the encoded events.

- leave-one-out (the default): per user, the last event (by time, ties by input order) is test, the one before
  valid;
- fixed: the input's own `split` column decides (an adapter for a published split, e.g. LightGCN's Gowalla, or a
  tenant table that carries one). A user may then have many test rows, and valid may be empty.
"""
from __future__ import annotations

import polars as pl

from tapestry.etl.schema import SPLIT_COLUMN

LEAVE_ONE_OUT = "leave_one_out"
FIXED = "fixed"


def leave_one_out(events: pl.LazyFrame, min_user_events: int = 3) -> dict[str, pl.LazyFrame]:
    """`events` needs user_idx, timestamp and source_row. Users with < min_user_events stay wholly in train."""
    ordered = events.sort(["user_idx", "timestamp", "source_row"])
    # Each user's rows are one run of the sorted user column: its first and last row numbers give the count and
    # the position from the end in O(n). (The same with `.over("user_idx")` windows took ~5 CPU-s per million
    # events with many small users, most of `tapestry etl`'s time.) user_idx >= 1, so -1 marks "no neighbour".
    row, user = pl.int_range(pl.len(), dtype=pl.Int64), pl.col("user_idx")
    first = pl.when(user != user.shift(1, fill_value=-1)).then(row).forward_fill()
    last = pl.when(user != user.shift(-1, fill_value=-1)).then(row).backward_fill()
    tagged = ordered.with_columns((last - row + 1).alias("_from_end"),   # 1 for the last event, 2 for the one before
                                  (last - first + 1).alias("_n"))
    evaluable = pl.col("_n") >= min_user_events
    out = {
        "train": tagged.filter(~evaluable | (pl.col("_from_end") > 2)),
        "valid": tagged.filter(evaluable & (pl.col("_from_end") == 2)),
        "test": tagged.filter(evaluable & (pl.col("_from_end") == 1)),
    }
    return {k: v.drop("_from_end", "_n") for k, v in out.items()}


def fixed_split(events: pl.LazyFrame) -> dict[str, pl.LazyFrame]:
    """Rows go where their (already validated) `split` value says, sorted like leave_one_out's output.

    min_user_events does not apply: the given protocol is kept as it is, so results stay comparable with it.
    """
    ordered = events.sort(["user_idx", "timestamp", "source_row"])
    return {name: ordered.filter(pl.col(SPLIT_COLUMN) == name).drop(SPLIT_COLUMN)
            for name in ("train", "valid", "test")}
