"""Per-tenant Prometheus metrics from the stages, scraped from a real Triton's metrics port (tapestry.serving.metrics):
two tenants in one server, each request moves its own tenant's series by exactly what it did, never the other's;
an A/B experiment's router counts each arm. The stubs send their updates in the background (every
FLUSH_INTERVAL_S), so each check scrapes until the expected counts are there or a deadline passes."""
import dataclasses
import time
import urllib.request

import polars as pl
import pytest

from tapestry.config import TrainConfig
from tapestry.ensembles import run_export
from tapestry.etl import run_etl
from tapestry.etl.synthetic import synthetic_tables
from tapestry.reporting.monitor import monitor
from tapestry.serving import experiment as ex
from tapestry.serving import multi_tenant as mt
from tapestry.serving.ab import Split
from tapestry.serving.client import RecommendClient, RecommendError, ensemble_name
from tapestry.serving.metrics import FLUSH_INTERVAL_S, parse_prometheus
from tapestry.training.pipeline import run_train

pytestmark = pytest.mark.integration

QUIET = {"log": lambda *a, **k: None}
TENANTS = {"acme": "", "globex": "g-"}
STAGES = ("feature_lookup", "user_encoder", "retrieval", "filter", "rerank")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("metrics")
    for seed, (tenant, prefix) in enumerate(TENANTS.items()):
        tables = synthetic_tables(num_users=120, num_items=60, seed=seed)
        item = pl.lit(prefix) + pl.col("item_id")
        tables = dataclasses.replace(tables, events=tables.events.with_columns(item.alias("item_id")),
                                     items=tables.items.with_columns(item.alias("item_id")))
        run_etl(tables, tenant, root, **QUIET)
        run_train(tenant, root, TrainConfig.smoke(), **QUIET)
        run_export(tenant, root, max_k=20, **QUIET)
    run_export("acme", root, max_k=20, **QUIET)   # v0002: the second arm of the experiment test
    return root


@pytest.fixture(scope="module")
def server(root):
    with mt.serving(list(TENANTS), root, versions={"acme": "v0001", "globex": "v0001"}) as s:
        yield s


def scrape(server) -> dict:
    with urllib.request.urlopen(f"http://{server.metrics_url}/metrics", timeout=10) as response:
        return parse_prometheus(response.read().decode())


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: dict, after: dict) -> dict:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


def settled(server, before: dict, expected: dict, timeout: float = 30.0) -> dict:
    """What changed since `before`, once every (name, labels) -> value of `expected` is there (or at the deadline:
    the caller's asserts then say what is missing)."""
    deadline = time.monotonic() + timeout
    while True:
        changed = delta(before, scrape(server))
        if all(value(changed, name, **dict(labels)) == v for (name, labels), v in expected.items()) \
                or time.monotonic() > deadline:
            return changed
        time.sleep(0.1)


def quiet(server) -> dict:
    """A scrape once no stub has updates still to send (two scrapes a few flush intervals apart agree)."""
    def ours(samples: dict) -> dict:   # Triton's own gauges (CPU, memory) move all the time
        return {k: v for k, v in samples.items() if k[0].startswith("tapestry_")}

    last = scrape(server)
    for _ in range(50):
        time.sleep(3 * FLUSH_INTERVAL_S)
        now = scrape(server)
        if ours(now) == ours(last):
            return now
        last = now
    raise AssertionError("the metrics never settled")


def series(name: str, **labels) -> tuple:
    return name, frozenset(labels.items())


def test_each_request_moves_only_its_tenants_series(server, root):
    users = pl.read_parquet(root / "acme" / "export" / "v0001" / "artifacts" / "users.parquet")["user_id"].to_list()
    before = quiet(server)
    with RecommendClient(server.http_url, model_name=ensemble_name("acme", multi_tenant=True)) as client:
        for user in users[:3]:   # known users; two unknown recent ids each
            assert client.recommend("acme", user, k=5, recent_item_ids=["i0001", "nope", "nada"]).item_ids
        assert client.recommend("acme", "visitor-x", k=4).strategy == "popularity"
        with pytest.raises(RecommendError):
            client.recommend("acme", "", k=5)   # refused by feature_lookup: an error, no row anywhere else
    expected = {series("tapestry_requests_total", tenant="acme", strategy="personalized"): 3,
                series("tapestry_requests_total", tenant="acme", strategy="popularity"): 1,
                series("tapestry_stage_errors_total", tenant="acme", stage="feature_lookup"): 1,
                **{series("tapestry_stage_rows_total", tenant="acme", stage=stage): 4 for stage in STAGES}}
    changed = settled(server, before, expected)
    tapestry = {k: v for k, v in changed.items() if k[0].startswith("tapestry_")}
    assert tapestry and all(dict(labels)["tenant"] == "acme" for _, labels in tapestry)   # globex untouched
    assert value(changed, "tapestry_requests_total", tenant="acme", strategy="personalized") == 3
    assert value(changed, "tapestry_requests_total", tenant="acme", strategy="popularity") == 1
    assert value(changed, "tapestry_ignored_recent_items_total", tenant="acme") == 6
    assert value(changed, "tapestry_stage_errors_total", tenant="acme", stage="feature_lookup") == 1
    assert value(changed, "tapestry_stage_candidates_total", tenant="acme", stage="rerank") == 3 * 5 + 4
    for stage in STAGES:
        assert value(changed, "tapestry_stage_rows_total", tenant="acme", stage=stage) == 4, stage
        assert value(changed, "tapestry_stage_latency_seconds_count", tenant="acme", stage=stage) >= 1, stage
        assert value(changed, "tapestry_stage_latency_seconds_sum", tenant="acme", stage=stage) > 0, stage
    retrieved = value(changed, "tapestry_stage_candidates_total", tenant="acme", stage="retrieval")
    assert retrieved >= value(changed, "tapestry_stage_candidates_total", tenant="acme", stage="filter") >= 19

    # `tapestry monitor` finds the running server through the tenant's state and reads the same series.
    live = monitor("acme", root, sample=5)["live"]
    assert live["requests_by_strategy"]["personalized"] >= 3 and live["ignored_recent_items"] >= 6
    assert live["stages"]["rerank"]["rows"] >= 4 and live["stages"]["feature_lookup"]["errors"] >= 1
    assert live["stages"]["rerank"]["candidates_per_row"] <= 5 and live["stages"]["rerank"]["mean_latency_ms"] > 0

    before = quiet(server)
    with RecommendClient(server.grpc_url, protocol="grpc",
                         model_name=ensemble_name("globex", multi_tenant=True)) as client:
        assert client.recommend("globex", "u0001", k=3).item_ids
    changed = settled(server, before, {series("tapestry_stage_rows_total", tenant="globex", stage=stage): 1
                                       for stage in STAGES})
    assert value(changed, "tapestry_requests_total", tenant="globex", strategy="personalized") == 1
    assert not [k for k in changed if k[0].startswith("tapestry_") and dict(k[1])["tenant"] != "globex"]


def test_the_router_counts_each_arm(server, root):
    users = [f"u{i:04d}" for i in range(30)]
    ex.start("acme", [("control", "v0001", 50), ("treatment", "v0002", 50)], root, "exp1", **QUIET)
    try:
        split = Split.from_dict(ex.running("acme", root)["split"])
        before = quiet(server)
        with RecommendClient(server.http_url, model_name=ensemble_name("acme", multi_tenant=True)) as client:
            for user in users:
                client.recommend("acme", user, k=3)
        expected = {arm: sum(split.arm(u) == arm for u in users) for arm in ("control", "treatment")}
        changed = settled(server, before, {series("tapestry_arm_requests_total", tenant="acme", experiment="exp1",
                                                  arm=arm): n for arm, n in expected.items()})
    finally:
        ex.stop("acme", root, keep="control", log=lambda *a, **k: None)
    assert all(expected.values())
    for arm, n in expected.items():
        assert value(changed, "tapestry_arm_requests_total", tenant="acme", experiment="exp1", arm=arm) == n
    # The treatment arm's stage models (same tenant, same labels) are unloaded now: the series live on and count on.
    before = quiet(server)
    with RecommendClient(server.http_url, model_name=ensemble_name("acme", multi_tenant=True)) as client:
        client.recommend("acme", users[0], k=3)
    changed = settled(server, before, {series("tapestry_stage_rows_total", tenant="acme", stage="rerank"): 1})
    assert value(changed, "tapestry_stage_rows_total", tenant="acme", stage="rerank") == 1
    assert value(before, "tapestry_stage_rows_total", tenant="acme", stage="rerank") >= len(users)
