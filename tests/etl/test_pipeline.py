"""run_etl: versioned, atomic, tenant-scoped artifact directories, and the artifact contract."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import polars as pl
import pytest

from tapestry.artifacts import latest_version
from tapestry.etl import pipeline
from tapestry.etl.pipeline import run_etl
from tapestry.etl.sources import generic_tables

QUIET = dict(log=lambda *a, **k: None)
EXPECTED_FILES = {"events.parquet", "train.parquet", "valid.parquet", "test.parquet", "user_map.parquet",
                  "item_map.parquet", "items.parquet", "item_entities.parquet", "user_entities.parquet",
                  "quarantine.parquet", "manifest.json"}


def _events_csv(path: Path, users: int = 3, per_user: int = 4, bad: bool = False) -> Path:
    rows = []
    for u in range(users):
        for k in range(per_user):
            ts = "not-a-time" if bad else str(1_600_000_000 + 10 * k)
            rows.append([f"user{u}", f"item{(u + k) % 5}", "view", ts])
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["user_id", "item_id", "event_type", "timestamp"], *rows])
    return path


def _listing(stage: Path) -> list[str]:
    return sorted(p.name for p in stage.iterdir()) if stage.exists() else []


def test_two_runs_make_two_versions_and_latest_points_at_the_newest(tmp_path):
    src = _events_csv(tmp_path / "events.csv")
    root = tmp_path / "art"
    r1 = run_etl(generic_tables(src), "acme", root=root, **QUIET)
    r2 = run_etl(generic_tables(src), "acme", root=root, **QUIET)
    stage = root / "acme" / "etl"
    assert r1.path == stage / "v0001" and r2.path == stage / "v0002"
    assert _listing(stage) == ["LATEST", "v0001", "v0002"]  # no temp directories left behind
    assert (stage / "LATEST").read_text().strip() == "v0002"
    assert latest_version("acme", "etl", root) == stage / "v0002"
    for r in (r1, r2):
        assert {p.name for p in r.path.iterdir()} == EXPECTED_FILES
    assert json.loads((r1.path / "manifest.json").read_text())["version"] == "v0001"
    assert json.loads((r2.path / "manifest.json").read_text())["version"] == "v0002"
    assert r2.manifest["tenant"] == "acme" and r2.manifest["version"] == "v0002"


def test_all_invalid_rows_fail_without_a_partial_version(tmp_path):
    root = tmp_path / "art"
    stage = root / "acme" / "etl"
    with pytest.raises(ValueError, match="no valid events"):
        run_etl(generic_tables(_events_csv(tmp_path / "bad.csv", bad=True)), "acme", root=root, **QUIET)
    assert _listing(stage) == []
    run_etl(generic_tables(_events_csv(tmp_path / "good.csv")), "acme", root=root, **QUIET)
    with pytest.raises(ValueError, match="no valid events"):
        run_etl(generic_tables(_events_csv(tmp_path / "bad.csv", bad=True)), "acme", root=root, **QUIET)
    assert _listing(stage) == ["LATEST", "v0001"]
    assert (stage / "LATEST").read_text().strip() == "v0001"


def test_failure_while_writing_leaves_no_partial_version(tmp_path, monkeypatch):
    root = tmp_path / "art"
    src = _events_csv(tmp_path / "events.csv")
    run_etl(generic_tables(src), "acme", root=root, **QUIET)
    stage = root / "acme" / "etl"
    before = (stage / "LATEST").read_text()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pipeline, "atomic_write_json", boom)
    with pytest.raises(OSError, match="disk full"):
        run_etl(generic_tables(src), "acme", root=root, **QUIET)
    assert _listing(stage) == ["LATEST", "v0001"]  # the half-written temp dir is gone too
    assert (stage / "LATEST").read_text() == before


@pytest.mark.parametrize("tenant", ["a/b", "..", "../evil", "", ".hidden", "a b", "x" * 65, "-lead", "a\\b"])
def test_bad_tenant_ids_are_rejected_before_anything_is_written(tmp_path, tenant):
    src = _events_csv(tmp_path / "events.csv")
    root = tmp_path / "art"
    with pytest.raises(ValueError, match="tenant"):
        run_etl(generic_tables(src), tenant, root=root, **QUIET)
    assert not root.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.csv"]


def test_tenants_are_isolated(tmp_path):
    root = tmp_path / "art"
    a = run_etl(generic_tables(_events_csv(tmp_path / "a.csv", users=2)), "acme", root=root, **QUIET)
    b = run_etl(generic_tables(_events_csv(tmp_path / "b.csv", users=5)), "globex_2", root=root, **QUIET)
    assert a.path == root / "acme" / "etl" / "v0001"
    assert b.path == root / "globex_2" / "etl" / "v0001"  # numbering is per tenant
    assert sorted(p.name for p in root.iterdir()) == ["acme", "globex_2"]
    assert latest_version("acme", "etl", root) == a.path
    assert latest_version("globex_2", "etl", root) == b.path
    assert a.manifest["num_users"] == 3 and b.manifest["num_users"] == 6
    assert a.manifest["tenant"] == "acme" and b.manifest["tenant"] == "globex_2"
    assert pl.read_parquet(a.path / "user_map.parquet").height == 2


def test_artifact_contract(tmp_path):
    events = _events_csv(tmp_path / "events.csv")
    items = tmp_path / "items.csv"
    items.write_text("item_id,title,genre,brand\nitem0,Zero,A|B,acme\nitem1,One,B,\nitem9,Nine,C,x\n,Nobody,A,y\n")
    users = tmp_path / "users.csv"
    users.write_text("user_id,city\nuser0,Oslo\nuser1,\n")
    res = run_etl(generic_tables(events, items=items, users=users), "acme", root=tmp_path / "art", **QUIET)
    p = res.path
    event_schema = {"user_idx": pl.Int64, "item_idx": pl.Int64, "event_type": pl.String, "timestamp": pl.Int64,
                    "weight": pl.Float32, "session_id": pl.String}
    for name in ("events", "train", "valid", "test"):
        assert dict(pl.read_parquet_schema(p / f"{name}.parquet")) == event_schema
    ev = pl.read_parquet(p / "events.parquet")
    assert ev.select("user_idx", "timestamp").rows() == sorted(ev.select("user_idx", "timestamp").rows())
    assert ev["user_idx"].min() >= 1 and ev["item_idx"].min() >= 1
    assert dict(pl.read_parquet_schema(p / "user_map.parquet")) == {"user_id": pl.String, "user_idx": pl.Int64}
    assert dict(pl.read_parquet_schema(p / "item_map.parquet")) == {"item_id": pl.String, "item_idx": pl.Int64}
    it = pl.read_parquet(p / "items.parquet")
    assert it.columns == ["item_idx", "item_id", "title"]
    assert dict(zip(it["item_id"], it["title"]))["item0"] == "Zero"
    assert dict(zip(it["item_id"], it["title"]))["item3"] is None  # an event item without a catalogue row
    ie = pl.read_parquet(p / "item_entities.parquet")
    assert ie.columns == ["item_idx", "entity_type", "entity_value"]
    idx = dict(zip(it["item_id"], it["item_idx"]))
    got = set(ie.filter(pl.col("item_idx") == idx["item0"]).select("entity_type", "entity_value").rows())
    assert got == {("genre", "A"), ("genre", "B"), ("brand", "acme")}
    assert "title" not in set(ie["entity_type"])  # text columns are not entities
    ue = pl.read_parquet(p / "user_entities.parquet")
    assert ue.select("entity_type", "entity_value").rows() == [("city", "Oslo")]
    q = pl.read_parquet(p / "quarantine.parquet")
    assert q.filter(pl.col("source") == "items")["reason"].to_list() == ["missing_entity_id"]
    m = res.manifest
    assert m["num_users"] == 4 and m["num_items"] == 6
    assert m["catalog_items_without_events"] == 1  # item9
    assert m["counts"]["quarantined_rows"] == 0 and m["counts"]["quarantined_entity_rows"] == 1
    assert set(m["sources"]) == {"events", "items", "users"}
