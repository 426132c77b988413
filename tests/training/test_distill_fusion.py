"""The distilled two-tower with the fusion reranker as its teacher (issue 17 item 3): the teacher's lists are the
fusion ranker's reranked candidates (non-candidates are -inf, as with the DLRM teacher), the student's loss reads
them, and distillation moves the student's top-10 toward the teacher's."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tapestry.training import registry
from tapestry.training.data import InteractionData
from tapestry.training.distill import DistilledTwoTowerRecommender, _prefix_cuts, distillation_loss
from tapestry.training.two_tower import TwoTowerRecommender

from .test_fusion import N, ranker, retriever
from .test_two_tower import DISTILL, TWO_TOWER

STUDENT = dict(DISTILL, teacher="fusion", teacher_top=N, alpha=0.8, distill_temperature=2.0)


@pytest.fixture(scope="module")
def data(tiny_etl) -> InteractionData:
    return InteractionData.load(tiny_etl)


@pytest.fixture(scope="module")
def teacher(data):
    """A tiny fusion reranker over a tiny SASRec's top N candidates, bound as the pipeline binds it."""
    return ranker(data).fit(data)


def _student(data, teacher, **overrides) -> DistilledTwoTowerRecommender:
    model = DistilledTwoTowerRecommender(**{**STUDENT, **overrides}, device="cpu", progress=False)
    model.bind({"sasrec": retriever(data), "fusion": teacher})
    return model


@pytest.fixture(scope="module")
def student(data, teacher):
    return _student(data, teacher).fit(data)


def test_the_registry_reads_fusion_as_the_teacher():
    cfg = registry.build("two_tower_distill", {"teacher": "fusion"}, device="cpu").cfg
    assert registry.upstream_names("two_tower_distill", cfg) == ["fusion"]


def test_teacher_lists_are_the_fusion_rankers_reranked_candidates(data, teacher):
    model = _student(data, teacher)
    lists = model.teacher_lists(data)
    seqs = data.sequences(("train",))
    prefixes = [(u, s[:cut]) for u, s in enumerate(seqs) for cut in _prefix_cuts(len(s), STUDENT["distill_prefixes"])]
    assert len(lists["items"]) == len(prefixes)          # every prefix has candidates: none is dropped
    for row in range(0, len(prefixes), 37):
        u, prefix = prefixes[row]
        assert int(lists["users"][row]) == u
        scores = teacher.score(np.array([u]), [prefix])[0]
        finite = torch.isfinite(scores)
        assert int(finite.sum()) == N                       # the ranker scores only its retriever's candidates
        items, probs = lists["items"][row], lists["probs"][row]
        assert set(items[items > 0].tolist()) == set(torch.nonzero(finite).flatten().tolist())   # -inf: empty slots
        expected = torch.softmax(scores[items[items > 0]] / STUDENT["distill_temperature"], 0)
        torch.testing.assert_close(probs[items > 0], expected)
        assert (probs[items > 0].diff() <= 1e-7).all()        # best first


def test_the_students_loss_reads_the_teacher_lists(data, teacher):
    model = _student(data, teacher, alpha=1.0)
    tower = model._build(data).eval()                         # no dropout: the two evaluations below must agree
    model._lists = model.teacher_lists(data)
    hard = torch.tensor(123.0)

    def step_loss(lists):
        model._lists = lists
        torch.manual_seed(0)
        model._prepare_extra(data)
        return model._step_loss(tower, hard)

    loss = step_loss(model._lists)
    idx = (torch.manual_seed(0), torch.randperm(len(model._lists["items"])))[1][:STUDENT["distill_batch_size"]]
    users = tower.encode(model._lists["seqs"][idx], model._attrs_of(model._lists["users"][idx]))
    torch.testing.assert_close(loss, distillation_loss(tower, users, model._lists["items"][idx],
                                                       model._lists["probs"][idx], "batch"))
    # Other teacher probabilities over the same lists: another loss. alpha 0: the hard loss alone.
    flipped = dict(model._lists, probs=model._lists["probs"].flip(1))
    assert not torch.isclose(step_loss(flipped), loss)
    model.cfg.alpha = 0.0
    assert step_loss(flipped) is hard


def test_distillation_moves_the_top10_toward_the_fusion_teacher(data, teacher, student):
    plain = TwoTowerRecommender(**TWO_TOWER, device="cpu", progress=False).fit(data)
    histories = data.sequences(("train",))
    users = data.valid["user_idx"].to_numpy()

    def overlap(m):
        return np.mean([len(set(m.recommend(int(u), histories[u], 10)[0].tolist())
                            & set(teacher.recommend(int(u), histories[u], 10)[0].tolist())) / 10 for u in users])

    got, baseline = overlap(student), overlap(plain)
    assert got > baseline + 0.05, (got, baseline)
