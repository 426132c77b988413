"""The demo's comparison of the served path with the two-tower baseline names where each number comes from."""
import json

from tapestry.demo import served_path_summary

M = {"sasrec_lightgcn+rerank": {"test": {"recall@10": 0.29, "ndcg@10": 0.17, "recall@100": 0.6}},
     "sasrec_lightgcn": {"test": {"recall@10": 0.28, "ndcg@10": 0.16}}}


def test_the_served_feature_path_and_the_committed_baseline(tmp_path):
    board = tmp_path / "leaderboard-ml-1m.json"
    stat = lambda m: {"mean": m, "ci95": 0.001}  # noqa: E731
    board.write_text(json.dumps({"seeds": [0, 1, 2], "baseline": "two_tower+rerank", "paths": {
        "two_tower+rerank": {"ndcg@10": stat(0.178), "recall@10": stat(0.31)},
        "sasrec_lightgcn+rerank": {"ndcg@10": stat(0.171), "recall@10": stat(0.29)}}}))
    lines = served_path_summary(M, {"served_model": "sasrec_lightgcn", "reranker": "feature"}, board)
    assert lines[0] == "served path sasrec_lightgcn+rerank (this run, test): recall@10 0.2900, ndcg@10 0.1700"
    assert lines[1].startswith("two-tower baseline two_tower+rerank (committed leaderboard, 3 seeds): "
                               "recall@10 0.3100 ± 0.0010, ndcg@10 0.1780 ± 0.0010")
    assert "sasrec_lightgcn+rerank: recall@10 0.2900 ± 0.0010" in lines[1]


def test_a_two_tower_trained_in_the_run_is_used_and_a_missing_one_is_said(tmp_path):
    with_tt = {**M, "two_tower": {"test": {"recall@10": 0.3, "ndcg@10": 0.175}}}
    lines = served_path_summary(with_tt, {"served_model": "sasrec_lightgcn", "reranker": "feature"}, None)
    assert lines[1] == "two-tower baseline (this run, test): recall@10 0.3000, ndcg@10 0.1750"
    lines = served_path_summary(M, {"served_model": "sasrec_lightgcn", "reranker": "feature"}, tmp_path / "none")
    assert "not trained in this run and no committed leaderboard" in lines[1]
