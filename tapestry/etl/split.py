"""Train/valid/test splits of the encoded events.

- leave-one-out (the default): per user, the last event (by time, ties by input order) is test, the one before
  valid;
- fixed: the input's own `split` column decides (an adapter for a published split, e.g. LightGCN's Gowalla, or a
  tenant table that carries one). A user may then have many test rows, and valid may be empty.

Both work on events sorted by SORT_KEY. `sort_by_user` gives that order in bounded memory for large tables.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import polars as pl

from tapestry.etl.schema import SPLIT_COLUMN

LEAVE_ONE_OUT = "leave_one_out"
FIXED = "fixed"
SORT_KEY = ["user_idx", "timestamp", "source_row"]
# Events per sort range in sort_by_user: the streaming engine holds about one range at a time.
BUCKET_ROWS = 2_000_000


def sort_by_user(encoded: Path, num_users: int, num_rows: int, scratch: Path,
                 each: Callable[[pl.LazyFrame], pl.LazyFrame] | None = None, engine="in-memory") -> pl.LazyFrame:
    """The events in Parquet file `encoded` (user_idx in 0..num_users) sorted by SORT_KEY, as a scan of scratch
    files written one range of users at a time; `each` (e.g. tag_positions, which needs whole users) is applied
    to every sorted range.

    One global sort would hold every event in memory. A user's events never fall into two ranges of user_idx, so
    ranges sorted one at a time and read back in order give the same order, while memory holds one range of
    about BUCKET_ROWS events whatever the table's size. One streaming pass splits the file into the ranges.
    `engine`: the Polars engine of each range's sort (tapestry.etl.engines.collect_engine).
    """
    k = max(1, -(-num_rows // BUCKET_ROWS))
    ranges = [encoded]
    if k > 1:
        width = -(-(num_users + 1) // k)
        parts = scratch / "user_ranges"
        pl.scan_parquet(encoded).with_columns((pl.col("user_idx") // width).alias("_range")).sink_parquet(
            pl.PartitionBy(parts, key="_range", include_key=False))
        ranges = [sorted(parts.glob(f"_range={b}/*.parquet")) for b in range(k)]
        found = sum(pl.scan_parquet(r).select(pl.len()).collect().item() for r in ranges if r)
        if found != num_rows:   # PartitionBy is marked unstable in Polars: never lose rows to a layout change
            raise RuntimeError(f"user-range partitioning wrote {found} of {num_rows} rows under {parts}")
        ranges = [r for r in ranges if r]
    sorted_paths = []
    for i, source in enumerate(ranges):
        part = pl.scan_parquet(source).sort(SORT_KEY)
        sorted_paths.append(scratch / f"sorted-{i:05d}.parquet")
        (each(part) if each else part).collect(engine=engine).write_parquet(sorted_paths[-1])
    return pl.scan_parquet(sorted_paths)


def tag_positions(ordered: pl.LazyFrame) -> pl.LazyFrame:
    """Add `_n` (the user's event count) and `_from_end` (1 for the user's last event) to SORT_KEY-ordered events.

    Each user's rows are one run of the sorted user column: its first and last row numbers give both in O(n).
    (The same with `.over("user_idx")` windows was several times slower with many small users.) user_idx >= 0,
    so -1 marks "no neighbour".
    """
    row, user = pl.int_range(pl.len(), dtype=pl.Int64), pl.col("user_idx")
    first = pl.when(user != user.shift(1, fill_value=-1)).then(row).forward_fill()
    last = pl.when(user != user.shift(-1, fill_value=-1)).then(row).backward_fill()
    return ordered.with_columns((last - row + 1).alias("_from_end"), (last - first + 1).alias("_n"))


def leave_one_out_tagged(tagged: pl.LazyFrame, min_user_events: int = 3) -> dict[str, pl.LazyFrame]:
    """Splits of tag_positions' output (order kept). Users with < min_user_events stay wholly in train."""
    evaluable = pl.col("_n") >= min_user_events
    out = {
        "train": tagged.filter(~evaluable | (pl.col("_from_end") > 2)),
        "valid": tagged.filter(evaluable & (pl.col("_from_end") == 2)),
        "test": tagged.filter(evaluable & (pl.col("_from_end") == 1)),
    }
    return {k: v.drop("_from_end", "_n") for k, v in out.items()}


def leave_one_out(events: pl.LazyFrame, min_user_events: int = 3) -> dict[str, pl.LazyFrame]:
    """`events` needs user_idx, timestamp and source_row. Users with < min_user_events stay wholly in train."""
    return leave_one_out_tagged(tag_positions(events.sort(SORT_KEY)), min_user_events)


def fixed_split_sorted(ordered: pl.LazyFrame) -> dict[str, pl.LazyFrame]:
    """Rows go where their (already validated) `split` value says; `ordered` is already in SORT_KEY order."""
    return {name: ordered.filter(pl.col(SPLIT_COLUMN) == name).drop(SPLIT_COLUMN)
            for name in ("train", "valid", "test")}


def fixed_split(events: pl.LazyFrame) -> dict[str, pl.LazyFrame]:
    """Rows go where their (already validated) `split` value says, sorted like leave_one_out's output.

    min_user_events does not apply: the given protocol is kept as it is, so results stay comparable with it.
    """
    return fixed_split_sorted(events.sort(SORT_KEY))
