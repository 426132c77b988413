"""The optional event columns of issue 19 (query, dwell, price, declared context columns) and user links:
kept through the ETL when present, quarantined with a clear reason when bad, nothing lost."""
from __future__ import annotations

import csv
from pathlib import Path

import polars as pl
import pytest

from tapestry.config import ETLConfig
from tapestry.etl import schema as S
from tapestry.etl.pipeline import run_etl
from tapestry.etl.schema import SchemaError
from tapestry.etl.sources import generic_tables
from tapestry.etl.validate import validate_events
from tapestry.graph.typed import build_typed_graph
from tapestry.training.data import InteractionData

HEADER = ["user_id", "item_id", "event_type", "timestamp", "session_id", "query", "dwell", "price", "device"]
T = 1_600_000_000
# (row, expected reason or None)
ROWS: list[tuple[list[str], str | None]] = [
    (["u1", "i1", "view", str(T + 1), "s1", " Red Shoes ", "5", "", "mobile"], None),
    (["u1", "i2", "purchase", str(T + 2), "s1", "", "", "9.5", " mobile "], None),
    (["u1", "i3", "view", str(T + 3), "", "-discount code", "0", "0", ""], None),   # free text may start with -
    (["u2", "i1", "view", str(T + 4), "", "red shoes", "", "", "desktop"], None),
    (["u2", "i2", "click", str(T + 5), "", "", "", "", ""], None),
    (["u2", "i3", "view", str(T + 6), "", "", "", "", ""], None),
    (["u2", "i3", "teleport", str(T + 7), "", "", "", "", "mobile"], S.UNKNOWN_EVENT_TYPE),
    (["u2", "i3", "view", str(T + 8), "", "shoes\x07", "", "", ""], S.BAD_QUERY),
    (["u2", "i3", "view", str(T + 9), "", "q" * 1025, "", "", ""], S.BAD_QUERY),
    (["u2", "i3", "view", str(T + 10), "", "", "-1", "", ""], S.BAD_DWELL),
    (["u2", "i3", "view", str(T + 11), "", "", "long", "", ""], S.BAD_DWELL),
    (["u2", "i3", "view", str(T + 12), "", "", "", "inf", ""], S.BAD_PRICE),
    (["u2", "i3", "view", str(T + 13), "", "", "", "-0.5", ""], S.BAD_PRICE),
    (["u2", "i3", "view", str(T + 14), "", "", "", "", "=cmd()"], S.BAD_CONTEXT_VALUE),
    (["u2", "i3", "view", str(T + 15), "", "", "", "", "toaster"], S.UNKNOWN_CONTEXT_VALUE),
    (["u2", "", "view", str(T + 16), "", "", "-1", "", "toaster"], S.MISSING_ITEM_ID),   # first reason wins
]
CFG = ETLConfig(context_columns=("device",), context_values={"device": ("mobile", "desktop")}, min_user_events=1)
QUIET = dict(log=lambda *a, **k: None)


def _csv(path: Path, rows, header=HEADER) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def etl(tmp_path_factory):
    d = tmp_path_factory.mktemp("event_columns")
    users = d / "users.csv"
    users.write_text("user_id,friends,city\nu1,u2|ghost,Oslo\nu2,u1,\nnobody,u1,Bergen\n")
    tables = generic_tables(_csv(d / "events.csv", [r for r, _ in ROWS]), users=users, user_link_columns=["friends"])
    return run_etl(tables, "acme", root=d / "art", cfg=CFG, **QUIET)


def test_every_bad_value_is_quarantined_with_its_reason_and_nothing_is_lost(etl):
    q = pl.read_parquet(etl.path / "quarantine.parquet")
    events_q = q.filter(pl.col("source") == "events")
    assert dict(zip(events_q["source_row"], events_q["reason"])) == {i: r for i, (_, r) in enumerate(ROWS) if r}
    valid = pl.read_parquet(etl.path / "events.parquet")
    assert valid.height + events_q.height == len(ROWS) == etl.manifest["counts"]["input_rows"]
    assert set(q["reason"]) <= set(S.REASONS)
    # the raw value stays in the quarantine, as written
    assert events_q.filter(pl.col("reason") == S.UNKNOWN_CONTEXT_VALUE)["device"].to_list() == ["toaster"]


def test_present_columns_are_kept_typed_in_every_split(etl):
    expected = {"user_idx": pl.Int64, "item_idx": pl.Int64, "event_type": pl.String, "timestamp": pl.Int64,
                "weight": pl.Float32, "session_id": pl.String, "query": pl.String, "dwell": pl.Float32,
                "price": pl.Float32, "device": pl.String}
    for name in ("events", "train", "valid", "test"):
        assert dict(pl.read_parquet_schema(etl.path / f"{name}.parquet")) == expected
    ev = pl.read_parquet(etl.path / "events.parquet").sort("timestamp")
    assert ev["query"].to_list()[:4] == ["Red Shoes", None, "-discount code", "red shoes"]   # stripped only
    assert ev["dwell"].to_list()[:3] == [5.0, None, 0.0] and ev["price"].to_list()[1] == pytest.approx(9.5)
    assert ev["device"].to_list()[:4] == ["mobile", "mobile", None, "desktop"]
    assert etl.manifest["config"]["context_columns"] == ["device"]


def test_user_links_are_encoded_and_an_unknown_one_is_quarantined(etl):
    links = pl.read_parquet(etl.path / "user_links.parquet")
    users = dict(pl.read_parquet(etl.path / "user_map.parquet").iter_rows())
    assert set(links.iter_rows()) == {(users["u1"], "friends", users["u2"]), (users["u2"], "friends", users["u1"])}
    q = pl.read_parquet(etl.path / "quarantine.parquet").filter(pl.col("source") == "users")
    assert q.select("reason", "linked_user_id").rows() == [(S.UNKNOWN_LINKED_USER, "ghost")]
    assert "friends" not in set(pl.read_parquet(etl.path / "user_entities.parquet")["entity_type"])
    assert etl.manifest["user_links"] == {"columns": ["friends"], "rows": 2}


def test_the_typed_graph_reads_the_artifacts(etl):
    data = InteractionData.load(etl.path)
    assert data.context_columns == ("device",) and data.user_links.height == 2
    g = build_typed_graph(data)
    assert {"session", "query", "device", "city"} <= set(g.node_types)
    assert ("user", "friends", "user") in g.edge_types
    assert {et[1] for et in g.edge_types if et[0] == "user" and et[2] == "item"} <= {"view", "purchase", "click"}


def test_declared_context_columns_must_exist_and_not_clash():
    events = pl.LazyFrame({c: ["x"] for c in ("user_id", "item_id", "event_type", "timestamp")})
    with pytest.raises(SchemaError, match="missing"):
        validate_events(events, ETLConfig(context_columns=("device",)))
    for name in ("session", "query", "weight"):
        with pytest.raises(SchemaError, match="cannot be declared"):
            validate_events(events.with_columns(pl.lit("v").alias(name)), ETLConfig(context_columns=(name,)))
    with pytest.raises(SchemaError, match="undeclared"):
        validate_events(events, ETLConfig(context_values={"device": ("a",)}))


def test_undeclared_extra_columns_are_still_ignored(tmp_path):
    rows = [["u1", "i1", "view", str(T + k), "tv"] for k in range(3)]
    path = _csv(tmp_path / "e.csv", rows, ["user_id", "item_id", "event_type", "timestamp", "device"])
    res = run_etl(generic_tables(path), "acme", root=tmp_path / "art", **QUIET)
    assert pl.read_parquet(res.path / "events.parquet").columns == [
        "user_idx", "item_idx", "event_type", "timestamp", "weight", "session_id"]
    assert not (res.path / "user_links.parquet").exists() and "user_links" not in res.manifest
