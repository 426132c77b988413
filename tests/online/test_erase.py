"""GDPR erasure: `tapestry erase` empties the store for the user at once, writes a tombstone (id + time only), and
every later load, ingest and ETL run honours it."""
from __future__ import annotations

import json

import polars as pl
import pytest

from tapestry.cli import main as cli_main
from tapestry.etl import run_etl
from tapestry.etl.synthetic import synthetic_tables
from tapestry.online.erase import erase_user
from tapestry.online.ingest import ingest, quarantine_path
from tapestry.online.load import load_export_into_redis
from tapestry.online.store import EmbeddedStore, RedisStore
from tapestry.online.tombstones import append_tombstone, erased_user_ids, tombstone_path
from tapestry.serving.feature_lookup import FeatureLookup
from tapestry.serving.pipeline import request_tensors
from tapestry.serving.stage import USER_COLD, USER_KNOWN

from .conftest import TENANT

QUIET = {"log": lambda *a, **k: None}


def _tombstones(root) -> list[dict]:
    return [json.loads(x) for x in tombstone_path(TENANT, root).read_text().splitlines()]


def test_erase_empties_the_redis_store_at_once_and_writes_only_a_tombstone(export, redis_url, capsys):
    root, art = export
    cli_main(["load-store", "--tenant", TENANT, "--root", str(root), "--redis", redis_url])
    assert "[load-store] tenant=shop: 40 users from v0001" in capsys.readouterr().out
    store = RedisStore(redis_url, TENANT)
    lookup = FeatureLookup(TENANT, max_len=4, item_ids=[""] * 31, num_attrs=8, store=store)
    assert lookup(request_tensors(TENANT, "u0007", 5))["USER_KIND"].tolist() == [USER_KNOWN]

    cli_main(["erase", "--tenant", TENANT, "--root", str(root), "--user", " u0007 ", "--redis", redis_url])
    printed = capsys.readouterr().out
    assert "user u0007: tombstoned at" in printed and "removed from the Redis store" in printed
    assert store.get("u0007") is None
    out = lookup(request_tensors(TENANT, "u0007", 5))
    assert out["USER_KIND"].tolist() == [USER_COLD] and out["SEEN"].tolist() == [0]
    [entry] = _tombstones(root)
    assert set(entry) == {"user_id", "erased_at"} and entry["user_id"] == "u0007"    # no event data
    assert store.get("u0008") is not None
    again = erase_user(TENANT, "u0007", root, redis_url)
    assert again["removed_from_store"] is False and len(_tombstones(root)) == 2
    # A reload of the same export (made before the erasure) does not bring the user back.
    load_export_into_redis(art, redis_url, **QUIET)
    assert store.get("u0007") is None and store.get("u0008") is not None


def test_erase_reaches_a_running_embedded_store_and_later_loads(export):
    root, art = export
    running = EmbeddedStore.from_export(art)          # e.g. a Triton stub's memory, loaded before the erasure
    assert running.get("u0010") is not None
    entry = erase_user(TENANT, "u0010", root)
    assert entry["removed_from_store"] is None
    assert running.get("u0010") is None                # its next lookup sees the tombstone
    assert EmbeddedStore.from_export(art).get("u0010") is None
    running.append([("u0010", 3)])                     # new events after the erasure are a new entry
    assert running.get("u0010").history.tolist() == [3]


@pytest.mark.parametrize("bad", ["", "  ", "=1+1", "u\x00", "x" * 257])
def test_erase_refuses_ids_the_etl_would_refuse(export, bad):
    with pytest.raises(ValueError, match="invalid user id"):
        erase_user(TENANT, bad, export[0])
    assert not tombstone_path(TENANT, export[0]).exists()


def test_ingest_drops_erased_users_events_and_erase_purges_their_quarantined_rows(export, tmp_path):
    root, art = export
    store = EmbeddedStore.from_export(art)
    header = "user_id,item_id,event_type,timestamp\n"
    (tmp_path / "a.csv").write_text(header + "u0013,i0001,view,yesterday\n u0014 ,i0001,view,soon\n")
    ingest(TENANT, tmp_path / "a.csv", store, root)
    assert len(quarantine_path(TENANT, root).read_text().splitlines()) == 2
    assert erase_user(TENANT, "u0014", root)["quarantine_rows_removed"] == 1    # erased data is not kept
    assert [json.loads(x)["row"]["user_id"] for x in quarantine_path(TENANT, root).read_text().splitlines()] == \
        ["u0013"]

    erase_user(TENANT, "u0011", root)
    (tmp_path / "b.csv").write_text(header + "u0011,i0001,view,1700000000\nu0011,i0001,view,yesterday\n"
                                    "u0012,i0001,view,1700000000\n")
    stats = ingest(TENANT, tmp_path / "b.csv", store, root)
    assert (stats.erased, stats.applied, stats.quarantined) == (2, 1, 0)
    assert store.get("u0011") is None and len(quarantine_path(TENANT, root).read_text().splitlines()) == 1


def test_run_etl_drops_tombstoned_users_and_counts_erased_rows(tmp_path):
    root = tmp_path / "artifacts"
    tables = lambda: synthetic_tables(num_users=200, num_items=100, seed=0, bad_rows=3)   # noqa: E731
    before = run_etl(tables(), TENANT, root, **QUIET)
    raw = tables().events.collect()
    # The users whose rows include a quarantined one, so that erasure must also empty the quarantine of them.
    bad_users = pl.read_parquet(before.path / "quarantine.parquet").filter(
        pl.col("source") == "events")["user_id"].drop_nulls().str.strip_chars().unique().to_list()
    erased = sorted({"u0003", "u0150", *[u for u in bad_users if u.startswith("u0")][:2]})
    for uid in erased:
        append_tombstone(TENANT, uid, root)
    assert erased_user_ids(TENANT, root) == frozenset(erased)

    after = run_etl(tables(), TENANT, root, **QUIET)
    c, c0 = after.manifest["counts"], before.manifest["counts"]
    of_erased = raw.filter(pl.col("user_id").str.strip_chars().is_in(erased))
    assert c["erased_rows"] == of_erased.height > 0 and c0["erased_rows"] == 0
    assert c["erased_user_rows"] == len(erased)
    assert c["input_rows"] == c0["input_rows"] == c["valid_rows"] + c["quarantined_rows"] + c["erased_rows"]
    assert c["quarantined_rows"] < c0["quarantined_rows"]          # their bad rows are gone, not quarantined
    users = pl.read_parquet(after.path / "user_map.parquet")["user_id"].to_list()
    assert not set(erased) & set(users) and len(users) == 200 - len(erased)   # real ids only
    q = pl.read_parquet(after.path / "quarantine.parquet")
    assert q.filter(pl.col("user_id").str.strip_chars().is_in(erased)).height == 0
    assert pl.read_parquet(after.path / "events.parquet").height == c["valid_rows"]
    assert pl.read_parquet(after.path / "user_entities.parquet")["user_idx"].n_unique() == len(users)
