"""The online store the feature_lookup stage reads: per (tenant, user id) the time-ordered item-index history and
the user-attribute indices, plus the store's metadata (tenant, export and ETL version its values come from).

Point-in-time correctness: item and attribute indices are only meaningful for the ETL version that assigned them
(a new ETL run renumbers items), so a store knows which ETL version it was loaded from and feature_lookup refuses,
at load, a store whose ETL version is not its export manifest's "etl_version" (StoreMismatch). A Redis store that
is reloaded from another ETL version while a server runs makes that server's next lookup fail the same way, never
silently mix index spaces.

Two implementations, one contract (tests/online/test_store.py runs the same tests on both):
- EmbeddedStore (the default, nothing to start): the export's users.parquet in this process's memory. Appends
  and erasures live in that memory only, so ingesting into it makes sense in-process (tests, a notebook); a
  separate `tapestry ingest` process cannot reach a running server's memory. Erasures are the exception: the store
  watches the tenant's tombstone file, so `tapestry erase` reaches a running embedded server too.
- RedisStore(url, tenant): keys under `tapestry:{tenant}:` only (the tenant is validated before it becomes part of
  a key; nothing ever scans across tenants). A load writes a new generation, `tapestry:{t}:{gen}:user:{uid}` (a
  list of item indices) + `tapestry:{t}:{gen}:attrs` (a hash: uid -> "3,7", its presence = a known user) +
  `tapestry:{t}:{gen}:meta` (+ for an export with event types, `tapestry:{t}:{gen}:types:{uid}`, a list aligned
  with the user's, and the marker `tapestry:{t}:{gen}:typed`), then flips the pointer `tapestry:{t}:current` to it in one SET: a reader, which
  resolves the pointer and reads the user in one server-side script, sees the old load or the new one, never
  half of one. Ingest appends and their source offset commit in one MULTI/EXEC, WATCHing the pointer (a flip in
  between retries the batch on the new generation) and the offset key (a second ingest of the same source fails
  instead of applying rows twice).
  A load replaces the tenant's values whole: events ingested since the previous export stay only if the new
  export's ETL run read them (give the ingested files to the next `tapestry etl`); offsets are per source file and
  survive loads.
Reads are never cached: an ingested event is in the next request's history. Redis faults (bounded timeouts,
StoreUnavailable) are tapestry.online.redis_store's.
"""
from __future__ import annotations

import json
import os
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import polars as pl

from tapestry.artifacts import atomic_write_json
from tapestry.config import validate_tenant
from tapestry.online.tombstones import TOMBSTONES, Tombstones

REDIS_URL_ENV = "TAPESTRY_REDIS_URL"
_EMPTY = np.zeros(0, dtype=np.int64)


class StoreMismatch(ValueError):
    """The store holds another tenant's values, or values from another ETL version than the export serves."""


class StoreNotLoaded(ValueError):
    """Nothing has been loaded into the store for this tenant yet."""


class StoreUnavailable(RuntimeError):
    """The store cannot be reached now (Redis down, restarting or not answering within its timeout): a fault of the
    moment, unlike the errors above; the same call may succeed later (tapestry.online.redis_store)."""


class OffsetConflict(RuntimeError):
    """Another ingest process committed an offset for the same source: one process per source."""


@dataclass(frozen=True)
class UserRecord:
    history: np.ndarray   # int64 item indices, oldest first
    attrs: np.ndarray     # int64 user-attribute indices
    # int64 event-type indices aligned with `history` (the export's vocabulary, 0 = unknown; ingest maps each event's
    # type name to it), or None: the export has no types (its models read none), so feature_lookup treats them all
    # as unknown.
    types: np.ndarray | None = None


@dataclass(frozen=True)
class StoreMetadata:
    kind: str             # "embedded" | "redis"
    tenant: str
    export_version: str   # the export's artifacts directory the values were loaded from
    etl_version: str      # the ETL version directory they come from (the export manifest's "etl_version")
    loaded_at: str

    def as_dict(self) -> dict:
        return asdict(self)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def etl_identity(version: str) -> str:
    """`<tenant>/etl/vNNNN`: the identity of an ETL version, whichever root path it was recorded under."""
    return "/".join(Path(str(version)).parts[-3:])


def check_etl_version(meta: StoreMetadata, manifest: dict) -> None:
    if meta.tenant != manifest["tenant"]:
        raise StoreMismatch(f"the online store holds tenant {meta.tenant!r}, the export is tenant "
                            f"{manifest['tenant']!r}")
    if etl_identity(meta.etl_version) != etl_identity(manifest["etl_version"]):
        raise StoreMismatch(
            f"the {meta.kind} online store of tenant {meta.tenant!r} was loaded from ETL version "
            f"{etl_identity(meta.etl_version)!r} (export {meta.export_version}), but this export serves ETL version "
            f"{etl_identity(manifest['etl_version'])!r}: its item indices would not match. Load this export into "
            "the store first (`tapestry load-store`), or serve the export the store was loaded from")


def export_tenant_dir(artifact_dir: Path, tenant: str) -> Path | None:
    """<root>/<tenant> when artifact_dir is <root>/<tenant>/export/vNNNN/artifacts (the exported layout)."""
    p = Path(artifact_dir).resolve()
    return p.parents[2] if len(p.parents) > 2 and p.parents[1].name == "export" and p.parents[2].name == tenant \
        else None


def group_by_user(events: Iterable[tuple]) -> dict[str, tuple[list[int], list[int]]]:
    """(user id, item index[, event type index]) events -> per user, (items, types) in arrival order. The type is
    the export's vocabulary index (name i of manifest `event_types` is i + 1); 0, unknown, when not given."""
    out: dict[str, tuple[list[int], list[int]]] = {}
    for event in events:
        items, types = out.setdefault(event[0], ([], []))
        items.append(int(event[1]))
        types.append(int(event[2]) if len(event) > 2 else 0)
    return out


class OnlineStore(ABC):
    kind: str = ""
    tenant: str = ""

    @abstractmethod
    def metadata(self) -> StoreMetadata: ...

    @abstractmethod
    def get(self, user_id: str) -> UserRecord | None:
        """The user's record, or None for an id the store does not know (an anonymous visitor)."""

    def get_many(self, user_ids: list[str]) -> list[UserRecord | None]:
        """`get` for each id (the rows of a dynamic batch); stores with a network hop answer them in one."""
        return [self.get(uid) for uid in user_ids]

    @abstractmethod
    def append(self, events: Iterable[tuple], source: str | None = None, offset: int | None = None,
               expected_offset: int | None = None) -> None:
        """Append (user id, item index[, event type index]) events to users' histories (a new user id gets a new
        entry, without attributes; a store of a behaviour-aware export keeps the types aligned) and, with
        `source`, commit `offset` for it together with the appends. With `expected_offset`, raise OffsetConflict
        (and apply nothing) unless the source's committed offset is still that value."""

    @abstractmethod
    def committed_offset(self, source: str) -> int: ...

    @abstractmethod
    def erase(self, user_id: str) -> bool:
        """Remove the user at once; True if the store held them."""

    def close(self) -> None:
        pass


class EmbeddedStore(OnlineStore):
    """The export's users.parquet in memory (see the module docstring for what that implies)."""

    kind = "embedded"

    def __init__(self, tenant: str, users: pl.DataFrame, metadata: StoreMetadata | None = None,
                 tombstones: Path | None = None, offsets_path: Path | None = None):
        self.tenant = validate_tenant(tenant)
        self._meta = metadata or StoreMetadata(self.kind, tenant, "", "", _now())
        # users.parquet of a behaviour-aware export has `history_types` (aligned with `history`): kept beside it.
        self._typed = with_types = "history_types" in users.columns
        cols = ("user_id", "history", "attrs", "history_types") if with_types else ("user_id", "history", "attrs")
        self._users = {row[0]: (np.asarray(row[1], dtype=np.int64), np.asarray(row[2], dtype=np.int64),
                                np.asarray(row[3], dtype=np.int64) if with_types else None)
                       for row in users.select(*cols).iter_rows()}
        self._lock = threading.Lock()
        self._tombstones = Tombstones(tombstones)
        self._apply_tombstones()
        # Offsets live with the memory they describe: a new process starts from an empty store, so from offset 0.
        # The file mirrors them after every batch (progress for operators and tests), it is never read back.
        self._offsets: dict[str, int] = {}
        self._offsets_path = offsets_path

    @classmethod
    def from_export(cls, artifact_dir: Path, manifest: dict | None = None) -> "EmbeddedStore":
        artifact_dir = Path(artifact_dir)
        m = manifest or json.loads((artifact_dir / "manifest.json").read_text())
        tdir = export_tenant_dir(artifact_dir, m["tenant"])
        meta = StoreMetadata(cls.kind, m["tenant"], str(artifact_dir.resolve()), str(m["etl_version"]), _now())
        return cls(m["tenant"], pl.read_parquet(artifact_dir / "users.parquet"), meta,
                   tombstones=tdir / TOMBSTONES if tdir else None,
                   offsets_path=tdir / "ingest" / "offsets.json" if tdir else None)

    def _apply_tombstones(self) -> None:
        new = self._tombstones.refresh()   # one stat when nothing changed
        if new:
            with self._lock:
                for uid in new:
                    self._users.pop(uid, None)

    def metadata(self) -> StoreMetadata:
        return self._meta

    def get(self, user_id: str) -> UserRecord | None:
        self._apply_tombstones()
        found = self._users.get(user_id)
        return UserRecord(*found) if found is not None else None

    def get_many(self, user_ids: list[str]) -> list[UserRecord | None]:
        self._apply_tombstones()           # once per batch, not per row
        return [UserRecord(*f) if (f := self._users.get(uid)) is not None else None for uid in user_ids]

    def append(self, events, source=None, offset=None, expected_offset=None) -> None:
        grouped = group_by_user(events)
        with self._lock:
            if source is not None and expected_offset is not None and self._offsets.get(source, 0) != expected_offset:
                raise OffsetConflict(f"{source}: committed offset is {self._offsets.get(source, 0)}, "
                                     f"expected {expected_offset}")
            for uid, (items, kinds) in grouped.items():
                hist, attrs, types = self._users.get(uid, (_EMPTY, _EMPTY, _EMPTY if self._typed else None))
                items = np.asarray(items, dtype=np.int64)
                if types is not None:   # aligned with the items (an event without a type: unknown, 0)
                    types = np.concatenate([types, np.asarray(kinds, dtype=np.int64)])
                self._users[uid] = (np.concatenate([hist, items]), attrs, types)
            if source is not None:
                self._offsets[source] = int(offset)
                if self._offsets_path is not None:
                    atomic_write_json(self._offsets_path, {"store": {**self._meta.as_dict(), "pid": os.getpid()},
                                                           "offsets": self._offsets})

    def committed_offset(self, source: str) -> int:
        return self._offsets.get(source, 0)

    def erase(self, user_id: str) -> bool:
        with self._lock:
            return self._users.pop(user_id, None) is not None


def open_store(artifact_dir: Path, manifest: dict | None = None) -> OnlineStore:
    """The store an export's feature_lookup reads: Redis when $TAPESTRY_REDIS_URL is set or the manifest says
    `"online_store": {"kind": "redis", "url": ...}`, else the embedded users.parquet. Checked against the
    manifest's tenant and ETL version (StoreMismatch, StoreNotLoaded: at load, not at the first request)."""
    artifact_dir = Path(artifact_dir)
    m = manifest or json.loads((artifact_dir / "manifest.json").read_text())
    configured = m.get("online_store") or {}
    url = os.environ.get(REDIS_URL_ENV) or (configured.get("url") if configured.get("kind") == "redis" else None)
    from tapestry.online.redis_store import RedisStore

    store = (RedisStore(url, m["tenant"], etl_version=str(m["etl_version"])) if url
             else EmbeddedStore.from_export(artifact_dir, m))
    check_etl_version(store.metadata(), m)
    return store



def __getattr__(name: str):
    """`RedisStore` lives in tapestry.online.redis_store, which builds on this module: imported when first asked."""
    if name == "RedisStore":
        from tapestry.online.redis_store import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
