"""lightgcn_content: the shared Recommender API on the tiny tenant, and cold-item retrieval on a planted case.

Planted case (tapestry.etl.synthetic_multi): every user prefers one category; an item's title and description use
its category's own words; cold items (catalogue items with no events) therefore carry their category only in their
text. With content, a cold item of a user's favourite category must reach that user's top-k over the whole
catalogue, in a FAISS index built like the export's; without content (and without entity edges) it cannot.
"""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from tapestry.ensembles.export import build_faiss_index
from tapestry.etl import run_etl
from tapestry.etl.content import item_content_from_catalogue, write_item_content
from tapestry.etl.synthetic_multi import MULTI_ETL_CONFIG, MultiBehaviourConfig, multi_behaviour_tables
from tapestry.training import registry
from tapestry.training.base import Recommender
from tapestry.training.data import InteractionData
from tapestry.training.lightgcn_content import LightGCNContentRecommender

from .recommender_mixin import RecommenderMixin

TINY = dict(embedding_dim=16, num_layers=1, epochs=3, batch_size=512, text_buckets=2048, category_buckets=256,
            num_negatives=64, patience=0, device="cpu", progress=False)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")


class TestLightGCNContent(RecommenderMixin):
    @classmethod
    def make(cls, data, graph):
        return LightGCNContentRecommender(**{**TINY, "device": cls.device})


@needs_cuda
class TestLightGCNContentCUDA(TestLightGCNContent):
    device = "cuda"


PLANTED = MultiBehaviourConfig(num_users=200, num_items=160, num_sessions=2_000, cold_items=16, seed=0)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    tables = multi_behaviour_tables(PLANTED)
    path = run_etl(tables, "planted", root=tmp_path_factory.mktemp("a"), cfg=MULTI_ETL_CONFIG,
                   log=lambda *a: None).path
    data = InteractionData.load(path)
    # Text only: the cold items' category is in their words, not in a category column.
    write_item_content(path, item_content_from_catalogue(data, tables.items, category_columns=[]))
    favourite = np.random.default_rng([PLANTED.seed, 7]).integers(0, PLANTED.num_categories, PLANTED.num_users)
    user_map = pl.read_parquet(path / "user_map.parquet")
    fav_of_idx = {idx: int(favourite[int(uid[1:])]) for uid, idx in user_map.iter_rows()}
    return data, fav_of_idx


def _fit(data, **kw):
    return LightGCNContentRecommender(**{**TINY, "epochs": 8, "embedding_dim": 32, **kw}).fit(data)


def _cold_hit_rate(model, data, fav_of_idx, k=10):
    """Share of users whose FAISS top-k over the whole catalogue holds a cold item of their favourite category."""
    vectors = model.catalogue_item_embeddings().numpy()
    index = build_faiss_index(vectors)
    assert index.ntotal >= len(vectors) - 1                       # cold items are in the index
    cold_category = {r: int(model.catalogue_ids[r][1:]) % PLANTED.num_categories
                     for r in range(data.num_items, len(vectors))}
    users = np.array(sorted(fav_of_idx))
    _, ids = index.search(model.user_embeddings()[users].numpy(), k)
    return float(np.mean([any(cold_category.get(int(i)) == fav_of_idx[u] for i in row)
                          for u, row in zip(users, ids)]))


def test_cold_items_get_content_vectors_and_are_retrieved_for_users_of_their_category(planted):
    data, fav = planted
    model = _fit(data, entity_nodes=False)
    emb = model.catalogue_item_embeddings()
    assert len(model.catalogue_ids) == emb.shape[0] == data.num_items + PLANTED.cold_items
    assert torch.all(emb[data.num_items:].norm(dim=1) > 0)
    assert _cold_hit_rate(model, data, fav) > 0.5               # 2 cold items per category among ~22
    blind = _fit(data, entity_nodes=False, content=False)          # no content, no neighbours: cold = zero
    assert torch.all(blind.catalogue_item_embeddings()[data.num_items:] == 0)
    assert _cold_hit_rate(blind, data, fav) < 0.2


def test_recommend_catalogue_reaches_cold_items_and_skips_history(planted):
    data, fav = planted
    model = _fit(data, entity_nodes=False)
    seqs = data.sequences(("train",))
    u = next(u for u in sorted(fav) if len(seqs[u]))
    idx, scores = model.recommend_catalogue(u, seqs[u], k=20)
    assert (idx >= data.num_items).any() and 0 not in idx
    assert not set(idx.tolist()) & set(seqs[u].tolist()) and np.all(np.diff(scores) <= 0)


def test_cold_items_borrow_from_brand_and_category_neighbours(tmp_path):
    """No text: a cold item's category and brand, as encoder tokens and as graph neighbours, place it; even with no
    encoder at all, its entity neighbours alone (two hops: entity node -> its warm items) beat a blind model."""
    tables = multi_behaviour_tables(PLANTED)
    path = run_etl(tables, "nb", root=tmp_path, cfg=MULTI_ETL_CONFIG, log=lambda *a: None).path
    data = InteractionData.load(path)
    write_item_content(path, item_content_from_catalogue(data, tables.items, ["category", "brand"], text_columns=()))
    favourite = np.random.default_rng([PLANTED.seed, 7]).integers(0, PLANTED.num_categories, PLANTED.num_users)
    fav = {idx: int(favourite[int(uid[1:])]) for uid, idx in pl.read_parquet(path / "user_map.parquet").iter_rows()}
    assert _cold_hit_rate(_fit(data), data, fav, k=20) > 0.6                       # measured 0.82
    assert _cold_hit_rate(_fit(data, content=False, num_layers=2), data, fav, k=20) > 0.4   # measured 0.65
    assert _cold_hit_rate(_fit(data, content=False, entity_nodes=False), data, fav, k=20) < 0.1


def test_save_load_keeps_the_catalogue(planted, tmp_path):
    data, _ = planted
    model = _fit(data, epochs=1)
    loaded = Recommender.load(model.save(tmp_path / "m.pt"), device="cpu")
    assert loaded.catalogue_ids == model.catalogue_ids
    assert torch.equal(loaded.catalogue_item_embeddings(), model.catalogue_item_embeddings())


def test_registered_with_quick_settings(planted):
    data, _ = planted
    model = registry.build("lightgcn_content", quick=True, device="cpu", progress=False)
    assert isinstance(model, LightGCNContentRecommender) and model.cfg.content
    assert registry.get("lightgcn_content").role == "item_encoder"


def test_unknown_loss_is_refused():
    with pytest.raises(ValueError, match="bpr"):
        LightGCNContentRecommender(loss="hinge")


def test_feeds_a_sasrec_hybrid_through_graph_from(tiny_etl):
    """Its item table lines up with the ETL's items, so a SASRec hybrid can fuse it (`graph_from`)."""
    data = InteractionData.load(tiny_etl)
    content_model = LightGCNContentRecommender(**TINY).fit(data)
    assert content_model.item_embeddings().shape[0] == data.num_items
    sasrec = registry.build("sasrec", {"graph_from": "lightgcn_content", "fusion": "add"}, quick=True, device="cpu",
                            progress=False)
    sasrec.bind({"lightgcn_content": content_model})
    users = data.valid["user_idx"].to_numpy()[:4]
    seqs = data.sequences(("train",))
    assert sasrec.fit(data).score(users, [seqs[u] for u in users]).shape == (4, data.num_items)
