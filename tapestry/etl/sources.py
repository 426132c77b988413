"""Reading raw tables: generic CSV/Parquet (optionally compressed) into all-string lazy frames.

Everything is read as strings so that a bad value never aborts the read: validation decides per row and
quarantines what does not parse. File-level handling (compression, encodings, CSV quirks) is in rawfiles.py.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import polars as pl

from tapestry.etl.rawfiles import (COMPRESSION_SUFFIXES, ROW, compression_of, default_scratch, normalise_encoding,
                                   open_binary, readable, scan_csv, scan_csv_unchecked)
from tapestry.etl.schema import ENTITY_VALUE_SEPARATOR, EVENT_COLUMNS, MALFORMED_LINE, SchemaError


@dataclass
class RawTables:
    """A tenant's raw input, as all-string frames, each with a 0-based `source_row`.

    `rejected` holds rows a native adapter could not even split into fields (reason `malformed_line`).
    """
    events: pl.LazyFrame
    items: pl.LazyFrame | None = None
    users: pl.LazyFrame | None = None
    # Item-table columns to turn into entity nodes (None: every non-text column); user-table likewise.
    item_entity_columns: list[str] | None = None
    user_entity_columns: list[str] | None = None
    # Item content columns (tapestry.etl.catalogue writes item_content.parquet from them): text columns (None: the
    # table's title/name/description/text) and numeric ones (None: none); categories are item_entity_columns.
    item_text_columns: list[str] | None = None
    item_numeric_columns: list[str] | None = None
    # User-table columns whose values are other users' ids (`a|b`: two), e.g. friends: written as user_links.parquet
    # (relation = column name) and never entity types. None: no links.
    user_link_columns: list[str] | None = None
    rejected: list[pl.DataFrame] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    # Holds the scratch copies (decompressed or re-encoded inputs) that the lazy frames scan: removed with it.
    scratch: tempfile.TemporaryDirectory | None = None
    # Set when `events` is a CSV scan not yet known to parse (generic_tables(check_events=False)): the re-read
    # through the csv module, for when collecting `events` fails (run_etl does that, in validate_to_parquet).
    reread_events: Callable[[], pl.LazyFrame] | None = None
    # (path, separator) when `events` scans a plain (uncompressed) UTF-8 text file: the distributed ETL may then
    # cut that file into byte ranges (tapestry/etl/partition.py). None for any other input.
    events_csv: tuple[Path, str] | None = None


def read_bytes(path: Path) -> bytes:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input file not found: {path}")
    with open_binary(path, compression_of(path)) as f:   # whole, decompressed: the native adapters' small files
        return f.read()


def find_file(directory: Path, name: str) -> Path:
    """`directory/name`, else its `.xz` copy: the shared data sets are stored compressed, a user's may not be."""
    for candidate in (Path(directory) / name, Path(directory) / f"{name}.xz"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"input file not found: {Path(directory) / name} (or {name}.xz)")


# A `user item item ...` line: whitespace-separated non-negative integer ids, a user and at least one item.
# ([0-9], not \d: the regex engine's \d also matches non-ASCII digits.)
_USER_ITEMS_LINE = r"^\s*[0-9]+(?:\s+[0-9]+)+\s*$"


def read_user_item_lines(path: Path, source: str = "events") -> tuple[pl.DataFrame, pl.DataFrame]:
    """A `user item item ...` file (the LightGCN and S3-Rec format) -> one string row per (user, item), in order.

    Events: source_line (0-based line number), user_id, item_id (ids as written), position (0-based index of the
    item within its line). The caller adds `source_row`, the event's index across its inputs: one line holds many
    events, so a line number alone would not order ties. A line that is not integers with at least one item is
    rejected whole (`malformed_line`, `source_row` = its line number, one input row); blank lines are not records.
    """
    text = read_bytes(path).decode("utf-8", errors="replace")
    lines = pl.DataFrame({"raw_line": text.split("\n")}).with_row_index("source_line")
    lines = lines.with_columns(pl.col("source_line").cast(pl.Int64)).filter(pl.col("raw_line").str.strip_chars() != "")
    ok = pl.col("raw_line").str.contains(_USER_ITEMS_LINE)
    ids = lines.filter(ok).select("source_line", pl.col("raw_line").str.extract_all("[0-9]+").alias("_ids"))
    events = ids.select(
        "source_line",
        pl.col("_ids").list.first().alias("user_id"),
        pl.col("_ids").list.slice(1).alias("item_id"),
        pl.int_ranges(0, pl.col("_ids").list.len() - 1).alias("position"),
    ).explode("item_id", "position")
    bad = lines.filter(~ok).select(pl.col("source_line").alias(ROW), "raw_line", pl.lit(source).alias("source"),
                                   pl.lit(MALFORMED_LINE).alias("reason"))
    return events, bad


def _base_suffix(path: Path) -> str:
    """`.csv` for events.csv.gz: the format suffix under any compression suffix."""
    path = Path(path)
    return Path(path.stem).suffix if path.suffix.lower() in COMPRESSION_SUFFIXES else path.suffix


_TEXT_SUFFIXES = (".csv", ".tsv", ".txt")


def _separator(path: Path, default: str = ",") -> str:
    return "\t" if _base_suffix(path).lower() == ".tsv" else default


# Event columns read as ids: a NaN in a float id column is a missing id, not the id "NaN".
_ID_COLUMNS = ("user_id", "item_id", "session_id")


def _to_string(name: str, dtype: pl.DataType) -> pl.Expr:
    """A typed Parquet column as the text a CSV export of it would hold, so both inputs validate alike."""
    c = pl.col(name)
    if dtype == pl.String:
        return c
    if dtype.is_float():
        # 3.0 -> "3" (an integer id or unix time written as a float); other values keep their decimal text.
        integral = c.is_finite() & (c == c.round(0)) & (c.abs() < 2.0 ** 53)
        text = pl.when(integral).then(c.cast(pl.Int64).cast(pl.String)).otherwise(c.cast(pl.String))
        return pl.when(c.is_nan()).then(None).otherwise(text) if name in _ID_COLUMNS else text
    if isinstance(dtype, pl.Datetime):
        return c.dt.epoch("s").cast(pl.String)                        # naive = UTC, like ISO text
    if dtype == pl.Date:
        return c.cast(pl.Datetime("us")).dt.epoch("s").cast(pl.String)
    if isinstance(dtype, (pl.List, pl.Array)):
        # A list attribute (tags, genres) as `a|b`: the entity-value separator.
        return c.cast(pl.List(dtype.inner)).list.eval(pl.element().cast(pl.String)).list.join(ENTITY_VALUE_SEPARATOR)
    if isinstance(dtype, pl.Struct):
        return c.struct.json_encode()
    return c.cast(pl.String, strict=False)      # ints, bools, decimals, categoricals; undecodable binary -> null


def _scan_parquet(path: Path, scratch: Path) -> pl.LazyFrame:
    path, _ = readable(path, "utf-8", scratch, polars_reads=(None,))
    lf = pl.scan_parquet(path)
    return lf.select([_to_string(n, d).alias(n) for n, d in lf.collect_schema().items()])


def read_table(path: Path, separator: str = ",", source: str = "events",
               rejected: list[pl.DataFrame] | None = None, encoding: str = "utf-8",
               scratch: Path | None = None) -> pl.LazyFrame:
    """A CSV/TSV or Parquet file (plain, gzip, xz, bz2 or zstd) as an all-string LazyFrame with `source_row`.

    `encoding` applies to text files (UTF-8 with or without BOM by default; e.g. "latin-1" when the tenant says
    so). Lines that cannot be parsed are appended to `rejected` with reason `malformed_line` (see rawfiles.py);
    typed Parquet columns become the text a CSV would hold (see _to_string). Compressed or re-encoded inputs are
    copied into `scratch` (default: a process-wide temp dir), which must outlive the returned frame.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input file not found: {path}")
    scratch = scratch or default_scratch()
    suffix = _base_suffix(path).lower()
    if suffix == ".parquet":
        lf = _scan_parquet(path, scratch)
    elif suffix in _TEXT_SUFFIXES:
        return scan_csv(path, _separator(path, separator), source, scratch, rejected, encoding)
    else:
        raise SchemaError(f"unsupported file type for {path}: use .csv, .tsv, .parquet "
                          f"(optionally {', '.join(COMPRESSION_SUFFIXES)})")
    return lf.with_row_index(ROW).with_columns(pl.col(ROW).cast(pl.Int64))


def require_columns(lf: pl.LazyFrame, required: tuple[str, ...], what: str) -> None:
    names = lf.collect_schema().names()
    missing = [c for c in required if c not in names]
    if missing:
        raise SchemaError(f"{what} table is missing required column(s) {missing}; it has {names}")


def generic_tables(events: Path, items: Path | None = None, users: Path | None = None,
                   encoding: str = "utf-8", check_events: bool = True,
                   user_link_columns: list[str] | None = None) -> RawTables:
    """The generic layout: an event table plus optional item and user entity tables (text in `encoding`).

    `user_link_columns`: user-table columns whose values are user ids (e.g. `friends`, `a|b`): user links.

    check_events=False skips the extra parse that proves a CSV event table parses (see rawfiles.scan_csv): for
    run_etl, which validates every column in one pass and falls back to `reread_events` itself if it does not.
    """
    rejected: list[pl.DataFrame] = []
    tmp = tempfile.TemporaryDirectory(prefix="tapestry-etl-")
    scratch = Path(tmp.name)

    def read(path: Path, source: str, required: tuple[str, ...]) -> pl.LazyFrame:
        lf = read_table(path, source=source, rejected=rejected, encoding=encoding, scratch=scratch)
        require_columns(lf, required, source)
        return lf

    reread, events_csv = None, None
    if not check_events and _base_suffix(events).lower() in _TEXT_SUFFIXES:
        if not Path(events).exists():
            raise FileNotFoundError(f"input file not found: {events}")
        # The file Polars will scan (a plain UTF-8 copy when the input is xz/bz2 or in another encoding), found
        # here so that the distributed ETL knows when it may cut it into byte ranges.
        scanned, kind = readable(Path(events), normalise_encoding(encoding), scratch)
        ev, reread = scan_csv_unchecked(scanned, _separator(events), "events", scratch, rejected, "utf-8")
        require_columns(ev, EVENT_COLUMNS, "events")
        events_csv = (scanned, _separator(events)) if kind is None else None
    else:
        ev = read(events, "events", EVENT_COLUMNS)
    it = read(items, "items", ("item_id",)) if items else None
    us = read(users, "users", ("user_id",)) if users else None
    sources = {"events": str(events)}
    if items:
        sources["items"] = str(items)
    if users:
        sources["users"] = str(users)
    return RawTables(events=ev, items=it, users=us, rejected=rejected, sources=sources, scratch=tmp,
                     reread_events=reread, user_link_columns=user_link_columns, events_csv=events_csv)
