"""Are two ETL artifact directories the same data? Row for row, not byte for byte.

Used to check that another engine gives the single-node run's artifacts: the distributed ETL (tests/etl/
test_distributed.py), the Polars GPU engine (`make gpu-check`, tests/etl/test_engines.py). Parquet bytes may differ
with equal rows (row-group boundaries follow how the rows were written), so each Parquet file is compared as a
table: the same columns, dtypes, rows and row order. manifest.json is compared without what names the run itself
(created_at, version).
"""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl

RUN_KEYS = ("created_at", "version")   # manifest keys that differ between any two runs


def _first_difference(a: pl.DataFrame, b: pl.DataFrame) -> str:
    """Where two frames of equal schema and height first differ (nulls equal nulls, NaN equals NaN)."""
    for col in a.columns:
        x, y = a[col], b[col]
        same = (x == y) | (x.is_null() & y.is_null())
        if x.dtype.is_float():
            same = same | (x.is_nan() & y.is_nan())
        same = same.fill_null(False)
        if not same.all():
            row = int(same.arg_min())
            return f"column {col!r} row {row}: {x[row]!r} != {y[row]!r}"
    return ""


def compare_frames(name: str, a: pl.DataFrame, b: pl.DataFrame) -> list[str]:
    if a.schema != b.schema:
        return [f"{name}: schema {dict(a.schema)} != {dict(b.schema)}"]
    if a.height != b.height:
        return [f"{name}: {a.height} rows != {b.height} rows"]
    where = _first_difference(a, b)
    return [f"{name}: {where}"] if where else []


def _manifest(path: Path) -> dict:
    m = json.loads(path.read_text())
    return {k: v for k, v in m.items() if k not in RUN_KEYS}


def compare_artifacts(a: Path, b: Path) -> list[str]:
    """The differences between ETL artifact directories `a` and `b` (empty: the same data), one line each."""
    a, b = Path(a), Path(b)
    names_a = {p.name for p in a.iterdir() if p.is_file()}
    names_b = {p.name for p in b.iterdir() if p.is_file()}
    out = [f"{n}: only in {a}" for n in sorted(names_a - names_b)]
    out += [f"{n}: only in {b}" for n in sorted(names_b - names_a)]
    for name in sorted(names_a & names_b):
        if name.endswith(".parquet"):
            out += compare_frames(name, pl.read_parquet(a / name), pl.read_parquet(b / name))
        elif name == "manifest.json":
            ma, mb = _manifest(a / name), _manifest(b / name)
            out += [f"manifest.json: {k!r}: {ma.get(k)!r} != {mb.get(k)!r}"
                    for k in sorted(set(ma) | set(mb)) if ma.get(k) != mb.get(k)]
        elif (a / name).read_bytes() != (b / name).read_bytes():
            out.append(f"{name}: bytes differ")
    return out


def byte_equal_files(a: Path, b: Path) -> list[str]:
    """The files of `a` whose bytes equal `b`'s file of the same name (for reporting how equal two runs are)."""
    return sorted(p.name for p in Path(a).iterdir()
                  if p.is_file() and (Path(b) / p.name).is_file() and p.read_bytes() == (Path(b) / p.name).read_bytes())
