"""Export side of multi-source candidates: the graph filter's neighbour table, summed as the serving stage sums
it, gives the filter's own item-to-item recall when the table keeps every neighbour (the filter is linear in its
input signal); a short table keeps each item's best neighbours."""
import numpy as np
import scipy.sparse as sp

from tapestry.ensembles.sources import SourcesConfig, neighbour_table, parse_sources
from tapestry.serving.multi_source import NeighbourSource
from tapestry.training.graph_filter import GraphFilterConfig, GraphFilterRecommender


def _filter():
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 40, 300), rng.integers(1, 25, 300)
    matrix = sp.csr_matrix((np.ones(300, np.float32), (users, items)), shape=(40, 25))
    return GraphFilterRecommender(GraphFilterConfig(num_factors=4)).fit_matrix(matrix)


def test_full_neighbour_table_summed_equals_similar_items():
    model = _filter()
    ids, scores = neighbour_table(model, neighbours=model.num_items, batch_size=7)
    assert ids.shape == scores.shape == (25, 25) and not ids[0].any()
    source = NeighbourSource("graph_filter", ids, scores, recent=10)
    history = np.array([3, 7, 9, 7])
    items, summed = source.one(history, blocked=np.array([0, 3, 7, 9]), n=10)
    expected_items, expected_scores = model.similar_items([history], k=10)
    np.testing.assert_allclose(summed, expected_scores[0].numpy(), rtol=1e-4, atol=1e-6)
    assert items.tolist() == expected_items[0].tolist()


def test_short_table_keeps_each_items_best_neighbours():
    model = _filter()
    ids, scores = neighbour_table(model, neighbours=5)
    best, best_scores = model.similar_items([np.array([4])], k=5)
    assert ids.shape == (25, 5) and ids[4].tolist() == best[0].tolist()
    assert np.all(np.diff(scores[4]) <= 0)


def test_parse_sources():
    assert parse_sources(" two_tower, graph_filter,two_tower,") == ["two_tower", "graph_filter"]
    assert parse_sources(None) == [] and parse_sources(["a"]) == ["a"]
    assert SourcesConfig().neighbours == 100


def test_served_merge_is_the_measured_one():
    """benchmarks/multi_source.py's union@N (what the README's recall numbers measure) and the serving stage's
    merge give the same list."""
    import importlib.util
    from pathlib import Path

    from tapestry.serving.multi_source import merge_round_robin

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "multi_source.py"
    spec = importlib.util.spec_from_file_location("bench_multi_source", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = np.random.default_rng(1)
    for budget in (5, 20, 60):
        lists = [rng.permutation(np.arange(1, 40))[:size] for size in (30, 12, 0, 25)]
        served, _, _ = merge_round_robin([(x, np.zeros(x.size, np.float32)) for x in lists], budget)
        assert served.tolist() == bench.round_robin(lists, budget)
