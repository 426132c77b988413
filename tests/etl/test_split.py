"""Leave-one-out split on a hand-made frame, and through run_etl."""
from __future__ import annotations

import csv

import polars as pl
import pytest

from tapestry.etl.pipeline import run_etl
from tapestry.etl.sources import RawTables, generic_tables
from tapestry.etl.split import leave_one_out

# (user_idx, item_idx, timestamp, source_row), deliberately not in time order.
EVENTS = [
    (1, 11, 30, 0),
    (1, 12, 10, 1),
    (2, 21, 5, 2),
    (1, 13, 40, 3),   # tie at t=40 with row 7: earlier input row -> valid
    (1, 14, 20, 4),
    (3, 31, 100, 5),
    (2, 22, 6, 6),
    (1, 15, 40, 7),   # tie at t=40: later input row -> test
    (3, 32, 100, 8),  # ties at t=100 for all three of user 3
    (3, 33, 100, 9),
    (4, 41, 1, 10),
]


def _frame() -> pl.LazyFrame:
    return pl.LazyFrame(EVENTS, schema={"user_idx": pl.Int64, "item_idx": pl.Int64, "timestamp": pl.Int64,
                                        "source_row": pl.Int64}, orient="row")


@pytest.fixture
def split():
    return {k: v.collect() for k, v in leave_one_out(_frame(), min_user_events=3).items()}


def _rows(df: pl.DataFrame) -> set[tuple]:
    return set(df.select("user_idx", "item_idx", "timestamp", "source_row").rows())


def test_test_is_latest_and_valid_second_latest(split):
    test = dict(split["test"].select("user_idx", "item_idx").rows())
    valid = dict(split["valid"].select("user_idx", "item_idx").rows())
    assert test == {1: 15, 3: 33}
    assert valid == {1: 13, 3: 32}
    assert split["train"].filter(pl.col("user_idx") == 1)["item_idx"].to_list() == [12, 14, 11]
    assert split["train"].filter(pl.col("user_idx") == 3)["item_idx"].to_list() == [31]


def test_small_users_stay_wholly_in_train(split):
    for u, n in ((2, 2), (4, 1)):
        assert split["train"].filter(pl.col("user_idx") == u).height == n
        assert split["valid"].filter(pl.col("user_idx") == u).height == 0
        assert split["test"].filter(pl.col("user_idx") == u).height == 0


def test_partition_is_exact(split):
    parts = [_rows(split[k]) for k in ("train", "valid", "test")]
    assert sum(split[k].height for k in ("train", "valid", "test")) == len(EVENTS)
    assert parts[0] | parts[1] | parts[2] == set(EVENTS)
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert set(split["train"].columns) == {"user_idx", "item_idx", "timestamp", "source_row"}


def test_valid_and_test_not_earlier_than_train(split):
    train_max = dict(split["train"].group_by("user_idx").agg(pl.col("timestamp").max()).rows())
    for name in ("valid", "test"):
        for u, t in split[name].select("user_idx", "timestamp").rows():
            assert t >= train_max[u]
    v = dict(split["valid"].select("user_idx", "timestamp").rows())
    for u, t in split["test"].select("user_idx", "timestamp").rows():
        assert t >= v[u]


def test_each_split_sorted_by_user_then_time(split):
    for df in split.values():
        assert df.select("user_idx", "timestamp", "source_row").rows() == sorted(
            df.select("user_idx", "timestamp", "source_row").rows())


@pytest.mark.parametrize("min_events,evaluated", [(1, {1, 2, 3, 4}), (2, {1, 2, 3}), (4, {1}), (6, set())])
def test_min_user_events_threshold(min_events, evaluated):
    out = {k: v.collect() for k, v in leave_one_out(_frame(), min_user_events=min_events).items()}
    assert set(out["test"]["user_idx"]) == evaluated
    # a one-event user can only give a test event
    assert set(out["valid"]["user_idx"]) == evaluated - {4}
    assert sum(df.height for df in out.values()) == len(EVENTS)


def test_split_through_run_etl_keeps_input_order_on_ties(tmp_path):
    rows = [
        ["alice", "a", "view", "1600000300"],
        ["alice", "b", "view", "1600000100"],
        ["alice", "c", "view", "1600000300"],  # same time as `a`, later row -> test
        ["alice", "d", "view", "1600000200"],
        ["bob", "a", "view", "1600000000"],
        ["bob", "b", "view", "1600000001"],
    ]
    path = tmp_path / "events.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["user_id", "item_id", "event_type", "timestamp"], *rows])
    res = run_etl(generic_tables(path), "t", root=tmp_path / "art", log=lambda *a: None)
    items = pl.read_parquet(res.path / "item_map.parquet")
    name = dict(zip(items["item_idx"].to_list(), items["item_id"].to_list()))
    read = lambda n: pl.read_parquet(res.path / f"{n}.parquet")  # noqa: E731
    assert [name[i] for i in read("test")["item_idx"]] == ["c"]
    assert [name[i] for i in read("valid")["item_idx"]] == ["a"]
    assert [name[i] for i in read("train")["item_idx"]] == ["b", "d", "a", "b"]  # bob (2 events) wholly in train
    events = read("events")
    assert [name[i] for i in events["item_idx"]] == ["b", "d", "a", "c", "a", "b"]


def _artifacts(path) -> dict[str, pl.DataFrame]:
    return {p.name: pl.read_parquet(p) for p in sorted(path.iterdir()) if p.suffix == ".parquet"}


@pytest.mark.parametrize("fixed", [False, True])
def test_sorting_a_range_of_users_at_a_time_gives_the_same_artifacts(tmp_path, monkeypatch, fixed):
    """run_etl sorts large tables in user ranges (split.sort_by_user); forced here with tiny ranges."""
    import numpy as np

    from tapestry.etl import split as split_module
    from tapestry.etl.synthetic import synthetic_tables

    tables = lambda: synthetic_tables(num_users=120, num_items=40, seed=2, bad_rows=2)  # noqa: E731
    if fixed:   # the same events with a given split column
        base = tables()
        rng = np.random.default_rng(0)
        events = base.events.collect()
        events = events.with_columns(pl.Series("split", rng.choice(["train", "valid", "test"], events.height)))
        tables = lambda: RawTables(events=events.lazy(), sources={"events": "test"})  # noqa: E731
    whole = run_etl(tables(), "t", root=tmp_path / "a", log=lambda *a: None)
    monkeypatch.setattr(split_module, "BUCKET_ROWS", 37)
    ranged = run_etl(tables(), "t", root=tmp_path / "b", log=lambda *a: None)
    a, b = _artifacts(whole.path), _artifacts(ranged.path)
    assert a.keys() == b.keys() and all(a[k].equals(b[k]) for k in a)
    assert whole.manifest["counts"] == ranged.manifest["counts"]
    assert whole.manifest["split"] == ("fixed" if fixed else "leave_one_out")
