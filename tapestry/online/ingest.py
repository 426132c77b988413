"""`tapestry ingest`: new events, as CSV lines, into the online store, resumably and exactly once.

Input: a CSV file being appended to (`--follow` polls it for new bytes) or stdin, with a header line naming the
generic event table's columns (user_id, item_id, event_type, timestamp; optional weight, session_id), one event per
line (a quoted field cannot hold a newline here; a line without its newline is waited for in follow mode).

Every row is checked by the ETL's own rules (tapestry.etl.validate.validate_events on a batch of rows, under the
config of the ETL version the store was loaded from), then against the export's catalogue: an item id it does not
know is quarantined as `unknown_item` (its index space is the ETL's; a new item needs a new ETL and export). Bad
lines are appended to `<root>/<tenant>/ingest/quarantine.jsonl` (source, byte offset, reason, raw fields), never
dropped silently; a line the csv module cannot split, or with more fields than the header, is `malformed_line`.
Events of erased users (tapestry.online.tombstones) are dropped and counted, not quarantined. Valid events are
appended to the user's history in arrival order; an unknown user id gets a new entry (no attributes).

Exactly once: per batch, the quarantine lines are written (fsync) first, then the store appends and the source's
offset (the byte after the batch's last line) commit together (Redis: one MULTI/EXEC). A process killed anywhere
restarts at its committed offset: a batch is either wholly applied with its offset or not at all, and quarantine
lines written for an uncommitted batch are recognised by (source, offset) and not written again. Offsets are kept
per source file (its resolved path); stdin cannot be re-read, so it is not resumable. The embedded store is this
process's memory: offsets commit with it (and are mirrored to `<root>/<tenant>/ingest/offsets.json` after each
batch), and a new process starts from an empty store, so from the file's start.

Redis down (StoreUnavailable: refused, dropped, timed out, still loading after a restart): ingest waits, retrying
every 0.1 s doubling to 2 s and logging once per outage, then commits the same batch once Redis answers, so a file
source loses and duplicates nothing (tests/online/test_redis_faults.py stops Redis mid-ingest). A commit whose EXEC
reached Redis but whose reply was lost is recognised by its offset on the retry (tapestry.online.redis_store). With
stdin there is no offset to recognise it by: such a batch could be applied twice. `stop()` while waiting ends the
run at the last committed offset. Redis must keep what it acknowledged across the restart (AOF or a replica):
a Redis that restarts empty has lost the store and its offsets, and ingest then says the store is not loaded.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import polars as pl

from tapestry.artifacts import latest_version, tenant_dir
from tapestry.config import ETLConfig, validate_tenant
from tapestry.etl.schema import EVENT_COLUMNS, MALFORMED_LINE, SchemaError
from tapestry.etl.sources import ROW
from tapestry.etl.validate import validate_events
from tapestry.online.jsonl import append_jsonl, read_jsonl
from tapestry.online.store import EmbeddedStore, OnlineStore, RedisStore, StoreMismatch, StoreUnavailable
from tapestry.online.tombstones import TOMBSTONES, Tombstones

UNKNOWN_ITEM = "unknown_item"
DEFAULT_BATCH = 500
_IDLE = None          # yielded by _read_lines when it has reached the end of what was written so far
RETRY_MAX_S = 2.0     # the longest wait between two tries while the store is unreachable


class _Stopped(Exception):
    """stop() became true while waiting for the store: the run ends at the last committed offset."""


def waiting(call, stop: Callable[[], bool], log=print, what: str = "commit"):
    """``call()``, retried while the store is unreachable (StoreUnavailable) until it succeeds or ``stop()``."""
    delay, since = 0.1, None
    while True:
        try:
            result = call()
        except StoreUnavailable as e:
            if since is None:
                since = time.monotonic()
                log(f"[ingest] online store unavailable, waiting to {what} (nothing is skipped): {e}")
            if stop():
                raise _Stopped() from None
            time.sleep(delay)   # a back-off between tries, not a measurement
            delay = min(delay * 2, RETRY_MAX_S)
            continue
        if since is not None:
            log(f"[ingest] online store back after {time.monotonic() - since:.1f}s: {what} done")
        return result


@dataclass
class IngestStats:
    lines: int = 0            # event lines read (header excluded)
    applied: int = 0
    quarantined: int = 0      # includes rows re-read after a crash whose quarantine line already existed
    erased: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    offset: int = 0           # the committed offset at the end


def quarantine_path(tenant: str, root: Path | None = None) -> Path:
    return tenant_dir(tenant, root) / "ingest" / "quarantine.jsonl"


def catalogue(artifact_dir: Path) -> dict[str, int]:
    """The export's item ids -> item indices (the ETL version's; index 0 is padding)."""
    items = pl.read_parquet(Path(artifact_dir) / "items.parquet", columns=["item_id", "item_idx"])
    return {iid: int(idx) for iid, idx in items.iter_rows() if idx > 0}


def event_type_index(artifact_dir: Path) -> dict[str, int]:
    """The export's event-type names -> the index its models read (name i of manifest `event_types` is i + 1), so
    an ingested event keeps its type in a behaviour-aware tenant's store; {} when the export reads no types. A type
    the ETL accepts but the served vocabulary lacks is unknown (0), as at training."""
    manifest = Path(artifact_dir) / "manifest.json"
    names = json.loads(manifest.read_text()).get("event_types") if manifest.exists() else None
    return {name.lower(): i + 1 for i, name in enumerate(names or [])}   # the ETL lower-cases types


def etl_config(etl_version: str, tenant_root: Path) -> ETLConfig:
    """The validation settings the ETL version was built with (event vocabulary, timestamp window)."""
    for d in (Path(etl_version), tenant_root / "etl" / Path(etl_version).name):
        if (d / "manifest.json").exists():
            c = json.loads((d / "manifest.json").read_text())["config"]
            return ETLConfig(event_types=tuple(c["event_types"]), min_timestamp=c["min_timestamp"],
                             max_timestamp=c["max_timestamp"], min_user_events=c["min_user_events"])
    raise FileNotFoundError(f"the ETL version the store was loaded from ({etl_version}) is not under "
                            f"{tenant_root / 'etl'}: ingest validates with that version's rules")


def _read_lines(fd: int, pos: int, follow: bool, poll_interval: float, stop: Callable[[], bool]
                ) -> Iterator[tuple[int, int, bytes] | None]:
    """(start, end, line without its newline) for each complete line from byte `pos`; _IDLE at the end of the
    data written so far. Without `follow`, a last line without newline is a line, and the end of data ends it."""
    buf, start = b"", pos
    while True:
        chunk = os.read(fd, 1 << 16)
        if chunk:
            *complete, buf = (buf + chunk).split(b"\n")
            for line in complete:
                end = start + len(line) + 1
                yield start, end, line
                start = end
            continue
        if not follow:
            if buf:
                yield start, start + len(buf), buf
            return
        yield _IDLE
        if stop():
            return
        if os.fstat(fd).st_size < start + len(buf):
            raise RuntimeError("the source file shrank while being followed (truncated or replaced): restart "
                               "ingest on the new file")
        time.sleep(poll_interval)


def _split(raw: bytes, width: int) -> list[str] | None:
    """The fields of one CSV line (missing trailing fields read as empty, as the ETL reads them), or None if it is
    malformed. Bytes that are not UTF-8 become U+FFFD, and validation then quarantines the field holding one."""
    text = raw.decode("utf-8", errors="replace").rstrip("\r")
    try:
        fields = next(csv.reader([text], strict=True), [])
    except csv.Error:
        return None
    return fields + [""] * (width - len(fields)) if len(fields) <= width else None


def _header(raw: bytes, source) -> list[str]:
    try:
        names = next(csv.reader([raw.decode("utf-8", errors="replace").lstrip("\ufeff").rstrip("\r")]), [])
    except csv.Error:
        names = []
    names = [c.strip() for c in names]
    missing = [c for c in EVENT_COLUMNS if c not in names]
    if missing or len(set(names)) != len(names):
        raise SchemaError(f"{source}: the header line {names} must name the event columns {list(EVENT_COLUMNS)} "
                          f"(missing: {missing}), each column once")
    return names


class _Batcher:
    def __init__(self, tenant: str, store: OnlineStore, header: list[str], items: dict[str, int], cfg: ETLConfig,
                 tombstones: Tombstones, qpath: Path, source: str | None, committed: int, stats: IngestStats,
                 stop: Callable[[], bool] = lambda: False, log=print, types: dict[str, int] | None = None):
        self.tenant, self.store, self.header, self.items, self.cfg = tenant, store, header, items, cfg
        self.types = types or {}
        self.stop, self.log = stop, log
        self.tombstones, self.qpath, self.source = tombstones, qpath, source
        self.committed, self.stats = committed, stats
        self.user_col = header.index("user_id")
        # Quarantine lines of a batch that was written but not committed before a crash: not written twice.
        self.already = {r.get("offset") for _, r in read_jsonl(qpath)
                        if r.get("source") == source and isinstance(r.get("offset"), int) and r["offset"] >= committed
                        } if source is not None else set()

    def _record(self, offset: int, reason: str, fields: list[str] | None, raw: bytes) -> dict:
        rec = {"source": self.source or "-", "offset": offset, "reason": reason,
               "ingested_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if fields is None:
            rec["raw_line"] = raw.decode("utf-8", errors="replace")
        else:
            rec["row"] = dict(zip(self.header, fields))
        self.stats.by_reason[reason] = self.stats.by_reason.get(reason, 0) + 1
        return rec

    def commit(self, batch: list[tuple[int, int, bytes]]) -> None:
        self.tombstones.refresh()
        quarantine, rows = [], {}
        for start, _, raw in batch:
            fields = _split(raw, len(self.header))
            if fields is not None and fields[self.user_col].strip() in self.tombstones.ids:
                self.stats.erased += 1            # erased data is neither applied nor kept in quarantine
            elif fields is None:
                quarantine.append(self._record(start, MALFORMED_LINE, None, raw))
            else:
                rows[start] = fields
        events = []
        if rows:
            frame = pl.DataFrame({ROW: list(rows), **{c: [f[i] for f in rows.values()]
                                                      for i, c in enumerate(self.header)}},
                                 schema={ROW: pl.Int64, **{c: pl.String for c in self.header}})
            good, bad = pl.collect_all(list(validate_events(frame.lazy(), self.cfg)))
            for offset, reason in bad.select(ROW, "reason").iter_rows():
                quarantine.append(self._record(offset, reason, rows[offset], b""))
            for offset, uid, iid, kind in good.select(ROW, "user_id", "item_id", "event_type").iter_rows():
                idx = self.items.get(iid)
                if idx is None:
                    quarantine.append(self._record(offset, UNKNOWN_ITEM, rows[offset], b""))
                else:
                    events.append((uid, idx, self.types.get(kind, 0)))
        quarantine.sort(key=lambda r: r["offset"])
        append_jsonl(self.qpath, [r for r in quarantine if r["offset"] not in self.already])
        end = batch[-1][1]
        if self.source is None:
            waiting(lambda: self.store.append(events), self.stop, self.log, f"commit up to byte {end:,}")
        else:
            waiting(lambda: self.store.append(events, self.source, end, expected_offset=self.committed), self.stop,
                    self.log, f"commit {self.source} up to byte {end:,}")
            self.committed = end
        self.stats.lines += len(batch)
        self.stats.applied += len(events)
        self.stats.quarantined += len(quarantine)
        self.stats.offset = end


def ingest(tenant: str, source: str | Path, store: OnlineStore, root: Path | None = None, follow: bool = False,
           batch_size: int = DEFAULT_BATCH, poll_interval: float = 0.2, stop: Callable[[], bool] | None = None,
           log=print) -> IngestStats:
    """Ingest `source` (a path, or "-" for stdin) into `store`; see the module docstring. `stop()` is checked after
    each batch and while waiting for data or for the store: True ends the run cleanly (everything read so far is
    committed, or, while the store is unreachable, everything up to the last committed offset)."""
    validate_tenant(tenant)
    stop = stop or (lambda: False)
    stats = IngestStats()
    try:
        return _ingest(tenant, source, store, root, follow, batch_size, poll_interval, stop, log, stats)
    except _Stopped:
        log(f"[ingest] stopped while the online store was unavailable: committed up to byte {stats.offset:,}, where "
            "the next run resumes")
        return stats


def _ingest(tenant, source, store, root, follow, batch_size, poll_interval, stop, log, stats) -> IngestStats:
    meta = waiting(store.metadata, stop, log, "read the store's metadata")
    if meta.tenant != tenant:
        raise StoreMismatch(f"the store holds tenant {meta.tenant!r}, not {tenant!r}")
    tdir = tenant_dir(tenant, root)
    items, cfg = catalogue(meta.export_version), etl_config(meta.etl_version, tdir)
    stdin = str(source) == "-"
    key = None if stdin else str(Path(source).resolve())
    fd = os.dup(0) if stdin else os.open(source, os.O_RDONLY)
    try:
        committed = waiting(lambda: store.committed_offset(key), stop, log, "read the committed offset") if key else 0
        if key and committed > os.fstat(fd).st_size:
            raise ValueError(f"{source} is shorter ({os.fstat(fd).st_size} bytes) than its committed offset "
                             f"{committed}: it was truncated or replaced; ingest a new file under a new name")
        lines = _read_lines(fd, 0, follow and not stdin, poll_interval, stop)
        stats.offset = committed
        first = next((x for x in lines if x is not _IDLE), None)
        if first is None:
            return stats
        header = _header(first[2], source)
        if committed > first[1]:
            lines.close()
            os.lseek(fd, committed, os.SEEK_SET)
            lines = _read_lines(fd, committed, follow and not stdin, poll_interval, stop)
        b = _Batcher(tenant, store, header, items, cfg, Tombstones(tdir / TOMBSTONES),
                     quarantine_path(tenant, root), key, committed, stats, stop, log,
                     event_type_index(meta.export_version))
        batch: list[tuple[int, int, bytes]] = []
        for line in lines:
            if line is not _IDLE:
                batch.append(line)
            if batch and (line is _IDLE or len(batch) >= batch_size):
                b.commit(batch)
                batch = []
                if stop():
                    break
        if batch:
            b.commit(batch)
        return stats
    finally:
        os.close(fd)


def run_ingest(tenant: str, source: str | Path, root: Path | None = None, redis_url: str | None = None,
               log=print, **kwargs) -> IngestStats:
    """Ingest into the Redis store at `redis_url`, else into an embedded store over the latest export (in this
    process only: see the module docstring). kwargs: those of `ingest`."""
    if redis_url:
        stop = kwargs.get("stop") or (lambda: False)
        try:
            store = waiting(lambda: RedisStore(redis_url, tenant), stop, log, "connect")
        except _Stopped:
            return IngestStats()
    else:
        store = EmbeddedStore.from_export(latest_version(tenant, "export", root) / "artifacts")
        log("[ingest] no --redis: ingesting into an embedded store in this process's memory only (a running server "
            "does not see it); use a Redis store to serve ingested events")
    try:
        return ingest(tenant, source, store, root, log=log, **kwargs)
    finally:
        store.close()


def cli_ingest(tenant: str, source: str, root: Path | None, redis_url: str | None, follow: bool,
               batch_size: int, poll_interval: float) -> None:
    """`tapestry ingest`: SIGTERM / Ctrl-C end a follow run cleanly after the current batch."""
    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.append(True))
    t0 = time.perf_counter()
    s = run_ingest(tenant, source, root, redis_url, follow=follow, batch_size=batch_size,
                   poll_interval=poll_interval, stop=lambda: bool(stopping))
    print(f"[ingest] tenant={tenant} {source}: {s.lines:,} lines -> {s.applied:,} applied, {s.quarantined:,} "
          f"quarantined {s.by_reason or ''}, {s.erased:,} of erased users dropped; offset {s.offset:,} "
          f"({time.perf_counter() - t0:.1f}s); quarantine: {quarantine_path(tenant, root)}")
