"""Each Triton model's logic, without Triton: the stage objects the model.py adapters wrap."""
import numpy as np
import polars as pl
import pytest

from tapestry.ensembles.export import build_faiss_index
from tapestry.serving.feature_lookup import FeatureLookup
from tapestry.serving.filtering import CandidateFilter
from tapestry.serving.pipeline import request_tensors
from tapestry.serving.rerank import Rerank
from tapestry.serving.retrieval import Retrieval
from tapestry.serving.stage import RequestError, as_str
from tapestry.training.reranker import FeatureReranker, RerankTables

ITEM_IDS = ["", "a", "b", "c", "d", "e"]


@pytest.fixture
def lookup():
    users = pl.DataFrame({
        "user_id": ["u1", "u2"], "user_idx": [1, 2],
        "history": [[3, 1, 2, 4, 5, 2], []], "attrs": [[0, 2], []],
    }, schema_overrides={"history": pl.List(pl.Int64), "attrs": pl.List(pl.Int64)})
    return FeatureLookup("acme", max_len=4, users=users, item_ids=ITEM_IDS, num_attrs=3)


def test_feature_lookup_left_pads_the_most_recent_items(lookup):
    out = lookup(request_tensors("acme", "u1", 10, ["c", "zz"]))
    assert out["HISTORY"].tolist() == [2, 4, 5, 2]          # the last max_len=4 items, newest last
    assert out["SEEN"].tolist() == [0, 1, 2, 3, 4, 5]       # the full history, not only the window
    assert out["EXCLUDE"].tolist() == [0, 3]                # "c" -> 3; unknown "zz" ignored
    assert out["USER_ATTRS"].tolist() == [1.0, 0.0, 1.0]


def test_feature_lookup_unknown_user_is_cold_not_an_error(lookup):
    out = lookup(request_tensors("acme", "nobody", 10))
    assert not out["HISTORY"].any()
    assert out["SEEN"].tolist() == [0] and out["EXCLUDE"].tolist() == [0]


def test_feature_lookup_refuses_another_tenant(lookup):
    with pytest.raises(RequestError, match="tenant 'other'"):
        lookup(request_tensors("other", "u1", 10))


def _retrieval(n=3):
    emb = np.array([[0, 0], [1, 0], [0, 1], [0.9, 0.1], [0.5, 0.5], [-1, 0]], dtype=np.float32)
    popularity = np.array([0, 1, 50, 3, 20, 4], dtype=np.float32)
    return Retrieval(build_faiss_index(emb), popularity, num_candidates=n)


def test_retrieval_returns_inner_product_order_and_asks_for_extra_to_cover_seen():
    r = _retrieval(n=2)
    out = r({"USER_EMB": np.array([1.0, 0.0], np.float32), "SEEN": np.array([0, 1]), "EXCLUDE": np.array([0])})
    # n = 2 + |SEEN| + |EXCLUDE| = 5: every real item, best first.
    assert out["CANDIDATES"].tolist() == [1, 3, 4, 2, 5]
    assert np.all(np.diff(out["CANDIDATE_SCORES"]) <= 0)


def test_retrieval_cold_user_gets_popularity():
    out = _retrieval(n=3)({"USER_EMB": np.zeros(2, np.float32), "SEEN": np.array([0]), "EXCLUDE": np.array([0])})
    assert out["CANDIDATES"].tolist() == [2, 4, 5, 3, 1]


def test_filter_drops_seen_excluded_and_padding_keeping_order():
    f = CandidateFilter(num_candidates=2)
    out = f({"CANDIDATES": np.array([4, 0, 2, 3, 1]), "CANDIDATE_SCORES": np.array([5, 4, 3, 2, 1], np.float32),
             "SEEN": np.array([0, 2]), "EXCLUDE": np.array([0, 4])})
    assert out["FILTERED"].tolist() == [3, 1]
    assert out["FILTERED_SCORES"].tolist() == [2.0, 1.0]


def test_filter_never_returns_an_empty_tensor():
    out = CandidateFilter(5)({"CANDIDATES": np.array([1]), "CANDIDATE_SCORES": np.array([1.0], np.float32),
                              "SEEN": np.array([0, 1]), "EXCLUDE": np.array([0])})
    assert out["FILTERED"].tolist() == [0]


def _rerank(weights):
    item_entity = np.array([[0, 0], [1, 0], [1, 0], [0, 1], [0, 1], [0, 1]], dtype=np.float32)
    tables = RerankTables(item_entity=item_entity, log_pop=np.array([0, 2, -1, 0, 1, -2], np.float32),
                          demo_lift=np.array([[0, 0, 0, 0, 0, 3]], np.float32),
                          user_attrs=np.zeros((2, 1), np.float32), attr_names=["age_group=18-24"])
    return Rerank(FeatureReranker(tables, np.array(weights, np.float32)), ITEM_IDS,
                  ["", "A", "B", "C", "D", "E"], max_k=3)


def _rerank_inputs(k=2, attrs=(0.0,)):
    return {"FILTERED": np.array([2, 3, 5]), "FILTERED_SCORES": np.array([3.0, 2.0, 1.0], np.float32),
            "HISTORY": np.array([0, 4]), "SEEN": np.array([0, 4]), "USER_ATTRS": np.array(attrs, np.float32),
            "K": np.array([k], np.int32)}


def test_rerank_uses_item_features_to_reorder():
    by_retrieval = _rerank([1, 0, 0, 0])(_rerank_inputs())
    assert [as_str(x) for x in by_retrieval["ITEM_IDS"]] == ["b", "c"]
    # History is item 4 (entity 1): entity affinity promotes items 3 and 5 over item 2.
    by_affinity = _rerank([0, 0, 1, 0])(_rerank_inputs())
    assert [as_str(x) for x in by_affinity["ITEM_IDS"]] == ["c", "e"]
    assert [as_str(x) for x in by_affinity["TITLES"]] == ["C", "E"]
    assert as_str(by_affinity["STRATEGY"][0]) == "personalized"


def test_rerank_uses_user_attributes():
    # Only the demographic feature: item 5 has lift 3 for this attribute, but only when the user has it.
    with_attr = _rerank([0, 0, 0, 1])(_rerank_inputs(k=1, attrs=(1.0,)))
    assert [as_str(x) for x in with_attr["ITEM_IDS"]] == ["e"]
    without = _rerank([0, 0, 0, 1])(_rerank_inputs(k=1, attrs=(0.0,)))
    assert [as_str(x) for x in without["ITEM_IDS"]] == ["b"]


@pytest.mark.parametrize("k", [0, 4])
def test_rerank_rejects_k_out_of_range(k):
    with pytest.raises(RequestError, match="K must be between 1 and 3"):
        _rerank([1, 0, 0, 0])(_rerank_inputs(k=k))


def test_rerank_reports_nothing_left_clearly():
    inputs = _rerank_inputs()
    inputs["FILTERED"], inputs["FILTERED_SCORES"] = np.array([0]), np.array([-np.inf], np.float32)
    with pytest.raises(RequestError, match="no items left"):
        _rerank([1, 0, 0, 0])(inputs)
