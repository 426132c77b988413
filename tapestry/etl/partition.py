"""Cutting one event table into partitions that workers validate independently (the distributed ETL).

Two kinds, chosen per input by plan_partitions:
- ByteRange: a plain UTF-8 CSV/TSV (RawTables.events_csv) cut at line starts into about equal byte ranges. A worker
  reads only its range (plus the header line); its rows are numbered from 0, and the driver adds the number of
  records in the ranges before it, so `source_row` is the record index of the whole file, as on one node.
  A cut is only safe where no record spans it: where the quote characters before it are even in number (RFC 4180
  quoting: a quoted field, which may hold a newline, opens and closes with one `"`, an inner `"` is doubled), and
  with non-blank lines on either side (Polars reads a blank line as a row of nulls mid-file, but would not at the
  start or end of a range).
- RowSlice: any other input (compressed, quoted, Parquet, an adapter's in-memory frame) is first staged once to a
  Parquet file on the driver, all strings as read, with its own `source_row`; workers then read row slices of it.
"""
from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from tapestry.etl.sources import RawTables

_CUT_WINDOW = 1 << 20   # bytes searched after a target offset for a safe cut


@dataclass(frozen=True)
class ByteRange:
    path: str
    start: int        # first byte of the range's first line
    end: int          # one past the last byte of the range
    header_end: int   # one past the header line's newline: bytes [0, header_end) are prepended to every range
    separator: str


@dataclass(frozen=True)
class RowSlice:
    path: str         # the staged Parquet copy of the event table (strings, with source_row)
    offset: int
    length: int


def _blank_before(mm: mmap.mmap, p: int) -> bool:
    """Is the line that ends just before position p (mm[p - 1] == '\\n') blank?"""
    before = p - 2
    if before >= 0 and mm[before:before + 1] == b"\r":
        before -= 1
    return before < 0 or mm[before:before + 1] == b"\n"


def _safe_cut(mm: mmap.mmap, target: int, limit: int) -> int | None:
    """The first line start at or after `target` whose line and the line before it are both non-blank."""
    search = target - 1     # target itself is a line start when the byte before it is a newline
    while search < min(limit, target + _CUT_WINDOW):
        nl = mm.find(b"\n", search, limit)
        if nl < 0:
            return None
        p = nl + 1
        if p < limit and mm[p:p + 1] not in (b"\n", b"\r") and not _blank_before(mm, p):
            return p
        search = p
    return None


def byte_ranges(path: Path, separator: str, parts: int) -> list[ByteRange] | None:
    """`path` cut into at most `parts` ranges at safe line starts; None when it cannot be cut (see the module doc)."""
    size = Path(path).stat().st_size
    if size == 0:
        return None
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        header_end = mm.find(b"\n") + 1
        if header_end <= 0 or header_end >= size:
            return None
        data = np.frombuffer(mm, dtype=np.uint8)
        cuts, step = [header_end], (size - header_end) / parts
        counted, odd = 0, 0       # quotes in data[:counted] are odd in number: a quoted field is open there
        for i in range(1, parts):
            cut = _safe_cut(mm, max(int(header_end + i * step), cuts[-1] + 1), size)
            while cut is not None:
                odd = (odd + int(np.count_nonzero(data[counted:cut] == ord('"')))) % 2
                counted = cut
                if not odd:
                    break
                cut = _safe_cut(mm, cut + 1, size)
            if cut is None:
                break
            cuts.append(cut)
        del data                  # the mmap cannot close while an array views it
    cuts.append(size)
    return [ByteRange(str(path), a, b, header_end, separator) for a, b in zip(cuts, cuts[1:])]


def write_range(r: ByteRange, out: Path) -> Path:
    """The range as a CSV file of its own (header line + its lines), for the worker's unchanged CSV reader."""
    with open(r.path, "rb") as src, open(out, "wb") as dst:
        dst.write(src.read(r.header_end))
        src.seek(r.start)
        left = r.end - r.start
        while left > 0:
            chunk = src.read(min(left, 16 << 20))
            if not chunk:
                break
            dst.write(chunk)
            left -= len(chunk)
    return out


def stage_events(tables: RawTables, out: Path) -> int:
    """Write the event table (all strings, with source_row) to Parquet `out`, streaming; its row count.

    A CSV that Polars cannot parse is read again by the csv module (tables.reread_events), as run_etl does; the
    lines that had too many fields are then in tables.rejected."""
    try:
        tables.events.sink_parquet(out)
    except pl.exceptions.PolarsError:
        if tables.reread_events is None:
            raise
        tables.events, tables.reread_events = tables.reread_events(), None
        tables.events.sink_parquet(out)
    return pl.scan_parquet(out).select(pl.len()).collect().item()


def plan_partitions(tables: RawTables, parts: int, scratch: Path) -> list[ByteRange] | list[RowSlice]:
    """Byte ranges of the events file when it can be cut, else row slices of a staged Parquet copy (written into
    `scratch`, which every worker must be able to read)."""
    source = tables.sources.get("events")
    # Only the input file itself is cut: a plain copy of it (xz, another encoding) is in the driver's $TMPDIR, which
    # the workers of a real cluster cannot read; such an input is staged into the shared `scratch` instead.
    if tables.events_csv is not None and parts > 1 and source and Path(tables.events_csv[0]) == Path(source):
        path, sep = tables.events_csv
        ranges = byte_ranges(Path(path), sep, parts)
        if ranges:
            return ranges
    staged = scratch / "staged-events.parquet"
    rows = stage_events(tables, staged)
    step = max(1, -(-rows // parts))
    return [RowSlice(str(staged), a, min(step, rows - a)) for a in range(0, max(rows, 1), step)]
