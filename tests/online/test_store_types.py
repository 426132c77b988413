"""Event types in the online store (issue 19): an export of a behaviour-aware model has `history_types` beside each
history; both stores keep them aligned through loads, appends (an event's type index, or unknown, 0, without one) and
erasures; `tapestry ingest` maps each event's type name to the export's vocabulary; and feature_lookup reads the same
HISTORY_TYPES from either."""
from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from tapestry.online.ingest import event_type_index, ingest
from tapestry.online.load import load_export_into_redis
from tapestry.online.store import EmbeddedStore, RedisStore
from tapestry.serving.feature_lookup import FeatureLookup
from tapestry.serving.pipeline import request_tensors

from .conftest import TENANT

QUIET = {"log": lambda *a, **k: None}
VOCAB = ["click", "purchase", "view"]


def _typed(export) -> dict[str, list[int]]:
    """Give the export's users.parquet event types (1..3, varied per position): {user id: types}."""
    path = export[1] / "users.parquet"
    users = pl.read_parquet(path)
    types = [[(len(uid) + i) % 3 + 1 for i in range(len(h))] for uid, h in users.select("user_id", "history").rows()]
    users.with_columns(pl.Series("history_types", types, dtype=pl.List(pl.Int64))).write_parquet(path)
    return dict(zip(users["user_id"].to_list(), types))


@pytest.fixture(params=["embedded", "redis"])
def typed_store(request, export):
    expected = _typed(export)
    if request.param == "embedded":
        yield EmbeddedStore.from_export(export[1]), expected
        return
    url = request.getfixturevalue("redis_url")
    load_export_into_redis(export[1], url, **QUIET)
    store = RedisStore(url, TENANT)
    yield store, expected
    store.close()


def test_types_stay_aligned_through_appends_and_erasures(typed_store):
    store, expected = typed_store
    uid = next(u for u, t in expected.items() if len(t) >= 2)
    record = store.get(uid)
    assert record.types.tolist() == expected[uid] and len(record.types) == len(record.history)
    store.append([(uid, 1, 2), (uid, 2), ("newcomer", 3, 1)])     # a typed event, an untyped one (unknown, 0)
    again = store.get(uid)
    assert again.types.tolist() == expected[uid] + [2, 0] and len(again.history) == len(record.history) + 2
    newcomer = store.get("newcomer")
    assert newcomer.history.tolist() == [3] and newcomer.types.tolist() == [1]
    assert store.erase(uid) and store.get(uid) is None


def test_ingest_keeps_each_event_type_in_a_behaviour_aware_store(export, request, tmp_path):
    expected = _typed(export)
    manifest = export[1] / "manifest.json"
    m = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**m, "event_types": VOCAB}))
    assert event_type_index(export[1]) == {"click": 1, "purchase": 2, "view": 3}
    uid = next(u for u, t in expected.items() if t)
    item = pl.read_parquet(export[1] / "items.parquet")["item_id"][1]
    ts = 1_700_000_000
    source = tmp_path / "events.csv"      # "like": a type the ETL accepts that the served vocabulary lacks
    source.write_text(f"user_id,item_id,event_type,timestamp\n{uid},{item},PURCHASE,{ts}\n{uid},{item},view,{ts}\n"
                      f"{uid},{item},like,{ts}\nnewcomer,{item},click,{ts}\n")
    for kind in ("embedded", "redis"):
        if kind == "embedded":
            store = EmbeddedStore.from_export(export[1])
        else:
            url = request.getfixturevalue("redis_url")
            load_export_into_redis(export[1], url, **QUIET)
            store = RedisStore(url, TENANT)
        try:
            stats = ingest(TENANT, source, store, root=export[0], **QUIET)
            assert stats.applied == 4, (kind, stats)
            assert store.get(uid).types.tolist() == expected[uid] + [2, 3, 0], kind
            assert store.get("newcomer").types.tolist() == [1], kind
        finally:
            store.close()


def test_an_export_without_types_gives_none(export, redis_url):
    load_export_into_redis(export[1], redis_url, **QUIET)
    store = RedisStore(redis_url, TENANT)
    try:
        uid = pl.read_parquet(export[1] / "users.parquet")["user_id"][0]
        assert store.get(uid).types is None
        store.append([(uid, 1)])
        assert store.get(uid).types is None              # no types list grows beside an untyped history
    finally:
        store.close()


def test_feature_lookup_reads_the_same_types_from_redis_and_embedded(export, redis_url):
    expected = _typed(export)
    load_export_into_redis(export[1], redis_url, **QUIET)
    lookups = {kind: FeatureLookup(TENANT, 8, store=store, item_ids=["", "x"], num_attrs=50, event_types=VOCAB)
               for kind, store in (("embedded", EmbeddedStore.from_export(export[1])),
                                   ("redis", RedisStore(redis_url, TENANT)))}
    try:
        for uid in [u for u, t in expected.items() if t][:5]:
            outs = {k: lookup(request_tensors(TENANT, uid, 10)) for k, lookup in lookups.items()}
            np.testing.assert_array_equal(outs["embedded"]["HISTORY_TYPES"], outs["redis"]["HISTORY_TYPES"])
            n = min(len(expected[uid]), 8)
            assert outs["redis"]["HISTORY_TYPES"][8 - n:].tolist() == expected[uid][-n:]
    finally:
        lookups["redis"].store.close()
