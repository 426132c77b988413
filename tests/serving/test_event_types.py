"""Event types on the request path (issue 19): EVENT_TYPES -> feature_lookup -> HISTORY_TYPES -> user_encoder.

A behaviour-aware encoder (BehaviourSASRec) reads each event's type beside its item; the stages must hand it the
types it was trained with, default to "unknown" (0) when none are sent, and refuse types outside the vocabulary.
"""
import numpy as np
import polars as pl
import pytest
import torch

from tapestry.inference.encoders import event_vocabulary, load_encoder, save_encoder
from tapestry.models.sequential.behaviour_sasrec import BehaviourSASRec
from tapestry.models.sequential.sasrec import SASRec
from tapestry.online.store import EmbeddedStore
from tapestry.serving.feature_lookup import FeatureLookup
from tapestry.serving.pipeline import request_tensors
from tapestry.serving.stage import USER_KNOWN, USER_SESSION, RequestError, bytes_array
from tapestry.serving.triton_adapter import check_config
from tapestry.serving.user_encoder import UserEncoder

ITEM_IDS = ["", "a", "b", "c", "d", "e"]
TENANT = bytes_array(["acme"])
VOCAB = ["cart", "purchase", "view"]          # index 1, 2, 3 (sorted, as training builds it)


def _behaviour_model(seed=0) -> BehaviourSASRec:
    torch.manual_seed(seed)
    return BehaviourSASRec(num_items=6, num_event_types=3, hidden_dim=8, num_blocks=1, max_len=4, dropout=0.0,
                           event_types=VOCAB).eval()


def _encode(enc, history, types=None, kind=USER_KNOWN):
    t = {"TENANT": TENANT, "HISTORY": np.array(history), "USER_KIND": np.array([kind], np.int32)}
    if types is not None:
        t["HISTORY_TYPES"] = np.array(types, np.int64)
    return enc(t)["USER_EMB"]


def test_user_encoder_feeds_the_types_to_a_behaviour_model():
    enc = UserEncoder("acme", _behaviour_model())
    viewed = _encode(enc, [0, 0, 1, 2], [0, 0, 3, 3])
    bought = _encode(enc, [0, 0, 1, 2], [0, 0, 3, 2])
    assert not np.allclose(viewed, bought)                       # the last event's type changes the user vector
    with torch.no_grad():
        expected = enc.model.encode(torch.tensor([[1, 2]]), torch.tensor([[3, 2]])).numpy()
    np.testing.assert_allclose(bought, expected, rtol=1e-5, atol=1e-6)


def test_missing_types_are_the_unknown_type():
    enc = UserEncoder("acme", _behaviour_model())
    without = _encode(enc, [0, 0, 1, 2])
    np.testing.assert_allclose(without, _encode(enc, [0, 0, 1, 2], [0, 0, 0, 0]), rtol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(without, enc.model.encode(torch.tensor([[1, 2]])).numpy(), rtol=1e-5, atol=1e-6)
    # A type on a padding position is not an event: ignored.
    np.testing.assert_allclose(_encode(enc, [0, 0, 1, 2], [3, 1, 0, 0]), without, rtol=1e-6)


@pytest.mark.parametrize("types, message", [
    ([0, 0, 4, 1], r"HISTORY_TYPES holds 1 event type index\(es\) outside 0..3"),
    ([0, 0, -1, 1], "outside 0..3"),
    ([0, 1, 1], "HISTORY_TYPES and HISTORY must have the same length, got 3 and 4"),
    ([0.0, 0.0, 1.0, 1.0], "HISTORY_TYPES must be an integer type"),
])
def test_bad_types_are_request_errors(types, message):
    enc = UserEncoder("acme", _behaviour_model())
    with pytest.raises(RequestError, match=message):
        enc({"TENANT": TENANT, "HISTORY": np.array([0, 0, 1, 2]), "USER_KIND": np.array([USER_KNOWN], np.int32),
             "HISTORY_TYPES": np.array(types)})


def test_a_batch_mixes_typed_and_untyped_rows_of_different_lengths():
    enc = UserEncoder("acme", _behaviour_model())
    rows = [{"TENANT": TENANT, "HISTORY": np.array([0, 0, 1, 2]), "USER_KIND": np.array([USER_KNOWN], np.int32),
             "HISTORY_TYPES": np.array([0, 0, 3, 2])},
            {"TENANT": TENANT, "HISTORY": np.array([4, 5, 1, 3]), "USER_KIND": np.array([USER_KNOWN], np.int32)}]
    batched = enc.batch(rows)
    np.testing.assert_allclose(batched[0]["USER_EMB"], _encode(enc, [0, 0, 1, 2], [0, 0, 3, 2]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batched[1]["USER_EMB"], _encode(enc, [4, 5, 1, 3]), rtol=1e-5, atol=1e-6)


def test_an_item_only_encoder_ignores_the_types_and_the_session_encoder_too():
    torch.manual_seed(0)
    plain = UserEncoder("acme", SASRec(num_items=6, hidden_dim=8, num_blocks=1, max_len=4, dropout=0.0))
    np.testing.assert_array_equal(_encode(plain, [0, 0, 1, 2], [0, 0, 9, 9]), _encode(plain, [0, 0, 1, 2]))
    session = SASRec(num_items=6, hidden_dim=8, num_blocks=1, max_len=4, dropout=0.0)
    enc = UserEncoder("acme", _behaviour_model(), session)
    np.testing.assert_array_equal(_encode(enc, [0, 0, 1, 2], [0, 0, 3, 2], USER_SESSION),
                                  _encode(enc, [0, 0, 1, 2], None, USER_SESSION))


def test_the_served_file_keeps_the_vocabulary(tmp_path):
    model = _behaviour_model()
    save_encoder(model, tmp_path / "enc.pt")
    loaded = load_encoder(tmp_path / "enc.pt")
    assert isinstance(loaded, BehaviourSASRec) and event_vocabulary(loaded) == VOCAB
    assert event_vocabulary(SASRec(num_items=6, hidden_dim=8, max_len=4)) is None
    seqs, events = torch.tensor([[1, 2, 3]]), torch.tensor([[3, 1, 2]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(seqs, events), model.encode(seqs, events))


# ---- feature_lookup: names -> indices, stored types beside stored items ------------------------------------------
def _users(with_types=True):
    frame = {"user_id": ["u1", "u2"], "user_idx": [1, 2], "history": [[3, 1, 2], []], "attrs": [[], []]}
    if with_types:
        frame["history_types"] = [[3, 3, 2], []]
    return pl.DataFrame(frame, schema_overrides={c: pl.List(pl.Int64) for c in frame if c not in ("user_id",
                                                                                                   "user_idx")})


@pytest.fixture
def lookup():
    return FeatureLookup("acme", max_len=6, users=_users(), item_ids=ITEM_IDS, event_types=VOCAB)


def test_stored_and_recent_types_follow_the_history(lookup):
    out = lookup(request_tensors("acme", "u1", 10, recent_item_ids=["d", "zz", "", "e"],
                                 event_types=["View", "purchase", "", "CART"]))
    assert out["HISTORY"].tolist() == [0, 3, 1, 2, 4, 5]
    assert out["HISTORY_TYPES"].tolist() == [0, 3, 3, 2, 3, 1]     # unknown item "zz" drops with its type
    assert out["IGNORED_ITEMS"].tolist() == [1]


def test_no_event_types_sent_means_unknown_types(lookup):
    out = lookup(request_tensors("acme", "u1", 10, recent_item_ids=["d"]))
    assert out["HISTORY_TYPES"].tolist() == [0, 0, 3, 3, 2, 0]
    blank = lookup(request_tensors("acme", "u1", 10, recent_item_ids=["d"], event_types=[]))   # [""] placeholder
    assert blank["HISTORY_TYPES"].tolist() == out["HISTORY_TYPES"].tolist()
    anonymous = lookup(request_tensors("acme", "nobody", 10, recent_item_ids=["a", "b"], event_types=["view", ""]))
    assert anonymous["HISTORY_TYPES"].tolist() == [0, 0, 0, 0, 3, 0]


@pytest.mark.parametrize("recent, types, message", [
    (["d"], ["teleport"], r"EVENT_TYPES: unknown event type\(s\) 'teleport'; this tenant's event types are "
                          "cart, purchase, view"),
    (["d", "e"], ["view"], "EVENT_TYPES has 1 entries but RECENT_ITEM_IDS has 2"),
    (None, ["view"], "EVENT_TYPES has 1 entries but RECENT_ITEM_IDS has 0"),
    (["d"], ["vi\x00ew"], "EVENT_TYPES contains control or invisible characters"),
])
def test_bad_event_types_are_request_errors(lookup, recent, types, message):
    with pytest.raises(RequestError, match=message):
        lookup(request_tensors("acme", "u1", 10, recent_item_ids=recent, event_types=types))


def test_an_item_only_export_ignores_type_names():
    blind = FeatureLookup("acme", max_len=4, users=_users(with_types=False), item_ids=ITEM_IDS)
    out = blind(request_tensors("acme", "u1", 10, recent_item_ids=["d"], event_types=["teleport"]))
    assert out["HISTORY"].tolist() == [3, 1, 2, 4] and not out["HISTORY_TYPES"].any()


def test_the_embedded_store_keeps_types_aligned_through_appends():
    store = EmbeddedStore("acme", _users())
    assert store.get("u1").types.tolist() == [3, 3, 2]
    store.append([("u1", 5), ("u3", 1), ("u3", 2, 1)])
    assert store.get("u1").history.tolist() == [3, 1, 2, 5] and store.get("u1").types.tolist() == [3, 3, 2, 0]
    assert store.get("u3").types.tolist() == [0, 1]       # a new user of a typed store: types from the first event
    assert EmbeddedStore("acme", _users(with_types=False)).get("u1").types is None


def test_an_export_older_than_event_types_still_loads():
    """Optional inputs may be undeclared (a repository exported before EVENT_TYPES): the stage never gets them."""
    check_config(UserEncoder, {"input": [{"name": n} for n in ("TENANT", "HISTORY", "USER_KIND")]})
    check_config(FeatureLookup, {"input": [{"name": n} for n in ("TENANT", "USER_ID", "EXCLUDE_ITEM_IDS")]})
    with pytest.raises(RuntimeError, match=r"does not declare input\(s\) \['HISTORY'\]"):
        check_config(UserEncoder, {"input": [{"name": n} for n in ("TENANT", "USER_KIND")]})


# ---- rerank: a behaviour-aware fusion reranker reads HISTORY_TYPES -----------------------------------------------
def _fusion_rerank():
    from tapestry.inference.fusion_ranker import FusionReranker
    from tapestry.models.ranking.behaviour_fusion import BehaviourFusionRanker
    from tapestry.serving.rerank import Rerank

    torch.manual_seed(0)
    module = BehaviourFusionRanker(6, 3, VOCAB, dim=8, num_heads=2, max_history=4, num_dense=7, mlp=(8,),
                                   dropout=0.0)
    with torch.no_grad():
        module.event_emb.weight[1:].normal_(std=1.0)      # untrained but large: the types must move the scores
    ranker = FusionReranker(module.init_args, module.state_dict(), np.zeros(6, np.float32), 1)
    return Rerank("acme", ranker, ITEM_IDS, [""] * 6, max_k=3, max_len=4)


def _rerank_row(types=None):
    row = {"TENANT": TENANT, "FILTERED": np.array([2, 3, 5]), "FILTERED_SCORES": np.array([3.0, 2.0, 1.0], np.float32),
           "HISTORY": np.array([0, 1, 4]), "SEEN": np.array([0, 1, 4]), "USER_ATTRS": np.zeros(1, np.float32),
           "USER_KIND": np.array([USER_KNOWN], np.int32), "K": np.array([3], np.int32)}
    if types is not None:
        row["HISTORY_TYPES"] = np.array(types, np.int64)
    return row


def test_the_fusion_rerank_stage_reads_history_types():
    rerank = _fusion_rerank()
    assert rerank.event_types == VOCAB
    viewed = rerank(_rerank_row([0, 3, 3]))["SCORES"]
    bought = rerank(_rerank_row([0, 3, 2]))["SCORES"]
    assert not np.allclose(viewed, bought)
    np.testing.assert_array_equal(rerank(_rerank_row())["SCORES"], rerank(_rerank_row([0, 0, 0]))["SCORES"])
    with pytest.raises(RequestError, match=r"HISTORY_TYPES holds 1 event type index\(es\) outside 0..3"):
        rerank(_rerank_row([0, 3, 7]))
    # The fusion reranker round-trips through its file with the vocabulary.
    from tapestry.inference.fusion_ranker import FusionReranker

    again = FusionReranker.from_payload(rerank.reranker.payload())
    assert again.event_types == VOCAB and type(again.model).__name__ == "BehaviourFusionRanker"
