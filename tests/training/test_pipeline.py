"""run_train end to end on the tiny synthetic tenant: a complete, loadable models version."""
from __future__ import annotations

import dataclasses
import json
import re

import numpy as np

import pytest

from tapestry.artifacts import latest_version
from tapestry.config import TrainConfig
from tapestry.training.base import Recommender
from tapestry.training.lightgcn import LightGCNRecommender
from tapestry.training.pipeline import evaluate_models, run_train
from tapestry.training.popularity import PopularityRecommender
from tapestry.training.sasrec import SASRecRecommender

_SEQ = dict(hidden_dim=16, num_blocks=1, num_heads=1, max_len=20, dropout=0.1, epochs=5, lr=5e-3)
TINY = TrainConfig(
    models=("popularity", "lightgcn", "sasrec", "sasrec_lightgcn_init"),
    params={"lightgcn": dict(embedding_dim=16, num_layers=2, epochs=5, batch_size=1024, lr=2e-2),
            "sasrec": _SEQ, "sasrec_lightgcn_init": _SEQ},
    serve="sasrec_lightgcn_init",
    device="cpu",
)


@pytest.fixture(scope="module")
def trained(tiny_etl):
    root = tiny_etl.parents[2]
    lines: list[str] = []
    return run_train("tiny", root=root, cfg=TINY, log=lines.append), lines, root


def test_writes_a_complete_version(trained, tiny_etl):
    result, _, root = trained
    assert result.path == latest_version("tiny", "models", root)
    names = {p.name for p in result.path.iterdir()}
    assert {"popularity.pt", "lightgcn.pt", "sasrec.pt", "sasrec_lightgcn_init.pt", "config.json", "metrics.json",
            "etl_version.txt"} <= names
    assert (result.path / "etl_version.txt").read_text().strip() == str(tiny_etl)
    saved = json.loads((result.path / "config.json").read_text())
    resolved = saved.pop("resolved")
    # The config as given, with session="auto" resolved (no model of this line-up reads the served item table).
    assert saved == json.loads(json.dumps(dataclasses.asdict(dataclasses.replace(TINY, session=""))))
    assert resolved["lightgcn"]["epochs"] == 5 and resolved["sasrec_lightgcn_init"]["item_init_from"] == "lightgcn"


def _logged_seconds(lines: list[str], stage: str) -> float:
    """The wall time the `[train] <stage>: ... (1.2s)` line reports."""
    [line] = [x for x in lines if x.startswith(f"[train] {stage}:")]
    return float(re.search(r"\((\d+\.\d)s\)$", line).group(1))


def test_metrics_json(trained):
    result, lines, _ = trained
    metrics = json.loads((result.path / "metrics.json").read_text())
    assert metrics == result.metrics
    assert set(metrics) == {"popularity", "lightgcn", "sasrec", "sasrec_lightgcn_init", "sasrec_lightgcn_init+rerank"}
    assert (result.path / "rerank.npz").exists()
    for name, m in metrics.items():
        reranked = name.endswith("+rerank")
        early = not reranked and name != "popularity"      # gradient-trained: early stopping on validation
        assert set(m) == ({"valid", "test", "fit_seconds"} | (set() if reranked else {"slices", "loss_history"})
                          | ({"best_epoch", "valid_history"} if early else set()))
        # The fit stage's own wall time (the "fit <name>" log line, 0.1 s resolution), not evaluation's.
        fit_stage = "fit rerank" if reranked else f"fit {name}"
        assert m["fit_seconds"] == pytest.approx(_logged_seconds(lines, fit_stage), abs=0.05 + 1e-9)
        if early:
            assert m["fit_seconds"] > 0
        if not reranked:
            assert set(m["slices"]) == {"cold_items", "cold_users"}
            assert m["slices"]["cold_users"]["num_users"] <= m["test"]["num_users"]
            epochs = {"popularity": 0, "lightgcn": 5}.get(name, _SEQ["epochs"])
            assert all(x > 0 for x in m["loss_history"])
            if early:   # one validation check per epoch; the kept epoch is the best check
                ran, curve = len(m["loss_history"]), m["valid_history"]
                assert len(curve) == ran and m["best_epoch"] == int(np.argmax(curve)) + 1
                assert ran == epochs or ran - m["best_epoch"] == 3     # all epochs, or stopped by patience 3
            else:
                assert len(m["loss_history"]) == epochs
        for split in ("valid", "test"):
            extra = {"num_candidates"} if reranked else ({"coverage@10"} if split == "test" else set())
            assert set(m[split]) == {"recall@10", "ndcg@10", "mrr", "recall@100", "num_users"} | extra
            if "coverage@10" in m[split]:
                assert 0 < m[split]["coverage@10"] <= 1
            assert m[split]["num_users"] == 200 and 0 <= m[split]["ndcg@10"] <= m[split]["recall@10"] <= 1


def test_models_load_and_sasrec_started_from_the_graph(trained):
    result, _, _ = trained
    for name, cls in (("popularity", PopularityRecommender), ("lightgcn", LightGCNRecommender),
                      ("sasrec", SASRecRecommender), ("sasrec_lightgcn_init", SASRecRecommender)):
        loaded = Recommender.load(result.path / f"{name}.pt")
        assert type(loaded) is cls, (name, type(loaded))
        assert loaded.num_items == 101                          # fitted: 100 items + padding
    assert SASRecRecommender.load(result.path / "sasrec_lightgcn_init.pt").initialised_from_graph
    assert not SASRecRecommender.load(result.path / "sasrec.pt").initialised_from_graph


def test_one_log_line_per_stage(trained):
    _, lines, _ = trained
    for stage in ("load", "graph", "fit popularity", "fit lightgcn", "fit sasrec", "evaluate sasrec", "write"):
        assert sum(line.startswith(f"[train] {stage}:") for line in lines) == 1, (stage, lines)


def test_evaluate_models_reproduces_saved_metrics(trained):
    result, _, root = trained
    again = evaluate_models("tiny", root, log=lambda *_: None)
    assert set(again) == set(result.metrics)
    for name, m in again.items():
        assert m["test"] == pytest.approx(result.metrics[name]["test"]) and m["valid"] == pytest.approx(
            result.metrics[name]["valid"])


@pytest.mark.parametrize("change, message", [
    (dict(params={**TINY.params, "sasrec_lightgcn_init": dict(_SEQ, hidden_dim=8)}), "embedding_dim"),
    (dict(models=("popularity", "sasrec", "sasrec_lightgcn_init", "lightgcn")), "must come before"),
    (dict(models=("popularity", "no_such_model")), "unknown model"),
    (dict(serve="lightgcn_missing"), "not among the trained"),
])
def test_bad_configs_fail_before_training(tiny_etl, change, message):
    with pytest.raises(ValueError, match=message):
        run_train("tiny", root=tiny_etl.parents[2], cfg=dataclasses.replace(TINY, **change), log=lambda *_: None)


def test_a_fresh_process_loads_every_saved_model(trained):
    """`tapestry evaluate` runs in a new process: Recommender.load must import the classes it meets."""
    import subprocess
    import sys

    result, _, _ = trained
    code = ("import sys; from pathlib import Path; from tapestry.training.base import Recommender; "
            "print(sorted(type(Recommender.load(p)).__name__ for p in Path(sys.argv[1]).glob('*.pt')))")
    out = subprocess.run([sys.executable, "-c", code, str(result.path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(sorted(["PopularityRecommender", "LightGCNRecommender", "SASRecRecommender",
                                             "SASRecRecommender"]))
