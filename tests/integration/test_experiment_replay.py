"""An A/B experiment measured end to end with a replay (issue 20, item 1): two exports of one tenant, a trained one
and an untrained one, served as arms 50/50 in a real Triton; every held-out user asks for recommendations, then
their held-out events are replayed through `tapestry ingest`, and `tapestry experiment report` must rank the arm
with the better offline NDCG@10 first, its lift with the sign of the offline difference."""
import dataclasses
import json
import subprocess
import sys
import time

import numpy as np
import polars as pl
import pytest

from tapestry.cli_experiment import experiment_report
from tapestry.config import TrainConfig
from tapestry.ensembles import run_export
from tapestry.etl import run_etl
from tapestry.etl.synthetic import synthetic_tables
from tapestry.online.ingest import run_ingest
from tapestry.serving import experiment as ex
from tapestry.serving import multi_tenant as mt
from tapestry.serving.client import RecommendClient, ensemble_name
from tapestry.serving.pipeline import RecommendPipeline
from tapestry.training.pipeline import run_train

pytestmark = pytest.mark.integration

TENANT = "replay"
QUIET = {"log": lambda *a, **k: None}
MODELS = ("popularity", "lightgcn", "sasrec_lightgcn")
HELD_OUT = 2    # each user's last events, never seen by the ETL, the training or the exports


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    """(root, held-out events: user_id, item_id, event_type, timestamp)."""
    root = tmp_path_factory.mktemp("replay")
    # 500 items and 30 reranked candidates: what the retriever finds matters (with few items the reranker alone
    # finds the held-out items, trained retriever or not)
    tables = synthetic_tables(num_users=800, num_items=500, seed=3)
    events = (tables.events.collect().with_columns(pl.col("timestamp").cast(pl.Int64).alias("_t"))
              .with_columns(pl.col("_t").rank("ordinal", descending=True).over("user_id").alias("_r")))
    held = events.filter(pl.col("_r") <= HELD_OUT).sort("user_id", "_t")
    run_etl(dataclasses.replace(tables, events=events.filter(pl.col("_r") > HELD_OUT).drop("_t", "_r").lazy()),
            TENANT, root, **QUIET)
    trained = {"sasrec_lightgcn": {"epochs": 5}, "lightgcn": {"epochs": 5}}
    run_train(TENANT, root, TrainConfig.smoke(models=MODELS, params=trained), **QUIET)
    run_export(TENANT, root, max_k=20, **QUIET)                                             # v0001: trained
    untrained = {"sasrec_lightgcn": {"epochs": 0}, "lightgcn": {"epochs": 0}}
    run_train(TENANT, root, TrainConfig.smoke(models=MODELS, params=untrained), **QUIET)
    run_export(TENANT, root, max_k=20, **QUIET)                                             # v0002: untrained
    return root, held.select("user_id", "item_id", "event_type", "_t")


def _ndcg_at_10(root, version, held: dict[str, set[str]]) -> float:
    local = RecommendPipeline.from_artifacts(root / TENANT / "export" / version / "artifacts")
    total = 0.0
    for user, items in held.items():
        recs = local.recommend(TENANT, user, k=10).item_ids
        gains = sum(1 / np.log2(i + 2) for i, item in enumerate(recs) if item in items)
        ideal = sum(1 / np.log2(i + 2) for i in range(min(len(items), 10)))
        total += gains / ideal
    return total / len(held)


def test_the_report_ranks_the_better_offline_model_first(replay, tmp_path):
    root, held = replay
    by_user = {u: set(g["item_id"].to_list()) for (u,), g in held.group_by("user_id")}
    offline = {v: _ndcg_at_10(root, v, by_user) for v in ("v0001", "v0002")}
    assert offline["v0001"] != offline["v0002"]

    with mt.serving([TENANT], root, versions={TENANT: "v0001"}) as server:
        ex.start(TENANT, [("control", "v0001", 50), ("treatment", "v0002", 50)], root, "replay1", **QUIET)
        with RecommendClient(server.grpc_url, protocol="grpc",
                             model_name=ensemble_name(TENANT, multi_tenant=True)) as client:
            arms = {u: client.recommend(TENANT, u, k=10).arm for u in sorted(by_user)}
        assert set(arms.values()) == {"control", "treatment"}
        # the held-out events happen after the recommendations: replayed, in order, through ingest
        now = int(time.time()) + 60
        source = tmp_path / "held_out.csv"
        rows = [f"{u},{i},{e},{now + n}" for n, (u, i, e, _) in enumerate(held.iter_rows())]
        source.write_text("user_id,item_id,event_type,timestamp\n" + "\n".join(rows) + "\n")
        stats = run_ingest(TENANT, source, root, **QUIET)
        assert stats.applied > 0 and stats.applied + stats.quarantined == len(rows)
        record, report = experiment_report(TENANT, root, window=86_400)   # events: what ingest committed
        ex.stop(TENANT, root, **QUIET)

    rates = {r.arm: r for r in report}
    assert rates["control"].users + rates["treatment"].users == len(by_user)
    better = max(("v0001", "v0002"), key=offline.get)
    ranked = sorted(report, key=lambda r: r.rate, reverse=True)
    assert record["arms"][ranked[0].arm]["export_version"] == better, (offline, report)
    lift = rates["treatment"].lift                 # v0002 (untrained) vs v0001 (trained)
    assert lift is not None and np.sign(lift) == np.sign(offline["v0002"] - offline["v0001"]), (offline, report)
    assert rates["treatment"].lift_low <= lift <= rates["treatment"].lift_high
    # measured: trained 0.279 vs untrained 0.030 offline NDCG@10; hit rate 51.9 % vs 9.3 %, lift -82 % [-87, -76]
    assert rates["treatment"].lift_high < 0

    # the command prints the same report after the experiment stopped
    out = subprocess.run([sys.executable, "-m", "tapestry.cli", "experiment", "report", "--tenant", TENANT,
                          "--root", str(root), "--window", "1d", "--json"], capture_output=True, text=True,
                         check=True).stdout
    printed = {a["arm"]: a for a in json.loads(out)["arms"]}
    assert {a: (p["users"], p["hits"]) for a, p in printed.items()} == \
        {r.arm: (r.users, r.hits) for r in report}
