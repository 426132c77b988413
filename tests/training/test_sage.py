"""SAGERecommender: the shared API, the inductive (cold-item) path and a leak-free training sampler."""
from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F

from tapestry.graph.hetero import INTERACTS, build_hetero_graph
from tapestry.training.base import Recommender
from tapestry.training.data import InteractionData
from tapestry.training.sage import (REV_INTERACTS, SAGEConfig, SAGERecommender, _use_cugraph, interaction_graph,
                                    link_loader, without_targets)

from .recommender_mixin import RecommenderMixin

# Tiny config: ~2 s per fit on 2 CPU cores, NDCG@10 ~3.5x popularity's on the planted data.
SAGE = dict(embedding_dim=32, num_neighbors=(10, 5), epochs=10, batch_size=256, lr=1e-2, seed=0)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")


class TestSAGE(RecommenderMixin):
    @classmethod
    def make(cls, data, graph):
        return SAGERecommender(**SAGE, device=cls.device, progress=False)

    def test_embeddings_cover_all_rows(self, model, data):
        items, users = model.item_embeddings(), model.user_embeddings()
        assert items.shape == (data.num_items, SAGE["embedding_dim"])
        assert users.shape == (data.num_users, SAGE["embedding_dim"])
        assert not items[0].any() and not users[0].any()          # OOV / padding rows are defined as zero
        assert torch.isfinite(items).all() and items[1:].norm(dim=1).min() > 0

    def test_training_loss_goes_down(self, model):
        # ~10 % lower after 10 epochs on this data (4.07 -> 3.66): well clear of noise, not of a tight bound.
        assert model.loss_history_[-1] < 0.95 * model.loss_history_[0]

    def test_unknown_user_is_the_mean_of_their_history(self, model, data, histories):
        user = int(self._users(data, 1)[0])
        hist = histories[user]
        items = model.item_embeddings()
        expected = items[torch.as_tensor(hist, device=items.device)].mean(0) @ items.T
        got = model.score(np.array([0]), [hist])[0]
        torch.testing.assert_close(got[1:], expected[1:])
        assert got[1:].std() > 0                                    # not the flat zero vector
        flat = model.score(np.array([0]), [np.zeros(0, dtype=np.int64)])[0]
        assert torch.isfinite(flat[1:]).all() and not flat[1:].any()   # nothing known: flat, serve popularity

    def test_embed_items_survives_save_load(self, model, tmp_path):
        new = [[("genre", "Action")], [("genre", "Comedy"), ("genre", "Drama")]]
        loaded = Recommender.load(model.save(tmp_path / "m.pt"), device=self.device)
        assert torch.equal(loaded.embed_items(new).cpu(), model.embed_items(new).cpu())


@needs_cuda
class TestSAGEGPU(TestSAGE):
    device = "cuda"


# ---- items never seen in training -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cold(tiny_etl):
    """Two items of every genre lose all their training interactions: only their genre describes them."""
    data = InteractionData.load(tiny_etl)
    genres = data.item_entities.filter(pl.col("entity_type") == "genre")
    genre_of = dict(zip(genres["item_idx"].to_list(), genres["entity_value"].to_list()))
    cold_items = (genres.sort("item_idx").group_by("entity_value", maintain_order=True).head(2)["item_idx"]
                  .to_list())
    data = dataclasses.replace(data, train=data.train.filter(~pl.col("item_idx").is_in(cold_items)))
    model = SAGERecommender(**SAGE, device="cpu", progress=False).fit(data)
    return model, data, cold_items, genre_of


def test_unseen_items_get_finite_nonzero_vectors(cold):
    model, data, cold_items, _ = cold
    assert not data.train["item_idx"].is_in(cold_items).any()
    vectors = model.item_embeddings()[cold_items]
    assert torch.isfinite(vectors).all() and vectors.norm(dim=1).min() > 0.5


def test_unseen_items_sit_with_their_genre(cold):
    model, _, cold_items, genre_of = cold
    emb = F.normalize(model.item_embeddings(), dim=-1)
    warm = [i for i in genre_of if i not in cold_items]
    for item in cold_items:
        sims = emb[warm] @ emb[item]
        same = torch.tensor([genre_of[w] == genre_of[item] for w in warm])
        assert sims[same].mean() > sims[~same].mean() + 0.1, (item, sims[same].mean(), sims[~same].mean())
        # Its 10 nearest warm items are (nearly) all of its genre; a random ranking gives 2 in 10 (5 genres).
        assert same[sims.topk(10).indices].sum() >= 8, item


def test_embed_items_equals_the_catalogue_path(cold):
    model, _, cold_items, genre_of = cold
    new = model.embed_items([[("genre", genre_of[i]), ("colour", "teal")] for i in cold_items])   # unknown type
    torch.testing.assert_close(new, model.item_embeddings()[cold_items])


# ---- the training sampler ---------------------------------------------------------------------------------
def _pairs(frame: pl.DataFrame) -> set[tuple[int, int]]:
    return set(zip(frame["user_idx"].to_list(), frame["item_idx"].to_list()))


def _sampled_pairs(data: InteractionData) -> list[set[tuple[int, int]]]:
    """Per batch of the training loader: every (user, item) interaction it holds (message edges both ways and
    the supervision pairs)."""
    g = interaction_graph(build_hetero_graph(data))
    out = []
    for batch in link_loader(g, SAGEConfig(**SAGE), generator=torch.Generator().manual_seed(0)):
        users, items = batch["user"].n_id, batch["item"].n_id
        ui, iu = batch[INTERACTS].edge_index, batch[REV_INTERACTS].edge_index
        pairs = set(zip(users[ui[0]].tolist(), items[ui[1]].tolist()))
        pairs |= set(zip(users[iu[1]].tolist(), items[iu[0]].tolist()))
        pairs |= set(zip(users[batch["user"].src_index].tolist(), items[batch["item"].dst_pos_index].tolist()))
        out.append(pairs)
    return out


def test_no_valid_or_test_edge_in_any_sampled_subgraph(tiny_etl):
    data = InteractionData.load(tiny_etl)
    held_out = (_pairs(data.valid) | _pairs(data.test)) - _pairs(data.train)
    assert len(held_out) > 100
    batches = _sampled_pairs(data)
    sampled = set().union(*batches)
    assert len(batches) > 1 and sampled <= _pairs(data.train)
    assert not sampled & held_out


def test_the_leak_check_catches_a_leaky_graph(tiny_etl):
    """Control for the test above: with valid events in the training frame, the same check finds them."""
    data = InteractionData.load(tiny_etl)
    held_out = _pairs(data.valid) - _pairs(data.train)
    leaky = dataclasses.replace(data, train=pl.concat([data.train, data.valid]))
    assert set().union(*_sampled_pairs(leaky)) & held_out


def test_batch_supervision_edges_are_cut_from_message_passing(tiny_etl):
    data = InteractionData.load(tiny_etl)
    g = interaction_graph(build_hetero_graph(data))
    cut_any = False
    for batch in link_loader(g, SAGEConfig(**SAGE), generator=torch.Generator().manual_seed(0)):
        users, items = batch["user"].n_id, batch["item"].n_id
        targets = set(zip(users[batch["user"].src_index].tolist(), items[batch["item"].dst_pos_index].tolist()))
        ui, iu = without_targets(batch, data.num_items)
        kept = set(zip(users[ui[0]].tolist(), items[ui[1]].tolist())) | \
            set(zip(users[iu[1]].tolist(), items[iu[0]].tolist()))
        assert not kept & targets
        cut_any |= ui.shape[1] < batch[INTERACTS].edge_index.shape[1]
    assert cut_any                      # the raw subgraphs did hold target edges: the cut did something


def test_cpu_uses_the_pyg_sampler():
    assert not _use_cugraph(torch.device("cpu"))
