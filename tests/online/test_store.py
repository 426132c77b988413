"""The online store contract, run on both implementations, plus what only Redis has (namespaces, generations)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tapestry.artifacts import new_version
from tapestry.online.load import load_export_into_redis
from tapestry.online.store import (EmbeddedStore, OffsetConflict, RedisStore, StoreMetadata, StoreMismatch,
                                   StoreNotLoaded, check_etl_version)
from tapestry.serving.feature_lookup import FeatureLookup
from tapestry.serving.pipeline import request_tensors
from tapestry.serving.stage import USER_COLD, USER_KNOWN

from .conftest import TENANT, build_tenant, exported_users

QUIET = {"log": lambda *a, **k: None}
CRAFTED_TENANTS = ["shop:*", "shop:current", "../shop", "shop ", "", "*", "a" * 65, "shop\n"]


class StoreContract:
    """Every OnlineStore: subclasses provide `store` (over the `export` fixture) and `make(tenant)`."""

    def test_get_returns_the_exported_history_and_attributes(self, store, export):
        users = exported_users(export[1])
        assert len(users) == 40
        for uid, (hist, attrs) in users.items():
            rec = store.get(uid)
            assert rec.history.dtype == np.int64 and rec.history.tolist() == hist
            assert rec.attrs.tolist() == attrs
        assert any(a for _, a in users.values())     # attributes are really exercised

    def test_an_unknown_user_is_none(self, store):
        assert store.get("nobody") is None and store.get("u0000 ") is None

    def test_get_many_answers_like_get_for_each_id(self, store):
        """The rows of one dynamic batch are read together (one round trip on Redis), erasures included."""
        store.erase("u0002")
        ids = ["u0001", "nobody", "u0002", "u0007", "u0001"]
        many = store.get_many(ids)
        assert [r is None for r in many] == [False, True, True, False, False]
        for uid, rec in zip(ids, many):
            one = store.get(uid)
            assert (rec is None and one is None) or (rec.history.tolist() == one.history.tolist()
                                                     and rec.attrs.tolist() == one.attrs.tolist()), uid
        assert store.get_many([]) == []

    def test_append_extends_histories_in_order_and_creates_new_users(self, store, export):
        before = store.get("u0003").history.tolist()
        store.append([("u0003", 7), ("new-user", 2), ("u0003", 5), ("new-user", 2)])
        assert store.get("u0003").history.tolist() == before + [7, 5]
        new = store.get("new-user")
        assert new.history.tolist() == [2, 2] and new.attrs.tolist() == []
        assert store.get("u0004").history.tolist() == exported_users(export[1])["u0004"][0]   # others untouched

    def test_erase_removes_the_user_at_once(self, store):
        assert store.erase("u0005") is True
        assert store.get("u0005") is None
        assert store.erase("u0005") is False
        store.append([("u0005", 4)])              # a later event is a new entry
        assert store.get("u0005").history.tolist() == [4]

    def test_offsets_commit_with_the_appends_and_refuse_a_second_writer(self, store):
        assert store.committed_offset("/data/a.csv") == 0
        store.append([("u0001", 3)], "/data/a.csv", 120, expected_offset=0)
        assert store.committed_offset("/data/a.csv") == 120 and store.committed_offset("/data/b.csv") == 0
        before = store.get("u0001").history.tolist()
        with pytest.raises(OffsetConflict, match="committed offset is 120, expected 0"):
            store.append([("u0001", 9)], "/data/a.csv", 240, expected_offset=0)
        assert store.get("u0001").history.tolist() == before         # nothing of the refused batch applied
        store.append([], "/data/a.csv", 130, expected_offset=120)     # a batch of only bad rows moves on too
        assert store.committed_offset("/data/a.csv") == 130

    def test_metadata_names_the_export_and_etl_version_and_refuses_another(self, store, export):
        meta = store.metadata()
        manifest = json.loads((export[1] / "manifest.json").read_text())
        assert meta.kind == self.kind and meta.tenant == TENANT
        assert meta.etl_version == manifest["etl_version"] and meta.export_version == str(export[1].resolve())
        check_etl_version(meta, manifest)
        with pytest.raises(StoreMismatch, match="loaded from ETL version 'shop/etl/v0001'.*serves ETL version "
                                                "'shop/etl/v0002'"):
            check_etl_version(meta, {**manifest, "etl_version": "/x/shop/etl/v0002"})
        with pytest.raises(StoreMismatch, match="holds tenant 'shop'"):
            check_etl_version(meta, {**manifest, "tenant": "other"})

    @pytest.mark.parametrize("tenant", CRAFTED_TENANTS)
    def test_crafted_tenant_ids_are_refused(self, tenant, export):
        with pytest.raises(ValueError, match="invalid tenant id"):
            self.make(tenant, export)

    def test_feature_lookup_reads_the_store_on_every_request(self, store, export):
        lookup = FeatureLookup(TENANT, max_len=4, item_ids=[""] * 31, num_attrs=8, store=store)
        first = lookup(request_tensors(TENANT, "u0002", 10))
        store.append([("u0002", 29)])
        after = lookup(request_tensors(TENANT, "u0002", 10))
        assert after["HISTORY"].tolist()[-1] == 29 and 29 in after["SEEN"].tolist()
        assert after["HISTORY"].tolist()[:-1] == first["HISTORY"].tolist()[1:]
        store.erase("u0002")
        cold = lookup(request_tensors(TENANT, "u0002", 10))
        assert cold["USER_KIND"].tolist() == [USER_COLD] and cold["SEEN"].tolist() == [0]
        assert first["USER_KIND"].tolist() == [USER_KNOWN]


class TestEmbeddedStore(StoreContract):
    kind = "embedded"

    @pytest.fixture
    def store(self, export):
        return EmbeddedStore.from_export(export[1])

    @staticmethod
    def make(tenant, export):
        import polars as pl

        return EmbeddedStore(tenant, pl.read_parquet(export[1] / "users.parquet"))


class TestRedisStore(StoreContract):
    kind = "redis"

    @pytest.fixture
    def store(self, export, redis_url):
        load_export_into_redis(export[1], redis_url, **QUIET)
        s = RedisStore(redis_url, TENANT)
        yield s
        s.close()

    @staticmethod
    def make(tenant, export):
        return RedisStore("redis://127.0.0.1:1/0", tenant)    # refused before any connection is attempted


def _keys(url, pattern="*"):
    import redis

    r = redis.Redis.from_url(url)
    try:
        return sorted(k.decode() for k in r.keys(pattern))
    finally:
        r.close()


def test_redis_tenants_are_isolated(export, redis_url):
    root, art = export
    other_art = build_tenant(root, "other", seed=1)      # same user ids (u0000...), other histories
    load_export_into_redis(art, redis_url, **QUIET)
    load_export_into_redis(other_art, redis_url, **QUIET)
    shop, other = RedisStore(redis_url, TENANT), RedisStore(redis_url, "other")
    assert shop.get("u0000").history.tolist() == exported_users(art)["u0000"][0]
    assert other.get("u0000").history.tolist() == exported_users(other_art)["u0000"][0]
    assert shop.get("u0000").history.tolist() != other.get("u0000").history.tolist()
    shop.append([("u0000", 1)], "/same/path.csv", 10)
    shop.erase("u0001")
    assert other.get("u0000").history.tolist() == exported_users(other_art)["u0000"][0]
    assert other.get("u0001") is not None and other.committed_offset("/same/path.csv") == 0
    keys = _keys(redis_url)
    assert keys and all(k.startswith(("tapestry:shop:", "tapestry:other:")) for k in keys)
    # A user id is only ever a key suffix: ids that look like key syntax stay inside their tenant's generation.
    shop.append([("x:*", 2), ("../other:current", 3)])
    assert shop.get("x:*").history.tolist() == [2] and other.get("x:*") is None
    assert _keys(redis_url, "tapestry:other:current") == ["tapestry:other:current"]


def test_redis_version_flip_is_atomic_and_drops_old_generations(export, redis_url):
    root, art = export
    load_export_into_redis(art, redis_url, **QUIET)
    old = {u: h for u, (h, _) in exported_users(art).items()}
    # The next export of the same ETL version: every history one item longer.
    import polars as pl

    with new_version(TENANT, "export", root) as v:
        shutil.copytree(art, v.tmp / "artifacts")
        users = pl.read_parquet(art / "users.parquet").with_columns(pl.col("history").list.concat(pl.lit([30])))
        users.write_parquet(v.tmp / "artifacts" / "users.parquet")
    new_art = v.path / "artifacts"
    store = RedisStore(redis_url, TENANT)
    seen_mid_load = []

    def mid_load(n):   # called between chunks of the new load: readers must still see the whole old one
        seen_mid_load.append(n)
        assert all(store.get(u).history.tolist() == h for u, h in old.items())
        assert store.metadata().export_version == str(art)

    # An abandoned generation (a loader killed half-way) that the next load must clean up.
    import redis

    r = redis.Redis.from_url(redis_url)
    r.zadd("tapestry:shop:generations", {"g0-dead": 1})
    r.rpush("tapestry:shop:g0-dead:user:u0000", 1)
    r.hset("tapestry:shop:g0-dead:attrs", "u0000", "")
    load_export_into_redis(new_art, redis_url, chunk_users=7, progress=mid_load, **QUIET)
    assert seen_mid_load == [7, 14, 21, 28, 35]
    assert all(store.get(u).history.tolist() == h + [30] for u, h in old.items())
    assert store.metadata().export_version == str(new_art)
    gens = {k.split(":")[2] for k in _keys(redis_url) if k.count(":") >= 3}     # tapestry:shop:<gen>:...
    assert gens == {r.get("tapestry:shop:current").decode()}          # old and abandoned generations are gone
    assert len(_keys(redis_url, "tapestry:shop:g*:user:*")) == 40
    r.close()


def test_feature_lookup_over_redis_equals_embedded_and_refuses_another_etl_version(export, redis_url, monkeypatch):
    root, art = export
    lookup = lambda: FeatureLookup.from_artifacts(art)     # noqa: E731
    embedded = lookup()
    assert isinstance(embedded.store, EmbeddedStore)
    monkeypatch.setenv("TAPESTRY_REDIS_URL", redis_url)
    with pytest.raises(StoreNotLoaded, match="load an export first"):
        lookup()
    load_export_into_redis(art, redis_url, **QUIET)
    served = lookup()
    assert isinstance(served.store, RedisStore)
    ids = [*exported_users(art), "nobody"]
    for uid in ids:
        a, b = embedded(request_tensors(TENANT, uid, 5)), served(request_tensors(TENANT, uid, 5))
        assert all(a[n].tolist() == b[n].tolist() for n in a), uid
    # A dynamic batch of every user, read in one pipeline: the same rows.
    batch = served.batch([request_tensors(TENANT, uid, 5) for uid in ids])
    for uid, row in zip(ids, batch):
        single = embedded(request_tensors(TENANT, uid, 5))
        assert all(row[n].tolist() == single[n].tolist() for n in single), uid

    # The store now holds another ETL version's values: refused at load, and by a server already running.
    from .conftest import write_export

    etl2 = build_tenant(root, TENANT, seed=3)                # ETL v0002 + export v0002
    manifest = json.loads((etl2 / "manifest.json").read_text())
    assert manifest["etl_version"].endswith("shop/etl/v0002")
    load_export_into_redis(etl2, redis_url, **QUIET)
    with pytest.raises(StoreMismatch, match="loaded from ETL version 'shop/etl/v0002'.*serves ETL version "
                                            "'shop/etl/v0001'"):
        lookup()
    with pytest.raises(StoreMismatch, match="now holds values from ETL version 'shop/etl/v0002'"):
        served(request_tensors(TENANT, "u0000", 5))
    # Without the env var, a manifest naming the Redis store selects it too.
    monkeypatch.delenv("TAPESTRY_REDIS_URL")
    m2 = write_export(root / TENANT / "etl" / "v0002", root, TENANT)
    manifest = json.loads((m2 / "manifest.json").read_text())
    (m2 / "manifest.json").write_text(json.dumps({**manifest, "online_store": {"kind": "redis", "url": redis_url}}))
    assert isinstance(FeatureLookup.from_artifacts(m2).store, RedisStore)


def test_store_metadata_round_trips():
    meta = StoreMetadata("redis", "shop", "/a/shop/export/v0001/artifacts", "/a/shop/etl/v0001", "t")
    assert StoreMetadata(**meta.as_dict()) == meta
