"""A/B experiment in a real Triton server: two exports of one tenant as arms 50/50 (tapestry.serving.experiment).
Requests over HTTP and gRPC name their arm, each user's answer equals that arm's in-process pipeline, the exposure
log and the server's log name the arm, and starting and stopping the experiment under load fails no request."""

import polars as pl
import pytest

from tapestry.config import TrainConfig
from tapestry.ensembles import run_export
from tapestry.etl import run_etl
from tapestry.etl.synthetic import synthetic_tables
from tapestry.serving import ab
from tapestry.serving import experiment as ex
from tapestry.serving import model_control as mc
from tapestry.serving import multi_tenant as mt
from tapestry.serving.client import RecommendClient, ensemble_name
from tapestry.serving.pipeline import RecommendPipeline
from tapestry.serving.supervisor import stub_processes, structural_fault
from tapestry.serving.tenant_repository import SwapError
from tapestry.training.pipeline import run_train

from . import load

pytestmark = pytest.mark.integration

TENANT = "abco"
QUIET = {"log": lambda *a, **k: None}
AFTER = 20
STAGES = ("feature_lookup", "user_encoder", "retrieval", "filter", "rerank")


def Load(server, users):   # noqa: N802 - the shared helper with this test's records
    return load.Load(server, TENANT, users, lambda *entry: entry, first=5, timeout=180)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiment")
    run_etl(synthetic_tables(num_users=120, num_items=60, seed=0), TENANT, root, **QUIET)
    run_train(TENANT, root, TrainConfig.smoke(), **QUIET)
    run_export(TENANT, root, max_k=20, **QUIET)                                        # v0001
    run_train(TENANT, root, TrainConfig.smoke(params={"sasrec_lightgcn": {"seed": 1}}), **QUIET)
    run_export(TENANT, root, max_k=20, **QUIET)                                        # v0002
    return root


@pytest.fixture(scope="module")
def server(root):
    with mt.serving([TENANT], root, versions={TENANT: "v0001"}) as s:
        yield s


def _expected(root, version, users):
    local = RecommendPipeline.from_artifacts(root / TENANT / "export" / version / "artifacts")
    return {u: local.recommend(TENANT, u, k=10).item_ids for u in users}


def test_two_exports_as_arms_then_back_to_one_with_no_failed_request(root, server):
    users = pl.read_parquet(root / TENANT / "export" / "v0001" / "artifacts" / "users.parquet")["user_id"][:40]
    users = users.to_list()
    expected = {"control": _expected(root, "v0001", users), "treatment": _expected(root, "v0002", users)}
    assert sum(expected["control"][u] != expected["treatment"][u] for u in users) > len(users) // 2

    with Load(server, users) as before:           # clients that started before the experiment
        before.phase = "starting"
        info = ex.start(TENANT, [("control", "v0001", 50), ("treatment", "v0002", 50)], root, "exp1", **QUIET)
        before.phase = "started"
        before.wait(AFTER)
    assert before.errors == []
    for phase, _, user, res in before.results:
        allowed = ([expected["control"][user]] if phase == "before" else
                   [expected["control"][user], expected["treatment"][user]])
        assert res.item_ids in allowed, (phase, user)

    split = ab.Split("exp1", ("control", "treatment"), (50, 50))
    arms = {u: split.arm(u) for u in users}
    assert set(arms.values()) == {"control", "treatment"}
    record = info["experiment"]
    assert {a: r["export_version"] for a, r in record["arms"].items()} == {"control": "v0001", "treatment": "v0002"}
    # every model of both arms is loaded and watched by the supervisor's structural check
    ready = mc.ModelControl.of(mc.live_server(root)).ready_models()
    assert {f"{TENANT}__{s}__{v}" for s in STAGES for v in ("v0001", "v0002")} <= ready
    assert {f"{TENANT}__recommend__control", f"{TENANT}__recommend__treatment", f"{TENANT}__router__exp1"} <= ready
    state = mc.live_server(root)
    assert structural_fault(TENANT, state["tenants"][TENANT], ready, stub_processes(state["triton_pid"])) is None
    with pytest.raises(SwapError, match="runs A/B experiment exp1"):
        mc.swap(TENANT, root, "v0002", **QUIET)

    # fresh clients: every answer names the user's arm and equals that arm's in-process pipeline
    for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
        with RecommendClient(url, protocol=protocol, model_name=ensemble_name(TENANT, multi_tenant=True)) as c:
            for user in users:
                res = c.recommend(TENANT, user, k=10)
                assert res.arm == arms[user], (protocol, user)
                assert res.item_ids == expected[res.arm][user], (protocol, user)

    exposures = ab.read_exposures(record["exposure_log"])
    assert len(exposures) >= 2 * len(users)
    assert all(e["arm"] == arms[e["user"]] and e["experiment"] == "exp1" for e in exposures)
    last = {e["user"]: e["items"] for e in exposures}
    assert all(last[u] == expected[arms[u]][u] for u in users)
    log = server.log_path.read_text(errors="replace")
    assert f"[experiment exp1] tenant={TENANT} user={users[0]} arm={arms[users[0]]}" in log

    with Load(server, users) as during:           # clients that know the ARM output, through the stop
        during.phase = "stopping"
        info = ex.stop(TENANT, root, **QUIET)
        during.phase = "stopped"
        during.wait(AFTER)
    assert during.errors == []
    for phase, _, user, res in during.results:
        if phase == "before":
            assert res.arm == arms[user] and res.item_ids == expected[res.arm][user]
        elif phase == "stopped":
            assert res.arm == "" and res.item_ids == expected["control"][user]
        else:
            assert res.item_ids == expected[res.arm or "control"][user]
    assert min(sum(p == ph for p, *_ in during.results) for ph in ("before", "stopped")) >= 10
    assert info["export_version"] == "v0001" and "experiment" not in info
    names = mc.ModelControl.of(mc.live_server(root)).ready_models()
    assert names == {f"{TENANT}__recommend"} | {f"{TENANT}__{s}__v0001" for s in STAGES}
    assert sorted(p.name for p in server.model_repository.iterdir()) == sorted(names)
    assert ex.find(TENANT, root)["kept"] == "control"   # the record stays, for the report
