"""serve="auto" (the default line-up's): the retriever with the best VALIDATION NDCG@k is exported, never chosen
on test; the choice is recorded in config.json (tapestry.training.pipeline.choose_served)."""
import json

import pytest

from tapestry.config import DEFAULT_MODELS, SMOKE_SERVE, TrainConfig
from tapestry.etl import run_etl
from tapestry.etl.synthetic import synthetic_tables
from tapestry.training.pipeline import choose_served, run_train

QUIET = {"log": lambda *a, **k: None}


def _metrics(valid: dict[str, float], test: dict[str, float]) -> dict:
    return {m: {"valid": {"ndcg@10": v, "num_users": 50}, "test": {"ndcg@10": test[m], "num_users": 50}}
            for m, v in valid.items()}


def test_the_best_retriever_on_validation_is_chosen_not_the_best_on_test():
    cfg = TrainConfig(models=DEFAULT_MODELS)
    metrics = _metrics({"popularity": 0.9, "lightgcn": 0.8, "sasrec_lightgcn": 0.17, "two_tower": 0.19,
                        "srgnn_shared": 0.5}, {"popularity": 0.9, "lightgcn": 0.8, "sasrec_lightgcn": 0.30,
                                               "two_tower": 0.10, "srgnn_shared": 0.5})
    chosen, record = choose_served(cfg, metrics, 10)
    assert chosen == "two_tower"                      # popularity/lightgcn/srgnn are not retrievers
    assert record == {"chosen_on": "validation ndcg@10", "scores": {"sasrec_lightgcn": 0.17, "two_tower": 0.19}}


def test_a_tie_keeps_the_earlier_and_no_validation_split_keeps_the_last():
    cfg = TrainConfig(models=DEFAULT_MODELS)
    assert choose_served(cfg, _metrics({"sasrec_lightgcn": 0.2, "two_tower": 0.2}, {"sasrec_lightgcn": 0,
                                                                                     "two_tower": 0}), 10)[0] \
        == "sasrec_lightgcn"
    empty = {m: {"valid": {"ndcg@10": float("nan"), "num_users": 0}} for m in ("sasrec_lightgcn", "two_tower")}
    assert choose_served(cfg, empty, 10) == ("two_tower", {"chosen_on": "line-up order (no validation split)",
                                                           "scores": {}})


def test_a_two_tower_with_user_attributes_is_never_chosen():
    cfg = TrainConfig(models=DEFAULT_MODELS, params={"two_tower": {"use_user_attrs": True}})
    metrics = _metrics({"sasrec_lightgcn": 0.1, "two_tower": 0.3}, {"sasrec_lightgcn": 0.1, "two_tower": 0.3})
    assert choose_served(cfg, metrics, 10)[0] == "sasrec_lightgcn"


def test_auto_without_a_retriever_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="serve='auto' chooses among the line-up's retrievers"):
        run_train("t", tmp_path, TrainConfig(models=("popularity", "lightgcn")), **QUIET)


def test_defaults_serve_auto_and_smoke_runs_a_fixed_model():
    assert TrainConfig().serve == "auto" and "two_tower" in DEFAULT_MODELS and "sasrec_lightgcn" in DEFAULT_MODELS
    assert TrainConfig.smoke().serve == SMOKE_SERVE
    assert TrainConfig.smoke(models=("popularity", "two_tower", "sasrec")).serve == "auto"


def test_a_run_records_its_choice_and_the_session_encoder_follows_it(tmp_path):
    run_etl(synthetic_tables(num_users=80, num_items=40, seed=0), "t", tmp_path, **QUIET)
    cfg = TrainConfig.smoke(models=DEFAULT_MODELS, serve="auto")
    run = run_train("t", tmp_path, cfg, **QUIET)
    saved = json.loads((run.path / "config.json").read_text())
    scores = saved["serve_choice"]["scores"]
    assert set(scores) == {"sasrec_lightgcn", "two_tower"}
    assert saved["serve"] == max(scores, key=scores.get)
    # srgnn_shared scores against sasrec_lightgcn's table: exported only beside it
    assert saved["session"] == ("srgnn_shared" if saved["serve"] == "sasrec_lightgcn" else "")
    assert f"{saved['serve']}+rerank" in run.metrics
