"""Redis faults: a stopped, hung or restarted Redis never hangs a caller (bounded timeouts, StoreUnavailable),
reads resume without a restart once it is back, feature_lookup answers without the store meanwhile (or 503 when
asked to), and `tapestry ingest` waits and resumes from its committed offset: nothing lost, nothing applied twice."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import threading
import time

import pytest

from tapestry.online.ingest import ingest, quarantine_path
from tapestry.online.load import load_export_into_redis
from tapestry.online.local_redis import LocalRedis, redis_server_binary
from tapestry.online.redis_store import RETRY_AFTER_S
from tapestry.online.store import EmbeddedStore, RedisStore, StoreUnavailable
from tapestry.serving.feature_lookup import FeatureLookup
from tapestry.serving.stage import (USER_FALLBACK_COLD, USER_FALLBACK_RECENT, USER_KNOWN, STRATEGIES, Unavailable,
                                    bytes_array)

from .conftest import MAX_LEN, TENANT, exported_users, item_index

QUIET = {"log": lambda *a, **k: None}
HEADER = b"user_id,item_id,event_type,timestamp\n"
TS = 1_700_000_000
BOUND_S = 1.5        # the 0.5 s socket timeout, plus a loaded 2-core machine's scheduling


@pytest.fixture
def redis(tmp_path):
    """A persistent redis-server of this test's own (AOF fsynced per write): stop() + start() is an outage that
    loses nothing it acknowledged, on the same port."""
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)")
    server = LocalRedis(tmp_path / "redis", persistent=True).start()
    yield server
    server.close()


def _timed(fn, *args):
    t0 = time.monotonic()
    try:
        return fn(*args), time.monotonic() - t0
    except StoreUnavailable as e:
        return e, time.monotonic() - t0


def _wait_back(store, user, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return store.get(user), deadline - timeout
        except StoreUnavailable:
            assert time.monotonic() < deadline, "reads did not resume after Redis came back"
            time.sleep(0.05)


def test_reads_fail_fast_while_redis_is_down_or_hung_and_resume_without_a_restart(export, redis):
    _, art = export
    load_export_into_redis(art, redis.url, **QUIET)
    store = RedisStore(redis.url, TENANT)
    before = store.get_many(["u0001", "u0002"])

    redis.stop()                                           # refused connections
    err, took = _timed(store.get_many, ["u0001", "u0002"])
    assert isinstance(err, StoreUnavailable) and "unreachable" in str(err) and took < BOUND_S, (err, took)
    assert f"127.0.0.1:{redis.port}" in str(err) and TENANT in str(err)
    err, took = _timed(store.get, "u0001")                 # within RETRY_AFTER_S: no network call at all
    assert isinstance(err, StoreUnavailable) and took < 0.05
    redis.start()                                          # same port, same data (AOF)
    t0 = time.monotonic()
    record, _ = _wait_back(store, "u0001")
    assert time.monotonic() - t0 < RETRY_AFTER_S + BOUND_S
    assert record.history.tolist() == before[0].history.tolist()
    assert [r.history.tolist() for r in store.get_many(["u0001", "u0002"])] == [r.history.tolist() for r in before]

    os.kill(redis._proc.pid, signal.SIGSTOP)               # hung: accepts nothing, answers nothing
    try:
        time.sleep(RETRY_AFTER_S)
        err, took = _timed(store.get_many, ["u0001", "u0002"])
        assert isinstance(err, StoreUnavailable) and "Timeout" in str(err) and took < BOUND_S, (err, took)
    finally:
        os.kill(redis._proc.pid, signal.SIGCONT)
    assert _wait_back(store, "u0002")[0].history.tolist() == before[1].history.tolist()


def test_feature_lookup_answers_without_the_store_while_it_is_down(export, redis):
    _, art = export
    load_export_into_redis(art, redis.url, **QUIET)
    items = item_index(art)
    ids = [""] * (max(items.values()) + 1)
    for iid, idx in items.items():
        ids[idx] = iid
    attrs = json.loads((art / "manifest.json").read_text())["num_user_attrs"]
    stage = FeatureLookup(TENANT, MAX_LEN, item_ids=ids, num_attrs=attrs, store=RedisStore(redis.url, TENANT))
    strict = FeatureLookup(TENANT, MAX_LEN, item_ids=ids, num_attrs=attrs, store=RedisStore(redis.url, TENANT),
                           fallback="error")

    def row(user, recent=()):
        r = {"TENANT": bytes_array([TENANT]), "USER_ID": bytes_array([user]), "EXCLUDE_ITEM_IDS": bytes_array([""])}
        if recent:
            r["RECENT_ITEM_IDS"] = bytes_array(recent)
        return r

    rows = [row("u0001"), row("u0002", ["i0003", "i0004"])]
    assert [int(o["USER_KIND"][0]) for o in stage.batch(rows)] == [USER_KNOWN, USER_KNOWN]
    redis.stop()
    t0 = time.monotonic()
    out = stage.batch(rows)
    assert time.monotonic() - t0 < BOUND_S
    assert [int(o["USER_KIND"][0]) for o in out] == [USER_FALLBACK_COLD, USER_FALLBACK_RECENT]
    assert [STRATEGIES[int(o["USER_KIND"][0])] for o in out] == ["fallback_popularity", "fallback_recent"]
    assert out[1]["HISTORY"][-2:].tolist() == [items["i0003"], items["i0004"]]   # the recent events alone
    assert (out[0]["HISTORY"] == 0).all()
    with pytest.raises(Unavailable, match="online store unavailable"):
        strict.batch(rows)
    redis.start()
    deadline = time.monotonic() + RETRY_AFTER_S + BOUND_S + 5
    while int(stage.batch(rows)[0]["USER_KIND"][0]) != USER_KNOWN:
        assert time.monotonic() < deadline, "feature_lookup did not read the store again"
        time.sleep(0.05)
    assert exported_users(art)["u0001"][0][-1] == stage.batch(rows)[0]["HISTORY"][-1]


def test_ingest_waits_for_a_stopped_redis_and_resumes_from_its_offset(export, redis, tmp_path):
    """Redis stopped mid-ingest for ~2 s, then back: the final store equals a clean run's, the quarantine holds
    each bad row once, and ingest said it waited."""
    root, art = export
    clean_root = tmp_path / "clean"
    shutil.copytree(root, clean_root)
    load_export_into_redis(art, redis.url, **QUIET)
    ids, rng = sorted(item_index(art)), random.Random(1)
    lines = [HEADER]
    for n in range(3000):
        user, item = f"u{rng.randrange(50):04d}", rng.choice(ids)   # u0040+ are new users
        lines.append((f"{user},{item},view,{TS + n}\n" if n % 40 else f"{user},{item},view,soon\n").encode())
    path = tmp_path / "events.csv"
    path.write_bytes(b"".join(lines))
    key, size = str(path.resolve()), path.stat().st_size
    store, watcher, logs, result = RedisStore(redis.url, TENANT), RedisStore(redis.url, TENANT), [], []
    slow = threading.Event()

    class Slow:   # a batch takes >= 2 ms, so the outage lands mid-stream even on an idle machine
        def __getattr__(self, name):
            return getattr(store, name)

        def append(self, *a, **k):
            time.sleep(0.002)
            slow.set()
            return store.append(*a, **k)

    t = threading.Thread(target=lambda: result.append(ingest(TENANT, path, Slow(), root, batch_size=10,
                                                             log=logs.append)))
    t.start()
    deadline = time.monotonic() + 120
    while watcher.committed_offset(key) < size // 4:
        assert time.monotonic() < deadline and t.is_alive(), "ingest made no progress"
        time.sleep(0.005)
    at_stop = watcher.committed_offset(key)
    redis.stop()
    assert at_stop < size, "ingest finished before Redis stopped: nothing was interrupted"
    time.sleep(2.0)
    redis.start()
    t.join(timeout=120)
    assert not t.is_alive()
    assert result[0].offset == size, logs
    assert any("online store unavailable, waiting" in line for line in logs), logs
    assert any("online store back after" in line for line in logs), logs

    clean = EmbeddedStore.from_export(clean_root / TENANT / "export" / "v0001" / "artifacts")
    ingest(TENANT, path, clean, clean_root, batch_size=500, **QUIET)
    users = sorted(exported_users(art)) + [f"u{u:04d}" for u in range(40, 50)]
    got = {u: (r.history.tolist() if (r := watcher.get(u)) else None) for u in users}
    want = {u: (r.history.tolist() if (r := clean.get(u)) else None) for u in users}
    assert got == want                                    # nothing lost, nothing applied twice
    assert watcher.committed_offset(key) == size
    offsets = [json.loads(line)["offset"] for line in quarantine_path(TENANT, root).read_text().splitlines()]
    clean_offsets = [json.loads(line)["offset"] for line in
                     quarantine_path(TENANT, clean_root).read_text().splitlines()]
    assert offsets == clean_offsets and len(offsets) == 3000 // 40   # each bad row quarantined once


def test_erase_while_redis_is_down_tombstones_and_says_to_run_it_again(export, redis):
    from tapestry.online.erase import erase_user
    from tapestry.online.tombstones import Tombstones

    root, art = export
    load_export_into_redis(art, redis.url, **QUIET)
    redis.stop()
    with pytest.raises(StoreUnavailable, match=r"user u0003 is tombstoned .* NOT yet removed .* run the same "):
        erase_user(TENANT, "u0003", root, redis.url)
    tombstones = Tombstones(root / TENANT / "tombstones.jsonl")
    tombstones.refresh()
    assert "u0003" in tombstones.ids
    redis.start()
    assert erase_user(TENANT, "u0003", root, redis.url)["removed_from_store"] is True
    assert RedisStore(redis.url, TENANT).get("u0003") is None
