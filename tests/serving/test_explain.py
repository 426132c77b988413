"""Explanations (tapestry.serving.explain) on hand-made item facts with known answers, and the rerank stage's
REASONS output."""
import json

import numpy as np
import polars as pl

from tapestry.inference.feature_reranker import FeatureReranker, RerankTables
from tapestry.serving.explain import Explainer, _encode
from tapestry.serving.item_facts import ItemFacts
from tapestry.serving.rerank import Rerank
from tapestry.serving.stage import USER_KNOWN, bytes_array

ITEM_IDS = ["", "a", "b", "c", "d", "e"]
TITLES = ["", "Alpha", "Beta", "", "Delta \"Δ\"\\", "Echo"]


def facts(with_vectors=True) -> ItemFacts:
    # Items 1-2 point one way, 3-4 another, 5 between; genres: a, b = Comedy; c, d = Drama; e = Comedy + Drama.
    vectors = np.array([[0, 0], [1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.7, 0.7]], np.float32)
    entities = pl.DataFrame({"item_idx": [1, 2, 3, 4, 5, 5, 4],
                             "entity_type": ["genre"] * 6 + ["brand"],
                             "entity_value": ["Comedy", "Comedy", "Drama", "Drama", "Comedy", "Drama", "Acme"]})
    events = pl.DataFrame({"item_idx": [1, 2, 3, 4, 5, 1], "timestamp": [10, 20, 30, 40, 500, 600]})
    f = ItemFacts.build(vectors if with_vectors else np.zeros((6, 2), np.float32), entities, events, 6)
    if not with_vectors:
        f.vectors = np.zeros((0, 2), np.float32)
    return f


def decode(reasons):
    """The reasons as dicts; each one is exactly what json.dumps(sort_keys=True) writes for its dict (the
    explainer assembles the strings from cached pieces for speed)."""
    out = [json.loads(r) for r in reasons]
    assert [_encode(d) for d in out] == list(reasons)
    return out


def test_item_facts_build_normalises_vectors_and_records_first_seen(tmp_path):
    f = facts()
    np.testing.assert_allclose(np.linalg.norm(f.vectors[1:], axis=1), 1.0, rtol=1e-6)
    assert not f.vectors[0].any()
    assert f.first_seen.tolist() == [-1, 10, 20, 30, 40, 500] and f.data_end == 600
    assert [f.entity_names[i] for i in f.entities_of(4)] == ["brand=Acme", "genre=Drama"]
    f.save(tmp_path / "item_facts.npz")
    back = ItemFacts.load(tmp_path)
    np.testing.assert_array_equal(back.vectors, f.vectors)
    assert back.entity_names == f.entity_names and back.data_end == 600
    assert ItemFacts.load(tmp_path / "missing") is None


def test_reason_names_the_most_similar_history_item_and_the_shared_entity():
    explainer = Explainer(facts(), ITEM_IDS, TITLES)
    # History (newest last, 0 = padding): a, d, c. Recommended: b (like a), e (genre shared by all three).
    got = decode(explainer.reasons(np.array([2, 5]), np.array([0, 1, 4, 3])))
    assert got[0]["kind"] == "history_item" and got[0]["item_id"] == "a" and got[0]["title"] == "Alpha"
    assert got[0]["similarity"] == round(float(facts().vectors[2] @ facts().vectors[1]), 3)
    assert got[0]["shared"] == {"type": "genre", "value": "Comedy", "count": 1}
    assert got[0]["text"] == "because you watched Alpha; shares genre: Comedy"
    # e's genres: Comedy (1 history item) and Drama (2): Drama links it more strongly.
    assert got[1]["shared"] == {"type": "genre", "value": "Drama", "count": 2}
    # A title-less item is named by its id.
    only_c = decode(explainer.reasons(np.array([4]), np.array([3])))[0]
    assert only_c["item_id"] == "c" and only_c["title"] == "c"


def test_ties_go_to_the_most_recent_history_item():
    explainer = Explainer(facts(), ITEM_IDS, TITLES)
    got = decode(explainer.reasons(np.array([2]), np.array([1, 1, 2])))   # same item twice then item 2 itself
    assert got[0]["item_id"] == "b"
    twin = decode(explainer.reasons(np.array([5]), np.array([1, 3])))[0]   # e is exactly as close to a as to c
    assert twin["item_id"] == "c"


def test_cold_users_get_popular_and_old_exports_still_explain():
    explainer = Explainer(facts(), ITEM_IDS, TITLES)
    assert decode(explainer.reasons(np.array([1, 2]), np.array([0, 0]))) == [
        {"kind": "popular", "text": "popular right now"}] * 2
    no_vectors = decode(Explainer(facts(with_vectors=False), ITEM_IDS, TITLES).reasons(np.array([2]), np.array([1])))
    assert no_vectors[0]["kind"] == "shared_entity" and "item_id" not in no_vectors[0]
    nothing = decode(Explainer(None, ITEM_IDS, TITLES).reasons(np.array([2]), np.array([1])))
    assert nothing == [{"kind": "history", "text": "matches your history"}]


def test_rerank_emits_one_reason_per_item_aligned_with_item_ids():
    tables = RerankTables(item_entity=np.eye(6, 2, dtype=np.float32), log_pop=np.zeros(6, np.float32),
                          demo_lift=np.zeros((1, 6), np.float32), user_attrs=np.zeros((2, 1), np.float32),
                          attr_names=["x=y"])
    stage = Rerank("acme", FeatureReranker(tables), ITEM_IDS, TITLES, max_k=3, max_len=4, facts=facts())
    out = stage({"TENANT": bytes_array(["acme"]), "FILTERED": np.array([2, 3, 5]),
                 "FILTERED_SCORES": np.array([3.0, 2.0, 1.0], np.float32), "HISTORY": np.array([0, 0, 1, 4]),
                 "SEEN": np.array([0, 1, 4]), "USER_ATTRS": np.zeros(1, np.float32),
                 "USER_KIND": np.array([USER_KNOWN], np.int32), "K": np.array([3], np.int32)})
    assert [x.decode() for x in out["ITEM_IDS"]] == ["b", "c", "e"]
    reasons = decode(out["REASONS"])
    assert [r["item_id"] for r in reasons] == ["a", "d", "d"]    # b ~ a, c ~ d, e: closer to d (0.78) than a (0.71)
    assert stage.rules is None                                     # no rules given: the plain top K


def test_dense_and_sparse_entity_paths_give_the_same_reasons(monkeypatch):
    """Small catalogues keep an item x value matrix; large ones gather the CSR rows: same answers."""
    import tapestry.serving.explain as explain

    rng = np.random.default_rng(0)
    dense = Explainer(facts(), ITEM_IDS, TITLES)
    monkeypatch.setattr(explain, "DENSE_ENTITY_LIMIT", 0)
    sparse = Explainer(facts(), ITEM_IDS, TITLES)
    assert dense._dense is not None and sparse._dense is None
    for _ in range(30):
        top, history = rng.permutation(np.arange(1, 6))[:3], rng.integers(0, 6, size=4)
        assert decode(sparse.reasons(top, history)) == decode(dense.reasons(top, history))


def test_an_older_exports_rerank_config_without_reasons_is_answered_without_them():
    """A repository exported before REASONS declares no such output: the adapter sends only what the config
    declares (Triton refuses a response with an undeclared output), so the older export keeps serving."""
    import types

    from tapestry.serving.auth import KeyGuard
    from tapestry.serving.triton_adapter import triton_model

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

        def as_numpy(self):
            return self.array

    class Request(dict):
        def parameters(self):
            return "{}"

    class Response:
        def __init__(self, output_tensors=(), error=None):
            self.outputs, self.error = {t.name: t.array for t in output_tensors}, error

    tables = RerankTables(item_entity=np.eye(6, 2, dtype=np.float32), log_pop=np.zeros(6, np.float32),
                          demo_lift=np.zeros((1, 6), np.float32), user_attrs=np.zeros((2, 1), np.float32),
                          attr_names=["x=y"])
    model = triton_model(Rerank)()
    model.pb = types.SimpleNamespace(get_input_tensor_by_name=lambda request, name: request.get(name),
                                     Tensor=Tensor, InferenceResponse=Response, TritonError=None)
    model.batched, model.guard = False, KeyGuard("acme", None)
    model.stage = Rerank("acme", FeatureReranker(tables), ITEM_IDS, TITLES, max_k=3, max_len=4, facts=facts())
    model.metrics = types.SimpleNamespace(record=lambda *a, **k: None)   # the stage-metrics hook, not under test
    inputs = {"TENANT": bytes_array(["acme"]), "FILTERED": np.array([2, 3, 5]),
              "FILTERED_SCORES": np.array([3.0, 2.0, 1.0], np.float32), "HISTORY": np.array([0, 0, 1, 4]),
              "SEEN": np.array([0, 1, 4]), "USER_ATTRS": np.zeros(1, np.float32),
              "USER_KIND": np.array([USER_KNOWN], np.int32), "K": np.array([2], np.int32)}
    request = Request({name: Tensor(name, value) for name, value in inputs.items()})
    old = {"ITEM_IDS": np.object_, "SCORES": np.float32, "TITLES": np.object_, "STRATEGY": np.object_}
    for declared, expected in ((old, set(old)), ({**old, "REASONS": np.object_}, {*old, "REASONS"})):
        model.out_dtypes = declared
        (response,) = model.execute([request])
        assert response.error is None and set(response.outputs) == expected
        assert [x.decode() for x in response.outputs["ITEM_IDS"]] == ["b", "c"]
