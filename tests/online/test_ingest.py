"""`tapestry ingest`: the ETL's validation per row, quarantine with reasons, and exactly-once offsets (kill -9)."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from tapestry.etl.schema import SchemaError
from tapestry.online.ingest import ingest, quarantine_path
from tapestry.online.load import load_export_into_redis
from tapestry.online.store import EmbeddedStore, RedisStore

from .conftest import TENANT, exported_users, item_index

QUIET = {"log": lambda *a, **k: None}
HEADER = b"user_id,item_id,event_type,timestamp,weight\n"
TS = 1_700_000_000
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "POLARS_MAX_THREADS": "1"}


def wait_for(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


def quarantined(root) -> list[dict]:
    path = quarantine_path(TENANT, root)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(params=["embedded", "redis"])
def store(request, export):
    if request.param == "embedded":
        return EmbeddedStore.from_export(export[1])
    url = request.getfixturevalue("redis_url")
    load_export_into_redis(export[1], url, **QUIET)
    return RedisStore(url, TENANT)


ROWS = [   # (line, quarantine reason or None)
    (f"u0001,i0003,view,{TS}\n".encode(), None),
    (f"newbie,i0005,click,{TS},2.5\n".encode(), None),                    # a new user gets a new entry
    (f",i0003,view,{TS}\n".encode(), "missing_user_id"),
    (f"=cmd(),i0003,view,{TS}\n".encode(), "bad_user_id"),                # formula injection
    (f"u0001,nope,view,{TS}\n".encode(), "unknown_item"),                 # valid, but not in the catalogue
    (b"u0001,i0003,view,yesterday\n", "bad_timestamp"),
    (f"u0001,i0003,view,{TS * 1000}\n".encode(), "timestamp_out_of_range"),
    (f"u0001,i0003,teleport,{TS}\n".encode(), "unknown_event_type"),
    (f"u0001,i0003,view,{TS},-1\n".encode(), "nonpositive_weight"),
    (f"u0001,i0003,view,{TS},1,extra\n".encode(), "malformed_line"),       # more fields than the header
    (f'u0001,"i0003,view,{TS}\n'.encode(), "malformed_line"),             # broken quoting
    (b"\n", "missing_user_id"),                                           # a blank line: a row without a user
    (f"u\xff01,i0003,view,{TS}\n".encode("latin-1"), "bad_user_id"),      # not UTF-8 -> U+FFFD -> quarantined
    (b"  u0002 ,i0007,VIEW,2023-11-14T22:13:20Z\r\n", None),              # stripped, ISO time, CRLF, upper case
    (f"u0001,i0004,purchase,{TS}\n".encode(), None),
]


def test_bad_rows_are_quarantined_with_reasons_and_valid_ones_applied_once(store, export, tmp_path):
    root, art = export
    items, before = item_index(art), exported_users(art)
    path = tmp_path / "events.csv"
    path.write_bytes(HEADER + b"".join(line for line, _ in ROWS))
    stats = ingest(TENANT, path, store, root, batch_size=4)
    assert (stats.lines, stats.applied, stats.quarantined, stats.offset) == (15, 4, 11, path.stat().st_size)
    assert store.get("u0001").history.tolist() == before["u0001"][0] + [items["i0003"], items["i0004"]]
    assert store.get("u0002").history.tolist() == before["u0002"][0] + [items["i0007"]]
    assert store.get("newbie").history.tolist() == [items["i0005"]] and store.get("newbie").attrs.tolist() == []

    starts, pos = [], len(HEADER)
    for line, _ in ROWS:
        starts.append(pos)
        pos += len(line)
    q = quarantined(root)
    assert [(r["offset"], r["reason"]) for r in q] == [(s, why) for s, (_, why) in zip(starts, ROWS) if why]
    assert {r["source"] for r in q} == {str(path.resolve())}
    by_reason = {r["reason"]: r for r in q}
    assert by_reason["unknown_item"]["row"]["item_id"] == "nope"          # the raw fields are kept for inspection
    assert [r["raw_line"] for r in q if r["reason"] == "malformed_line"] == [
        f"u0001,i0003,view,{TS},1,extra", f'u0001,"i0003,view,{TS}']
    assert stats.by_reason["missing_user_id"] == 2 and stats.by_reason["malformed_line"] == 2

    # Run again: everything was committed, nothing is applied or quarantined twice.
    again = ingest(TENANT, path, store, root)
    assert (again.lines, again.applied, again.offset) == (0, 0, path.stat().st_size)
    assert len(quarantined(root)) == 11
    # Appended lines are picked up from the committed offset; a last line without newline counts at the end.
    with open(path, "ab") as f:
        f.write(f"u0003,i0001,view,{TS}\nu0003,bogus,view,{TS}\nu0003,i0002,view,{TS}".encode())
    more = ingest(TENANT, path, store, root)
    assert (more.lines, more.applied, more.quarantined) == (3, 2, 1)
    assert store.get("u0003").history.tolist() == before["u0003"][0] + [items["i0001"], items["i0002"]]
    assert [r["reason"] for r in quarantined(root)][-1] == "unknown_item"


class _DiesOnSecondBatch:
    """A store whose process 'dies' after the 2nd batch's quarantine lines were written, before its commit."""

    def __init__(self, store):
        self.store, self.calls = store, 0

    def __getattr__(self, name):
        return getattr(self.store, name)

    def append(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 2:
            raise KeyboardInterrupt("killed")
        return self.store.append(*args, **kwargs)


def test_a_crash_between_quarantine_and_commit_quarantines_nothing_twice(store, export, tmp_path):
    root, art = export
    items, before = item_index(art), exported_users(art)
    lines = [f"u0006,{'i%04d' % (k % 30) if k % 3 else 'unknown'},view,{TS + k}\n".encode() for k in range(12)]
    path = tmp_path / "events.csv"
    path.write_bytes(HEADER + b"".join(lines))
    with pytest.raises(KeyboardInterrupt, match="^killed$"):
        ingest(TENANT, path, _DiesOnSecondBatch(store), root, batch_size=5)
    assert store.committed_offset(str(path.resolve())) == len(HEADER) + sum(len(x) for x in lines[:5])
    assert len(quarantined(root)) == 4            # batch 1 (k = 0, 3) and the uncommitted batch 2 (k = 6, 9)
    stats = ingest(TENANT, path, store, root, batch_size=5)
    assert stats.lines == 7
    assert Counter(r["offset"] for r in quarantined(root)).most_common(1)[0][1] == 1
    assert len(quarantined(root)) == 4
    assert store.get("u0006").history.tolist() == before["u0006"][0] + [items["i%04d" % k] for k in range(12) if k % 3]


def test_follow_mode_applies_appended_lines_and_waits_for_a_line_to_be_complete(export, tmp_path):
    root, art = export
    items, before = item_index(art), exported_users(art)
    store = EmbeddedStore.from_export(art)
    path = tmp_path / "stream.csv"
    path.write_bytes(b"")
    key, polls, done, result = str(path.resolve()), [0], threading.Event(), []

    def stop():
        polls[0] += 1
        return done.is_set()

    t = threading.Thread(target=lambda: result.append(
        ingest(TENANT, path, store, root, follow=True, poll_interval=0.002, stop=stop)))
    t.start()
    try:
        with open(path, "ab", buffering=0) as f:
            f.write(HEADER[:10])                        # even the header is waited for
            f.write(HEADER[10:] + f"u0004,i0001,view,{TS}\n".encode())
            wait_for(lambda: store.committed_offset(key) == path.stat().st_size, "the first line")
            committed = store.committed_offset(key)
            f.write(b"u0004,i00")                        # half a line: must not be read as the item "i00"
            seen = polls[0]
            wait_for(lambda: polls[0] >= seen + 2, "ingest to look at the half-written line")
            assert store.committed_offset(key) == committed
            f.write(f"12,view,{TS}\n".encode())
            wait_for(lambda: store.committed_offset(key) == path.stat().st_size, "the completed line")
    finally:
        done.set()
        t.join(timeout=60)
    assert not t.is_alive() and result[0].applied == 2 and result[0].quarantined == 0
    assert store.get("u0004").history.tolist() == before["u0004"][0] + [items["i0001"], items["i0012"]]
    assert quarantined(root) == []


def test_a_bad_header_or_a_truncated_source_is_a_clear_error(export, tmp_path):
    root, art = export
    store = EmbeddedStore.from_export(art)
    path = tmp_path / "events.csv"
    path.write_bytes(b"user,item_id,event_type,timestamp\n")
    with pytest.raises(SchemaError, match=r"missing: \['user_id'\]"):
        ingest(TENANT, path, store, root)
    path.write_bytes(HEADER + f"u0001,i0003,view,{TS}\n".encode())
    ingest(TENANT, path, store, root)
    path.write_bytes(HEADER)
    with pytest.raises(ValueError, match="shorter .* than its committed offset"):
        ingest(TENANT, path, store, root)


def _cli(root, source, url, *extra):
    return [sys.executable, "-m", "tapestry.cli", "ingest", "--tenant", TENANT, "--root", str(root),
            "--source", str(source), "--redis", url, *extra]


def test_a_killed_ingest_resumes_with_every_row_applied_or_quarantined_exactly_once(export, redis_url, tmp_path):
    root, art = export
    load_export_into_redis(art, redis_url, **QUIET)
    items, before = item_index(art), exported_users(art)
    ids, rng = sorted(items), random.Random(0)
    lines, expected, bad, pos = [HEADER], {}, {}, len(HEADER)
    for n in range(5000):
        user, item, roll = f"u{rng.randrange(60):04d}", rng.choice(ids), rng.random()   # u0040+ are new users
        if roll < 0.03:
            text, reason = f"{user},{item},view,yesterday\n", "bad_timestamp"
        elif roll < 0.05:
            text, reason = f"{user},new-{n},view,{TS + n}\n", "unknown_item"
        elif roll < 0.06:
            text, reason = f"{user},{item},view,{TS + n},1,x\n", "malformed_line"
        else:
            text, reason = f"{user},{item},click,{TS + n}\n", None
            expected.setdefault(user, []).append(items[item])
        if reason:
            bad[pos] = reason
        lines.append(text.encode())
        pos += len(lines[-1])
    path = tmp_path / "events.csv"
    path.write_bytes(b"".join(lines))
    store, key = RedisStore(redis_url, TENANT), str(path.resolve())

    proc = subprocess.Popen(_cli(root, path, redis_url, "--batch-size", "10"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=CHILD_ENV)
    try:
        # Killed well into the stream: a third of the file committed, hundreds of batches still to go.
        wait_for(lambda: store.committed_offset(key) > pos // 3 or proc.poll() is not None, "ingest to progress")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        output = proc.communicate()[0].decode()
    assert proc.returncode == -signal.SIGKILL, output
    at_kill = store.committed_offset(key)
    assert 0 < at_kill < pos, "the ingest finished before it was killed: nothing was interrupted"

    done = subprocess.run(_cli(root, path, redis_url, "--batch-size", "500"), capture_output=True, text=True,
                          env=CHILD_ENV, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert store.committed_offset(key) == pos
    for user in (f"u{u:04d}" for u in range(60)):
        rec = store.get(user)
        want = before.get(user, ([], []))[0] + expected.get(user, [])
        assert (rec.history.tolist() if rec else []) == want, user        # every valid row applied exactly once
    q = quarantined(root)
    assert Counter(r["offset"] for r in q).most_common(1)[0][1] == 1     # quarantined exactly once
    assert {r["offset"]: r["reason"] for r in q} == bad
    assert f"offset {pos:,}" in done.stdout


def test_cli_ingests_stdin(export, redis_url):
    root, art = export
    load_export_into_redis(art, redis_url, **QUIET)
    before = exported_users(art)["u0009"][0]
    data = HEADER + f"u0009,i0011,view,{TS}\nu0009,nope,view,{TS}\n".encode()
    out = subprocess.run(_cli(root, "-", redis_url), input=data, capture_output=True, env=CHILD_ENV, timeout=120)
    assert out.returncode == 0, out.stderr.decode()
    assert b"2 lines -> 1 applied, 1 quarantined {'unknown_item': 1}" in out.stdout
    assert RedisStore(redis_url, TENANT).get("u0009").history.tolist() == before + [item_index(art)["i0011"]]
    assert [r["source"] for r in quarantined(root)] == ["-"]
