"""GDPR erasure: `<root>/<tenant>/tombstones.jsonl`, one line per erased user id: `{"user_id", "erased_at"}`.

A tombstone holds the id and the time only, never event data. It is permanent for that id, and every path honours
it the same way, so erased data never comes back:
- `tapestry erase` removes the user from the Redis store at once, and their rows from the ingest quarantine; an
  embedded store (a server's own memory) notices the new line on its next lookup (one stat) and drops the user;
- loading an export into Redis (or an embedded store from users.parquet) skips tombstoned users;
- `tapestry ingest` drops their new events (counted as `erased`, not quarantined: erased data is not kept);
- `run_etl` drops their events, valid or not, and their user-table rows, counting them as `erased_rows` /
  `erased_user_rows` in the manifest (never in quarantine).
Lines that a native adapter could not even split into fields (`malformed_line`) cannot be attributed to a user and
are kept as they are.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import polars as pl

from tapestry.artifacts import tenant_dir
from tapestry.online.jsonl import append_jsonl, read_jsonl

TOMBSTONES = "tombstones.jsonl"


def tombstone_path(tenant: str, root: Path | None = None) -> Path:
    return tenant_dir(tenant, root) / TOMBSTONES


def check_user_id(user_id: str) -> str:
    """The id as the ETL stores it (stripped), or ValueError if the ETL's id policy would refuse it."""
    from tapestry.etl.validate import bad_id

    uid = (user_id or "").strip()
    if not uid or pl.DataFrame({"u": [uid]}).select(bad_id("u")).item():
        raise ValueError(f"invalid user id {user_id!r}: empty, control/invisible characters, over 256 characters "
                         "or a formula-like prefix (the ETL's id policy)")
    return uid


def append_tombstone(tenant: str, user_id: str, root: Path | None = None) -> dict:
    entry = {"user_id": check_user_id(user_id), "erased_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    append_jsonl(tombstone_path(tenant, root), [entry])
    return entry


class Tombstones:
    """The erased ids of one tombstone file, read incrementally: `refresh()` costs one stat when nothing changed."""

    def __init__(self, path: Path | None):
        self.path = Path(path) if path is not None else None
        self.ids: set[str] = set()
        self._pos = 0

    def refresh(self) -> set[str]:
        """Ids tombstoned since the last call (all of them on the first)."""
        if self.path is None:
            return set()
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            return set()
        if size == self._pos:
            return set()
        if size < self._pos:          # rewritten by hand: read it again (ids never leave the set)
            self._pos = 0
        new = set()
        for pos, record in read_jsonl(self.path, self._pos):
            self._pos = pos
            uid = record.get("user_id") if isinstance(record, dict) else None
            if isinstance(uid, str) and uid not in self.ids:
                new.add(uid)
        self.ids |= new
        return new


def erased_user_ids(tenant: str, root: Path | None = None) -> frozenset[str]:
    t = Tombstones(tombstone_path(tenant, root))
    t.refresh()
    return frozenset(t.ids)


def _of_erased(erased: frozenset[str]) -> pl.Expr:
    # Raw ids are compared stripped, as validation stores them; a null id belongs to nobody.
    return pl.col("user_id").cast(pl.String).str.strip_chars().is_in(sorted(erased)).fill_null(False)


def drop_erased_events(good: pl.LazyFrame, bad: pl.LazyFrame, erased: frozenset[str]
                       ) -> tuple[pl.LazyFrame, pl.LazyFrame, int]:
    """The ETL's valid and quarantined event rows without the erased users' rows, and how many were dropped."""
    if not erased:
        return good, bad, 0
    n = sum(lf.filter(_of_erased(erased)).select(pl.len()).collect().item() for lf in (good, bad))
    return good.filter(~_of_erased(erased)), bad.filter(~_of_erased(erased)), n


def drop_erased_users(users: pl.LazyFrame | None, erased: frozenset[str]) -> tuple[pl.LazyFrame | None, int]:
    """A user table without the erased users' rows, and how many were dropped."""
    if users is None or not erased:
        return users, 0
    return users.filter(~_of_erased(erased)), users.filter(_of_erased(erased)).select(pl.len()).collect().item()
