"""Two tenants in ONE real Triton server (explicit model control), started and stopped with the CLI as a user
would: each tenant answers from its own export, and no request reaches a tenant's data through another tenant's
models (tapestry.serving.multi_tenant, tenant_repository)."""
import dataclasses
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import polars as pl
import pytest

from tapestry.config import TrainConfig
from tapestry.ensembles import run_export
from tapestry.etl import run_etl
from tapestry.etl.synthetic import synthetic_tables
from tapestry.serving import model_control as mc
from tapestry.serving import multi_tenant as mt
from tapestry.serving import status as st
from tapestry.serving import tenant_repository as tr
from tapestry.serving.client import RecommendClient, RecommendError, ensemble_name
from tapestry.serving.pipeline import RecommendPipeline
from tapestry.serving.triton_server import TritonServerError, free_ports
from tapestry.training.pipeline import run_train

from .kserve_raw import tensor

pytestmark = pytest.mark.integration

QUIET = {"log": lambda *a, **k: None}
# Both tenants have users u0000.. (the same raw ids); globex's items are "g-i0000".., so an answer naming one of
# them can only have come from globex's models.
TENANTS = {"acme": "", "globex": "g-"}
# TENANT values that must never reach acme's data through globex's ensemble: the other tenant, path tricks,
# look-alikes (fullwidth a, Cyrillic a), an invisible suffix, case, whitespace, empty, very long.
CRAFTED = ["acme", "ACME", "acme ", " acme", "acme\u200b", "\uff41cme", "\u0430cme", "../acme", "globex/../acme",
           "acme/", "globex\\..\\acme", "", "a" * 10_000, "acme\x00", "globex\nacme"]


def _tables(seed: int, item_prefix: str):
    tables = synthetic_tables(num_users=120, num_items=60, seed=seed)
    item = pl.lit(item_prefix) + pl.col("item_id")
    return dataclasses.replace(tables, events=tables.events.with_columns(item.alias("item_id")),
                               items=tables.items.with_columns(item.alias("item_id")))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    for seed, (tenant, prefix) in enumerate(TENANTS.items()):
        run_etl(_tables(seed, prefix), tenant, root, **QUIET)
        run_train(tenant, root, TrainConfig.smoke(), **QUIET)
        run_export(tenant, root, max_k=20, **QUIET)
    return root


def tapestry(*args, root, check=True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tapestry.cli", *args, "--root", str(root)], capture_output=True,
                          text=True, check=check, timeout=300)


@pytest.fixture(scope="module")
def server(root):
    """`tapestry serve --tenants acme,globex --detach`: the state both tenants' serve.json hold."""
    http, grpc, metrics = free_ports(3)
    out = tapestry("serve", "--tenants", ",".join(TENANTS), "--detach", "--http-port", str(http), "--grpc-port",
                   str(grpc), "--metrics-port", str(metrics), root=root).stdout
    assert f"tenants {', '.join(TENANTS)} in one Triton" in out
    try:
        yield st.live_state("acme", root)
    finally:
        for tenant in TENANTS:   # normally done by the last test already
            tapestry("stop", "--tenant", tenant, root=root, check=False)


@pytest.fixture(scope="module")
def local(root):
    return {t: RecommendPipeline.from_artifacts(root / t / "export" / "v0001" / "artifacts") for t in TENANTS}


def _users(root, tenant: str) -> list[str]:
    return pl.read_parquet(root / tenant / "export" / "v0001" / "artifacts" / "users.parquet")["user_id"].to_list()


def test_names_and_the_combined_repository(root, tmp_path):
    assert ensemble_name("acme", multi_tenant=True) == tr.model_name("acme", "recommend") == "acme__recommend"
    assert ensemble_name("acme") == "recommend"
    assert mt.tenant_list("a,b,a") == ["a", "b"]
    for bad in ("a,../b", "a,", "_server"):
        with pytest.raises(Exception, match="tenant"):
            mt.tenant_list(bad)
    export = root / "acme" / "export" / "v0001"
    stages = tr.write_stages(tmp_path, "acme", export)
    assert stages == [f"acme__{s}__v0001" for s in ("feature_lookup", "user_encoder", "retrieval", "filter", "rerank")]
    ensemble = tr.read_config(tmp_path / tr.write_ensemble(tmp_path, "acme", export) / "config.pbtxt")
    assert ensemble.name == "acme__recommend"
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == stages
    stage = tr.read_config(tmp_path / stages[0] / "config.pbtxt")
    assert stage.parameters["ARTIFACT_DIR"].string_value == str((export / "artifacts").resolve())
    assert (tmp_path / stages[0] / "1" / "model.py").resolve() == (
        export / "model_repository" / "feature_lookup" / "1" / "model.py").resolve()
    with pytest.raises(tr.SwapError, match="not a tapestry export"):
        tr.exported_models(tmp_path)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_each_tenant_answers_from_its_own_export(server, root, local, protocol):
    url = server[f"{protocol}_url"]
    for tenant, prefix in TENANTS.items():
        catalogue = set(pl.read_parquet(root / tenant / "export" / "v0001" / "artifacts" / "items.parquet")["item_id"])
        users = _users(root, tenant)
        with RecommendClient(url, protocol=protocol, model_name=ensemble_name(tenant, multi_tenant=True)) as client:
            for user in (users[0], users[50], users[-1], "visitor-1"):
                served, expected = client.recommend(tenant, user, k=10), local[tenant].recommend(tenant, user, k=10)
                assert served.item_ids == expected.item_ids and served.strategy == expected.strategy
                np.testing.assert_allclose(served.scores, expected.scores, rtol=1e-5, atol=1e-6)
                assert len(served.item_ids) == 10 and set(served.item_ids) <= catalogue
                assert all(i.startswith("g-") == (prefix == "g-") for i in served.item_ids)


def test_state_files_and_status_name_each_tenants_ensemble(server, root):
    statuses = {s["tenant"]: s for s in st.all_statuses(root)}
    assert sorted(statuses) == sorted(TENANTS)
    for tenant, s in statuses.items():
        assert s["multi_tenant"] and s["model_name"] == f"{tenant}__recommend" and s["export_version"] == "v0001"
        assert s["running"] and s["ready"] and s["model_ready"] and s["inference"] == "ok"
        assert s["http_url"] == server["http_url"] and s["tenants"] == sorted(TENANTS)
    # One server per root, and a tenant it serves is not served twice.
    with pytest.raises(TritonServerError, match="already runs"):
        mt.start(["acme"], root)
    single = tapestry("serve", "--tenant", "acme", "--detach", root=root, check=False)
    assert single.returncode != 0 and "a server for tenant acme already runs" in single.stderr
    assert "shared    one multi-tenant Triton for acme, globex" in tapestry("status", root=root).stdout
    out = tapestry("recommend", "--tenant", "globex", "--user", "u0001", "-k", "3", "--protocol", "grpc",
                   root=root).stdout
    assert out.count(" g-i0") == 3   # the CLI called globex__recommend (the state's model name)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_tenants_ensemble_refuses_any_other_tenant(server, root, protocol):
    url = server[f"{protocol}_url"]
    user = _users(root, "acme")[0]   # u0000 exists in both tenants
    with RecommendClient(url, protocol=protocol, model_name="globex__recommend") as client:
        for tenant in CRAFTED:
            with pytest.raises(RecommendError, match="is not served by this model repository"
                                                     "|is not a valid tenant id") as e:
                client.recommend(tenant, user, k=5)
            assert e.value.invalid_argument, (tenant[:20], e.value)
            assert "i00" not in e.value.message   # no item of either tenant in the refusal
        assert all(i.startswith("g-") for i in client.recommend("globex", user, k=5).item_ids)   # still serving
    with RecommendClient(url, protocol=protocol, model_name="acme__recommend") as client:
        with pytest.raises(RecommendError, match="tenant 'globex' is not served") as e:
            client.recommend("globex", user, k=5)
        assert e.value.invalid_argument


def _direct_call(server, model: str, inputs: list[dict], headers=None) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://{server['http_url']}/v2/models/{model}/infer",
                                     data=json.dumps({"inputs": inputs}).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_a_stage_called_directly_refuses_another_tenant(server):
    """Triton cannot hide the stage models: calling globex's feature_lookup with TENANT=acme is refused too, also
    as one row of a batch whose other row is globex's own."""
    # One user = a batch of one: every shape has the leading batch dimension (max_batch_size > 0).
    inputs = [tensor("TENANT", "BYTES", ["acme"]), tensor("USER_ID", "BYTES", ["u0000"]),
              tensor("EXCLUDE_ITEM_IDS", "BYTES", [""])]
    assert inputs[0]["shape"] == [1, 1]
    status, answer = _direct_call(server, "globex__feature_lookup__v0001", inputs)
    assert status == 400 and "not served by this model repository" in answer["error"], answer
    two = [tensor("TENANT", "BYTES", ["globex", "acme"], [1], batch=2),
           tensor("USER_ID", "BYTES", ["u0000", "u0000"], [1], batch=2),
           tensor("EXCLUDE_ITEM_IDS", "BYTES", ["", ""], [1], batch=2)]
    status, answer = _direct_call(server, "globex__feature_lookup__v0001", two)
    assert status == 400 and answer["error"].startswith("row 1: tenant 'acme' is not served"), answer
    two[0] = {**two[0], "data": ["globex"] * 2}
    status, answer = _direct_call(server, "globex__feature_lookup__v0001", two)
    assert status == 200 and {o["name"]: o["shape"][0] for o in answer["outputs"]}["HISTORY"] == 2, answer


def test_tenant_keys_and_the_admin_key_through_the_cli(server, root):
    """`tapestry keys` turns keys on for a tenant of the running server (no restart); a key of one tenant opens
    nothing of the other; revoked is refused at once; swap / status / stop use the admin key of the 0600 state,
    and an anonymous client can neither list nor unload models."""
    assert oct(os.stat(mc.server_state_path(root)).st_mode & 0o777) == "0o600"
    assert server["admin_key"] and not server["keys_required"]
    keys = {t: tapestry("keys", "create", "--tenant", t, root=root).stdout.strip() for t in TENANTS}
    try:
        assert all(k.startswith("tpk_") for k in keys.values())
        listed = tapestry("keys", "list", "--tenant", "globex", root=root).stdout
        assert "1 active key(s)" in listed and keys["globex"] not in listed and keys["globex"][4:12] in listed

        def recommend(*extra, env=None):
            return subprocess.run([sys.executable, "-m", "tapestry.cli", "recommend", "--tenant", "globex", "--user",
                                   "u0001", "-k", "3", "--root", str(root), *extra], capture_output=True, text=True,
                                  timeout=120, env={**os.environ, "TAPESTRY_API_KEY": "", **(env or {})})
        out = recommend()
        assert out.returncode != 0 and "API key required" in out.stderr, out
        out = recommend("--api-key", keys["acme"], "--protocol", "grpc")
        assert out.returncode != 0 and "not an active key" in out.stderr, out
        assert recommend(env={"TAPESTRY_API_KEY": keys["globex"]}).stdout.count(" g-i0") == 3
        assert recommend("--api-key", keys["globex"], "--protocol", "grpc").stdout.count(" g-i0") == 3
        # A stage called directly, with the other tenant's key or none: refused before its tenant check.
        inputs = [tensor("TENANT", "BYTES", ["globex"]), tensor("USER_ID", "BYTES", ["u0000"]),
                  tensor("EXCLUDE_ITEM_IDS", "BYTES", [""])]
        for headers in ({}, {"tapestry-api-key": keys["acme"]}, {"tapestry-api-key": server["admin_key"]}):
            status, answer = _direct_call(server, "globex__feature_lookup__v0001", inputs, headers)
            assert status == 400 and "API key" in answer["error"] and "g-i" not in json.dumps(answer), answer
        status, answer = _direct_call(server, "globex__feature_lookup__v0001", inputs,
                                      {"tapestry-api-key": keys["globex"]})
        assert status == 200, answer
        # status probes every tenant with the admin key, and never prints it.
        statuses = {s["tenant"]: s for s in st.all_statuses(root)}
        assert all(s["inference"] == "ok" and "admin_key" not in s for s in statuses.values())
        text = tapestry("status", root=root).stdout + tapestry("status", "--json", root=root).stdout
        assert "1 active, 0 revoked" in text and server["admin_key"] not in text
        # The admin API: closed to anonymous clients, open to the state's key (what swap and stop use).
        for path in ("/v2/repository/index", "/v2/repository/models/globex__recommend/unload"):
            request = urllib.request.Request(f"http://{server['http_url']}{path}", data=b"{}", method="POST")
            with pytest.raises(urllib.error.HTTPError, match="HTTP Error 403") as e:
                urllib.request.urlopen(request, timeout=10)
            assert e.value.code == 403
        assert "globex__recommend" in mc.ModelControl.of(server).ready_models()
        key_id = keys["globex"].split("_")[1]
        assert "revoked" in tapestry("keys", "revoke", "--tenant", "globex", "--id", key_id, root=root).stdout
        out = recommend("--api-key", keys["globex"])
        assert out.returncode != 0 and "not an active key" in out.stderr, out
    finally:   # keys off again for the tests after this one
        for tenant in TENANTS:
            (root / tenant / "api_keys.json").unlink(missing_ok=True)


def test_stop_unloads_one_tenant_and_the_last_one_stops_the_server(server, root):
    out = tapestry("stop", "--tenant", "acme", root=root).stdout
    assert "tenant acme unloaded; still served: globex" in out
    assert st.live_state("acme", root) is None and not (root / "acme" / "serve.json").exists()
    assert mc.ModelControl.of(server).ready_models() == {
        "globex__recommend", *(f"globex__{s}__v0001" for s in ("feature_lookup", "user_encoder", "retrieval",
                                                                "filter", "rerank"))}
    [status] = st.all_statuses(root)
    assert status["tenant"] == "globex" and status["tenants"] == ["globex"] and status["inference"] == "ok"
    assert "the multi-tenant server stopped" in tapestry("stop", "--tenant", "globex", root=root).stdout
    assert not st.is_serve_process(server) and mc.live_server(root) is None and st.all_statuses(root) == []
    assert not (root / "_server" / "model_repository").exists()
