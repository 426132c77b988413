"""benchmarks/etl_new_columns.py: the new-columns table holds the same rows as the basic one plus issue 19's columns,
each broken new value gets its own quarantine reason, and a tiny side-by-side run writes its ratios."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import polars as pl

from tapestry.etl.synthetic import event_table_chunks
from tapestry.etl.validate import validate_events

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "etl_new_columns.py"


def _module():
    spec = importlib.util.spec_from_file_location("bench_etl_new_columns", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_same_rows_with_new_columns_and_their_quarantine_reasons():
    m = _module()
    basic = next(event_table_chunks(4000, seed=3, chunk_rows=4000))
    new = m.add_new_columns(basic, seed=3, k=0, bad_fraction=0.05)
    assert new.columns == basic.columns + ["query", "dwell", "price", "device", "location"]
    assert new.drop("event_type", "query", "dwell", "price", "device", "location").equals(basic.drop("event_type"))
    teleport = basic["event_type"] == "teleport"
    assert (new.filter(teleport)["event_type"] == "teleport").all()
    assert set(new.filter(~teleport)["event_type"]) == set(m.BEHAVIOURS)

    events = new.with_row_index("source_row").with_columns(pl.col("source_row").cast(pl.Int64)).lazy()
    good, bad = (f.collect() for f in validate_events(events, m.etl_config("new_columns")))
    assert good.height + bad.height == new.height
    reasons = set(bad["reason"])
    assert {reason for _, _, reason in m.NEW_BAD_KINDS} <= reasons
    assert good["dwell"].dtype == pl.Float32 and good["price"].dtype == pl.Float32
    # dwell only on views, price only on add_to_cart / purchase rows
    assert good.filter(pl.col("dwell").is_not_null())["event_type"].unique().to_list() == ["view"]
    assert set(good.filter(pl.col("price").is_not_null())["event_type"]) == {"add_to_cart", "purchase"}
    assert 0.05 < good["query"].is_not_null().mean() < 0.15


def test_tiny_side_by_side_run_writes_ratios(tmp_path):
    cmd = [sys.executable, str(SCRIPT), "--rows", "3000", "--reps", "2", "--stages", "validate",
           "--data-dir", str(tmp_path / "data"), "--output-dir", str(tmp_path / "out")]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    result = json.loads((tmp_path / "out" / "etl_new_columns-3000.json").read_text())
    runs = result["runs"]
    # ABBA: the second repetition runs the new columns first
    assert [r["variant"] for r in runs] == ["basic", "new_columns", "new_columns", "basic"]
    assert all(r["rows"] == 3000 for r in runs)
    basic_q = {r["quarantined"] for r in runs if r["variant"] == "basic"}
    new_q = {r["quarantined"] for r in runs if r["variant"] == "new_columns"}
    assert len(basic_q) == len(new_q) == 1 and new_q.pop() > basic_q.pop()   # the broken new values are caught
    summary = result["summary"]["validate"]
    assert summary["ratio_events_per_s"] > 0 and len(summary["ratio_events_per_s_per_rep"]) == 2
