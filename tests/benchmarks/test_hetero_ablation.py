"""benchmarks/hetero_ablation.py's bookkeeping: finished runs are reused from the cache (resume), every variant is
tested against interactions-only on the same users, and the README table is generated from the summary."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_SPEC = importlib.util.spec_from_file_location(
    "hetero_ablation_benchmark", Path(__file__).resolve().parents[2] / "benchmarks" / "hetero_ablation.py")
hetero = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(hetero)


def _run(ndcg: list[float]) -> dict:
    metrics = {"ndcg@10": float(np.mean(ndcg)), "recall@10": float(np.mean(ndcg)) * 2}
    return {"fit_seconds": 1.0, "valid": metrics, "test": metrics, "relations": [],
            "_users": np.arange(len(ndcg)), "_ndcg": np.asarray(ndcg)}


def test_cached_run_fits_once_and_returns_the_same_per_user_metrics(tmp_path):
    calls = []

    def fit():
        calls.append(1)
        return _run([0.1, 0.0, 0.5])

    cache = hetero._cache_file(tmp_path, "d", "rsage", "typed", 0, {"epochs": 3}, None)
    first = hetero.cached_run(cache, fit)
    again = hetero.cached_run(cache, fit)
    assert len(calls) == 1 and again["cached"]
    np.testing.assert_array_equal(again["_ndcg"], first["_ndcg"])
    np.testing.assert_array_equal(again["_users"], first["_users"])
    # A change of hyper-parameters is a different run, not a cache hit.
    assert hetero._cache_file(tmp_path, "d", "rsage", "typed", 0, {"epochs": 4}, None) != cache


def test_every_variant_is_paired_against_interactions_and_tabled():
    rng = np.random.default_rng(0)
    base = rng.random(60) * 0.2
    runs = {"rsage": {"typed": {s: _run(base + 0.05) for s in (0, 1)},
                      "interactions": {s: _run(base) for s in (0, 1)},
                      "none": {s: _run(base * 0.5) for s in (0, 1)}}}
    summary = hetero.summarise(runs, [0, 1])
    paired = summary["rsage"]["paired_test_ndcg@10"]
    assert set(paired) == {"typed_vs_interactions", "none_vs_interactions", "typed_vs_none"}
    assert paired["typed_vs_interactions"]["relative"] > 0 > paired["none_vs_interactions"]["relative"]
    assert paired["typed_vs_interactions"]["p_value"] < 0.05
    table = hetero.markdown_table([{"dataset": "d", "seeds": [0, 1], "summary": summary}])
    rows = table.splitlines()
    assert len(rows) == 2 + 3
    typed_row = next(r for r in rows if "| typed |" in r)
    assert f"{summary['rsage']['variants']['typed']['test_ndcg@10']['mean']:.4f}" in typed_row
    assert "+" in typed_row.split("|")[7]


def test_unknown_dataset_is_refused_with_the_known_names(tmp_path):
    with pytest.raises(ValueError, match="use one of hetrec-lastfm, ml-1m, beauty"):
        hetero.load("no-such-set", tmp_path, None, log=lambda *a: None)
