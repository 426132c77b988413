"""Stage 1: raw user id (+ events since the export) -> encoded history, seen set, exclude set, user attributes.

Features come from an online store (tapestry.online.store), read on every request (no caching: an ingested event
is in the next request): the embedded default is the exported `users.parquet` in memory; with $TAPESTRY_REDIS_URL
set, or `"online_store": {"kind": "redis", "url": ...}` in the export manifest, a Redis store. A store loaded from
another ETL version than the export's is refused at load. The tenant in the request must match the tenant the
repository was exported for: a request never reads another tenant's features.

RECENT_ITEM_IDS (optional; time order, oldest first) are events newer than the export: they are appended to the
stored history before encoding, exactly as if the export had held them, and join the seen set. Ids the catalogue
does not know are ignored and counted (IGNORED_ITEMS: the client's catalogue may be newer than the export), never
an error; `""` entries are placeholders and not counted.

EVENT_TYPES (optional, one entry per RECENT_ITEM_IDS entry): each recent event's type by name (`view`, `purchase`:
the tenant's ETL event types, case-insensitive) for a behaviour-aware export (manifest "event_types"). HISTORY_TYPES,
aligned with HISTORY, carries the type indices on: the stored ones (users.parquet `history_types`, kept beside
the items by the embedded and the Redis store) then the recent ones. A missing EVENT_TYPES, a "" entry and an event
ingested into the store after the export all give the unknown type 0 (what the model reads for a type it never
saw), so a client that sends no types keeps working. A name outside the vocabulary, or a length that does not match RECENT_ITEM_IDS, is a
request error; an export whose model reads no types ignores the names.

USER_KIND says what was found: a stored user (KNOWN: the served sequential encoder reads the history), an unknown
id with recent events (SESSION: an anonymous visitor; the session encoder reads those events), or nothing usable
(COLD: popularity). Malformed ids (empty user id, not UTF-8, control/invisible characters, too long, too many) are
request errors: tapestry.serving.validate.

The store unreachable (Redis down, restarting, or slower than its 0.5 s timeout: StoreUnavailable, raised at once
while it stays down; tapestry.online.redis_store): by default ($TAPESTRY_STORE_FALLBACK=popularity) every row of
the batch is answered without the store, from its RECENT_ITEM_IDS alone through the served encoder
(STRATEGY `fallback_recent`) or, with none, from popularity (`fallback_popularity`); the stored history is unknown,
so items the user has seen may come back. With $TAPESTRY_STORE_FALLBACK=error those requests fail instead with
Triton's UNAVAILABLE (HTTP 503) naming the store. Either way within the store's timeout, and the next request after
Redis is back reads it again (no restart). The stage logs the outage's start and end (Triton's log).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import polars as pl

from tapestry.inference.padding import left_pad_one
from tapestry.online.store import EmbeddedStore, OnlineStore, StoreUnavailable, open_store
from tapestry.serving import validate as v
from tapestry.serving.stage import (USER_COLD, USER_FALLBACK_COLD, USER_FALLBACK_RECENT, USER_KNOWN, USER_SESSION,
                                    RequestError, Stage, Unavailable, checked_rows, export_manifest, one_row)

_NOTHING = np.zeros(0, np.int64)
FALLBACK_ENV = "TAPESTRY_STORE_FALLBACK"
FALLBACKS = ("popularity", "error")    # what a request gets while the store is unreachable (the docstring)


class FeatureLookup(Stage):
    name = "feature_lookup"
    inputs = ("TENANT", "USER_ID", "EXCLUDE_ITEM_IDS", "RECENT_ITEM_IDS", "EVENT_TYPES")
    optional_inputs = frozenset({"RECENT_ITEM_IDS", "EVENT_TYPES"})
    outputs = ("HISTORY", "SEEN", "EXCLUDE", "USER_ATTRS", "USER_KIND", "IGNORED_ITEMS", "HISTORY_TYPES")

    def __init__(self, tenant: str, max_len: int, users: pl.DataFrame | None = None, item_ids: list[str] = (),
                 num_attrs: int = 0, store: OnlineStore | None = None, fallback: str | None = None,
                 event_types: list[str] | None = None):
        """`store`, or `users` (a users.parquet frame) for an embedded one; `fallback`: one of FALLBACKS (default
        $TAPESTRY_STORE_FALLBACK, else "popularity"); `event_types`: the served model's event-type vocabulary
        (name i is index i + 1; None: it reads no types)."""
        self.event_types = list(event_types) if event_types else None
        self._type_index = {name.lower(): i + 1 for i, name in enumerate(self.event_types or [])}
        self.fallback = fallback or os.environ.get(FALLBACK_ENV) or FALLBACKS[0]
        if self.fallback not in FALLBACKS:
            raise ValueError(f"{FALLBACK_ENV} must be one of {FALLBACKS}, not {self.fallback!r}")
        self._outage = False
        self.tenant = tenant
        self.max_len = max_len
        self.num_attrs = num_attrs
        self.store = store if store is not None else EmbeddedStore(tenant, users)
        if self.store.tenant != tenant:
            raise ValueError(f"online store of tenant {self.store.tenant!r} given to feature_lookup of {tenant!r}")
        self._items = {iid: i for i, iid in enumerate(item_ids) if i > 0}

    @classmethod
    def from_artifacts(cls, artifact_dir: Path) -> "FeatureLookup":
        artifact_dir = Path(artifact_dir)
        m = export_manifest(artifact_dir)
        items = pl.read_parquet(artifact_dir / "items.parquet").sort("item_idx")
        item_ids = [""] * (int(items["item_idx"].max()) + 1)
        for idx, iid in items.select("item_idx", "item_id").iter_rows():
            item_ids[idx] = iid
        return cls(m["tenant"], m["max_len"], item_ids=item_ids, num_attrs=m["num_user_attrs"],
                   store=open_store(artifact_dir, m), event_types=m.get("event_types"))

    def __call__(self, t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return one_row(self.batch([t]))

    def _request(self, t: dict[str, np.ndarray]) -> tuple[str, list[str], list[tuple[str, int]]]:
        """(user id, exclude ids, the recent events as (item id, event-type index), "" placeholders dropped)."""
        v.tenant(t, self.tenant)
        user_id = v.single_text(t, "USER_ID")
        exclude_ids = v.texts(t, "EXCLUDE_ITEM_IDS", max_size=v.MAX_EXCLUDE_IDS)
        recent_ids = (v.texts(t, "RECENT_ITEM_IDS", max_size=v.MAX_RECENT_IDS)
                      if t.get("RECENT_ITEM_IDS") is not None else [])
        types = self._recent_types(t, len(recent_ids))
        return user_id, exclude_ids, [(x, ty) for x, ty in zip(recent_ids, types) if x]

    def _recent_types(self, t: dict[str, np.ndarray], count: int) -> list[int]:
        """EVENT_TYPES as indices, one per RECENT_ITEM_IDS entry (all 0 when absent or only placeholders)."""
        names = (v.texts(t, "EVENT_TYPES", max_size=v.MAX_RECENT_IDS)
                 if t.get("EVENT_TYPES") is not None else [])
        if not any(names):
            return [0] * count
        if len(names) != count:
            raise RequestError(f"EVENT_TYPES has {len(names)} entries but RECENT_ITEM_IDS has {count}: one event "
                               "type per recent item")
        if self.event_types is None:
            return [0] * count          # the served model reads no event types
        unknown = sorted({n for n in names if n and n.lower() not in self._type_index})
        if unknown:
            raise RequestError(f"EVENT_TYPES: unknown event type(s) {', '.join(map(v.shown, unknown[:5]))}; this "
                               f"tenant's event types are {', '.join(self.event_types)}")
        return [self._type_index[n.lower()] if n else 0 for n in names]

    def batch(self, rows: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray] | Exception]:
        """The rows' users are read from the store in one call (one round trip to Redis)."""
        out, passed = checked_rows(rows, self._request)
        if passed:
            records, fallback = self._records([user_id for _, (user_id, _, _) in passed])
            for (i, (_, exclude_ids, recent_ids)), record in zip(passed, records):
                out[i] = self._features(record, exclude_ids, recent_ids, fallback)
        return out

    def _records(self, user_ids: list[str]) -> tuple[list, bool]:
        """The users' records and False; while the store is unreachable, no records and True (or Unavailable)."""
        try:
            records = self.store.get_many(user_ids)
        except StoreUnavailable as e:
            if not self._outage:
                self._outage = True
                print(f"[feature_lookup] tenant={self.tenant}: online store unavailable, answering "
                      f"{'UNAVAILABLE' if self.fallback == 'error' else 'without it (fallback_*)'}: {e}",
                      file=sys.stderr, flush=True)
            if self.fallback == "error":
                raise Unavailable(f"online store unavailable: {e}") from None
            return [None] * len(user_ids), True
        if self._outage:
            self._outage = False
            print(f"[feature_lookup] tenant={self.tenant}: online store reachable again", file=sys.stderr, flush=True)
        return records, False

    def _features(self, record, exclude_ids: list[str], recent_events: list[tuple[str, int]],
                  fallback: bool = False) -> dict[str, np.ndarray]:
        known = record is not None
        stored, attrs = (record.history, record.attrs) if known else (_NOTHING, _NOTHING)
        stored_types = record.types if known and record.types is not None else None
        if stored_types is None or len(stored_types) != len(stored):   # a store without types: all unknown
            stored_types = np.zeros(len(stored), dtype=np.int64)
        recent = [(self._items.get(x, 0), ty) for x, ty in recent_events]
        ignored = sum(1 for i, _ in recent if i == 0)
        history = np.concatenate([stored, np.asarray([i for i, _ in recent if i], dtype=np.int64)])
        types = np.concatenate([stored_types, np.asarray([ty for i, ty in recent if i], dtype=np.int64)])
        kind = USER_COLD if history.size == 0 else (USER_KNOWN if known else USER_SESSION)
        if fallback:
            kind = USER_FALLBACK_COLD if history.size == 0 else USER_FALLBACK_RECENT
        exclude = [self._items.get(x, 0) for x in exclude_ids]
        user_attrs = np.zeros(self.num_attrs, dtype=np.float32)
        user_attrs[attrs] = 1.0
        # SEEN and EXCLUDE always carry a leading 0 (the padding id) so they are never zero-sized tensors.
        return {
            "HISTORY": left_pad_one(history, self.max_len),  # the newest item is always last
            "SEEN": np.concatenate([[0], np.unique(history)]).astype(np.int64),
            "EXCLUDE": np.array(sorted({0, *exclude}), dtype=np.int64),
            "USER_ATTRS": user_attrs,
            "USER_KIND": np.array([kind], dtype=np.int32),
            "IGNORED_ITEMS": np.array([ignored], dtype=np.int32),
            "HISTORY_TYPES": left_pad_one(types, self.max_len),   # aligned with HISTORY
        }
