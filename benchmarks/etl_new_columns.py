"""ETL throughput with issue 19's optional columns vs today's basic columns: the same events, side by side, one run.

The two inputs hold the same rows (benchmarks/etl.py's table, tapestry.etl.synthetic.event_table_chunks: 1% broken
rows of 8 kinds, 5% ISO-8601 timestamps):
- `basic`: today's columns: user_id, item_id, event_type (view/click/purchase, mixed case), timestamp, weight,
  session_id; read with ETLConfig();
- `new_columns`: the same rows with six behaviours in event_type (view, click, add_to_cart, purchase, like; mixed
  case), a search `query` on 10% of rows, `dwell` on views, `price` on add_to_cart/purchase rows, and two declared
  context columns (`device`, `location`, as tapestry.etl.synthetic_multi writes them); 0.2% of rows broken in one
  of the new columns (bad_query, bad_dwell, bad_price, bad_context_value); read with
  ETLConfig(context_columns=("device", "location")).
Each (stage, variant, repetition) runs in its own subprocess, alternating which variant goes first (ABBA), with
POLARS_MAX_THREADS=--polars-threads (1 by default: the shared CPU-slot wrapper's one thread per job). Stages:
- `validate`: read the CSV -> validate every row -> write valid + quarantined Parquet (pipeline.validate_to_parquet,
  as benchmarks/etl.py's polars engine);
- `run_etl`: the whole `tapestry etl` (validate, id maps, encode, sorted leave-one-out split, versioned write).
The ratio that answers issue 19's target is new_columns / basic events per second (>= 0.8: within 20 %).

    python benchmarks/etl_new_columns.py --rows 5000000          # the issue's 5M-event run (two ~0.2-0.4 GB CSVs)
    python benchmarks/etl_new_columns.py --rows 200000 --reps 1   # a quick look
Result: benchmarks/results/etl_new_columns-<rows>.json.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"
CHUNK_ROWS = 1_000_000
VARIANTS = ("basic", "new_columns")
STAGES = ("validate", "run_etl")
BEHAVIOURS = ("view", "click", "add_to_cart", "purchase", "like", "View")
NUM_LOCATIONS = 200
QUERY_SHARE = 0.10
# (column, bad value, the quarantine reason it must get)
NEW_BAD_KINDS = (("query", "shoes\u200b", "bad_query"), ("dwell", "-3", "bad_dwell"), ("price", "free", "bad_price"),
                 ("device", "=cmd()", "bad_context_value"))


def add_new_columns(chunk, seed: int, k: int, bad_fraction: float = 0.002):
    """Chunk k of event_table_chunks with issue 19's optional columns: the same rows, the other columns unchanged
    except event_type (six behaviours; the broken `teleport` rows stay broken)."""
    import polars as pl

    from tapestry.etl.synthetic_multi import DEVICE_P, DEVICES, category_words

    n = chunk.height
    rng = np.random.default_rng([seed, k, 19])   # its own stream: the basic columns are those of etl.py's table
    words = np.asarray([w for c in range(8) for w in category_words(c)])
    behaviour = np.asarray(BEHAVIOURS)[rng.integers(0, len(BEHAVIOURS), n)]
    bad = np.where(rng.random(n) < bad_fraction, rng.integers(0, len(NEW_BAD_KINDS), n), -1)
    extra = pl.DataFrame({
        "_b": behaviour,
        "_q": words[rng.integers(0, len(words), n)], "_has_q": rng.random(n) < QUERY_SHARE,
        "dwell": np.round(rng.exponential(40.0, n), 1), "price": np.round(rng.lognormal(3.0, 0.8, n), 2),
        "device": np.asarray(DEVICES)[rng.choice(len(DEVICES), n, p=DEVICE_P)],
        "location": np.char.add("loc", rng.integers(0, NUM_LOCATIONS, n).astype(str)), "_bad": bad,
    })
    lower = pl.col("_b").str.to_lowercase()
    extra = extra.select(
        "_b", "_bad", pl.when("_has_q").then(pl.format("{} shop", "_q")).alias("query"),
        pl.when(lower == "view").then(pl.col("dwell").cast(pl.String)).alias("dwell"),
        pl.when(lower.is_in(["add_to_cart", "purchase"])).then(pl.col("price").cast(pl.String)).alias("price"),
        "device", "location",
    )
    fixes = {c: pl.when(pl.col("_bad") == code).then(pl.lit(v)).otherwise(pl.col(c))
             for code, (c, v, _) in enumerate(NEW_BAD_KINDS)}
    extra = extra.with_columns(**fixes)
    out = pl.concat([chunk, extra], how="horizontal")
    etype = pl.when(pl.col("event_type") == "teleport").then(pl.col("event_type")).otherwise(pl.col("_b"))
    return out.with_columns(etype.alias("event_type")).drop("_b", "_bad")


def write_tables(basic: Path, new: Path, rows: int, seed: int = 0) -> None:
    """Both CSVs in one pass over event_table_chunks (chunk by chunk: never all in memory); atomic renames."""
    from tapestry.etl.synthetic import event_table_chunks

    tmp = {p: p.with_suffix(".tmp") for p in (basic, new)}
    with open(tmp[basic], "wb") as fb, open(tmp[new], "wb") as fn:
        for k, chunk in enumerate(event_table_chunks(rows, seed, CHUNK_ROWS)):
            chunk.write_csv(fb, include_header=k == 0)
            add_new_columns(chunk, seed, k).write_csv(fn, include_header=k == 0)
    for p, t in tmp.items():
        os.replace(t, p)


def etl_config(variant: str):
    from tapestry.config import ETLConfig
    from tapestry.etl.synthetic_multi import CONTEXT_COLUMNS

    return ETLConfig(context_columns=CONTEXT_COLUMNS) if variant == "new_columns" else ETLConfig()


def _etl_bench():
    """benchmarks/etl.py as a module (its peak-heap sampler and CPU clock)."""
    spec = importlib.util.spec_from_file_location("bench_etl", Path(__file__).with_name("etl.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _worker(stage: str, variant: str, path: Path, out: Path) -> None:
    """Runs in a subprocess: one stage on one input; prints its JSON result."""
    import polars as pl

    import tapestry.etl.pipeline  # noqa: F401  (imports are set-up, not timed)
    from tapestry.etl.pipeline import run_etl, validate_to_parquet
    from tapestry.etl.sources import generic_tables

    bench = _etl_bench()
    cfg = etl_config(variant)
    sampler = bench._PeakAnon()
    t0, cpu0 = time.perf_counter(), bench._cpu_s()
    tables = generic_tables(path, check_events=False)     # as `tapestry etl --events` reads it
    if stage == "validate":
        good, bad = validate_to_parquet(tables, cfg, out)
        counts = {"valid": good.select(pl.len()).collect().item(), "quarantined": bad.select(pl.len()).collect().item()}
        by_reason = dict(bad.group_by("reason").len().sort("reason").collect().iter_rows())
    else:
        c = run_etl(tables, "bench", root=out, cfg=cfg, log=lambda *a: None).manifest["counts"]
        counts, by_reason = {"valid": c["valid_rows"], "quarantined": c["quarantined_rows"]}, c["by_reason"]
    seconds, cpu = time.perf_counter() - t0, bench._cpu_s() - cpu0
    rows = counts["valid"] + counts["quarantined"]
    print(json.dumps({"stage": stage, "variant": variant, "rows": rows, **counts, "by_reason": by_reason,
                      "seconds": round(seconds, 2), "events_per_s": round(rows / seconds), "cpu_s": round(cpu, 2),
                      "events_per_cpu_s": round(rows / cpu), "peak_anon_mb": sampler.stop(),
                      "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "polars_threads": pl.thread_pool_size()}))


def _run(stage: str, variant: str, path: Path, out: Path, threads: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "POLARS_MAX_THREADS": str(threads)}
    cmd = [sys.executable, __file__, "--worker", stage, variant, "--input", str(path), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{stage}/{variant} worker failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps({k: v for k, v in result.items() if k != "by_reason"}), flush=True)
    return result


def _git_state() -> str:
    """The commit measured, `+dirty` when the working tree had uncommitted changes (a shared tree)."""
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
    return git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain", "--untracked-files=no")
                                                  else "")


def summarise(runs: list[dict], csv_bytes: dict[str, int]) -> dict:
    """Per stage: each variant's mean events/s (wall and per CPU second) and input MB/s over its repetitions, and
    the ratios new_columns / basic, overall and per repetition (the two runs of a repetition ran back to back)."""
    out = {}
    for stage in dict.fromkeys(r["stage"] for r in runs):
        of = {v: [r for r in runs if r["stage"] == stage and r["variant"] == v] for v in VARIANTS}
        mean = {v: {m: round(statistics.mean(r[m] for r in rs)) for m in ("events_per_s", "events_per_cpu_s")}
                | {"peak_anon_mb": max(r["peak_anon_mb"] for r in rs)} for v, rs in of.items()}
        for v, m in mean.items():   # input bytes per second: does a byte of the wider table cost more?
            m["csv_mb_per_s"] = round(m["events_per_s"] * csv_bytes[v] / of[v][0]["rows"] / 1e6, 1)
        out[stage] = {
            "mean": mean,
            "ratio_events_per_s": round(mean["new_columns"]["events_per_s"] / mean["basic"]["events_per_s"], 3),
            "ratio_events_per_cpu_s": round(mean["new_columns"]["events_per_cpu_s"]
                                            / mean["basic"]["events_per_cpu_s"], 3),
            "ratio_events_per_s_per_rep": [round(n["events_per_s"] / b["events_per_s"], 3)
                                           for b, n in zip(of["basic"], of["new_columns"])],
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=5_000_000)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--polars-threads", type=int, default=1)
    p.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "tapestry-etl-bench",
                   help="where the two CSVs are written (kept for reruns)")
    p.add_argument("--output-dir", type=Path, default=RESULTS)
    p.add_argument("--worker", nargs=2, metavar=("STAGE", "VARIANT"), help=argparse.SUPPRESS)
    p.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return _worker(*args.worker, args.input, args.out)

    stages = args.stages.split(",")
    if not set(stages) <= set(STAGES) or args.reps < 1:
        raise SystemExit(f"--stages must be some of {STAGES}, --reps >= 1")
    args.data_dir.mkdir(parents=True, exist_ok=True)
    paths = {"basic": args.data_dir / f"events-{args.rows}-basic.csv",
             "new_columns": args.data_dir / f"events-{args.rows}-new-columns.csv"}
    t0 = time.perf_counter()
    if not all(p.exists() for p in paths.values()):   # the same (rows, seed) always gives the same tables
        write_tables(paths["basic"], paths["new_columns"], args.rows)
    generate_s = time.perf_counter() - t0

    load_at_start = os.getloadavg()[0]
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="etl-new-columns-", dir=args.data_dir) as work:
        for rep in range(args.reps):
            order = VARIANTS if rep % 2 == 0 else VARIANTS[::-1]     # ABBA: neither always runs first
            for stage in stages:
                for variant in order:
                    out = Path(work) / f"{stage}-{variant}-{rep}"
                    runs.append({"rep": rep, **_run(stage, variant, paths[variant], out, args.polars_threads)})
    result = {
        "benchmark": "etl_new_columns", "rows": args.rows, "reps": args.reps, "stages": stages,
        "command": " ".join(sys.argv), "git": _git_state(), "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu_count": os.cpu_count(), "polars_threads": args.polars_threads, "generate_s": round(generate_s, 1),
        "csv_bytes": {v: p.stat().st_size for v, p in paths.items()},
        "load_avg_1m_at_start": round(load_at_start, 2), "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "what": "the same events with today's columns (basic) and with issue 19's optional columns (new_columns: "
                "six behaviours, query, dwell, price, device/location context columns); each run a subprocess, "
                "ABBA order; validate = CSV -> validated Parquet; run_etl = the whole `tapestry etl`; ratio = "
                "new_columns / basic events per second (target >= 0.8)",
        "summary": summarise(runs, {v: p.stat().st_size for v, p in paths.items()}), "runs": runs,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    path = args.output_dir / f"etl_new_columns-{args.rows}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)   # written whole or not at all
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
