"""Gowalla as split by NGCF and reused unchanged by LightGCN (`train.txt`, `test.txt`, plain or .xz) -> RawTables.

Each line is `user item item ...`. The ids are the NGCF authors' 0-based remapped ids (`user_list.txt` /
`item_list.txt` map them back to the SNAP check-in ids); they are kept as written, as strings, so that
user_map/item_map trace every encoded index back to the published split.

- Split: fixed, the published one. train.txt rows get `split` "train", test.txt rows "test"; there are no valid
  rows, because the LightGCN protocol has no validation set.
- Every row is a "click" with weight 1: the data is implicit feedback (a check-in at a location = item).
- Timestamps are SYNTHETIC: the files have none. A row's timestamp is SYNTHETIC_BASE (2010-01-01T00:00:00Z)
  + its position in its line, in seconds, + TEST_OFFSET for test.txt rows. So every test row is later than every
  train row, and the file order within a line is kept; nothing else about them is real (the items of a line are
  not in check-in order), so no model should read time features from this data set.
"""
from __future__ import annotations

from pathlib import Path

import polars as pl

from tapestry.etl.schema import SPLIT_COLUMN
from tapestry.etl.sources import ROW, RawTables, find_file, read_user_item_lines

SYNTHETIC_BASE = 1_262_304_000      # 2010-01-01T00:00:00Z; inside ETLConfig's timestamp window
TEST_OFFSET = 1_000_000             # seconds; more than any line's length (checked), so test follows train
EVENT_TYPE = "click"
TIMESTAMP_NOTE = (f"synthetic (the files have none): {SYNTHETIC_BASE} + position in line, "
                  f"+ {TEST_OFFSET} for test.txt")


def gowalla(directory: Path) -> RawTables:
    directory = Path(directory)
    parts, rejected, sources = [], [], {}
    for split, offset in (("train", 0), ("test", TEST_OFFSET)):
        path = find_file(directory, f"{split}.txt")
        events, bad = read_user_item_lines(path)
        if events.height and events["position"].max() >= TEST_OFFSET:
            raise ValueError(f"{path}: a line has over {TEST_OFFSET:,} items; synthetic timestamps would overlap")
        parts.append(events.with_columns(
            (SYNTHETIC_BASE + offset + pl.col("position")).cast(pl.String).alias("timestamp"),
            pl.lit(split).alias(SPLIT_COLUMN),
        ))
        # Both files number their lines from 0: the file name says which one a rejected line came from.
        rejected.append(bad.with_columns(pl.lit(path.name).alias("file")))
        sources["events" if split == "train" else "test_events"] = str(path)
    # source_row: the row's index across train.txt then test.txt, i.e. file order.
    events = pl.concat(parts).with_row_index(ROW).select(
        pl.col(ROW).cast(pl.Int64), "user_id", "item_id",
        pl.lit(EVENT_TYPE).alias("event_type"), "timestamp", pl.lit("1").alias("weight"), SPLIT_COLUMN,
        "source_line",
    )
    sources["timestamps"] = TIMESTAMP_NOTE
    return RawTables(events=events.lazy(), rejected=rejected, sources=sources)
