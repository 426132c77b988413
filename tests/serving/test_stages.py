"""Each Triton model's logic, without Triton: the stage objects the model.py adapters wrap."""
import numpy as np
import polars as pl
import pytest

from tapestry.ensembles.export import build_faiss_index
from tapestry.serving.feature_lookup import FeatureLookup
from tapestry.serving.filtering import CandidateFilter
from tapestry.serving.pipeline import request_tensors
from tapestry.serving.rerank import Rerank
from tapestry.serving.retrieval import Retrieval, merge_max_sim
from tapestry.serving.stage import USER_COLD, USER_KNOWN, USER_SESSION, RequestError, as_str, bytes_array
from tapestry.inference.feature_reranker import FeatureReranker, RerankTables

ITEM_IDS = ["", "a", "b", "c", "d", "e"]
TENANT = bytes_array(["acme"])


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


def test_feature_lookup_appends_recent_items_as_if_exported(lookup):
    """RECENT_ITEM_IDS = events after the export: the same tensors as a store that already held them."""
    users = pl.DataFrame({"user_id": ["u1"], "user_idx": [1], "history": [[3, 1, 2, 4, 5, 2, 1, 3]], "attrs": [[0, 2]]},
                         schema_overrides={"history": pl.List(pl.Int64), "attrs": pl.List(pl.Int64)})
    later = FeatureLookup("acme", max_len=4, users=users, item_ids=ITEM_IDS, num_attrs=3)
    online = lookup(request_tensors("acme", "u1", 10, recent_item_ids=["a", "nope", "", "c"]))
    exported = later(request_tensors("acme", "u1", 10))
    for name in ("HISTORY", "SEEN", "EXCLUDE", "USER_ATTRS", "USER_KIND"):
        assert online[name].tolist() == exported[name].tolist(), name
    assert online["HISTORY"].tolist() == [5, 2, 1, 3] and online["USER_KIND"].tolist() == [USER_KNOWN]
    assert online["IGNORED_ITEMS"].tolist() == [1]          # "nope" is counted; the "" placeholder is not


def test_feature_lookup_anonymous_session_and_cold_kinds(lookup):
    session = lookup(request_tensors("acme", "visitor-42", 10, recent_item_ids=["b", "d", "zz"]))
    assert session["USER_KIND"].tolist() == [USER_SESSION]
    assert session["HISTORY"].tolist() == [0, 0, 2, 4] and session["SEEN"].tolist() == [0, 2, 4]
    assert session["IGNORED_ITEMS"].tolist() == [1]
    for recent in (None, [], ["zz"]):       # no usable event: cold, whatever else the request holds
        out = lookup(request_tensors("acme", "visitor-42", 10, recent_item_ids=recent))
        assert out["USER_KIND"].tolist() == [USER_COLD] and not out["HISTORY"].any()
    # A stored user with no events and nothing recent is cold too.
    assert lookup(request_tensors("acme", "u2", 10))["USER_KIND"].tolist() == [USER_COLD]


def test_feature_lookup_refuses_another_tenant(lookup):
    with pytest.raises(RequestError, match="tenant 'other'"):
        lookup(request_tensors("other", "u1", 10))


def _retrieval(n=3):
    emb = np.array([[0, 0], [1, 0], [0, 1], [0.9, 0.1], [0.5, 0.5], [-1, 0]], dtype=np.float32)
    popularity = np.array([0, 1, 50, 3, 20, 4], dtype=np.float32)
    return Retrieval("acme", build_faiss_index(emb), popularity, num_candidates=n)


def test_retrieval_returns_inner_product_order_and_asks_for_extra_to_cover_seen():
    r = _retrieval(n=2)
    out = r({"TENANT": TENANT, "USER_EMB": np.array([[1.0, 0.0]], np.float32), "SEEN": np.array([0, 1]),
             "EXCLUDE": np.array([0])})
    # n = 2 + |SEEN| + |EXCLUDE| = 5: every real item, best first.
    assert out["CANDIDATES"].tolist() == [1, 3, 4, 2, 5]
    assert np.all(np.diff(out["CANDIDATE_SCORES"]) <= 0)


def test_retrieval_merges_interest_vectors_by_their_best_score():
    """K vectors in one search; an item's score is its max over the K: exactly a multi-interest model's score."""
    r = _retrieval(n=1)
    emb = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    out = r({"TENANT": TENANT, "USER_EMB": emb, "SEEN": np.array([0]), "EXCLUDE": np.array([0])})
    table = np.array([[0, 0], [1, 0], [0, 1], [0.9, 0.1], [0.5, 0.5], [-1, 0]], np.float32)
    best = (table @ emb.T).max(1)
    expected = [i for i in np.argsort(-best[1:], kind="stable") + 1][:3]       # n = 1 + 1 + 1
    assert out["CANDIDATES"].tolist() == expected == [1, 2, 3]
    np.testing.assert_allclose(out["CANDIDATE_SCORES"], best[expected], rtol=1e-6)


def test_merge_max_sim_keeps_each_item_once_and_skips_faiss_padding():
    ids = np.array([[5, 3, -1], [3, 7, 5]])
    scores = np.array([[0.9, 0.2, -1e30], [0.8, 0.5, 0.1]], np.float32)
    items, best = merge_max_sim(scores, ids, n=10)
    assert items.tolist() == [5, 3, 7] and best.tolist() == pytest.approx([0.9, 0.8, 0.5])


def test_retrieval_cold_user_gets_popularity():
    out = _retrieval(n=3)({"TENANT": TENANT, "USER_EMB": np.zeros((1, 2), np.float32), "SEEN": np.array([0]),
                           "EXCLUDE": np.array([0])})
    assert out["CANDIDATES"].tolist() == [2, 4, 5, 3, 1]


def test_filter_drops_seen_excluded_and_padding_keeping_order():
    f = CandidateFilter("acme", num_candidates=2, num_items=6)
    out = f({"TENANT": TENANT, "CANDIDATES": np.array([4, 0, 2, 3, 1]),
             "CANDIDATE_SCORES": np.array([5, 4, 3, 2, 1], np.float32), "SEEN": np.array([0, 2]),
             "EXCLUDE": np.array([0, 4])})
    assert out["FILTERED"].tolist() == [3, 1]
    assert out["FILTERED_SCORES"].tolist() == [2.0, 1.0]


def test_filter_never_returns_an_empty_tensor():
    out = CandidateFilter("acme", 5, 6)({"TENANT": TENANT, "CANDIDATES": np.array([1]),
                                         "CANDIDATE_SCORES": np.array([1.0], np.float32), "SEEN": np.array([0, 1]),
                                         "EXCLUDE": np.array([0])})
    assert out["FILTERED"].tolist() == [0]


def _rerank(weights):
    item_entity = np.array([[0, 0], [1, 0], [1, 0], [0, 1], [0, 1], [0, 1]], dtype=np.float32)
    tables = RerankTables(item_entity=item_entity, log_pop=np.array([0, 2, -1, 0, 1, -2], np.float32),
                          demo_lift=np.array([[0, 0, 0, 0, 0, 3]], np.float32),
                          user_attrs=np.zeros((2, 1), np.float32), attr_names=["age_group=18-24"])
    return Rerank("acme", FeatureReranker(tables, np.array(weights, np.float32)), ITEM_IDS,
                  ["", "A", "B", "C", "D", "E"], max_k=3, max_len=4)


def _rerank_inputs(k=2, attrs=(0.0,), kind=USER_KNOWN):
    return {"TENANT": TENANT, "FILTERED": np.array([2, 3, 5]), "FILTERED_SCORES": np.array([3.0, 2.0, 1.0], np.float32),
            "HISTORY": np.array([0, 4]), "SEEN": np.array([0, 4]), "USER_ATTRS": np.array(attrs, np.float32),
            "USER_KIND": np.array([kind], np.int32), "K": np.array([k], np.int32)}


def test_rerank_uses_item_features_to_reorder():
    by_retrieval = _rerank([1, 0, 0, 0])(_rerank_inputs())
    assert [as_str(x) for x in by_retrieval["ITEM_IDS"]] == ["b", "c"]
    # History is item 4 (entity 1): entity affinity promotes items 3 and 5 over item 2.
    by_affinity = _rerank([0, 0, 1, 0])(_rerank_inputs())
    assert [as_str(x) for x in by_affinity["ITEM_IDS"]] == ["c", "e"]
    assert [as_str(x) for x in by_affinity["TITLES"]] == ["C", "E"]
    assert as_str(by_affinity["STRATEGY"][0]) == "personalized"
    session = _rerank([0, 0, 1, 0])(_rerank_inputs(kind=USER_SESSION))
    assert as_str(session["STRATEGY"][0]) == "session"


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


# Every stage is a public Triton model (a client can call `retrieval` directly, skipping the ensemble), so each one
# checks the tenant and its own inputs; a malformed call is a RequestError (HTTP 400), never another exception.

def _user_encoder(session_model=None):
    from tapestry.models.sequential.sasrec import SASRec
    from tapestry.serving.user_encoder import UserEncoder

    return UserEncoder("acme", SASRec(num_items=6, hidden_dim=4, num_blocks=1, max_len=4, dropout=0.0),
                       session_model)


def _kind(kind=USER_KNOWN):
    return np.array([kind], np.int32)


def test_user_encoder_encodes_a_history_and_returns_zeros_for_padding_only():
    import torch

    torch.manual_seed(0)
    enc = _user_encoder()
    emb = enc({"TENANT": TENANT, "HISTORY": np.array([0, 0, 1, 2]), "USER_KIND": _kind()})["USER_EMB"]
    with torch.no_grad():
        expected = enc.model.encode(torch.tensor([[1, 2]])).numpy()      # the module on the history's items
    assert emb.shape == (1, 4) and emb.dtype == np.float32 and np.abs(expected).sum() > 0
    np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-6)
    other = enc({"TENANT": TENANT, "HISTORY": np.array([0, 0, 2, 1]), "USER_KIND": _kind()})["USER_EMB"]
    assert not np.allclose(other, emb)                                    # order matters: not a constant
    cold = enc({"TENANT": TENANT, "HISTORY": np.array([0, 0, 0, 0]), "USER_KIND": _kind(USER_COLD)})["USER_EMB"]
    assert cold.shape == (1, 4) and not cold.any()


def test_user_encoder_routes_anonymous_sessions_to_the_session_encoder():
    import torch

    from tapestry.models.sequential.sasrec import SASRec

    torch.manual_seed(1)
    session_model = SASRec(num_items=6, hidden_dim=4, num_blocks=1, max_len=3, dropout=0.0).eval()
    enc = _user_encoder(session_model)
    hist = np.array([0, 1, 2, 3])
    known = enc({"TENANT": TENANT, "HISTORY": hist, "USER_KIND": _kind(USER_KNOWN)})["USER_EMB"]
    anon = enc({"TENANT": TENANT, "HISTORY": hist, "USER_KIND": _kind(USER_SESSION)})["USER_EMB"]
    with torch.no_grad():
        expected = session_model.encode(torch.tensor([[1, 2, 3]]))[0].numpy()    # its own window: max_len 3
    np.testing.assert_allclose(anon[0], expected, rtol=1e-5)
    assert not np.allclose(known, anon)
    # Without a session encoder, an anonymous session is encoded by the served model from its events alone.
    plain = _user_encoder()
    np.testing.assert_array_equal(plain({"TENANT": TENANT, "HISTORY": hist, "USER_KIND": _kind(USER_SESSION)})
                                  ["USER_EMB"], plain({"TENANT": TENANT, "HISTORY": hist, "USER_KIND": _kind()})
                                  ["USER_EMB"])


def _valid_stage_calls():
    """(stage, valid tensors) for each of the four inner stages; feature_lookup is covered above."""
    return {
        "user_encoder": (_user_encoder(), {"TENANT": TENANT, "HISTORY": np.array([0, 0, 1, 2]), "USER_KIND": _kind()}),
        "retrieval": (_retrieval(), {"TENANT": TENANT, "USER_EMB": np.array([[1.0, 0.0]], np.float32),
                                     "SEEN": np.array([0]), "EXCLUDE": np.array([0])}),
        "filter": (CandidateFilter("acme", 2, 6), {
            "TENANT": TENANT, "CANDIDATES": np.array([1, 2]), "CANDIDATE_SCORES": np.array([2, 1], np.float32),
            "SEEN": np.array([0]), "EXCLUDE": np.array([0])}),
        "rerank": (_rerank([1, 0, 0, 0]), _rerank_inputs()),
    }


@pytest.mark.parametrize("stage", ["user_encoder", "retrieval", "filter", "rerank"])
@pytest.mark.parametrize("tenant, message", [
    (b"intruder", "tenant 'intruder' is not served"),
    (b"../acme", "is not a valid tenant id"),
    (b"", "is not a valid tenant id"),
    (b"\xff", "TENANT is not valid UTF-8"),
])
def test_every_stage_refuses_another_tenant(stage, tenant, message):
    obj, tensors = _valid_stage_calls()[stage]
    obj(tensors)  # the valid call works
    with pytest.raises(RequestError, match=message):
        obj({**tensors, "TENANT": np.array([tenant], dtype=np.object_)})
    missing = dict(tensors)
    del missing["TENANT"]
    with pytest.raises(RequestError, match="missing input tensor TENANT"):
        obj(missing)


@pytest.mark.parametrize("stage, name, value, message", [
    ("user_encoder", "HISTORY", np.array([0, 99]), r"HISTORY holds 1 item index\(es\) outside 0..5"),
    ("user_encoder", "HISTORY", np.array([1] * 5), "HISTORY has 5 elements, at most 4"),
    ("user_encoder", "HISTORY", np.array([], np.int64), "HISTORY must have at least 1 element"),
    ("user_encoder", "HISTORY", np.array([1.0, 2.0]), "HISTORY must be an integer type"),
    # The 500 AssertionError found over HTTP: a vector of the wrong dimension reached FAISS.
    ("retrieval", "USER_EMB", np.ones((1, 3), np.float32), r"USER_EMB must have shape \[1..64, 2\], got \[1, 3\]"),
    ("retrieval", "USER_EMB", np.ones(2, np.float32), r"USER_EMB must have shape \[1..64, 2\], got \[2\]"),
    ("retrieval", "USER_EMB", np.ones((0, 2), np.float32), r"got \[0, 2\]"),
    ("retrieval", "USER_EMB", np.ones((65, 2), np.float32), r"got \[65, 2\]"),
    ("retrieval", "USER_EMB", np.array([[np.nan, 1]], np.float32), "USER_EMB holds 1 non-finite"),
    ("retrieval", "USER_EMB", np.array([[1, 2]], np.int64), "USER_EMB must be a float type"),
    ("rerank", "USER_KIND", np.array([7], np.int32), r"USER_KIND must be one of \[0, 1, 2, 3, 4\], got 7"),
    ("user_encoder", "USER_KIND", np.array([], np.int32), "USER_KIND must have at least 1 element"),
    ("retrieval", "SEEN", np.zeros(7, np.int64), "SEEN has 7 elements, at most 6"),
    ("retrieval", "EXCLUDE", np.array([-1]), "EXCLUDE holds 1 item index"),
    ("filter", "CANDIDATE_SCORES", np.array([1.0], np.float32), "CANDIDATE_SCORES must have at least 2 element"),
    ("filter", "CANDIDATES", np.array([6]), "CANDIDATES holds 1 item index"),
    ("rerank", "FILTERED", np.array([2, 3, 9]), "FILTERED holds 1 item index"),
    ("rerank", "FILTERED_SCORES", np.array([1, np.inf, 2], np.float32), "FILTERED_SCORES holds 1 non-finite"),
    ("rerank", "FILTERED_SCORES", np.array([1, -np.inf, 2], np.float32), "must be finite for every real candidate"),
    ("rerank", "USER_ATTRS", np.zeros(3, np.float32), "USER_ATTRS has 3 elements, at most 1"),
    ("rerank", "K", np.array([10**9], np.int32), "K must be between 1 and 3, got 1000000000"),
    ("rerank", "K", np.array([], np.int32), "K must have at least 1 element"),
])
def test_malformed_stage_inputs_are_request_errors(stage, name, value, message):
    obj, tensors = _valid_stage_calls()[stage]
    with pytest.raises(RequestError, match=message):
        obj({**tensors, name: value})


@pytest.mark.parametrize("name, value, message", [
    ("USER_ID", [""], "USER_ID is empty"),
    ("USER_ID", [b"\xff"], "USER_ID is not valid UTF-8"),
    ("USER_ID", ["u" * 300], "USER_ID is 300 characters long"),
    ("USER_ID", ["u1", "u2"], "USER_ID has 2 elements, at most 1"),
    ("EXCLUDE_ITEM_IDS", ["a"] * 1001, "EXCLUDE_ITEM_IDS has 1001 elements, at most 1000"),
    ("EXCLUDE_ITEM_IDS", ["a", b"\xc3"], "EXCLUDE_ITEM_IDS is not valid UTF-8"),
])
def test_feature_lookup_refuses_malformed_ids(lookup, name, value, message):
    tensors = request_tensors("acme", "u1", 10)
    tensors[name] = np.array([x if isinstance(x, bytes) else x.encode() for x in value], dtype=np.object_)
    with pytest.raises(RequestError, match=message):
        lookup(tensors)


def test_feature_lookup_accepts_an_empty_exclude_list(lookup):
    tensors = request_tensors("acme", "u1", 10)
    tensors["EXCLUDE_ITEM_IDS"] = np.array([], dtype=np.object_)
    assert lookup(tensors)["EXCLUDE"].tolist() == [0]
