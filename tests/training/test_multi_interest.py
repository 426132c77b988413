"""ComiRec (multi-interest) and BERT4Rec through the shared API, plus the serving contract: score() is what
exact inner-product retrieval over serving_module()'s vectors returns."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tapestry.inference.padding import left_pad
from tapestry.training.bert4rec import BERT4RecRecommender
from tapestry.training.comirec import ComiRecRecommender, prefix_examples
from tapestry.training.lightgcn import LightGCNRecommender

from .recommender_mixin import RecommenderMixin
from .serving_reference import assert_scores_match, brute_force_scores

# Tiny configs: seconds on 2 CPU cores, still enough to learn the planted structure.
COMIREC = dict(hidden_dim=32, num_interests=3, max_len=20, positions_per_user=0, epochs=8, batch_size=256, lr=1e-2,
               dropout=0.1, seed=0)
BERT4REC = dict(hidden_dim=32, num_blocks=1, num_heads=2, max_len=20, dropout=0.1, mask_prob=0.3, epochs=30,
                batch_size=64, lr=5e-3, seed=0)
LIGHTGCN = dict(embedding_dim=24, num_layers=2, epochs=40, batch_size=512, lr=2e-2, weight_decay=1e-4, seed=0)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")


def _serving_scores(module, histories) -> torch.Tensor:
    """What a FAISS inner-product search over the serving module's vectors ranks by (max over interests)."""
    with torch.no_grad():
        seqs = torch.from_numpy(left_pad(histories, module.max_len, width=module.max_len))
        users = module.encode(seqs.to(module.item_embeddings().device))
        scores = users @ module.item_embeddings().T
        return scores.amax(dim=1) if users.dim() == 3 else scores


class ServingContract:
    """Shared by both models: the contract tapestry's serving side relies on."""

    def test_serving_module_reproduces_score(self, model, data, histories):
        users = self._users(data)
        # Histories of different lengths in one batch (one longer than max_len, one empty): score() pads them to
        # the batch's width, the reference encodes each alone at the serving width.
        long = np.tile(histories[users[0]], model.cfg.max_len)
        hist = [histories[u] for u in users] + [long, np.zeros(0, np.int64)]
        assert len(hist[-2]) > model.cfg.max_len and len({len(h) for h in hist}) > 2
        module = model.serving_module()
        assert not module.training
        assert module.num_items == data.num_items and module.max_len == model.cfg.max_len
        assert_scores_match(model.score(np.append(users, [users[0], 0]), hist), brute_force_scores(module, hist))

    def test_serving_module_rebuilds_from_init_args(self, model, data, histories):
        module = model.serving_module()
        twin = type(module)(**module.init_args)
        twin.load_state_dict(module.state_dict())
        twin.to(model.device).eval()
        hist = [histories[u] for u in self._users(data)]
        assert torch.equal(_serving_scores(twin, hist), _serving_scores(module, hist))

    def test_empty_history_scores_are_defined(self, model):
        scores = model.score([0], [np.zeros(0, dtype=np.int64)])
        assert torch.isfinite(scores[0, 1:]).all() and not scores[0, 1:].any()


class TestComiRec(ServingContract, RecommenderMixin):
    @classmethod
    def make(cls, data, graph):
        return ComiRecRecommender(**COMIREC, device=cls.device, progress=False)

    def test_score_is_the_max_over_interests(self, model, data, histories):
        users = self._users(data)
        hist = [histories[u] for u in users]
        interests = model.encode_interests(hist)
        assert interests.shape == (len(users), COMIREC["num_interests"], COMIREC["hidden_dim"])
        per_interest = interests @ model.item_embeddings().T                  # [B, K, N]
        expected = per_interest.amax(dim=1)
        expected[:, 0] = -torch.inf
        assert torch.equal(model.score(users, hist), expected)
        # ...and the max is not always the same interest: the K vectors do different work.
        assert per_interest[:, :, 1:].argmax(dim=1).unique().numel() > 1

    def test_training_loss_goes_down(self, model):
        assert model.loss_history_[-1] < 0.8 * model.loss_history_[0]


class TestComiRecGraphFusion(ServingContract, RecommenderMixin):
    """ComiRec with LightGCN's item vectors frozen beside the ID table (through `bind`, as the pipeline does)."""

    @classmethod
    def make(cls, data, graph):
        lgcn = LightGCNRecommender(**LIGHTGCN, device=cls.device, progress=False)
        model = ComiRecRecommender(**COMIREC, graph_from="lgcn", device=cls.device, progress=False)
        model.bind({"lgcn": lgcn.fit(data, graph)})
        return model

    def test_side_vectors_stay_frozen_and_are_used(self, model, data):
        side = model.model.side_emb
        assert side.shape == (data.num_items, LIGHTGCN["embedding_dim"]) and not side[0].any()
        assert not any(p is side for p in model.model.parameters())        # a buffer, never optimised
        assert model.model.side_proj.weight.abs().sum() > 0                 # the projection learned a share
        table = model.item_embeddings()
        assert not torch.equal(table, model.model.item_emb.weight) and not table[0].any()

    def test_bind_needs_the_upstream_model(self):
        with pytest.raises(ValueError, match="trained earlier"):
            ComiRecRecommender(**COMIREC, graph_from="nope").bind({})


class TestBERT4Rec(ServingContract, RecommenderMixin):
    @classmethod
    def make(cls, data, graph):
        return BERT4RecRecommender(**BERT4REC, device=cls.device, progress=False)

    def test_training_loss_goes_down(self, model):
        # Cloze losses are noisy (fresh masks every epoch, few per window): a looser bar than next-item losses.
        assert model.loss_history_[-1] < 0.85 * model.loss_history_[0]

    def test_masking_hides_real_items_only_and_at_least_one(self):
        model = BERT4RecRecommender(**dict(BERT4REC, mask_prob=0.5), device="cpu")
        batch = torch.from_numpy(left_pad([np.arange(1, 9), np.array([4, 2]), np.array([7])], 8, 8))
        torch.manual_seed(0)
        masked = model._mask(batch)
        assert not (masked & (batch == 0)).any()
        assert masked.any(dim=1).all()
        assert masked[0].sum() > 1                               # a Cloze mask, not just the newest item
        last_only = BERT4RecRecommender(**dict(BERT4REC, last_mask_prob=1.0), device="cpu")._mask(batch)
        assert last_only[:, -1].all() and last_only.sum() == 3


def test_prefix_examples_are_the_items_before_each_target():
    seqs = [np.array([5, 6, 7, 8]), np.array([9]), np.array([3, 4])]
    windows, targets = prefix_examples(seqs, max_len=2, per_user=0, rng=np.random.default_rng(0))
    pairs = sorted(zip(map(tuple, windows.tolist()), targets.tolist()))
    assert pairs == [((0, 3), 4), ((0, 5), 6), ((5, 6), 7), ((6, 7), 8)]   # a 1-item user gives none
    windows, targets = prefix_examples(seqs, max_len=3, per_user=2, rng=np.random.default_rng(0))
    assert len(targets) == 3 and (targets == 4).sum() == 1                  # capped per user, short users whole
    for w, t in zip(windows, targets):
        if t != 4:
            assert w[-1] == t - 1                                           # the window ends right before t


@needs_cuda
class TestComiRecGPU(TestComiRec):
    device = "cuda"


@needs_cuda
class TestBERT4RecGPU(TestBERT4Rec):
    device = "cuda"
