"""The server loads no training code: every module of tapestry.serving and tapestry.inference, imported in a fresh
interpreter, leaves no `tapestry.training` module in sys.modules — and neither does building every stage from real
exports (the default one and ones serving the DLRM and the fusion reranker: rerankers load lazily, so importing
alone would not see them).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tapestry.config import TrainConfig
from tapestry.ensembles import run_export
from tapestry.etl import run_etl
from tapestry.etl.synthetic import synthetic_tables
from tapestry.training.pipeline import run_train

QUIET = {"log": lambda *a, **k: None}

SCRIPT = """
import importlib, json, pkgutil, sys
for pkg in ("tapestry.serving", "tapestry.inference"):
    for m in pkgutil.iter_modules(importlib.import_module(pkg).__path__):
        importlib.import_module(f"{pkg}.{m.name}")
for line in sys.argv[1:]:
    exec(line)
print(json.dumps(sorted(m for m in sys.modules if m.startswith("tapestry.training"))))
"""


def training_modules_loaded(*statements: str) -> list[str]:
    """The tapestry.training modules a fresh interpreter holds after importing the serving layer and running
    `statements`."""
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *statements], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_serving_and_inference_modules_import_no_training_code():
    assert training_modules_loaded() == []


def test_the_check_sees_a_training_import():
    # The check itself can fail: a serving module that imported a trainer would be reported by name.
    assert "tapestry.training.sasrec" in training_modules_loaded("import tapestry.training.sasrec")


@pytest.fixture(scope="module")
def trained_root(tmp_path_factory):
    """A tiny run whose line-up has every servable kind: a retriever, a session encoder over its item table and
    two rankers over its candidates (the DLRM and the fusion reranker)."""
    root = tmp_path_factory.mktemp("artifacts-no-training")
    run_etl(synthetic_tables(num_users=120, num_items=60, seed=1), "notrain", root, **QUIET)
    cfg = TrainConfig.smoke(models=("popularity", "lightgcn", "sasrec_lightgcn", "srgnn_shared", "dlrm", "fusion"))
    run_train("notrain", root, cfg, **QUIET)
    return root


@pytest.mark.parametrize("ranker", ["dlrm", "fusion"])
def test_building_and_running_every_stage_loads_no_training_code(trained_root, ranker):
    import polars as pl

    art = run_export("notrain", trained_root, max_k=10, use_ranker=ranker, **QUIET).artifact_dir
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["reranker"] == ranker and manifest["session_encoder"]   # every lazily loaded part is exercised
    user = pl.read_parquet(art / "users.parquet")["user_id"][0]
    loaded = training_modules_loaded(
        "from tapestry.serving.pipeline import RecommendPipeline",
        f"p = RecommendPipeline.from_artifacts({str(art)!r})",
        f"r = p.recommend('notrain', {user!r}, k=5)",
        "assert len(r.item_ids) == 5 and r.strategy == 'personalized', r",
        "s = p.recommend('notrain', 'visitor-1', k=5, recent_item_ids=r.item_ids[:2])",
        "assert s.strategy == 'session', s")
    assert loaded == []
