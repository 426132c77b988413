"""ETL at scale: our Polars validation against a plain pandas implementation of the same rules, side by side.

What is timed, per engine, each in its own subprocess (so each peak memory is its own): read a CSV event table
-> validate every row under the rules of tapestry/etl/validate.py -> write the valid rows (typed) and the
quarantined rows (raw, with their reason) as Parquet.
- polars: the ETL's own code, as `tapestry etl --events` runs it: `generic_tables` (a lazy scan) and
  `pipeline.validate_to_parquet` (streaming engine: one pass over the input, two Parquet sinks);
- pandas: `pd.read_csv(dtype=str)` of the whole file, the same rules as vectorised pandas/numpy operations, both
  outputs written through `pl.from_pandas(...).write_parquet` (pandas' own to_parquet needs pyarrow, and the
  pyarrow that installs here does not import alongside the project's numpy<2 pin; nor does pl.from_pandas).
The input is tapestry.etl.synthetic.write_event_table (written chunk by chunk, never all in memory): 1% broken
rows of 8 kinds, 5% ISO-8601 timestamps. pandas holds the whole table as Python strings, so on a large table it
runs on a prefix (`--pandas-rows`), and polars runs on that same prefix too: the ratio compares the same rows.
Both engines' outputs on the prefix are compared row by row (`outputs_agree`).

    python benchmarks/etl.py --rows 1000000                                  # development size
    python benchmarks/etl.py --rows 50000000 --pandas-rows 5000000            # the issue's size (~2.2 GB CSV)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
CHUNK_ROWS = 1_000_000


class _PeakAnon:
    """Peak anonymous memory (heap, not the page cache of mapped input files), sampled every 20 ms."""

    def __init__(self) -> None:
        self.peak_kb, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with open("/proc/self/status") as f:
                kb = next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))
            self.peak_kb = max(self.peak_kb, kb)
            self._stop.wait(0.02)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return round(self.peak_kb / 1024, 1)


def _polars_worker(path: Path, out: Path) -> dict:
    import polars as pl

    from tapestry.config import ETLConfig
    from tapestry.etl.pipeline import validate_to_parquet
    from tapestry.etl.sources import generic_tables

    tables = generic_tables(path, check_events=False)   # as `tapestry etl --events` reads it
    good, bad = validate_to_parquet(tables, ETLConfig(), out)
    return {"valid": good.select(pl.len()).collect().item(), "quarantined": bad.select(pl.len()).collect().item()}


def _run_etl_worker(path: Path, out: Path) -> dict:
    """The whole `tapestry etl` on the table (validate, encode, sort, split, write): for its memory."""
    from tapestry.etl.pipeline import run_etl
    from tapestry.etl.sources import generic_tables

    c = run_etl(generic_tables(path, check_events=False), "bench", root=out, log=lambda *a: None).manifest["counts"]
    return {"valid": c["valid_rows"], "quarantined": c["quarantined_rows"]}


def _char_class(categories: tuple[str, ...]) -> str:
    """A `re` character class for Unicode categories (Python's re has no \\p{..}, Rust's regex has)."""
    ranges, start = [], None
    for cp in range(0x110001):
        inside = cp <= 0x10FFFF and unicodedata.category(chr(cp)) in categories
        if inside and start is None:
            start = cp
        elif not inside and start is not None:
            ranges.append(f"{re.escape(chr(start))}-{re.escape(chr(cp - 1))}")
            start = None
    return "[" + "".join(ranges) + "\ufffd]"


def pandas_validate(path: Path, out: Path, bad_chars: re.Pattern) -> dict:
    """The rules of tapestry/etl/validate.py, written as one would in plain pandas."""
    import numpy as np
    import pandas as pd

    from tapestry.config import ETLConfig
    from tapestry.etl import schema as S

    cfg = ETLConfig()
    df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig",
                     encoding_errors="replace")
    df.insert(0, "source_row", np.arange(len(df), dtype=np.int64))

    def blank(col: str) -> pd.Series:
        return df[col].isna() | (df[col].str.strip() == "")

    def bad_id(col: str) -> pd.Series:
        s = df[col].str.strip()
        flagged = s.str.contains(bad_chars, na=False) & ~s.str.fullmatch(S.PLAIN_NUMBER_PATTERN, na=False)
        return flagged | (s.str.len() > S.MAX_ID_LENGTH)

    ts = df["timestamp"].str.strip()
    is_int = ts.str.fullmatch(r"[+-]?[0-9]{1,18}", na=False)
    seconds = pd.Series(np.nan, index=df.index)
    seconds[is_int] = ts[is_int].astype(np.int64)
    iso = pd.to_datetime(ts[~is_int & ts.notna()], format="ISO8601", errors="coerce", utc=True)
    seconds[iso.index] = (iso - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    etype = df["event_type"].str.strip().str.lower()
    weight = pd.to_numeric(df["weight"].str.strip(), errors="coerce")
    w32 = weight.astype(np.float32)
    conditions = [
        (blank("user_id"), S.MISSING_USER_ID), (bad_id("user_id"), S.BAD_USER_ID),
        (blank("item_id"), S.MISSING_ITEM_ID), (bad_id("item_id"), S.BAD_ITEM_ID),
        (blank("timestamp"), S.MISSING_TIMESTAMP), (seconds.isna(), S.BAD_TIMESTAMP),
        ((seconds < cfg.min_timestamp) | (seconds > cfg.max_timestamp), S.TIMESTAMP_OUT_OF_RANGE),
        (etype.isna() | ~etype.isin([t.lower() for t in cfg.event_types]), S.UNKNOWN_EVENT_TYPE),
        (~blank("weight") & (weight.isna() | ~np.isfinite(w32)), S.BAD_WEIGHT),
        (~blank("weight") & (w32 <= 0), S.NONPOSITIVE_WEIGHT),
        (~blank("session_id") & bad_id("session_id"), S.BAD_SESSION_ID),
    ]
    reason = pd.Series(np.select([c.to_numpy() for c, _ in conditions], [r for _, r in conditions], ""),
                       index=df.index)
    ok = reason == ""
    good = pd.DataFrame({
        "user_id": df["user_id"][ok].str.strip(), "item_id": df["item_id"][ok].str.strip(),
        "event_type": etype[ok], "timestamp": seconds[ok].astype(np.int64),
        "weight": w32[ok].fillna(1.0).astype(np.float32),
        "session_id": df["session_id"][ok].str.strip().replace("", None), "source_row": df["source_row"][ok],
    })
    bad = df[~ok].assign(reason=reason[~ok], source="events")
    _to_polars(good).write_parquet(out / "valid.parquet")
    _to_polars(bad).write_parquet(out / "quarantined.parquet")
    return {"valid": len(good), "quarantined": len(bad)}


def _to_polars(df):
    """pandas -> polars without pyarrow (pl.from_pandas needs it for object columns holding NaN)."""
    import polars as pl

    cols = {}
    for name, s in df.items():
        if s.dtype == object:
            cols[name] = pl.Series(name, s.where(s.notna(), None).to_numpy(), dtype=pl.String)
        else:
            cols[name] = pl.Series(name, s.to_numpy())
    return pl.DataFrame(cols)


def _worker(engine: str, path: Path, out: Path) -> None:
    """Runs in a subprocess: one engine on one file; prints its JSON result."""
    import numpy  # noqa: F401  (imports and the regex build are set-up, not timed)
    import pandas  # noqa: F401
    import polars  # noqa: F401

    import tapestry.etl.pipeline  # noqa: F401

    bad_chars = re.compile(_char_class(("Cc", "Cf", "Zl", "Zp")) + r"|^[=+\-@]")
    sampler = _PeakAnon()
    t0 = time.perf_counter()
    cpu0 = _cpu_s()
    counts = {"polars": lambda: _polars_worker(path, out), "pandas": lambda: pandas_validate(path, out, bad_chars),
              "run_etl": lambda: _run_etl_worker(path, out)}[engine]()
    seconds, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    rows = counts["valid"] + counts["quarantined"]
    print(json.dumps({"engine": engine, "rows": rows, **counts, "seconds": round(seconds, 2),
                      "events_per_s": round(rows / seconds), "cpu_s": round(cpu, 2),
                      "events_per_cpu_s": round(rows / cpu), "peak_anon_mb": sampler.stop(),
                      "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


def _cpu_s() -> float:
    """CPU seconds of this process, all threads: what a shared machine's other jobs do not inflate."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _run(engine: str, path: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--worker", engine, "--input", str(path), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} worker failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def _outputs_agree(a: Path, b: Path) -> bool:
    """Same valid rows (all columns) and the same reason for every quarantined source_row."""
    import polars as pl

    va, vb = (pl.read_parquet(d / "valid.parquet").sort("source_row") for d in (a, b))
    qa, qb = (pl.read_parquet(d / "quarantined.parquet").select("source_row", "reason").sort("source_row")
              for d in (a, b))
    return va.equals(vb.select(va.columns)) and qa.equals(qb)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--pandas-rows", type=int, default=None, help="prefix for pandas (default: all rows)")
    p.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "tapestry-etl-bench",
                   help="where the synthetic tables are written (kept for reruns)")
    p.add_argument("--keep-outputs", action="store_true")
    p.add_argument("--run-etl", choices=["no", "prefix", "full"], default="no",
                   help="also run the whole run_etl (encode, sort, split and write too) on that table, for its memory")
    p.add_argument("--worker", choices=["polars", "pandas", "run_etl"], help=argparse.SUPPRESS)
    p.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return _worker(args.worker, args.input, args.out)

    from tapestry.etl.synthetic import write_event_table

    n = args.rows
    m = min(args.pandas_rows or n, n)
    if m % CHUNK_ROWS and m != n:
        raise SystemExit(f"--pandas-rows must be a multiple of {CHUNK_ROWS:,} (the table is written in chunks)")
    args.data_dir.mkdir(parents=True, exist_ok=True)
    full, prefix = args.data_dir / f"events-{n}.csv", args.data_dir / f"events-{m}.csv"
    t0 = time.perf_counter()
    if not full.exists() or not prefix.exists():
        write_event_table(full, n, chunk_rows=CHUNK_ROWS, prefix=(prefix, m) if m < n else None)
    generate_s = time.perf_counter() - t0

    work = Path(tempfile.mkdtemp(prefix="etl-bench-", dir=args.data_dir))
    runs = {"polars_prefix": _run("polars", prefix, work / "polars-prefix"),
            "pandas_prefix": _run("pandas", prefix, work / "pandas-prefix")}
    agree = _outputs_agree(work / "polars-prefix", work / "pandas-prefix")
    if m < n:
        runs["polars_full"] = _run("polars", full, work / "polars-full")
    if args.run_etl != "no":
        runs[f"run_etl_{args.run_etl}"] = _run("run_etl", prefix if args.run_etl == "prefix" else full,
                                               work / "run-etl")
    pol, pan = runs["polars_prefix"], runs["pandas_prefix"]
    result = {
        "benchmark": "etl_validation", "rows": n, "pandas_rows": m, "csv_bytes": full.stat().st_size,
        "prefix_csv_bytes": prefix.stat().st_size, "generate_s": round(generate_s, 1),
        "cpu_count": os.cpu_count(), "polars_threads": __import__("polars").thread_pool_size(),
        "what": "read CSV -> validate every row -> write valid + quarantined Parquet; each engine in its own "
                "subprocess; events_per_s by wall time, events_per_cpu_s by the process's CPU time (all threads); "
                "peak_anon_mb = peak heap (sampled every 20 ms), max_rss_mb also counts mapped input pages",
        "load_avg_1m_at_start": round(os.getloadavg()[0], 1),
        "runs": runs, "outputs_agree": agree,
        "speedup_polars_over_pandas": round(pol["events_per_s"] / pan["events_per_s"], 1),
        "speedup_per_cpu_second": round(pol["events_per_cpu_s"] / pan["events_per_cpu_s"], 1),
        "memory_ratio_pandas_over_polars": round(pan["peak_anon_mb"] / max(pol["peak_anon_mb"], 1), 1),
    }
    if not args.keep_outputs:
        import shutil

        shutil.rmtree(work)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"etl-{n}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
