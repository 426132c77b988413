"""Two small multi-behaviour tenants as a user hands them to `tapestry etl`: files on disk, nothing in memory.

- `lastfm_subset`: the real HetRec Last.fm 2K files cut to their first users (plays, tag assignments, friends among
  those users, the artists they touch), read by `tapestry etl --dataset hetrec-lastfm --data-dir DIR`;
- `synthetic_files`: the multi-behaviour generator's events (view/click/add_to_cart/purchase, sessions, queries,
  dwell, price, device and location) as CSV, with an item table and a user table whose `friends` column links
  users, read by `tapestry etl --events ... --context-columns device,location --user-links friends`.
"""
from __future__ import annotations

import lzma
from pathlib import Path

import polars as pl

from tapestry.config import datasets_dir

LASTFM = datasets_dir() / "hetrec2011-lastfm-2k"


def _lines(path: Path) -> list[str]:
    """The lines of `path` or of `path`.xz (the staged copy may be either)."""
    xz = path.with_name(path.name + ".xz")
    if xz.exists():
        with lzma.open(xz, "rt", encoding="utf-8") as f:
            return f.readlines()
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def lastfm_present() -> bool:
    return (LASTFM / "user_friends.dat").exists()


def lastfm_subset(dst: Path, users: int = 40) -> Path:
    """The HetRec files restricted to the first `users` users of user_artists.dat, written plain under `dst`."""
    dst.mkdir(parents=True, exist_ok=True)
    plays = _lines(LASTFM / "user_artists.dat")
    keep: list[str] = []
    for line in plays[1:]:
        u = line.split("\t", 1)[0]
        if u not in keep:
            if len(keep) == users:
                break
            keep.append(u)
    kept = set(keep)
    artists: set[str] = set()
    for name, both_users in (("user_artists.dat", False), ("user_taggedartists.dat", False),
                             ("user_friends.dat", True)):
        lines = _lines(LASTFM / name)
        rows = [ln for ln in lines[1:] if ln.split("\t", 1)[0] in kept
                and (not both_users or ln.split("\t")[1].strip() in kept)]
        if not both_users:
            artists.update(ln.split("\t")[1] for ln in rows)
        (dst / name).write_text(lines[0] + "".join(rows), encoding="utf-8")
    lines = _lines(LASTFM / "artists.dat")
    (dst / "artists.dat").write_text(
        lines[0] + "".join(ln for ln in lines[1:] if ln.split("\t", 1)[0] in artists), encoding="utf-8")
    return dst


def synthetic_files(dst: Path, **overrides) -> dict[str, Path]:
    """events.csv, items.csv, users.csv of a small multi-behaviour tenant (each user befriends the next two)."""
    from tapestry.etl.sources import ROW
    from tapestry.etl.synthetic_multi import MultiBehaviourConfig, multi_behaviour_tables

    cfg = MultiBehaviourConfig(**{**dict(num_users=60, num_items=50, num_sessions=250), **overrides})
    tables = multi_behaviour_tables(cfg)
    dst.mkdir(parents=True, exist_ok=True)
    paths = {name: dst / f"{name}.csv" for name in ("events", "items", "users")}
    tables.events.collect().drop(ROW).write_csv(paths["events"])
    tables.items.collect().drop(ROW).write_csv(paths["items"])
    n = cfg.num_users
    users = tables.users.collect().drop(ROW).with_columns(pl.Series(
        "friends", [f"u{(u + 1) % n}|u{(u + 2) % n}" for u in range(n)]))
    users.write_csv(paths["users"])
    return paths
