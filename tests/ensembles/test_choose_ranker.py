"""The export's reranker choice: a trained DLRM replaces the feature reranker (as before); the fusion reranker is
served only when its validation NDCG beats the feature reranker's and the DLRM's; a request by name overrides."""
from __future__ import annotations

import pytest

from tapestry.ensembles.export import choose_ranker

SERVED = "sasrec_lightgcn"


def run(*rankers: str) -> dict:
    return {"models": ["popularity", "lightgcn", SERVED, *rankers],
            "resolved": {r: {"retriever": SERVED, "graph_from": "lightgcn"} for r in rankers}}


def metrics(**valid) -> dict:
    names = {"feature": f"{SERVED}+rerank"}
    return {names.get(k, k): {"valid": {"recall@10": 0.3, "ndcg@10": v}} for k, v in valid.items() if v is not None}


def choose(cfg, m, requested=None):
    lines = []
    chosen, record = choose_ranker(SERVED, cfg, m, requested, log=lines.append)
    return chosen, record, lines


def test_fusion_served_when_it_beats_the_feature_reranker_and_the_dlrm():
    chosen, record, lines = choose(run("dlrm", "fusion"), metrics(feature=0.170, dlrm=0.175, fusion=0.181))
    assert chosen == "fusion"
    assert record == {"metric": "valid ndcg@10", "scores": {"feature": 0.170, "dlrm": 0.175, "fusion": 0.181},
                      "chosen": "fusion", "rule": "best validation ndcg@10"}
    assert "fusion" in lines[0] and "0.1810" in lines[0] and "0.1700" in lines[0]


def test_the_dlrm_keeps_its_place_when_fusion_does_not_beat_it():
    chosen, record, _ = choose(run("dlrm", "fusion"), metrics(feature=0.170, dlrm=0.175, fusion=0.174))
    assert chosen == "dlrm" and record["rule"] == "default"


def test_feature_reranker_when_fusion_loses_or_ties():
    for fusion in (0.160, 0.170):
        chosen, record, _ = choose(run("fusion"), metrics(feature=0.170, fusion=fusion))
        assert chosen is None and record["chosen"] == "feature"


def test_fusion_without_a_validation_number_is_not_served():
    chosen, record, _ = choose(run("fusion"), metrics(feature=0.170))
    assert chosen is None and record["scores"]["fusion"] is None


def test_a_dlrm_alone_replaces_the_feature_reranker_as_before():
    assert choose(run("dlrm"), metrics(feature=0.20, dlrm=0.10))[0] == "dlrm"
    assert choose(run(), metrics(feature=0.20))[0] is None


def test_a_request_by_name_overrides_the_rule():
    cfg, m = run("dlrm", "fusion"), metrics(feature=0.170, dlrm=0.175, fusion=0.181)
    assert choose(cfg, m, "feature")[0] is None
    assert choose(cfg, m, "dlrm")[:2] == ("dlrm", {"metric": "valid ndcg@10", "scores": {
        "feature": 0.170, "dlrm": 0.175, "fusion": 0.181}, "chosen": "dlrm", "rule": "requested"})
    with pytest.raises(ValueError, match="no such ranker"):
        choose(run("dlrm"), m, "fusion")
