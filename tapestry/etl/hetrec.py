"""HetRec 2011 Last.fm 2K (../shared/datasets/hetrec2011-lastfm-2k; plain or .xz) -> RawTables, multi-entity.

- Plays (`user_artists.dat`: userID, artistID, weight = play count) -> events of type "play" with the count as
  `weight`. The file has no times, so the split is FIXED, given here (seeded by `seed`): per user, one random
  played artist that the user never tagged is `test`, another `valid`, the others `train` (users with fewer than
  3 plays or 2 untagged artists stay wholly in train). Why untagged: a tag assignment is an event of the user's
  history, and evaluation never ranks a history item, so a held-out artist the user had tagged could not be hit.
  Play timestamps are SYNTHETIC: SYNTHETIC_BASE + the play's position in the user's random order (train, then
  valid, then test); nothing about them is real, so no model should read time features of plays.
- Tag assignments (`user_taggedartists.dat`: userID, artistID, tagID, day, month, year) -> events of type "tag"
  at that date (UTC midnight), all `train`, with the tag id in the context column `tag`: "user U tagged artist A
  with tag T" is one event, a mediated node in a typed graph with mediated=True. A handful of rows dated before
  1990 (years 1956, 1957, 1979) are quarantined by the ETL's timestamp window (`timestamp_out_of_range`).
- Friends (`user_friends.dat`, symmetric) -> the user table's `friends` column (`a|b`), a user link column.
- Artists (`artists.dat`) -> the item table (item_id, title = name). Tag assignments name artists absent from it
  (a known quirk of the data): they are items too, without a title.
Run it with hetrec_etl_config() (event types play/tag, context column tag).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from tapestry.config import ETLConfig
from tapestry.etl.movielens import _split_lines
from tapestry.etl.schema import ENTITY_VALUE_SEPARATOR, SPLIT_COLUMN
from tapestry.etl.sources import ROW, RawTables, find_file

SYNTHETIC_BASE = 1_262_304_000        # 2010-01-01T00:00:00Z, inside ETLConfig's timestamp window
EVENT_TYPES = ("play", "tag")
CONTEXT_COLUMNS = ("tag",)
TIMESTAMP_NOTE = (f"plays: synthetic ({SYNTHETIC_BASE} + position in the user's seeded random order, held-out last);"
                  " tags: the file's day/month/year at 00:00 UTC")


def hetrec_etl_config(**overrides) -> ETLConfig:
    return ETLConfig(event_types=EVENT_TYPES, context_columns=CONTEXT_COLUMNS, **overrides)


def _read(directory: Path, name: str, columns: list[str], source: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A tab-separated UTF-8 file with a header line -> (string rows without the header, malformed lines)."""
    path = find_file(directory, name)
    good, bad = _split_lines(path, "\t", columns, "utf-8", source)
    return good.filter(pl.col(ROW) > 0), bad.filter(pl.col(ROW) > 0).with_columns(pl.lit(name).alias("file"))


def _split_plays(plays: pl.DataFrame, tagged: pl.DataFrame, seed: int) -> pl.DataFrame:
    """`split` and a synthetic `timestamp` for every play (see the module docstring)."""
    rng = np.random.default_rng(seed)
    plays = plays.with_columns(pl.Series("_r", rng.random(plays.height)))
    plays = plays.join(tagged.with_columns(pl.lit(True).alias("_tagged")), on=["user_id", "item_id"], how="left",
                       maintain_order="left").with_columns(pl.col("_tagged").fill_null(False))
    untagged_rank = (pl.when(~pl.col("_tagged")).then(pl.col("_r")).otherwise(None)
                     .rank("ordinal", descending=True).over("user_id"))
    eligible = ((pl.len().over("user_id") >= 3) & ((~pl.col("_tagged")).sum().over("user_id") >= 2))
    plays = plays.with_columns(
        pl.when(eligible & (untagged_rank == 1)).then(pl.lit("test"))
        .when(eligible & (untagged_rank == 2)).then(pl.lit("valid")).otherwise(pl.lit("train")).alias(SPLIT_COLUMN))
    order = pl.col(SPLIT_COLUMN).replace_strict({"train": 0, "valid": 1, "test": 2}, return_dtype=pl.Int64)
    position = (order * 2 + pl.col("_r")).rank("ordinal").over("user_id").cast(pl.Int64) - 1   # r in [0, 1)
    return plays.with_columns((SYNTHETIC_BASE + position).cast(pl.String).alias("timestamp")).drop(
        "_r", "_tagged")


def hetrec_lastfm(directory: Path, seed: int = 0) -> RawTables:
    directory = Path(directory)
    plays, bad_plays = _read(directory, "user_artists.dat", ["user_id", "item_id", "weight"], "events")
    tags, bad_tags = _read(directory, "user_taggedartists.dat",
                           ["user_id", "item_id", "tag", "day", "month", "year"], "events")
    friends, bad_friends = _read(directory, "user_friends.dat", ["user_id", "friend_id"], "users")
    artists, bad_artists = _read(directory, "artists.dat", ["item_id", "title", "url", "picture_url"], "items")

    plays = _split_plays(plays, tags.select("user_id", "item_id").unique(), seed)
    date = pl.format("{}-{}-{}", "year", pl.col("month").str.zfill(2), pl.col("day").str.zfill(2))
    tags = tags.with_columns(
        pl.lit("tag").alias("event_type"), pl.lit("1").alias("weight"), pl.lit("train").alias(SPLIT_COLUMN),
        date.str.to_datetime("%Y-%m-%d", strict=False, time_zone="UTC").dt.epoch("s").cast(pl.String)
        .fill_null(date).alias("timestamp"))     # an impossible date stays as text: the ETL quarantines it
    cols = ["user_id", "item_id", "event_type", "timestamp", "weight", "tag", SPLIT_COLUMN, "file", "file_row"]
    events = pl.concat([
        plays.with_columns(pl.lit("play").alias("event_type"), pl.lit(None, dtype=pl.String).alias("tag"),
                           pl.lit("user_artists.dat").alias("file"), pl.col(ROW).alias("file_row")).select(cols),
        tags.with_columns(pl.lit("user_taggedartists.dat").alias("file"), pl.col(ROW).alias("file_row"))
        .select(cols),
    ]).with_row_index(ROW).with_columns(pl.col(ROW).cast(pl.Int64))   # source_row: plays, then tags, file order
    users = (friends.group_by("user_id", maintain_order=True)
             .agg(pl.col("friend_id").str.join(ENTITY_VALUE_SEPARATOR).alias("friends"))
             .with_row_index(ROW).with_columns(pl.col(ROW).cast(pl.Int64)))
    return RawTables(
        events=events.lazy(), items=artists.select(ROW, "item_id", "title").lazy(), users=users.lazy(),
        item_entity_columns=[], user_entity_columns=[], user_link_columns=["friends"],
        rejected=[b for b in (bad_plays, bad_tags, bad_friends, bad_artists) if b.height],
        sources={"events": str(find_file(directory, "user_artists.dat")),
                 "tag_events": str(find_file(directory, "user_taggedartists.dat")),
                 "items": str(find_file(directory, "artists.dat")),
                 "users": str(find_file(directory, "user_friends.dat")), "timestamps": TIMESTAMP_NOTE})
