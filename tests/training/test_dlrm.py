"""The DLRM ranker in one process: its layers against plain references, its features on hand-made rows, and the
fitted ranker on the tiny tenant (the served path beats retrieval alone; evaluation = the rerank protocol).

Not a RecommenderMixin subclass: a ranker scores only its retriever's candidates (-inf elsewhere), which the
mixin's full-catalogue checks rightly reject for retrievers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

try:            # `make install` installs TorchRec: a missing one is a broken install, never a reason to skip
    import torchrec  # noqa: F401
except ImportError as e:
    raise ImportError(f"TorchRec does not import ({e}): the DLRM tests need it; run `make install` "
                      "(fbgemm-gpu-cpu, then torchrec --no-deps)") from e

from tapestry.config import TrainConfig  # noqa: E402
from tapestry.models.ranking.dlrm import DotInteraction, listwise_loss  # noqa: E402
from tapestry.training.base import Recommender  # noqa: E402
from tapestry.training.data import InteractionData  # noqa: E402
from tapestry.training.dlrm import DLRMRecommender, task_spec  # noqa: E402
from tapestry.training.dlrm_features import Lists, build_ranker_features, gather_ragged  # noqa: E402
from tapestry.training.dlrm_loop import kg_triples  # noqa: E402
from tapestry.training.evaluate import evaluate  # noqa: E402
from tapestry.training.pipeline import _check_config  # noqa: E402
from tapestry.training.rerank_fit import evaluate_reranked  # noqa: E402
from tapestry.training.sasrec import SASRecRecommender  # noqa: E402

N = 30


def test_dot_interaction_is_the_upper_triangle_of_pairwise_dots():
    torch.manual_seed(0)
    dense, sparse = torch.randn(3, 4), torch.randn(3, 2, 4)
    out = DotInteraction(3)(dense, sparse)
    vecs = [dense, sparse[:, 0], sparse[:, 1]]
    expected = torch.stack([(vecs[i] * vecs[j]).sum(1) for i in range(3) for j in range(i + 1, 3)], 1)
    torch.testing.assert_close(out, torch.cat([dense, expected], 1))


def test_listwise_loss_is_masked_cross_entropy_per_task():
    logits = torch.tensor([[[2.0, 0.0], [1.0, 5.0], [9.0, 9.0]]])         # B=1, N=3 (last = padding), T=2
    mask = torch.tensor([[True, True, False]])
    loss = listwise_loss(logits, mask, torch.tensor([1]), torch.tensor([[1.0, 0.0]]), torch.ones(2))
    expected = torch.nn.functional.cross_entropy(torch.tensor([[2.0, 1.0]]), torch.tensor([1]))
    torch.testing.assert_close(loss, expected)              # the "like" task is off: its term vanishes


def test_gather_ragged_keeps_row_order():
    offsets, values = np.array([0, 2, 2, 5]), np.array([10, 11, 20, 21, 22])
    v, ln = gather_ragged(offsets, values, np.array([2, 0, 1, 2]))
    assert v.tolist() == [20, 21, 22, 10, 11, 20, 21, 22] and ln.tolist() == [3, 2, 0, 3]


@pytest.fixture(scope="module")
def data(tiny_etl):
    return InteractionData.load(tiny_etl)


@pytest.fixture(scope="module")
def feats(data):
    return build_ranker_features(data, history_len=5, max_history=20)


def test_sparse_rows_and_exact_crosses(feats, data):
    attrs = np.flatnonzero(feats.rerank.user_attrs[1] > 0)
    lists = Lists(np.array([[3, 7, 0]]), np.zeros((1, 3, 11), np.float32), [np.array([4, 5])], [attrs],
                  np.array([1]))
    parts = feats.sparse(lists, user_table=False)
    assert set(parts) == set(feats.keys(False))
    assert parts["item"][0].tolist() == [3, 7, 0]
    assert parts["history"][0].tolist() == [4, 5] * 3 and parts["history"][1].tolist() == [2, 2, 2]
    genre = feats.item_types[0]
    vals, lens = parts[f"item_{genre}"]
    assert lens.tolist()[2] == 0                              # padding has no attributes
    cross, clens = parts[f"cross_{genre}"]
    vocab = feats.item_vocab[genre]
    expected = [int(v + a * vocab) for v in vals[:lens[0]] for a in attrs]
    assert cross[:clens[0]].tolist() == expected              # small product space: exact ids, no hashing


def test_kg_triples_are_true_then_corrupted(feats):
    items, rel, values = kg_triples(feats, 20, np.random.default_rng(0))
    offsets, vals = feats.item_attr[feats.item_types[0]]
    for i, v in zip(items[:20], values[:20]):
        assert v in vals[offsets[i]:offsets[i + 1]]
    assert (items[:20] == items[20:]).all() and (rel[:20] == rel[20:]).all()


def test_tasks_come_from_the_data(data):
    names, labels = task_spec(data, like_min_weight=4.0)
    assert names == ["interact", *sorted(data.train["event_type"].unique().to_list())]
    assert labels("view", 1.0)[0] == 1.0 and sum(labels("view", 1.0)) == 2.0


@pytest.fixture(scope="module")
def fitted(data):
    retriever = SASRecRecommender(hidden_dim=16, num_blocks=1, max_len=20, epochs=3, batch_size=64, device="cpu",
                                  progress=False).fit(data)
    ranker = DLRMRecommender(retriever="sasrec", graph_from=None, num_candidates=N, embedding_dim=8,
                             bottom_mlp=(16,), top_mlp=(16,), epochs=4, kg_weight=0.1, device="cpu", progress=False)
    ranker.bind({"sasrec": retriever})
    return retriever, ranker.fit(data)


def test_ranker_beats_its_retriever_on_the_same_candidates(fitted, data):
    retriever, ranker = fitted
    base, mine = evaluate(retriever, data, "test"), evaluate(ranker, data, "test")
    assert mine["ndcg@10"] > 1.2 * base["ndcg@10"], (mine, base)
    # The full-ranking protocol over -inf-elsewhere scores is the rerank protocol (target outside = miss).
    assert evaluate_reranked(retriever, ranker.ranker, data, num_candidates=N)["ndcg@10"] == pytest.approx(
        mine["ndcg@10"])


def test_scores_only_candidates_and_serves_log_probabilities(fitted, data):
    retriever, ranker = fitted
    hist = data.sequences(("train", "valid"))
    scores = ranker.score(np.array([1, 2]), [hist[1], hist[2]])
    assert (torch.isfinite(scores).sum(1) == N).all()
    items, _ = ranker.recommend(1, hist[1], k=5)
    assert len(items) == 5 and not set(items.tolist()) & set(hist[1].tolist())
    cands = torch.topk(scores[0], N).indices.numpy()
    p = ranker.ranker.score(ranker.ranker.features(cands, np.linspace(1, 0, N), hist[1],
                                                   ranker.ranker.tables.user_attrs[1]))
    assert p.shape == (N,) and abs(float(np.exp(p).sum()) - 1.0) < 1e-4 and np.isfinite(p).all()
    assert ranker.report["task_names"] == ["interact", "click", "purchase", "view"]
    assert ranker.report["temperature"] > 0 and ranker.report["processes"] == 1


def test_save_load_round_trip(fitted, data, tmp_path):
    retriever, ranker = fitted
    back = Recommender.load(ranker.save(tmp_path / "dlrm.pt"))
    back.bind({"sasrec": retriever})
    hist = data.sequences(("train", "valid"))
    users = np.array([1, 2, 3])
    torch.testing.assert_close(back.score(users, [hist[u] for u in users]), ranker.score(users, [hist[u] for u in users]))


def test_distributed_needs_a_shardable_model():
    with pytest.raises(ValueError, match="dlrm"):
        _check_config(TrainConfig(models=("popularity",), serve="", distributed=2))
    with pytest.raises(ValueError, match="must come before"):
        _check_config(TrainConfig(models=("popularity", "dlrm", "lightgcn", "sasrec_lightgcn"), serve=""))


def test_cooccurrence_block_equals_scipy_indexing(feats):
    rows, cands = np.array([3, 1, 3]), np.array([9, 2, 50, 4, 7])
    np.testing.assert_array_equal(feats._cooc_block(rows, cands), feats.cooc[rows][:, cands].toarray())


def test_inference_module_equals_the_torchrec_model(fitted, data):
    from tapestry.training.dlrm_loop import list_logits

    _, ranker = fitted
    r = ranker.ranker
    hist = data.sequences(("train",))
    lists = r.features(np.arange(1, 21), np.linspace(2, 0, 20), hist[3], r.tables.user_attrs[3])
    with torch.no_grad():
        expected = list_logits(r.model, r.feats, lists, False)        # EmbeddingBagCollection + KJT
    from tapestry.training.dlrm_loop import final_scores
    torch.testing.assert_close(r.log_scores(lists), final_scores(expected, torch.ones(1, 20, dtype=torch.bool),
                                                                 r.task_mix))


def test_score_many_equals_one_call_per_list(fitted, data):
    """The rerank stage's dynamic batch: one forward over lists of different lengths, each list's scores as its
    own call gives them."""
    _, ranker = fitted
    r = ranker.ranker
    hist = data.sequences(("train", "valid"))
    rng = np.random.default_rng(0)
    lists = [r.features(rng.choice(np.arange(1, data.num_items), n, replace=False), np.linspace(1, 0, n), hist[u],
                        r.tables.user_attrs[u]) for u, n in ((1, N), (2, 3), (3, 7))]
    many = r.score_many(lists)
    assert [m.shape for m in many] == [(N,), (3,), (7,)]
    for m, one in zip(many, lists):
        np.testing.assert_allclose(m, r.score(one), rtol=1e-5, atol=1e-5)
