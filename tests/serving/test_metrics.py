"""tapestry.serving.metrics in process: what each stage's answers add to which series (the real server's port is
tested in tests/integration/test_metrics.py)."""
import numpy as np
import pytest

from tapestry.serving import metrics as m
from tapestry.serving.stage import RequestError, bytes_array


def test_a_rerank_batch_counts_strategies_candidates_errors_and_one_latency():
    reg = m.MemoryRegistry()
    rows = [{"ITEM_IDS": bytes_array(["a", "b"]), "STRATEGY": bytes_array(["personalized"])},
            {"ITEM_IDS": bytes_array(["c"]), "STRATEGY": bytes_array(["popularity"])},
            {"ITEM_IDS": bytes_array(["d", "e", "f"]), "STRATEGY": bytes_array(["personalized"])},
            RequestError("no items left")]
    m.StageMetrics("rerank", "acme", reg).record(rows, 0.002, refused=2)
    c = reg.counters
    assert c[("tapestry_requests_total", ("acme", "personalized"))] == 2
    assert c[("tapestry_requests_total", ("acme", "popularity"))] == 1
    assert c[("tapestry_stage_rows_total", ("acme", "rerank"))] == 3
    assert c[("tapestry_stage_errors_total", ("acme", "rerank"))] == 3
    assert c[("tapestry_stage_candidates_total", ("acme", "rerank"))] == 6
    assert ("tapestry_empty_results_total", ("acme", "rerank")) not in c
    assert reg.observations == {("tapestry_stage_latency_seconds", ("acme", "rerank")): [0.002]}
    assert all(labels[0] == "acme" for _, labels in [*c, *reg.observations])


def test_filter_placeholder_is_an_empty_result_and_ignored_items_add_up():
    reg = m.MemoryRegistry()
    m.StageMetrics("filter", "t", reg).record([{"FILTERED": np.zeros(1, np.int64)},
                                               {"FILTERED": np.array([3, 4], np.int64)}], 0.001)
    m.StageMetrics("feature_lookup", "t", reg).record([{"IGNORED_ITEMS": np.array([2], np.int32)},
                                                       {"IGNORED_ITEMS": np.array([1], np.int32)}], 0.001)
    assert reg.counters[("tapestry_empty_results_total", ("t", "filter"))] == 1
    assert reg.counters[("tapestry_stage_candidates_total", ("t", "filter"))] == 2
    assert reg.counters[("tapestry_ignored_recent_items_total", ("t",))] == 3


def test_off_by_env_and_outside_triton(monkeypatch):
    class Backend:   # a python backend module with the custom-metrics API present
        MetricFamily = object
    sending = m.registry_for_triton(Backend)
    assert isinstance(sending, m.DeferredRegistry) and isinstance(sending.target, m.TritonRegistry)
    sending.close()
    assert isinstance(m.registry_for_triton(object()), m.NullRegistry)   # a backend without the API
    monkeypatch.setenv(m.METRICS_ENV, "0")
    assert isinstance(m.registry_for_triton(Backend), m.NullRegistry)
    m.StageMetrics("rerank", "t").record([RuntimeError("x")], 1.0)   # the no-op default records nothing, no error


def test_a_broken_registry_never_fails_the_stage(capsys):
    class Broken(m.MemoryRegistry):
        def observe(self, *a):
            raise OSError("shm gone")
    metrics = m.StageMetrics("filter", "t", Broken())
    metrics.record([{"FILTERED": np.array([1])}], 0.1)
    metrics.record([{"FILTERED": np.array([1])}], 0.1)
    assert capsys.readouterr().err.count("recording stopped") == 1


def test_unknown_family_or_wrong_labels_are_refused_and_the_page_parses():
    with pytest.raises(ValueError):
        m.MemoryRegistry().add("tapestry_requests_total", ("acme",), 1)
    with pytest.raises(ValueError):
        m.MemoryRegistry().observe("tapestry_requests_total", ("acme", "x"), 1)
    page = ('# HELP x y\ntapestry_requests_total{strategy="popularity",tenant="acme"} 3\n'
            'nv_inference_count{model="m",version="1"} 7\nup 1\n')
    parsed = m.parse_prometheus(page)
    assert parsed[("tapestry_requests_total", frozenset({("tenant", "acme"), ("strategy", "popularity")}))] == 3
    assert parsed[("up", frozenset())] == 1 and len(parsed) == 3


def test_deferred_updates_are_folded_and_sent_by_flush_or_close():
    target = m.MemoryRegistry()
    deferred = m.DeferredRegistry(target, interval=3600)   # only flush() / close() send here
    try:
        for _ in range(3):
            deferred.add("tapestry_requests_total", ("t", "popularity"), 2)
        deferred.observe("tapestry_stage_latency_seconds", ("t", "rerank"), 0.5)
        assert target.counters == {} and target.observations == {}   # nothing sent on the request's path
        deferred.flush()
        assert target.counters == {("tapestry_requests_total", ("t", "popularity")): 6}
        deferred.add("tapestry_requests_total", ("t", "popularity"), 1)
    finally:
        deferred.close()
    assert target.counters[("tapestry_requests_total", ("t", "popularity"))] == 7
    assert target.observations == {("tapestry_stage_latency_seconds", ("t", "rerank")): [0.5]}
    assert not deferred._thread.is_alive()
    with pytest.raises(ValueError):   # a wrong update fails where it is made, not later in the thread
        deferred.add("tapestry_no_such_total", ("t",), 1)
