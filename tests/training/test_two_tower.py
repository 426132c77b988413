"""The two-tower baseline and its distilled student: shared API, serving contract, log-Q, distillation."""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from tapestry.models.retrieval.two_tower import TwoTower
from tapestry.inference.padding import left_pad
from tapestry.training.base import Recommender
from tapestry.training.data import InteractionData
from tapestry.training.distill import DistilledTwoTowerRecommender, distillation_loss
from tapestry.training.sasrec import SASRecRecommender
from tapestry.training.two_tower import PrefixExamples, TwoTowerRecommender, in_batch_softmax_loss

from .recommender_mixin import RecommenderMixin
from .serving_reference import assert_scores_match, brute_force_scores
from .test_recommenders import SASREC, needs_cuda

TWO_TOWER = dict(embedding_dim=32, hidden_dim=64, max_len=20, epochs=8, batch_size=128, lr=5e-3, seed=0)
DISTILL = dict(TWO_TOWER, teacher="teacher", teacher_top=20, alpha=0.7, distill_prefixes=2, distill_batch_size=64)


@functools.lru_cache(maxsize=None)
def _teacher(etl_path: str, device: str) -> SASRecRecommender:
    """The small SASRec teacher, fitted once per data set and device (the mixin calls make() twice)."""
    data = InteractionData.load(etl_path)
    return SASRecRecommender(**SASREC, device=device, progress=False).fit(data)


def _assert_score_is_the_serving_inner_product(model, users, histories):
    """score() of a batch of histories of different lengths (one past max_len, one empty) against each history
    encoded alone at the serving width and scored by float64 inner products (serving_reference.py)."""
    long = np.tile(histories[users[0]], model.cfg.max_len)
    hist = [histories[u] for u in users] + [long, np.zeros(0, np.int64)]
    users = np.append(users, [users[0], 0])
    attrs = model._attrs_of(users) if model.user_attrs is not None else None
    assert_scores_match(model.score(users, hist), brute_force_scores(model.serving_module(), hist, attrs))


class TestTwoTower(RecommenderMixin):
    params: dict = {}

    @classmethod
    def make(cls, data, graph):
        return TwoTowerRecommender(**TWO_TOWER, **cls.params, device=cls.device, progress=False)

    def test_score_is_the_serving_inner_product(self, model, data, histories):
        m = model.serving_module()
        assert not m.training and m.num_items == data.num_items and m.max_len == TWO_TOWER["max_len"]
        _assert_score_is_the_serving_inner_product(model, self._users(data), histories)
        items = model.item_embeddings()
        assert items.shape == (data.num_items, TWO_TOWER["embedding_dim"]) and not items[0].any()

    def test_training_loss_goes_down(self, model):
        assert model.loss_history_[-1] < 0.8 * model.loss_history_[0]

    def test_empty_history_scores_are_zero(self, model):
        if model.user_attrs is not None:
            pytest.skip("with user attributes a known user has a vector without history")
        scores = model.score(np.array([0]), [np.zeros(0, dtype=np.int64)])
        assert torch.isfinite(scores[0, 1:]).all() and not scores[0, 1:].any()


class TestTwoTowerUserAttrs(TestTwoTower):
    params = dict(use_user_attrs=True)

    def test_attributes_reach_the_user_tower(self, model, data):
        assert model.user_attrs.shape[0] == data.num_users and model.serving_module().num_user_attrs > 0
        # A user with no history is still scored from their attributes; an unknown user (0) gets zeros.
        u = int(data.user_entities["user_idx"][0])
        scores = model.score(np.array([u, 0]), [np.zeros(0, dtype=np.int64)] * 2)
        assert scores[0, 1:].abs().sum() > 0 and not scores[1, 1:].any()


def test_prefix_examples_are_the_left_padded_histories():
    seqs = [np.zeros(0, np.int64), np.array([4, 5, 6, 7, 8]), np.array([9]), np.array([2, 3])]
    ex = PrefixExamples(seqs, max_len=3)
    assert len(ex) == 4 + 1                                  # every next item of users with >= 2 events
    batch, targets, users = ex.batch(torch.arange(len(ex)))
    expected = [(seqs[u][:t], seqs[u][t], u) for u in (1, 3) for t in range(1, len(seqs[u]))]
    assert batch.tolist() == left_pad([e[0] for e in expected], 3, 3).tolist()
    assert targets.tolist() == [e[1] for e in expected] and users.tolist() == [e[2] for e in expected]
    capped = PrefixExamples(seqs, max_len=3, per_user=2)     # only the 2 most recent targets per user
    assert capped.batch(torch.arange(len(capped)))[1].tolist() == [7, 8, 3]
    log_q = ex.target_log_q(10)
    assert log_q[5] == log_q[3] and log_q[5] > log_q[1]      # each target once; never-a-target items get a floor


def test_logq_switch_feeds_the_target_log_q_to_every_step(tiny_etl, monkeypatch):
    import tapestry.training.two_tower as tt

    data = InteractionData.load(tiny_etl)
    expected = PrefixExamples(data.sequences(("train",)), TWO_TOWER["max_len"]).target_log_q(data.num_items)
    for logq in (True, False):
        seen = []

        def spy(model, users, targets, log_q, _real=tt.in_batch_softmax_loss):
            seen.append(log_q)
            return _real(model, users, targets, log_q)

        monkeypatch.setattr(tt, "in_batch_softmax_loss", spy)
        TwoTowerRecommender(**dict(TWO_TOWER, epochs=1, logq=logq), progress=False, device="cpu").fit(data)
        assert len(seen) > 1
        if logq:
            for log_q in seen:
                assert torch.equal(log_q, expected)
        else:
            assert all(log_q is None for log_q in seen)


def test_logq_correction_moves_the_loss_in_the_computed_direction():
    """log-Q subtracts log q(j) from column j: it takes away the credit a scorer gets for following popularity."""
    torch.manual_seed(0)
    tower = TwoTower(10, 8, 5, temperature=1.0)
    targets = torch.tensor([1, 2, 3, 4])
    q = torch.tensor([0.5, 0.25, 0.125, 0.125])                      # target shares, sum 1
    log_q = torch.full((10,), -9.0)
    log_q[targets] = q.log()
    # (a) A popularity-blind scorer (zero user vectors: every logit 0). Without correction every row's loss is
    #     log 4 = 1.3863. With it, row i's logits are -log q_j and its loss is log(sum_j 1/q_j) + log q_i:
    #     mean = log(2 + 4 + 8 + 8) + (log .5 + log .25 + 2 log .125) / 4 = 3.0910 - 1.5596 = 1.5314 (up).
    blind = torch.zeros(4, 8)
    torch.testing.assert_close(in_batch_softmax_loss(tower, blind, targets, None), torch.tensor(math.log(4)))
    corrected = in_batch_softmax_loss(tower, blind, targets, log_q)
    torch.testing.assert_close(corrected, torch.tensor(math.log(22) + q.log().mean().item()))
    assert corrected.item() == pytest.approx(1.5314, abs=1e-4)
    # (b) A scorer whose logits ARE log q(j) (user vectors solved so that <u_i, v_j> = log q_j over the batch).
    #     Without correction row i's loss is log(sum_j q_j) - log q_i: mean = 0 + 1.5596. With it every logit is
    #     log q_j - log q_j = 0: loss log 4 = 1.3863 (down).
    with torch.no_grad():
        items = tower.item_vectors(targets).double()                   # [4, 8], unit rows
        users = torch.linalg.lstsq(items, q.log().double().unsqueeze(1)).solution.T.expand(4, 8).float()
        torch.testing.assert_close(tower.logits(users, items.float()), q.log().expand(4, 4), atol=1e-5, rtol=0)
    plain = in_batch_softmax_loss(tower, users, targets, None)
    torch.testing.assert_close(plain, -q.log().mean(), atol=1e-5, rtol=0)
    torch.testing.assert_close(in_batch_softmax_loss(tower, users, targets, log_q), torch.tensor(math.log(4)),
                               atol=1e-5, rtol=0)


def test_in_batch_loss_logq_and_duplicate_masking():
    torch.manual_seed(0)
    tower = TwoTower(10, 8, 5, temperature=0.1)
    users = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    targets = torch.tensor([1, 2, 3, 4])
    plain = in_batch_softmax_loss(tower, users, targets, None)
    # A constant log q shifts every logit alike: no change. A skewed one changes the loss.
    torch.testing.assert_close(in_batch_softmax_loss(tower, users, targets, torch.full((10,), -2.3)), plain)
    skewed = torch.linspace(-5, -1, 10)
    assert not torch.isclose(in_batch_softmax_loss(tower, users, targets, skewed), plain)
    # Every row holds the same item: the duplicates are masked, the positive is alone, the loss is 0.
    same = torch.tensor([3, 3, 3, 3])
    torch.testing.assert_close(in_batch_softmax_loss(tower, users, same, skewed), torch.tensor(0.0))


class TestDistilledTwoTower(RecommenderMixin):
    @classmethod
    def make(cls, data, graph):
        model = DistilledTwoTowerRecommender(**DISTILL, device=cls.device, progress=False)
        model.bind({"teacher": _teacher(str(data.path), cls.device)})
        return model

    def test_agrees_with_the_teacher_more_than_the_plain_two_tower(self, model, data, histories):
        plain = TwoTowerRecommender(**TWO_TOWER, device=self.device, progress=False).fit(data)
        teacher = _teacher(str(data.path), self.device)
        users = data.valid["user_idx"].to_numpy()

        def overlap(m):
            return np.mean([len(set(m.recommend(int(u), histories[u], 10)[0].tolist())
                                & set(teacher.recommend(int(u), histories[u], 10)[0].tolist())) / 10
                            for u in users])

        student, baseline = overlap(model), overlap(plain)
        assert student > baseline + 0.05, (student, baseline)

    def test_score_is_the_serving_inner_product(self, model, data, histories):
        _assert_score_is_the_serving_inner_product(model, self._users(data), histories)

    def test_loaded_student_needs_no_teacher(self, model, tmp_path):
        loaded = Recommender.load(model.save(tmp_path / "m.pt"))
        loaded.bind({})                          # evaluate_models binds with whatever was loaded: no teacher needed
        assert loaded.cfg.teacher == "teacher" and loaded.teacher is None


def test_missing_teacher_is_a_clear_error():
    model = DistilledTwoTowerRecommender(**DISTILL, device="cpu")
    with pytest.raises(ValueError, match="teacher='teacher'.*trained earlier"):
        model.bind({"sasrec": object()})
    with pytest.raises(ValueError, match="bind"):
        model.fit(None)


class _CandidateTeacher(Recommender):
    """A DLRM-like teacher: finite scores on a few candidates per user, -inf elsewhere."""

    def fit(self, data, graph=None):
        self.num_items = data.num_items
        return self

    def score(self, user_idx, histories):
        out = torch.full((len(user_idx), self.num_items), -torch.inf)
        out[:, 1:6] = torch.arange(5, 0, -1, dtype=torch.float)          # items 1..5 ranked 1 > 2 > ... > 5
        return out

    def _get_state(self):
        return {}

    def _set_state(self, state):
        pass


def test_teacher_lists_handle_minus_inf_and_history(tiny_etl):
    data = InteractionData.load(tiny_etl)
    model = DistilledTwoTowerRecommender(**DISTILL, device="cpu")
    model.bind({"teacher": _CandidateTeacher(device="cpu").fit(data)})
    lists = model.teacher_lists(data)
    items, probs = lists["items"], lists["probs"]
    assert items.shape[1] == DISTILL["teacher_top"] and torch.isfinite(probs).all()
    assert ((items > 0).sum(1) <= 5).all() and (items[:, 5:] == 0).all()     # only the finite candidates
    assert (probs[items == 0] == 0).all()
    torch.testing.assert_close(probs.sum(1), torch.ones(len(probs)))
    seqs = lists["seqs"]
    for row in range(len(items)):                                            # history items never in a list
        assert not set(items[row][items[row] > 0].tolist()) & set(seqs[row][seqs[row] > 0].tolist())
    users = torch.nn.functional.normalize(torch.randn(len(items), model.cfg.embedding_dim), dim=1)
    tower = model._build(data)
    for scope in ("batch", "list"):
        loss = distillation_loss(tower, users, items, probs, scope)
        assert torch.isfinite(loss) and loss > 0


@needs_cuda
class TestTwoTowerGPU(TestTwoTower):
    device = "cuda"


@needs_cuda
class TestDistilledTwoTowerGPU(TestDistilledTwoTower):
    device = "cuda"
