"""Tenant API keys and the closed admin surface on a real Triton (tapestry.serving.auth, docs/auth.md), raw HTTP and
raw gRPC: every anonymous or wrong-key request is refused, on the ensemble and on a stage called directly, and
gets nothing of the tenant; the admin APIs answer only to the admin key; a revoked key is refused at once.

The server runs on the session's ML-100K export with the flags `tapestry serve` passes, its stages reading the key
files of a separate keys root (so the session's other servers, on the same export, keep keys off)."""
import json
import time

import grpc
import pytest
from tritonclient.grpc import service_pb2

from tapestry.serving import auth
from tapestry.serving.client import RecommendClient, RecommendError
from tapestry.serving.triton_server import TritonServer

from .conftest import TENANT
from .kserve_raw import RawGrpc, grpc_input, grpc_recommend_inputs, infer_json, post, recommend_inputs, tensor

pytestmark = pytest.mark.integration

ADMIN = "admin-" + "x" * 40


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """The keys root: ml100k with a live key and a revoked one, and another tenant with its own key."""
    root = tmp_path_factory.mktemp("keys")
    (root / TENANT).mkdir()
    (root / "acme").mkdir()
    _, live = auth.create_key(TENANT, root, name="live")
    revoked_id, revoked = auth.create_key(TENANT, root, name="old")
    auth.revoke_key(TENANT, root, revoked_id)
    _, acme = auth.create_key("acme", root)
    return {"root": root, "live": live, "revoked": revoked, "acme": acme}


@pytest.fixture(scope="module")
def server(exported, keys):
    export, _ = exported
    server_auth = auth.ServerAuth(ADMIN, require_keys=False, keys_root=keys["root"])
    with TritonServer(export.model_repository, extra_args=server_auth.triton_args(),
                      env=server_auth.triton_env()) as s:
        yield s


@pytest.fixture(scope="module")
def rpc(server):
    client = RawGrpc(server.grpc_url)
    yield client
    client.close()


# Direct stage calls: feature_lookup answers a user's stored history (HISTORY) - the tenant's data.
STAGE_INPUTS = [tensor("TENANT", "BYTES", [TENANT]), tensor("USER_ID", "BYTES", ["1"]),
                tensor("EXCLUDE_ITEM_IDS", "BYTES", [""])]
GRPC_STAGE_INPUTS = [grpc_input("TENANT", "BYTES", [1], bytes_contents=[TENANT.encode()]),
                     grpc_input("USER_ID", "BYTES", [1], bytes_contents=[b"1"]),
                     grpc_input("EXCLUDE_ITEM_IDS", "BYTES", [1], bytes_contents=[b""])]
CALLS = {"recommend": (recommend_inputs(TENANT), grpc_recommend_inputs(TENANT.encode())),
         "feature_lookup": (STAGE_INPUTS, GRPC_STAGE_INPUTS)}


def crafted(keys) -> dict:
    """name -> (headers as (name, value) pairs, the refusal's words)."""
    k = keys
    return {
        "no key": ([], "API key required"),
        "empty key": ([("tapestry-api-key", "")], "is empty"),
        "wrong key": ([("tapestry-api-key", "tpk_00000000_" + "A" * 43)], "not an active key"),
        "revoked key": ([("tapestry-api-key", k["revoked"])], "not an active key"),
        "another tenant's key": ([("tapestry-api-key", k["acme"])], "not an active key"),
        "the admin key as a tenant key": ([("tapestry-api-key", ADMIN)], "not an active key"),
        "a wrong admin key": ([("tapestry-admin-key", "admin-guess")], "admin key refused"),
        "the key's hash": ([("tapestry-api-key", auth.hash_key(k["live"]))], "not an active key"),
        "the header twice, good then bad": ([("tapestry-api-key", k["live"]), ("tapestry-api-key", k["acme"])],
                                            "given more than once"),
        "the header twice, bad then good": ([("tapestry-api-key", k["acme"]), ("tapestry-api-key", k["live"])],
                                            "given more than once"),
        "a good key with a wrong admin key": ([("tapestry-api-key", k["live"]), ("tapestry-admin-key", "no")],
                                              "admin key refused"),
        "the key in another header": ([("authorization", f"Bearer {k['live']}")], "API key required"),
    }


def _refused_http(status, answer, words):
    assert status == 400 and words in answer.get("error", ""), answer
    assert "outputs" not in answer and "ITEM_IDS" not in json.dumps(answer)


@pytest.mark.parametrize("model", CALLS)
def test_http_refuses_every_anonymous_or_wrong_key_request(server, keys, model):
    inputs = CALLS[model][0]
    for name, (headers, words) in crafted(keys).items():
        status, answer = infer_json(server.http_url, model, inputs, headers=headers)
        try:
            _refused_http(status, answer, words)
        except AssertionError:
            raise AssertionError(f"{model}, {name}: {status} {answer}") from None
    # The key as a request parameter too (what a header becomes inside Triton): alone it works, with the header
    # it is given twice.
    status, answer = infer_json(server.http_url, model, inputs, parameters={"tapestry-api-key": keys["acme"]})
    _refused_http(status, answer, "not an active key")
    status, answer = infer_json(server.http_url, model, inputs, headers={"tapestry-api-key": keys["live"]},
                                parameters={"tapestry-api-key": keys["live"]})
    _refused_http(status, answer, "given more than once")
    for headers in ({"tapestry-api-key": keys["live"]}, {"TAPESTRY-API-KEY": keys["live"]},
                    {"tapestry-admin-key": ADMIN}):
        status, answer = infer_json(server.http_url, model, inputs, headers=headers)
        assert status == 200 and answer["outputs"], (headers, answer)
    status, answer = infer_json(server.http_url, model, inputs, parameters={"tapestry-api-key": keys["live"]})
    assert status == 200, answer


@pytest.mark.parametrize("model", CALLS)
def test_grpc_refuses_every_anonymous_or_wrong_key_request(rpc, keys, model):
    inputs = CALLS[model][1]
    for name, (metadata, words) in crafted(keys).items():
        code, details = rpc.call(model, inputs, metadata=metadata)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and words in details, (model, name, code, details)
    code, details = rpc.call(model, inputs, metadata=[("tapestry-api-key", keys["live"])],
                             parameters={"tapestry-api-key": keys["live"]})
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "given more than once" in details
    for metadata in ([("tapestry-api-key", keys["live"])], [("tapestry-admin-key", ADMIN)]):
        code, response = rpc.call(model, inputs, metadata=metadata)
        assert code == grpc.StatusCode.OK and response.outputs, (metadata, response)


def test_the_client_sends_its_key_from_the_argument_or_the_environment(server, keys, monkeypatch):
    monkeypatch.delenv(auth.API_KEY_ENV, raising=False)
    for protocol in ("http", "grpc"):
        url = server.http_url if protocol == "http" else server.grpc_url
        with RecommendClient(url, protocol=protocol) as client:
            with pytest.raises(RecommendError, match="API key required") as e:
                client.recommend(TENANT, "1", k=5)
            assert e.value.invalid_argument
        with RecommendClient(url, protocol=protocol, api_key=keys["acme"]) as client:
            with pytest.raises(RecommendError, match="not an active key"):
                client.recommend(TENANT, "1", k=5)
        with RecommendClient(url, protocol=protocol, api_key=keys["live"]) as client:
            assert len(client.recommend(TENANT, "1", k=5).item_ids) == 5
        monkeypatch.setenv(auth.API_KEY_ENV, keys["live"])
        with RecommendClient(url, protocol=protocol) as client:
            assert len(client.recommend(TENANT, "1", k=5).item_ids) == 5
        monkeypatch.delenv(auth.API_KEY_ENV)


def _get(server, path, headers=None):
    import http.client

    host, port = server.http_url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def test_the_admin_apis_answer_only_to_the_admin_key_over_http(server):
    restricted = "This API is restricted, expecting header 'tapestry-admin-key'"
    for path in ("/v2/models/recommend/config", "/v2/models/stats", "/v2/models/recommend/stats",
                 "/v2/trace/setting", "/v2/logging", "/v2/systemsharedmemory/status", "/v2/cudasharedmemory/status"):
        for headers in (None, {"tapestry-admin-key": "guess"}, {"tapestry-api-key": ADMIN}):
            status, body = _get(server, path, headers)
            assert status == 403 and restricted in body, (path, headers, status, body)
        assert _get(server, path, {"tapestry-admin-key": ADMIN})[0] == 200, path
    for path in ("/v2/repository/index", "/v2/repository/models/recommend/unload",
                 "/v2/repository/models/feature_lookup/load"):
        for headers in ([], [("tapestry-admin-key", "guess")], [("tapestry-admin-key", "guess"),
                                                                ("tapestry-admin-key", ADMIN)]):
            status, answer = post(server.http_url, path, b"{}", headers)
            assert status == 403 and answer["error"] == restricted, (path, headers, answer)
    assert server.model_ready("recommend")   # the anonymous unload did nothing
    status, index = post(server.http_url, "/v2/repository/index", b"{}", {"tapestry-admin-key": ADMIN})
    assert status == 200 and {m["name"] for m in index} >= {"recommend", "feature_lookup"}


def test_the_admin_apis_answer_only_to_the_admin_key_over_grpc(rpc):
    calls = {
        "index": lambda **kw: rpc.stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(), **kw),
        "unload": lambda **kw: rpc.stub.RepositoryModelUnload(
            service_pb2.RepositoryModelUnloadRequest(model_name="recommend"), **kw),
        "config": lambda **kw: rpc.stub.ModelConfig(service_pb2.ModelConfigRequest(name="recommend"), **kw),
        "statistics": lambda **kw: rpc.stub.ModelStatistics(service_pb2.ModelStatisticsRequest(name=""), **kw),
        "trace": lambda **kw: rpc.stub.TraceSetting(service_pb2.TraceSettingRequest(), **kw),
        "logging": lambda **kw: rpc.stub.LogSettings(service_pb2.LogSettingsRequest(), **kw),
        "shared memory": lambda **kw: rpc.stub.SystemSharedMemoryStatus(
            service_pb2.SystemSharedMemoryStatusRequest(), **kw),
    }
    for name, call in calls.items():
        for metadata in ([], [("triton-grpc-protocol-tapestry-admin-key", "guess")], [("tapestry-admin-key", ADMIN)]):
            with pytest.raises(grpc.RpcError, match="restricted") as e:
                call(metadata=metadata, timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "restricted" in e.value.details(), name
    models = calls["index"](metadata=[("triton-grpc-protocol-tapestry-admin-key", ADMIN)], timeout=10).models
    assert {m.name for m in models} >= {"recommend", "feature_lookup"}


def test_an_anonymous_client_learns_no_model_name(server, rpc):
    """No listing (index, statistics, config are closed); an unknown model's error names nothing else."""
    for name in ("acme__recommend", "recommend2", "ml100k__recommend"):
        status, answer = infer_json(server.http_url, name, recommend_inputs(TENANT))
        assert status in (400, 404) and "recommend'" not in answer["error"].replace(f"'{name}'", ""), answer
        code, details = rpc.call(name, grpc_recommend_inputs(TENANT.encode()))
        assert code == grpc.StatusCode.NOT_FOUND and details == f"Request for unknown model: '{name}' is not found"
    status, body = _get(server, "/metrics")   # the HTTP port has no metrics endpoint
    assert status != 200 or "feature_lookup" not in body


def test_a_revoked_key_is_refused_at_once_and_a_new_one_works_at_once(server, keys):
    key_id, key = auth.create_key(TENANT, keys["root"], name="short-lived")
    headers = {"tapestry-api-key": key}
    assert infer_json(server.http_url, "recommend", recommend_inputs(TENANT), headers=headers)[0] == 200
    auth.revoke_key(TENANT, keys["root"], key_id)
    t0 = time.perf_counter()
    status, answer = infer_json(server.http_url, "recommend", recommend_inputs(TENANT), headers=headers)
    assert status == 400 and "not an active key" in answer["error"]   # the very next request
    assert time.perf_counter() - t0 < 5
    status, answer = infer_json(server.http_url, "feature_lookup", STAGE_INPUTS, headers=headers)
    assert status == 400 and "not an active key" in answer["error"]
    assert infer_json(server.http_url, "recommend", recommend_inputs(TENANT),
                      headers={"tapestry-api-key": keys["live"]})[0] == 200
