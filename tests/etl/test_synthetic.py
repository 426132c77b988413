"""The chunked large event table behind benchmarks/etl.py: deterministic, prefix-stable, every bad kind caught."""
from __future__ import annotations

import polars as pl

from tapestry.config import ETLConfig
from tapestry.etl import schema as S
from tapestry.etl.sources import read_table
from tapestry.etl.synthetic import event_table_chunks, write_event_table
from tapestry.etl.validate import validate_events


def test_chunks_are_deterministic_and_a_shorter_table_is_a_prefix():
    a = pl.concat(event_table_chunks(2_500, seed=3, chunk_rows=1_000))
    b = pl.concat(event_table_chunks(1_000, seed=3, chunk_rows=1_000))
    assert a.height == 2_500 and a.head(1_000).equals(b)
    assert a.equals(pl.concat(event_table_chunks(2_500, seed=3, chunk_rows=1_000)))
    assert a.schema == {c: pl.String for c in ("user_id", "item_id", "event_type", "timestamp", "weight",
                                               "session_id")}


def test_written_table_and_prefix_validate_with_every_planted_reason(tmp_path):
    full, prefix = tmp_path / "full.csv", tmp_path / "prefix.csv"
    write_event_table(full, 20_000, chunk_rows=5_000, bad_fraction=0.05, prefix=(prefix, 5_000))
    good, bad = pl.collect_all(validate_events(read_table(full), ETLConfig()))
    assert good.height + bad.height == 20_000
    assert set(bad["reason"]) == {S.MISSING_USER_ID, S.BAD_USER_ID, S.BAD_ITEM_ID, S.BAD_TIMESTAMP,
                                  S.TIMESTAMP_OUT_OF_RANGE, S.UNKNOWN_EVENT_TYPE, S.BAD_WEIGHT,
                                  S.NONPOSITIVE_WEIGHT}
    assert 0.04 < bad.height / 20_000 < 0.06
    assert read_table(prefix).collect().drop("source_row").equals(
        read_table(full).head(5_000).collect().drop("source_row"))
