"""Typed Parquet event tables: every column becomes the text a CSV export would hold, then validates alike."""
from __future__ import annotations

from datetime import date, datetime, timezone

import polars as pl

from tapestry.config import ETLConfig
from tapestry.etl import schema as S
from tapestry.etl.sources import read_table
from tapestry.etl.validate import validate_events


def test_typed_columns_become_csv_text(tmp_path):
    path = tmp_path / "typed.parquet"
    pl.DataFrame({
        "user_id": [1, 2, 3],
        "item_id": [10.0, 2.5, float("nan")],                       # float ids: 10.0 -> "10"; NaN -> missing
        "event_type": pl.Series(["view", "click", "view"], dtype=pl.Categorical),
        "timestamp": [datetime(2021, 3, 4, 5, 6, 7), datetime(2021, 3, 4, 5, 6, 7, tzinfo=timezone.utc), None],
        "day": [date(2021, 3, 4)] * 3,
        "weight": [4.0, 3.5, float("inf")],
        "flag": [True, False, None],
        "tags": [["a", "b"], [], None],
        "meta": [{"k": 1}, {"k": 2}, None],
    }).write_parquet(path)
    got = read_table(path).collect()
    assert got.schema == {"source_row": pl.Int64, **{c: pl.String for c in got.columns[1:]}}
    rows = got.drop("source_row").rows(named=True)
    ts = str(int(datetime(2021, 3, 4, 5, 6, 7, tzinfo=timezone.utc).timestamp()))
    assert rows[0] == {"user_id": "1", "item_id": "10", "event_type": "view", "timestamp": ts,
                       "day": str(int(datetime(2021, 3, 4, tzinfo=timezone.utc).timestamp())), "weight": "4",
                       "flag": "true", "tags": "a|b", "meta": '{"k":1}'}
    assert rows[1]["item_id"] == "2.5" and rows[1]["timestamp"] == ts and rows[1]["weight"] == "3.5"
    assert rows[2]["item_id"] is None and rows[2]["weight"] == "inf" and rows[2]["timestamp"] is None


def test_typed_parquet_validates_cast_or_quarantined(tmp_path):
    path = tmp_path / "typed.parquet"
    pl.DataFrame({
        "user_id": [1, 2, 3, 4, 5],
        "item_id": [7, 7, 7, 7, 7],
        "event_type": ["view"] * 5,
        "timestamp": ["1600000000", "2021-03-04T05:06:07Z", "soon", "1600000000", "1600000000"],  # string times
        "weight": [4.5, float("nan"), 1.0, 0.0, -1.0],                                           # float ratings
    }).write_parquet(path)
    good, bad = validate_events(read_table(path), ETLConfig())
    good, bad = good.collect(), bad.collect()
    assert good.select("user_id", "item_id", "weight").rows() == [("1", "7", 4.5)]
    assert dict(zip(bad["user_id"], bad["reason"])) == {
        "2": S.BAD_WEIGHT, "3": S.BAD_TIMESTAMP, "4": S.NONPOSITIVE_WEIGHT, "5": S.NONPOSITIVE_WEIGHT}
