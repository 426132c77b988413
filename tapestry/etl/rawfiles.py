"""Opening a tenant's raw text files: compression, text encoding, CSV parsing, with bounded memory.

- Compression is recognised by its magic bytes (gzip, xz, bz2, zstd), whatever the file is called.
- Polars scans plain, gzip and zstd UTF-8 CSV as a stream. Anything else it cannot scan (xz or bz2, or text in
  another declared `encoding=`, e.g. latin-1) is first streamed, 16 MiB at a time, into a plain UTF-8 copy in a
  scratch directory, so memory stays bounded whatever the file's size.
- A UTF-8 byte-order mark is dropped; bytes that are not valid UTF-8 become U+FFFD, and validation then
  quarantines the field holding one (see the id policy in schema.py): the row is kept, its bad value is not.
- CRLF or LF line ends; quoted fields may hold separators, quotes (`""`) and newlines.
- A line with fewer fields than the header reads its missing fields as empty (validation then sees a missing
  id or timestamp); a blank line is such a row too. Polars cannot tell a line with MORE fields from a good one
  without failing the whole scan, and fails on broken quoting as well: such a file is read again by Python's csv
  module, in chunks, which sends exactly the lines with too many fields to `malformed_line`.
"""
from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import lzma
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable

import polars as pl

from tapestry.etl.schema import MALFORMED_LINE, SchemaError

ROW = "source_row"
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"\xfd7zXZ\x00", "xz"), (b"BZh", "bz2"), (b"\x28\xb5\x2f\xfd", "zstd"))
COMPRESSION_SUFFIXES = (".gz", ".xz", ".bz2", ".zst", ".zstd")
_POLARS_READS = (None, "gzip", "zstd")     # Polars decompresses these itself, streaming
_CHUNK_BYTES = 16 << 20
_CHUNK_ROWS = 250_000                      # rows per part file on the csv-module path
_SCRATCH: list[tempfile.TemporaryDirectory] = []


def compression_of(path: Path) -> str | None:
    with open(path, "rb") as f:
        head = f.read(6)
    return next((kind for magic, kind in _MAGIC if head.startswith(magic)), None)


def open_binary(path: Path, kind: str | None):
    if kind is None:
        return open(path, "rb")
    if kind == "gzip":
        return gzip.open(path, "rb")
    if kind == "xz":
        return lzma.open(path, "rb")
    if kind == "bz2":
        return bz2.open(path, "rb")
    try:   # zstd: Polars reads it natively; Python needs the package only for the copy/fallback paths
        import zstandard
    except ImportError as e:
        raise SchemaError(f"{path}: reading this zstd file needs the `zstandard` package "
                          "(pip install zstandard), or decompress it first") from e
    return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)


def normalise_encoding(encoding: str) -> str:
    """Python's canonical codec name ('latin-1' -> 'iso8859-1'); a UTF-8 BOM needs no codec of its own."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError as e:
        raise SchemaError(f"unknown text encoding {encoding!r}") from e
    return "utf-8" if name == "utf-8-sig" else name


def default_scratch() -> Path:
    """A process-wide scratch directory (removed at exit) for callers that do not pass their own."""
    if not _SCRATCH:
        _SCRATCH.append(tempfile.TemporaryDirectory(prefix="tapestry-etl-"))
    return Path(_SCRATCH[0].name)


def plain_copy(path: Path, kind: str | None, encoding: str, scratch: Path) -> Path:
    """Decompress and/or transcode `path` into a plain UTF-8 file under `scratch`, streaming."""
    out = Path(tempfile.mkdtemp(dir=scratch)) / Path(path).name
    decoder = None if encoding == "utf-8" else codecs.getincrementaldecoder(encoding)(errors="replace")
    with open_binary(path, kind) as src, open(out, "wb") as dst:
        while chunk := src.read(_CHUNK_BYTES):
            dst.write(chunk if decoder is None else decoder.decode(chunk).encode("utf-8"))
        if decoder is not None:
            dst.write(decoder.decode(b"", final=True).encode("utf-8"))
    return out


def readable(path: Path, encoding: str, scratch: Path, polars_reads: tuple = _POLARS_READS) -> tuple[Path, str | None]:
    """(a path Polars can scan, its compression): the file itself when Polars reads it, else a plain copy."""
    kind = compression_of(path)
    if kind in polars_reads and encoding == "utf-8":
        return path, kind
    return plain_copy(path, kind, encoding, scratch), None


def clean_names(names: list[str]) -> list[str]:
    """Header names without surrounding whitespace or a BOM; an empty one becomes `column_<n>` (1-based)."""
    out = [n.lstrip("\ufeff").strip() or f"column_{i + 1}" for i, n in enumerate(names)]
    dup = sorted(n for n, k in Counter(out).items() if k > 1)
    if dup:
        raise SchemaError(f"duplicate column name(s) {dup} in the header")
    return out


def _polars_names(cols: list[str]) -> list[str]:
    # Called by Polars, which panics if this raises, and drops a column whose name repeats: so names that clean
    # to the same one are kept apart with Polars' own `_duplicated_<k>` suffix, and scan_csv refuses them.
    out: list[str] = []
    for i, n in enumerate(cols):
        name = n.lstrip("\ufeff").strip() or f"column_{i + 1}"
        out.append(name if name not in out else f"{name}_duplicated_{i}")
    return out


def scan_csv(path: Path, sep: str, source: str, scratch: Path, rejected: list[pl.DataFrame] | None,
             encoding: str = "utf-8") -> pl.LazyFrame:
    """A delimited text file as an all-string LazyFrame with `source_row` (0-based record index after the header)."""
    lf, reread = scan_csv_unchecked(path, sep, source, scratch, rejected, encoding)
    try:
        # Every column, so that Polars tokenises every field: with fewer columns it silently accepts a line with
        # too many fields. A cheap aggregate, streamed: nothing is kept.
        lf.select(pl.all().null_count()).collect(engine="streaming")
    except pl.exceptions.PolarsError:
        return reread()
    return lf


def scan_csv_unchecked(path: Path, sep: str, source: str, scratch: Path, rejected: list[pl.DataFrame] | None,
                       encoding: str = "utf-8") -> tuple[pl.LazyFrame, Callable[[], pl.LazyFrame]]:
    """(the Polars scan, not yet known to parse, the csv-module re-read to use if collecting it fails).

    For a caller that reads every column anyway (run_etl's validation): it saves scan_csv's extra pass.
    """
    path, kind = readable(Path(path), normalise_encoding(encoding), scratch)
    try:
        lf = pl.scan_csv(path, separator=sep, infer_schema=False, encoding="utf8-lossy",
                         with_column_names=_polars_names)
        names = lf.collect_schema().names()
    except pl.exceptions.NoDataError as e:
        raise SchemaError(f"{source} file {path} is empty (no header line)") from e
    clean_names([re.sub(r"_duplicated_[0-9]+$", "", n) for n in names])   # refuses a repeated name
    lf = lf.with_row_index(ROW).with_columns(pl.col(ROW).cast(pl.Int64))
    return lf, lambda: _scan_with_csv_module(path, kind, sep, source, scratch, rejected)


def _scan_with_csv_module(path: Path, kind: str | None, sep: str, source: str, scratch: Path,
                          rejected: list[pl.DataFrame] | None) -> pl.LazyFrame:
    """Python's csv module, for files Polars refuses; parts of _CHUNK_ROWS rows go to scratch Parquet files."""
    parts_dir = Path(tempfile.mkdtemp(dir=scratch))
    limit = csv.field_size_limit()
    csv.field_size_limit(sys.maxsize)       # a huge field is a value to validate, not a reason to stop
    try:
        with open_binary(path, kind) as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")
            reader = csv.reader(text, delimiter=sep, strict=False)
            head = next(reader, None)
            if head is None:
                raise SchemaError(f"{source} file {path} is empty (no header line)")
            cols = clean_names(head)
            schema = {ROW: pl.Int64, **{c: pl.String for c in cols}}
            n, rows, bad, parts = len(cols), [], [], []

            def flush() -> None:
                frame = pl.DataFrame([(i, *r) for i, r in rows], schema=schema, orient="row")
                parts.append(parts_dir / f"part-{len(parts):06d}.parquet")
                frame.write_parquet(parts[-1])
                rows.clear()

            for i, row in enumerate(reader):
                if len(row) > n:
                    bad.append((i, sep.join(row)))
                    continue
                # As Polars reads them: an empty field is null, missing trailing fields are null.
                rows.append((i, [v if v != "" else None for v in row] + [None] * (n - len(row))))
                if len(rows) >= _CHUNK_ROWS:
                    flush()
            if rows or not parts:
                flush()
    finally:
        csv.field_size_limit(limit)
    if bad:
        if rejected is None:   # never drop them silently: the caller must have somewhere to put them
            raise ValueError(f"{path}: {len(bad)} malformed line(s) and no `rejected` list to report them in")
        rejected.append(pl.DataFrame({ROW: [i for i, _ in bad], "raw_line": [s for _, s in bad],
                                      "source": source, "reason": MALFORMED_LINE},
                                     schema={ROW: pl.Int64, "raw_line": pl.String, "source": pl.String,
                                             "reason": pl.String}))
    return pl.scan_parquet(parts)
