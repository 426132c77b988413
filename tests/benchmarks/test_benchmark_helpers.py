"""Logic inside the benchmark scripts that a committed result rests on: the leaderboard's per-seed store (what
`run --resume` adds to) and the multi-source merge."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCHMARKS))        # leaderboard.py imports its peers/ package
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def test_leaderboard_seeds_round_trip_and_refuse_another_line_up(tmp_path):
    lb = _script("leaderboard")
    per_user = lambda v: {"users": np.array([1, 2, 3]), "ndcg@10": np.array(v), "recall@10": np.array(v) > 0}  # noqa: E731
    per_seed = {"two_tower": {"valid": [per_user([0.1, 0.0, 0.5]), per_user([0.2, 0.0, 0.4])],
                              "test": [per_user([0.3, 0.0, 1.0]), per_user([0.0, 0.0, 1.0])], "fit": [1.5, 2.5]},
                "rectools_sasrec": {"valid": [per_user([0, 0, 0])], "test": [per_user([1, 1, 1])], "fit": [9.0],
                                    "epoch_seconds": [3.0], "peer": {"epochs": 2}}}
    out = tmp_path / "leaderboard-x.json"
    lb.save_seeds(out, [0, 1], per_seed, ("popularity", "two_tower"), "default")
    seeds, loaded = lb.load_seeds(out, ("popularity", "two_tower"), "default")
    assert seeds == [0, 1] and set(loaded) == set(per_seed)
    for name, e in per_seed.items():
        assert loaded[name]["fit"] == e["fit"] and loaded[name].get("peer") == e.get("peer")
        for split in ("valid", "test"):
            assert len(loaded[name][split]) == len(e[split])
            for got, want in zip(loaded[name][split], e[split]):
                assert set(got) == set(want)
                for key in want:
                    np.testing.assert_array_equal(got[key], want[key])
    with pytest.raises(SystemExit, match="holds line-up default"):
        lb.load_seeds(out, ("popularity", "sasrec"), "default")
    assert lb.load_seeds(tmp_path / "none.json", (), "default") == ([], {})


def test_round_robin_takes_each_sources_next_best_and_skips_duplicates():
    ms = _script("multi_source")
    a, b = np.array([5, 1, 2, 3]), np.array([1, 7, 5, 8])
    # rank 1: 5 (a), 1 (b); rank 2: 1 (a: a duplicate, skipped), 7 (b); rank 3: 2 (a): budget reached
    assert ms.round_robin([a, b], 4) == [5, 1, 7, 2]
    assert ms.round_robin([a, b], 10) == [5, 1, 7, 2, 3, 8]  # fewer distinct items than the budget


def test_union_recall_counts_a_target_found_by_any_source():
    ms = _script("multi_source")
    tops = {"a": np.array([[1, 2], [3, 4]]), "b": np.array([[5, 6], [7, 8]])}
    row = ms.measure(tops, np.array([6, 3]), [2])["recall@2"]
    assert row["a"] == 0.5 and row["b"] == 0.5
    assert row["union"] == 0.5            # user 0: [1, 5] misses 6; user 1: [3, 7] finds 3
    assert row["union_full"] == 1.0 and row["union_full_mean_size"] == 4.0


def test_peer_added_on_some_seeds_is_paired_with_the_baseline_on_the_same_seeds(tmp_path):
    import argparse
    import json
    import types

    lb = _script("leaderboard")
    per_user = lambda v: {"users": np.arange(4), "ndcg@10": np.array(v, float), "recall@10": np.array(v) > 0}  # noqa: E731
    # the baseline is far better on seed 1 than on seed 0: pairing the peer (seed 1 only) with seed 0 would be wrong
    per_seed = {"two_tower+rerank": {"valid": [per_user([0.1] * 4)] * 2, "fit": [1.0, 1.0],
                                     "test": [per_user([0.0, 0.0, 0.0, 0.0]), per_user([1.0, 1.0, 1.0, 1.0])]}}
    out = tmp_path / "leaderboard-x.json"
    peer_run = {"valid": per_user([0.0] * 4), "test": per_user([1.0, 1.0, 1.0, 1.0]), "fit_seconds": 8.0,
                "epoch_seconds": 4.0, "params": {"epochs": 2}}
    lb._add_peer(per_seed, 1, peer_run)
    lb._add_peer(per_seed, 1, {**peer_run, "fit_seconds": 6.0, "epoch_seconds": 3.0})  # re-measured: replaces
    assert per_seed["rectools_sasrec"]["seeds"] == [1] and per_seed["rectools_sasrec"]["fit"] == [6.0]
    lb.save_seeds(out, [0, 1], per_seed, ("two_tower",), "default")
    _, loaded = lb.load_seeds(out, ("two_tower",), "default")
    assert loaded["rectools_sasrec"]["seeds"] == [1]
    args = argparse.Namespace(dataset="x", output=str(out))
    etl = types.SimpleNamespace(manifest={"num_users": 5, "num_items": 11})
    lb._write(args, None, 10, [0, 1], loaded, (), "two_tower+rerank", ("two_tower",), 1.0, "default", etl,
              {"command": "the line-up run"})
    report = json.loads(out.read_text())
    peer = report["paths"]["rectools_sasrec"]
    assert peer["seeds"] == [1] and peer["ndcg@10"]["per_seed"] == [1.0] and peer["epoch_seconds"]["mean"] == 3.0
    assert report["paired"]["rectools_sasrec"]["relative"] == 0.0      # equal to the baseline's seed 1, not +inf
    assert report["command"] == "the line-up run" and report["served"] == "two_tower+rerank"
    assert "rectools_sasrec (seeds [1])" in out.with_suffix(".md").read_text()


def test_ml_1m_runs_the_sasrec_settings_chosen_on_validation_unless_params_are_given():
    lb = _script("leaderboard")
    assert lb.base_params("ml-1m", None)["sasrec_lightgcn"] == {"max_len": 200, "optimizer": "adamw",
                                                               "weight_decay": 0.01}
    assert lb.base_params("ml-1m", '{"sasrec_lightgcn": {"max_len": 50}}') == {"sasrec_lightgcn": {"max_len": 50}}
    assert lb.base_params("beauty", None) == {}
    assert "lightgcn" in lb.base_params("gowalla", None)


def test_leaderboard_join_runs_orders_seeds_keeps_the_peer_and_refuses_overlap():
    lb = _script("leaderboard")
    per_user = lambda v: {"users": np.arange(2), "ndcg@10": np.array(v, float), "recall@10": np.array(v) > 0}  # noqa: E731
    seed2 = {"two_tower": {"valid": [per_user([0.2, 0.2])], "test": [per_user([0.0, 2.0])], "fit": [2.0]}}
    seed0 = {"two_tower": {"valid": [per_user([0.0, 0.0])], "test": [per_user([0.0, 0.0])], "fit": [0.5]}}
    lb._add_peer(seed0, 0, {"valid": per_user([0.1, 0.1]), "test": per_user([1.0, 0.0]), "fit_seconds": 3.0,
                            "epoch_seconds": 1.0, "params": {"epochs": 3}})
    seeds, joined = lb.join_runs([([2], seed2), ([0], seed0)])
    assert seeds == [0, 2]
    assert joined["two_tower"]["fit"] == [0.5, 2.0]                       # the i-th entry is seeds[i]
    assert joined["two_tower"]["test"][1]["ndcg@10"].tolist() == [0.0, 2.0]
    assert joined["rectools_sasrec"]["seeds"] == [0] and joined["rectools_sasrec"]["peer"] == {"epochs": 3}
    with pytest.raises(SystemExit, match="overlapping"):
        lb.join_runs([([0], seed0), ([0, 2], seed2)])
