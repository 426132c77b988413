"""Business rules (tapestry.serving.rules): validation with clear errors, and each rule on hand-made candidates
with known answers; no rules leaves the rerank stage's output unchanged."""
import json

import numpy as np
import polars as pl
import pytest

from tapestry.inference.feature_reranker import FeatureReranker, RerankTables
from tapestry.serving.item_facts import ItemFacts
from tapestry.serving.rerank import Rerank
from tapestry.serving.rules import RULES_FILE, RuleRanker, Rules, RulesError
from tapestry.serving.stage import USER_KNOWN, RequestError, bytes_array

ITEM_IDS = ["", "a", "b", "c", "d", "e", "f"]
DAY = 86_400


def facts() -> ItemFacts:
    # a, b, c nearly the same direction (and genre Comedy); d, e another (Drama); f alone (Horror).
    vectors = np.array([[0, 0, 0], [1, 0, 0], [0.99, 0.1, 0], [0.98, 0.2, 0], [0, 1, 0], [0.1, 0.99, 0],
                        [0, 0, 1]], np.float32)
    entities = pl.DataFrame({"item_idx": [1, 2, 3, 4, 5, 6], "entity_type": ["genre"] * 6,
                             "entity_value": ["Comedy", "Comedy", "Comedy", "Drama", "Drama", "Horror"]})
    # Every item seen on day 0, except f (first seen 5 days before the data's end, day 100).
    events = pl.DataFrame({"item_idx": [1, 2, 3, 4, 5, 6, 1], "timestamp": [0, 0, 0, 0, 0, 95 * DAY, 100 * DAY]})
    return ItemFacts.build(vectors, entities, events, 7)


CANDS = np.array([1, 2, 3, 4, 5, 6])
SCORES = np.array([6.0, 5.0, 4.0, 3.0, 2.0, 1.0], np.float32)


def top_ids(rules: Rules, k: int = 3) -> list[str]:
    return [ITEM_IDS[CANDS[i]] for i in RuleRanker(rules, facts(), ITEM_IDS).top(CANDS, SCORES, k)]


def test_no_rules_is_the_score_order_and_inactive():
    assert not Rules().active and not Rules.from_dict({}).active
    assert top_ids(Rules(blocked_item_ids=("zz",))) == ["a", "b", "c"]     # unknown blocked ids are ignored


def test_blocked_items_are_never_returned():
    assert top_ids(Rules(blocked_item_ids=("a", "c"))) == ["b", "d", "e"]
    assert top_ids(Rules(blocked_item_ids=tuple("abcdef"))) == []


def test_max_per_caps_each_entity_value_strictly():
    assert top_ids(Rules(max_per={"genre": 1}), k=4) == ["a", "d", "f"]   # three genres: shorter than k
    assert top_ids(Rules(max_per={"genre": 2}), k=4) == ["a", "b", "d", "e"]


def test_mmr_trades_relevance_for_dissimilar_items():
    assert top_ids(Rules(mmr_weight=0.0001)) == ["a", "b", "c"]          # tiny weight: the score order
    assert top_ids(Rules(mmr_weight=0.5)) == ["a", "d", "f"]             # each pick far from the ones before


def test_fresh_boost_lifts_items_first_seen_within_the_window():
    assert top_ids(Rules(fresh_boost=1.5, fresh_days=10)) == ["f", "a", "b"]
    assert top_ids(Rules(fresh_boost=1.5, fresh_days=3)) == ["a", "b", "c"]   # f is 5 days old: not fresh


@pytest.mark.parametrize("raw, message", [
    ([], "expected a JSON object"),
    ({"max_pre": {"genre": 2}}, r"unknown key\(s\) \['max_pre'\]"),
    ({"max_per": {"genre": 0}}, "integers >= 1"),
    ({"max_per": {"genre": 1.5}}, "integers >= 1"),
    ({"mmr_weight": 1.5}, "between 0 and 1"),
    ({"mmr_weight": "high"}, "mmr_weight must be a finite number"),
    ({"blocked_item_ids": "a"}, "list of non-empty item id strings"),
    ({"fresh_boost": 0.2}, "needs fresh_days > 0"),
    ({"fresh_boost": -1, "fresh_days": 3}, "fresh_boost must be >= 0"),
])
def test_bad_rules_are_refused_naming_the_key(raw, message):
    with pytest.raises(RulesError, match=message):
        Rules.from_dict(raw)


def test_rules_file_round_trips_and_bad_json_is_clear(tmp_path):
    rules = Rules(max_per={"genre": 2}, mmr_weight=0.3, blocked_item_ids=("a",), fresh_boost=0.2, fresh_days=30)
    rules.save(tmp_path / RULES_FILE)
    assert Rules.for_export(tmp_path) == rules
    assert Rules.for_export(tmp_path / "none") == Rules()
    (tmp_path / "bad.json").write_text("{max_per: 2}")
    with pytest.raises(RulesError, match="not valid JSON"):
        Rules.load(tmp_path / "bad.json")


def test_rules_the_export_cannot_apply_are_refused_at_load():
    with pytest.raises(RulesError, match=r"entity type\(s\) \['brand'\].*known: \['genre'\]"):
        RuleRanker(Rules(max_per={"brand": 1}), facts(), ITEM_IDS)
    with pytest.raises(RulesError, match="item_facts.npz.*export` again"):
        RuleRanker(Rules(mmr_weight=0.2), None, ITEM_IDS)
    RuleRanker(Rules(blocked_item_ids=("a",)), None, ITEM_IDS)   # blocking needs no item facts


def _rerank(rules=None):
    tables = RerankTables(item_entity=np.zeros((7, 1), np.float32), log_pop=np.zeros(7, np.float32),
                          demo_lift=np.zeros((1, 7), np.float32), user_attrs=np.zeros((2, 1), np.float32),
                          attr_names=["x=y"])
    return Rerank("acme", FeatureReranker(tables), ITEM_IDS, ITEM_IDS, max_k=6, max_len=4, facts=facts(),
                  rules=rules)


def _inputs(k=3):
    return {"TENANT": bytes_array(["acme"]), "FILTERED": CANDS, "FILTERED_SCORES": SCORES,
            "HISTORY": np.array([0, 0, 0, 1]), "SEEN": np.array([0, 1]), "USER_ATTRS": np.zeros(1, np.float32),
            "USER_KIND": np.array([USER_KNOWN], np.int32), "K": np.array([k], np.int32)}


def test_rerank_output_is_unchanged_without_rules_and_follows_them_with():
    plain, inactive = _rerank()(_inputs()), _rerank(Rules())(_inputs())
    for name in plain:
        assert plain[name].tolist() == inactive[name].tolist(), name
    assert [x.decode() for x in plain["ITEM_IDS"]] == ["a", "b", "c"]
    ruled = _rerank(Rules(max_per={"genre": 1}))(_inputs())
    assert [x.decode() for x in ruled["ITEM_IDS"]] == ["a", "d", "f"]
    # SCORES stay the reranker's scores of the picked items (retrieval z-scores here); REASONS stay aligned.
    everything = _rerank()(_inputs(k=6))                 # all six, in score order a..f
    assert ruled["SCORES"].tolist() == everything["SCORES"][[0, 3, 5]].tolist()
    assert len(ruled["REASONS"]) == 3 and json.loads(ruled["REASONS"][1])["item_id"] == "a"


def test_rerank_with_everything_blocked_is_a_request_error():
    with pytest.raises(RequestError, match="no items left.*rules"):
        _rerank(Rules(blocked_item_ids=tuple("abcdef")))(_inputs())
