"""`tapestry erase`: forget a user (GDPR erasure). See tapestry.online.tombstones for what a tombstone means.

The tombstone is written first, then the user is removed from the Redis store and their lines are removed from the
ingest quarantine: a crash in between still erases them (the next load, ingest and ETL honour the tombstone).
Without Redis, an embedded store (a running server's memory) applies the tombstone on its next lookup. Versions
already on disk (older etl/ and export/ directories) still hold the user's rows until they are deleted.
"""
from __future__ import annotations

from pathlib import Path

from tapestry.online.ingest import quarantine_path
from tapestry.online.jsonl import rewrite_jsonl
from tapestry.online.store import RedisStore, StoreUnavailable
from tapestry.online.tombstones import append_tombstone


def erase_user(tenant: str, user_id: str, root: Path | None = None, redis_url: str | None = None) -> dict:
    """Tombstone `user_id`, remove them from the Redis store at `redis_url` (if given) and from the ingest
    quarantine. Returns the tombstone plus `removed_from_store` (None without Redis) and `quarantine_rows_removed`."""
    entry = append_tombstone(tenant, user_id, root)
    uid, removed = entry["user_id"], None
    purged = rewrite_jsonl(quarantine_path(tenant, root), lambda r: str(
        (r.get("row") or {}).get("user_id", "")).strip() == uid)
    if redis_url:
        try:
            store = RedisStore(redis_url, tenant)
            try:
                removed = store.erase(uid)
            finally:
                store.close()
        except StoreUnavailable as e:
            raise StoreUnavailable(f"user {uid} is tombstoned and out of the ingest quarantine, but NOT yet removed "
                                   f"from the Redis store: {e}; run the same `tapestry erase` again once Redis "
                                   "answers") from None
    return {**entry, "removed_from_store": removed, "quarantine_rows_removed": purged}
