"""A fixed, input-given split (a `split` column) instead of leave-one-out: validation, quarantine, outputs."""
from __future__ import annotations

import csv
import json

import polars as pl
import pytest

from tapestry.config import ETLConfig
from tapestry.etl import schema as S
from tapestry.etl.pipeline import EVENT_OUT_COLUMNS, run_etl
from tapestry.etl.sources import ROW, RawTables, generic_tables
from tapestry.etl.split import FIXED, LEAVE_ONE_OUT, fixed_split
from tapestry.etl.synthetic import synthetic_tables
from tapestry.etl.validate import validate_events

QUIET = dict(log=lambda *a, **k: None)

# (user, item, timestamp, split, expected reason or None)
ROWS = [
    ("alice", "a", "1600000000", "train", None),
    ("alice", "b", "1600000010", "train", None),
    ("alice", "c", "1600000020", " TEST ", None),      # stripped and lower-cased, like event_type
    ("alice", "d", "1600000030", "test", None),        # many test rows for one user
    ("alice", "e", "1600000005", "test", None),        # a test row earlier than a train row: kept as given
    ("bob", "a", "1600000000", "train", None),
    ("bob", "c", "1600000001", "valid", None),
    ("bob", "d", "1600000002", "validation", S.BAD_SPLIT),
    ("bob", "e", "1600000003", "", S.BAD_SPLIT),
    ("bob", "f", "1600000004", None, S.BAD_SPLIT),
    ("carol", "b", "1600000000", "test", None),        # test only: a cold-start user in test
    ("", "b", "1600000000", "nonsense", S.MISSING_USER_ID),  # the first reason wins
]
GOOD = [i for i, r in enumerate(ROWS) if r[4] is None]
BAD = {i: r[4] for i, r in enumerate(ROWS) if r[4] is not None}


def _tables() -> RawTables:
    events = pl.DataFrame(
        {ROW: list(range(len(ROWS))), "user_id": [r[0] for r in ROWS], "item_id": [r[1] for r in ROWS],
         "event_type": ["view"] * len(ROWS), "timestamp": [r[2] for r in ROWS], "split": [r[3] for r in ROWS]},
        schema={ROW: pl.Int64, "user_id": pl.String, "item_id": pl.String, "event_type": pl.String,
                "timestamp": pl.String, "split": pl.String})
    return RawTables(events=events.lazy(), sources={"events": "test"})


@pytest.fixture(scope="module")
def fixed_etl(tmp_path_factory):
    return run_etl(_tables(), "fixed", root=tmp_path_factory.mktemp("fixed"), **QUIET)


def _read(res, name: str) -> pl.DataFrame:
    return pl.read_parquet(res.path / f"{name}.parquet")


def _named(res, name: str) -> list[tuple[str, str]]:
    users = dict(_read(res, "user_map").select("user_idx", "user_id").rows())
    items = dict(_read(res, "item_map").select("item_idx", "item_id").rows())
    return [(users[u], items[i]) for u, i in _read(res, name).select("user_idx", "item_idx").rows()]


def test_validate_keeps_the_normalised_split_and_quarantines_bad_values():
    good, bad = (f.collect() for f in validate_events(_tables().events, ETLConfig()))
    assert good["source_row"].to_list() == GOOD
    assert set(good["split"]) == {"train", "valid", "test"}
    assert dict(zip(bad["source_row"].to_list(), bad["reason"].to_list())) == BAD
    assert bad.filter(pl.col("source_row") == 7)["split"].item() == "validation"  # the raw value is kept


def test_rows_land_in_their_given_split(fixed_etl):
    assert _named(fixed_etl, "train") == [("alice", "a"), ("alice", "b"), ("bob", "a")]
    assert _named(fixed_etl, "valid") == [("bob", "c")]
    # sorted by user then time, like leave-one-out's output
    assert _named(fixed_etl, "test") == [("alice", "e"), ("alice", "c"), ("alice", "d"), ("carol", "b")]


def test_counts_add_up_and_the_manifest_says_fixed(fixed_etl):
    m = json.loads((fixed_etl.path / "manifest.json").read_text())
    c = m["counts"]
    assert m["split"] == FIXED
    assert c["input_rows"] == len(ROWS)
    assert c["valid_rows"] == len(GOOD) and c["quarantined_rows"] == len(BAD)
    assert c["valid_rows"] + c["quarantined_rows"] == c["input_rows"]
    assert c["train_rows"] + c["valid_rows_split"] + c["test_rows"] == c["valid_rows"]
    assert (c["train_rows"], c["valid_rows_split"], c["test_rows"]) == (3, 1, 4)
    assert c["by_reason"] == {S.BAD_SPLIT: 3, S.MISSING_USER_ID: 1}
    assert c["split_users"] == {"train": 2, "valid": 1, "test": 2}
    assert c["test_users_without_train"] == 1  # carol
    q = pl.read_parquet(fixed_etl.path / "quarantine.parquet")
    assert dict(zip(q["source_row"].to_list(), q["reason"].to_list())) == BAD


def test_outputs_keep_the_event_schema(fixed_etl):
    for name in ("events", "train", "valid", "test"):
        assert _read(fixed_etl, name).columns == EVENT_OUT_COLUMNS


def test_empty_valid_split_is_fine(tmp_path):
    tables = _tables()
    tables.events = tables.events.filter(pl.col("split").str.strip_chars().str.to_lowercase() != "valid")
    res = run_etl(tables, "novalid", root=tmp_path, **QUIET)
    assert _read(res, "valid").height == 0
    assert _read(res, "valid").columns == EVENT_OUT_COLUMNS
    assert res.manifest["counts"]["split_users"]["valid"] == 0


def test_a_generic_table_with_a_split_column_uses_it(tmp_path):
    path = tmp_path / "events.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["user_id", "item_id", "event_type", "timestamp", "split"],
                                 ["u1", "a", "view", "1600000000", "train"],
                                 ["u1", "b", "view", "1600000001", "test"],
                                 ["u1", "c", "view", "1600000002", "tset"]])
    res = run_etl(generic_tables(path), "csv", root=tmp_path / "art", **QUIET)
    assert res.manifest["split"] == FIXED
    assert res.manifest["counts"]["by_reason"] == {S.BAD_SPLIT: 1}
    assert (_read(res, "train").height, _read(res, "test").height) == (1, 1)


def test_without_a_split_column_it_is_leave_one_out(tmp_path):
    res = run_etl(synthetic_tables(num_users=20, num_items=30, seed=1), "loo", root=tmp_path, **QUIET)
    assert res.manifest["split"] == LEAVE_ONE_OUT
    assert res.manifest["counts"]["test_rows"] == 20 == res.manifest["counts"]["split_users"]["test"]


def test_synthetic_bad_rows_do_not_plant_bad_split():
    # bad_split applies only to inputs with a split column; the synthetic tables have none.
    tables = synthetic_tables(num_users=5, num_items=10, seed=0, bad_rows=1)
    _, bad = (f.collect() for f in validate_events(tables.events, ETLConfig()))
    assert S.BAD_SPLIT not in set(bad["reason"])


def test_fixed_split_partitions_exactly():
    frame = pl.LazyFrame({"user_idx": [2, 1, 1, 2], "item_idx": [1, 2, 3, 4], "timestamp": [5, 9, 1, 5],
                          "source_row": [0, 1, 2, 3], "split": ["test", "train", "test", "test"]})
    out = {k: v.collect() for k, v in fixed_split(frame).items()}
    assert out["train"]["item_idx"].to_list() == [2]
    assert out["valid"].height == 0
    assert out["test"]["item_idx"].to_list() == [3, 1, 4]  # user, then time, then input row
    assert all("split" not in df.columns for df in out.values())
