"""compare_artifacts: equal runs compare equal; a changed row, column or file is reported."""
from __future__ import annotations

import json
import shutil

import polars as pl

from tapestry.etl.compare import compare_artifacts
from tapestry.etl.pipeline import run_etl
from tapestry.etl.synthetic import synthetic_tables

QUIET = dict(log=lambda *a, **k: None)


def test_two_runs_equal_and_each_kind_of_difference_is_reported(tmp_path):
    a, b = (run_etl(synthetic_tables(num_users=30, num_items=20, bad_rows=1), "acme", tmp_path, **QUIET).path
            for _ in range(2))
    assert compare_artifacts(a, b) == []      # created_at and version differ: they name the run, not the data

    c = tmp_path / "changed"
    shutil.copytree(b, c)
    train = pl.read_parquet(c / "train.parquet")
    train.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(pl.col("item_idx") + 1)
                       .otherwise(pl.col("item_idx")).alias("item_idx")).write_parquet(c / "train.parquet")
    pl.read_parquet(c / "test.parquet").head(2).write_parquet(c / "test.parquet")
    pl.read_parquet(c / "valid.parquet").drop("weight").write_parquet(c / "valid.parquet")
    (c / "items.parquet").unlink()
    manifest = json.loads((c / "manifest.json").read_text())
    manifest["num_users"] += 1
    (c / "manifest.json").write_text(json.dumps(manifest))

    diffs = compare_artifacts(a, c)
    assert any(d.startswith("train.parquet: column 'item_idx' row 3") for d in diffs), diffs
    assert any(d.startswith("test.parquet:") and "rows" in d for d in diffs), diffs
    assert any(d.startswith("valid.parquet: schema") for d in diffs), diffs
    assert any(d.startswith("items.parquet: only in") for d in diffs), diffs
    assert any(d.startswith("manifest.json: 'num_users'") for d in diffs), diffs
    assert len(diffs) == 5
