"""MovieLens adapters: ML-1M (`::`-separated .dat) and ML-100K (`u.data`/`u.item`/`u.user`) -> RawTables.

Lines that do not split into the expected number of fields are not dropped: they come back in
`RawTables.rejected` with reason `malformed_line` and end up in the quarantine file.
"""
from __future__ import annotations

from pathlib import Path

import polars as pl

from tapestry.etl.schema import MALFORMED_LINE
from tapestry.etl.sources import ROW, RawTables, read_bytes

ML1M_AGE_GROUPS = {
    "1": "under-18", "18": "18-24", "25": "25-34", "35": "35-44", "45": "45-49", "50": "50-55", "56": "56+",
}
ML1M_OCCUPATIONS = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer", "programmer",
    "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer", "tradesman/craftsman",
    "unemployed", "writer",
]
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]


# ../shared/datasets/ml-1m keeps only the first 487,650 lines of ratings.dat (users 1-2999), compressed.
ML1M_PARTIAL_RATINGS = "partial/ratings.users-0001-2999.dat"


def ml1m_ratings_note(ratings: Path) -> str:
    """Which ML-1M ratings a run read, in words (kept in the ETL manifest's sources and the demo report)."""
    name = Path(ratings).name
    if name in ("ratings.dat", "ratings.dat.xz"):
        return "full ratings.dat (GroupLens ML-1M: 1,000,209 ratings by all 6,040 users)"
    if name.startswith(Path(ML1M_PARTIAL_RATINGS).name):
        return ("PARTIAL: the first 487,650 lines of ratings.dat (users 1-2999 only); numbers are not comparable "
                "with published ML-1M results (`tapestry datasets fetch ml-1m` gets the full file)")
    return f"a user-supplied ratings file ({name})"


def _split_lines(path: Path, separator: str, names: list[str], encoding: str, source: str,
                 min_fields: int | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split a delimited text file into named string columns; lines with the wrong field count are rejected."""
    text = read_bytes(path).decode(encoding)
    # Split on "\n" only: str.splitlines() also breaks at \x85, \x0c, \x1c-\x1e, which latin-1 text may contain.
    lines = pl.DataFrame({"line": [ln.removesuffix("\r") for ln in text.split("\n")]})
    lines = lines.with_row_index(ROW).with_columns(pl.col(ROW).cast(pl.Int64))
    lines = lines.filter(pl.col("line").str.strip_chars() != "")  # a trailing blank line is not a record
    parts = lines.with_columns(pl.col("line").str.split(separator).alias("_f"))
    n = pl.col("_f").list.len()
    ok = (n >= min_fields) if min_fields is not None else (n == len(names))
    good = parts.filter(ok).select(
        ROW, *[pl.col("_f").list.get(i, null_on_oob=True).alias(c) for i, c in enumerate(names)]
    )
    bad = parts.filter(~ok).select(ROW, pl.col("line").alias("raw_line"),
                                   pl.lit(source).alias("source"), pl.lit(MALFORMED_LINE).alias("reason"))
    return good, bad


def _age_bucket(age: pl.Expr) -> pl.Expr:
    """ML-100K gives exact ages; bucket them like ML-1M so both adapters produce the same entity values."""
    a = age.cast(pl.Int64, strict=False)
    return (pl.when(a < 18).then(pl.lit("under-18")).when(a < 25).then(pl.lit("18-24"))
            .when(a < 35).then(pl.lit("25-34")).when(a < 45).then(pl.lit("35-44"))
            .when(a < 50).then(pl.lit("45-49")).when(a < 56).then(pl.lit("50-55"))
            .when(a.is_not_null()).then(pl.lit("56+")).otherwise(None))


def _event_types(events: pl.LazyFrame, like_at: int | None) -> pl.LazyFrame:
    """Every rating is a "rating" event; with `like_at`, a rating >= like_at is a "like" and any other a "view"
    (two behaviours for the typed graph; the weight stays the rating). An unparsable rating becomes a "view"
    here and is quarantined by the ETL as a bad weight."""
    if like_at is None:
        return events.with_columns(pl.lit("rating").alias("event_type"))
    liked = pl.col("weight").str.strip_chars().cast(pl.Float64, strict=False) >= like_at
    return events.with_columns(pl.when(liked).then(pl.lit("like")).otherwise(pl.lit("view")).alias("event_type"))


def movielens_1m(directory: Path, ratings: Path | None = None, like_at: int | None = None) -> RawTables:
    """ML-1M from its directory; `ratings` overrides the ratings file (e.g. the partial copy, or .xz); `like_at`
    (e.g. 4) splits the ratings into "like" and "view" events (see _event_types)."""
    directory = Path(directory)
    ratings = Path(ratings) if ratings else directory / "ratings.dat"
    ev, ev_bad = _split_lines(ratings, "::", ["user_id", "item_id", "weight", "timestamp"], "latin-1", "events")
    items, it_bad = _split_lines(directory / "movies.dat", "::", ["item_id", "title", "genre"], "latin-1", "items")
    users, us_bad = _split_lines(directory / "users.dat", "::",
                                 ["user_id", "gender", "age", "occupation", "zip"], "latin-1", "users")
    users = users.with_columns(
        pl.col("age").replace_strict(ML1M_AGE_GROUPS, default=None).alias("age_group"),
        pl.col("occupation").cast(pl.Int64, strict=False)
        .replace_strict(dict(enumerate(ML1M_OCCUPATIONS)), default=None, return_dtype=pl.String),
    )
    return RawTables(
        events=_event_types(ev.lazy(), like_at),
        items=items.lazy(), users=users.lazy(),
        item_entity_columns=["genre"], user_entity_columns=["gender", "age_group", "occupation"],
        rejected=[ev_bad, it_bad, us_bad],
        sources={"events": str(ratings), "items": str(directory / "movies.dat"),
                 "users": str(directory / "users.dat"), "ratings": ml1m_ratings_note(ratings)},
    )


def movielens_100k(directory: Path, ratings: Path | None = None, like_at: int | None = None) -> RawTables:
    """ML-100K from its directory; `like_at` as for movielens_1m."""
    directory = Path(directory)
    if ratings is None:
        ratings = directory / "u.data"
        if not ratings.exists() and (directory / "u.data.xz").exists():
            ratings = directory / "u.data.xz"
    ev, ev_bad = _split_lines(Path(ratings), "\t", ["user_id", "item_id", "weight", "timestamp"], "latin-1",
                              "events")
    item_cols = ["item_id", "title", "release_date", "video_release_date", "imdb_url", *ML100K_GENRES]
    items, it_bad = _split_lines(directory / "u.item", "|", item_cols, "latin-1", "items")
    # The 19 genre flags become one pipe-separated `genre` column, like ML-1M's.
    genre_list = pl.concat_list([pl.when(pl.col(g) == "1").then(pl.lit(g)) for g in ML100K_GENRES]).list.drop_nulls()
    items = items.with_columns(genre_list.list.join("|").alias("genre")).select(ROW, "item_id", "title", "genre")
    users, us_bad = _split_lines(directory / "u.user", "|", ["user_id", "age", "gender", "occupation", "zip"],
                                 "latin-1", "users")
    users = users.with_columns(_age_bucket(pl.col("age")).alias("age_group"))
    return RawTables(
        events=_event_types(ev.lazy(), like_at),
        items=items.lazy(), users=users.lazy(),
        item_entity_columns=["genre"], user_entity_columns=["gender", "age_group", "occupation"],
        rejected=[ev_bad, it_bad, us_bad],
        sources={"events": str(ratings), "items": str(directory / "u.item"), "users": str(directory / "u.user")},
    )
