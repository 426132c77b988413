"""Hot swap and rollback in a real Triton server (explicit model control), under load, loopback only: no request
fails, and every answer comes from one export end to end (tapestry.serving.model_control)."""
import shutil

import polars as pl
import pytest

from tapestry.config import TrainConfig
from tapestry.ensembles import run_export
from tapestry.etl import run_etl
from tapestry.etl.synthetic import synthetic_tables
from tapestry.serving import model_control as mc
from tapestry.serving import multi_tenant as mt
from tapestry.serving import status as st
from tapestry.serving.pipeline import RecommendPipeline
from tapestry.serving.tenant_repository import SwapError
from tapestry.training.pipeline import run_train

from . import load

pytestmark = pytest.mark.integration

TENANT = "acme"
QUIET = {"log": lambda *a, **k: None}
AFTER = 30   # requests each client sends after a swap returns, before the test moves on


def Load(server, users):   # noqa: N802 - the shared helper with this test's records
    """(phase, user, item ids) per answer; (phase, user, error text) per failed request."""
    return load.Load(server, TENANT, users, lambda phase, _, user, r: (phase, user, getattr(r, "item_ids", r)))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("swap")
    run_etl(synthetic_tables(num_users=120, num_items=60, seed=0), TENANT, root, **QUIET)
    run_train(TENANT, root, TrainConfig.smoke(), **QUIET)
    run_export(TENANT, root, max_k=20, **QUIET)
    return root


@pytest.fixture(scope="module")
def server(root):
    with mt.serving([TENANT], root) as s:   # serves v0001, the only export yet
        yield s


@pytest.fixture(scope="module")
def second_export(root, server):
    """A retrained model exported while the server runs (another seed: it recommends differently)."""
    run_train(TENANT, root, TrainConfig.smoke(params={"sasrec_lightgcn": {"seed": 1}}), **QUIET)
    return run_export(TENANT, root, max_k=20, **QUIET).path


def _expected(root, version: str, users: list[str]) -> dict[str, list[str]]:
    local = RecommendPipeline.from_artifacts(root / TENANT / "export" / version / "artifacts")
    return {u: local.recommend(TENANT, u, k=10).item_ids for u in users}


def _users(root) -> list[str]:
    return pl.read_parquet(root / TENANT / "export" / "v0001" / "artifacts" / "users.parquet")["user_id"][:40].to_list()


def test_swap_then_rollback_under_load_fails_no_request(root, server, second_export):
    users = _users(root)
    old, new = _expected(root, "v0001", users), _expected(root, second_export.name, users)
    assert sum(old[u] != new[u] for u in users) > len(users) // 2   # else the test could not tell them apart
    with Load(server, users) as load:
        load.phase = "swapping"
        info = mc.swap(TENANT, root, **QUIET)   # no version: the latest export
        load.phase = "swapped"
        load.wait(AFTER)
        assert info["export_version"] == second_export.name and info["history"] == ["v0001"]
        assert st.live_state(TENANT, root)["export_version"] == second_export.name
        load.phase = "rolling back"
        info = mc.rollback(TENANT, root, **QUIET)
        load.phase = "rolled back"
        load.wait(AFTER)
    assert info["export_version"] == "v0001" and info["history"] == []
    assert st.live_state(TENANT, root)["export_version"] == "v0001"
    assert load.errors == []
    by_phase = {}
    for phase, user, items in load.results:
        by_phase.setdefault(phase, []).append(items == old[user] if phase in ("before", "rolled back") else
                                              items == new[user] if phase == "swapped" else
                                              items in (old[user], new[user]))   # never a mix of the two
    assert all(all(ok) for ok in by_phase.values()), {p: ok.count(False) for p, ok in by_phase.items()}
    assert min(len(by_phase[p]) for p in ("before", "swapped", "rolled back")) >= 20
    assert len(by_phase["swapping"]) > 0 and len(by_phase["rolling back"]) > 0   # served DURING each swap
    # Only the served export's stage models are left in the server and its repository.
    names = mc.ModelControl.of(mc.live_server(root)).ready_models()   # with the admin key of its state
    assert names == {f"{TENANT}__recommend"} | {f"{TENANT}__{s}__v0001" for s in
                                                 ("feature_lookup", "user_encoder", "retrieval", "filter", "rerank")}
    assert sorted(p.name for p in server.model_repository.iterdir()) == sorted(names)


def test_a_broken_export_is_refused_and_the_served_one_keeps_answering(root, server, second_export):
    broken = second_export.parent / "v0099"
    shutil.copytree(second_export, broken)
    (broken / "artifacts" / "user_encoder.pt").write_bytes(b"not a checkpoint")
    users = _users(root)
    with Load(server, users) as load:
        with pytest.raises(SwapError, match="export v0099 failed to load, v0001 still served"):
            mc.swap(TENANT, root, "v0099", **QUIET)
        load.wait(AFTER)
    assert load.errors == []
    served = _expected(root, "v0001", users)
    assert all(items == served[user] for _, user, items in load.results)
    assert st.live_state(TENANT, root)["export_version"] == "v0001"
    assert not any("v0099" in p.name for p in server.model_repository.iterdir())


def test_clear_errors_for_what_cannot_be_swapped(root, server):
    with pytest.raises(SwapError, match="nothing to roll back to"):
        mc.rollback(TENANT, root, **QUIET)
    with pytest.raises(SwapError, match="has no export 'v0042'"):
        mc.swap(TENANT, root, "v0042", **QUIET)
    with pytest.raises(SwapError, match="no multi-tenant server serves it"):
        mc.swap("other", root, **QUIET)
    assert mc.swap(TENANT, root, "1", **QUIET)["export_version"] == "v0001"   # already served: nothing to do
