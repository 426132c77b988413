"""Multi-source retrieval without Triton: the round-robin merge, the neighbour-table source, the stage, and the
Triton config rewrite of an export written with --sources."""
import shutil

import numpy as np
import pytest

from tapestry.ensembles.export import TEMPLATES, build_faiss_index
from tapestry.serving.multi_source import (MISSING_RANK, MultiSourceRetrieval, NeighbourSource, apply_sources,
                                           merge_round_robin, top_unblocked)
from tapestry.serving.stage import bytes_array

TENANT = bytes_array(["acme"])
TABLE = np.array([[0, 0], [1, 0], [0, 1], [0.9, 0.1], [0.5, 0.5], [-1, 0], [0.2, 0.8]], dtype=np.float32)


def _list(*items):
    items = np.array(items, np.int64)
    return items, -np.arange(items.size, dtype=np.float32)      # best first


def test_merge_alternates_sources_by_rank_and_skips_duplicates():
    items, scores, ranks = merge_round_robin([_list(1, 2, 3), _list(2, 4, 5)], budget=10)
    assert items.tolist() == [1, 2, 4, 3, 5]          # rank 0: 1, 2; rank 1: (2 taken), 4; rank 2: 3, 5
    assert ranks.tolist() == [[0, -1], [1, 0], [-1, 1], [2, -1], [-1, 2]]
    assert scores[1].tolist() == [-1.0, 0.0]          # item 2: each source's own score
    assert np.isnan(scores[0, 1]) and np.isnan(scores[2, 0])   # missing: the sentinel, never a number


def test_merge_stops_at_the_budget():
    items, scores, ranks = merge_round_robin([_list(1, 2, 3), _list(4, 5, 6)], budget=3)
    assert items.tolist() == [1, 4, 2] and scores.shape == ranks.shape == (3, 2)


def test_merge_with_a_source_returning_fewer_or_no_items():
    items, _, ranks = merge_round_robin([_list(1, 2, 3, 4), _list(9), _list()], budget=4)
    assert items.tolist() == [1, 9, 2, 3]
    assert (ranks[:, 2] == MISSING_RANK).all() and ranks[:, 1].tolist() == [-1, 0, -1, -1]
    items, _, _ = merge_round_robin([_list(), _list()], budget=4)
    assert items.size == 0


def test_top_unblocked_drops_padding_blocked_and_repeats_keeping_order():
    items, scores = top_unblocked(np.array([0, 5, 3, 5, 2, -1, 4]), np.arange(7, dtype=np.float32),
                                  blocked=np.array([2]), n=2)
    assert items.tolist() == [5, 3] and scores.tolist() == [1.0, 2.0]


def _neighbours():
    # item i's neighbours (0 = no more neighbours) and scores
    ids = np.array([[0, 0], [2, 3], [1, 4], [4, 0], [3, 1], [1, 0], [0, 0]], np.int64)
    scores = np.array([[0, 0], [0.9, 0.5], [0.8, 0.6], [0.7, 0], [0.4, 0.3], [0.2, 0], [0, 0]], np.float32)
    return NeighbourSource("graph", ids, scores, recent=2)


def test_neighbour_source_sums_the_recent_items_rows():
    src = _neighbours()
    # recent 2 distinct newest: 3 then 1 (the older 5 is past `recent`); 3 -> {4: .7}; 1 -> {2: .9, 3: .5}
    items, scores = src.one(np.array([0, 5, 1, 3, 1, 3]), blocked=np.array([0]), n=10)
    assert items.tolist() == [2, 4, 3]
    np.testing.assert_allclose(scores, [0.9, 0.7, 0.5])
    items, _ = src.one(np.array([2, 4]), blocked=np.array([0, 1]), n=10)    # 4 -> {3: .4, 1: .3}; 2 -> {1: .8, 4: .6}
    assert items.tolist() == [4, 3]                                        # 1 blocked (seen); 4 is a neighbour of 2
    assert src.one(np.array([0, 0]), np.array([0]), 5)[0].size == 0       # no history: nothing


def _stage(n=3):
    popularity = np.array([0, 1, 50, 3, 20, 4, 2], dtype=np.float32)
    return MultiSourceRetrieval("acme", build_faiss_index(TABLE), popularity, n, TABLE, [_neighbours()], "enc")


def _row(emb, history, seen=(0,), exclude=(0,)):
    return {"TENANT": TENANT, "USER_EMB": np.array(emb, np.float32), "HISTORY": np.array(history, np.int64),
            "SEEN": np.array(seen, np.int64), "EXCLUDE": np.array(exclude, np.int64)}


def test_stage_merges_the_encoder_and_the_neighbours_to_the_budget_without_seen_items():
    out = _stage(n=4)(_row([[1.0, 0.0]], [0, 1], seen=(0, 1), exclude=(0, 3)))
    # encoder, unblocked: 4 (.5), 6 (.2), 2 (0), 5 (-1); neighbours of 1: 2 (.9), 3 (.5, excluded)
    assert out["CANDIDATES"].tolist() == [4, 2, 6, 5]
    assert out["CANDIDATE_SOURCE_RANKS"].tolist() == [[0, -1], [2, 0], [1, -1], [3, -1]]
    np.testing.assert_allclose(out["CANDIDATE_SOURCE_SCORES"][1], [0.0, 0.9])
    # CANDIDATE_SCORES: the served encoder's score of every candidate, whichever source found it
    np.testing.assert_allclose(out["CANDIDATE_SCORES"], TABLE[[4, 2, 6, 5]] @ [1.0, 0.0])


def test_stage_cold_user_gets_popularity_with_every_source_missing():
    out = _stage(n=3)(_row([[0.0, 0.0]], [0, 0]))
    assert out["CANDIDATES"].tolist() == [2, 4, 5, 3, 6]          # as the single-source stage (n + |seen| + |exclude|)
    assert (out["CANDIDATE_SOURCE_RANKS"] == MISSING_RANK).all() and out["CANDIDATE_SOURCE_RANKS"].shape == (5, 2)


def test_stage_batch_equals_rows_one_by_one():
    stage = _stage(n=3)
    rows = [_row([[1.0, 0.0]], [0, 1, 4], seen=(0, 1, 4)), _row([[0.0, 0.0]], [0, 0]),
            _row([[0.0, 1.0], [1.0, 0.0]], [2, 5], seen=(0, 2, 5)), {"TENANT": TENANT}]
    batch = stage.batch(rows)
    assert isinstance(batch[3], Exception)                        # a malformed row fails alone
    for row, got in zip(rows[:3], batch):
        alone = stage(row)
        assert set(got) == set(alone)
        for name in alone:
            np.testing.assert_array_equal(got[name], alone[name])


def test_apply_sources_declares_history_and_the_source_outputs(tmp_path):
    from tapestry.serving.tenant_repository import read_config
    from tapestry.serving.triton_adapter import check_config

    repo = tmp_path / "model_repository"
    shutil.copytree(TEMPLATES, repo, ignore=shutil.ignore_patterns("__pycache__"))
    apply_sources(repo)
    config = read_config(repo / "retrieval" / "config.pbtxt")
    check_config(MultiSourceRetrieval, {"input": [{"name": i.name} for i in config.input]})
    assert {o.name for o in config.output} == set(MultiSourceRetrieval.outputs)
    step = next(s for s in read_config(repo / "recommend" / "config.pbtxt").ensemble_scheduling.step
                if s.model_name == "retrieval")
    assert step.input_map["HISTORY"] == "HISTORY"
    assert "MultiSourceRetrieval" in (repo / "retrieval" / "1" / "model.py").read_text()


def test_apply_sources_keeps_an_unbatched_repository_unbatched(tmp_path):
    from tapestry.serving.batching import set_max_batch_size
    from tapestry.serving.tenant_repository import read_config

    repo = tmp_path / "model_repository"
    shutil.copytree(TEMPLATES, repo, ignore=shutil.ignore_patterns("__pycache__"))
    set_max_batch_size(repo, 0)
    apply_sources(repo)
    config = read_config(repo / "retrieval" / "config.pbtxt")
    assert config.max_batch_size == 0 and not any(i.allow_ragged_batch for i in config.input)


@pytest.mark.parametrize("names, message", [(["sasrec_lightgcn"], "served model"), (["bert4rec"], "not trained"),
                                            (["lightgcn"], "not a candidate source")])
def test_export_refuses_a_source_it_cannot_serve(names, message):
    from tapestry.ensembles.sources import check_sources

    cfg = {"models": ["lightgcn", "sasrec_lightgcn", "two_tower", "graph_filter"]}
    check_sources(["two_tower", "graph_filter"], "sasrec_lightgcn", cfg)
    with pytest.raises(ValueError, match=message):
        check_sources(names, "sasrec_lightgcn", cfg)
