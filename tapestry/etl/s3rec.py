"""The S3-Rec sequential data sets (Beauty, Sports_and_Outdoors, Toys_and_Games, Yelp, LastFM) -> RawTables.

`<name>.txt` (plain or .xz): one line per user, `user item item ...`, the items in time order. The standard
protocol (S3-Rec, ICLRec, BSARec, ...) takes the last item as test and the one before as valid: that is the ETL's
leave-one-out, so no `split` column is given. Every user has >= 5 items (5-core), above ETLConfig's default
min_user_events of 3, so every user gets a valid and a test row.

- Timestamps are SYNTHETIC: the released files keep only the order. A row's timestamp is SYNTHETIC_BASE
  (2010-01-01T00:00:00Z) + its position in its line, in seconds: strictly increasing within a user, so
  leave-one-out picks exactly the last and second-to-last items of the line. Across users they mean nothing.
- Every row is a "click" with weight 1 (the files hold no ratings).
- `<name>_item2attributes.json` (plain or .xz), `{"item": [attr, ...]}`: each item's attribute ids become the
  entity column `attribute`, values `a<id>` (e.g. "a17"), so the graph gets an `attribute` node type. For Amazon
  these are the brand and the fine categories, for Yelp the business categories, for LastFM the tags. An item
  with an empty list simply has no attribute.
"""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from tapestry.etl.schema import ENTITY_VALUE_SEPARATOR, SchemaError
from tapestry.etl.sources import ROW, RawTables, find_file, read_bytes, read_user_item_lines

SYNTHETIC_BASE = 1_262_304_000      # 2010-01-01T00:00:00Z; inside ETLConfig's timestamp window
EVENT_TYPE = "click"
# Short CLI names -> the file stems of the release.
S3REC_DATASETS = {"beauty": "Beauty", "sports": "Sports_and_Outdoors", "toys": "Toys_and_Games", "yelp": "Yelp",
                  "lastfm-s3rec": "LastFM"}
TIMESTAMP_NOTE = f"synthetic (the files keep only the order): {SYNTHETIC_BASE} + position in line"


def _item_attributes(path: Path) -> pl.DataFrame:
    mapping = json.loads(read_bytes(path))
    if not isinstance(mapping, dict) or not all(isinstance(v, list) for v in mapping.values()):
        raise SchemaError(f"{path}: expected a JSON object of item id -> list of attribute ids")
    # `a` prefix: attribute ids and item ids are both small integers; the prefix keeps the two apart when read.
    attrs = [ENTITY_VALUE_SEPARATOR.join(f"a{a}" for a in v) for v in mapping.values()]
    return pl.DataFrame({"item_id": list(mapping), "attribute": attrs}, schema={"item_id": pl.String,
                                                                             "attribute": pl.String}
                        ).with_row_index(ROW).with_columns(pl.col(ROW).cast(pl.Int64))


def s3rec(directory: Path, name: str) -> RawTables:
    """`name`: a short name from S3REC_DATASETS ("beauty") or a file stem ("Beauty", "Sports_and_Outdoors")."""
    directory = Path(directory)
    stem = S3REC_DATASETS.get(name.lower(), name)
    events_path = find_file(directory, f"{stem}.txt")
    items_path = find_file(directory, f"{stem}_item2attributes.json")
    events, bad = read_user_item_lines(events_path)
    events = events.with_row_index(ROW).select(
        pl.col(ROW).cast(pl.Int64), "user_id", "item_id", pl.lit(EVENT_TYPE).alias("event_type"),
        (SYNTHETIC_BASE + pl.col("position")).cast(pl.String).alias("timestamp"), pl.lit("1").alias("weight"),
        "source_line",
    )
    return RawTables(
        events=events.lazy(), items=_item_attributes(items_path).lazy(), item_entity_columns=["attribute"],
        rejected=[bad],
        sources={"events": str(events_path), "items": str(items_path), "timestamps": TIMESTAMP_NOTE},
    )
