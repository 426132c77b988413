"""RecommendClient against a real tritonserver serving a tiny python-backend `recommend` model (same tensor contract)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tapestry.serving.client import RecommendClient, RecommendError, RecommendationResult
from tapestry.serving.triton_server import TritonServer

from .toy_repository import TOY_RECOMMEND_CONFIG

pytestmark = pytest.mark.integration

MODEL_PY = textwrap.dedent(
    '''
    import numpy as np
    import triton_python_backend_utils as pb_utils


    def _strs(request, name):
        return [x.decode("utf-8") for x in pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)]


    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                tenant = _strs(request, "TENANT")[0]
                if tenant != "t1":
                    err = pb_utils.TritonError(f"unknown tenant {tenant!r}", pb_utils.TritonError.INVALID_ARG)
                    responses.append(pb_utils.InferenceResponse(error=err))
                    continue
                user = _strs(request, "USER_ID")[0]
                k = int(pb_utils.get_input_tensor_by_name(request, "K").as_numpy().reshape(-1)[0])
                exclude = set(_strs(request, "EXCLUDE_ITEM_IDS")) - {""}
                ids = [f"i{j}" for j in range(1, k + 1) if f"i{j}" not in exclude]
                scores = np.arange(len(ids), 0, -1, dtype=np.float32) / 10.0
                strategy = "popularity" if user == "unknown" else "personalized"
                out = [
                    pb_utils.Tensor("ITEM_IDS", np.array([i.encode() for i in ids], dtype=np.object_)),
                    pb_utils.Tensor("SCORES", scores),
                    pb_utils.Tensor("TITLES", np.array([f"title-{i}".encode() for i in ids], dtype=np.object_)),
                    pb_utils.Tensor("STRATEGY", np.array([strategy.encode()], dtype=np.object_)),
                ]
                responses.append(pb_utils.InferenceResponse(output_tensors=out))
            return responses
    '''
)


def write_repo(root: Path) -> Path:
    (root / "recommend" / "1").mkdir(parents=True)
    (root / "recommend" / "config.pbtxt").write_text(TOY_RECOMMEND_CONFIG)
    (root / "recommend" / "1" / "model.py").write_text(MODEL_PY)
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with TritonServer(write_repo(tmp_path_factory.mktemp("client_repo"))) as s:
        yield s


@pytest.fixture(params=["http", "grpc"])
def client(request, server):
    url = server.http_url if request.param == "http" else server.grpc_url
    with RecommendClient(url, protocol=request.param, timeout=10) as c:
        yield c


def test_recommend_returns_decoded_result(client):
    res = client.recommend("t1", "u1", k=3)
    assert res == RecommendationResult(
        item_ids=["i1", "i2", "i3"],
        scores=pytest.approx([0.3, 0.2, 0.1]),
        titles=["title-i1", "title-i2", "title-i3"],
        strategy="personalized",
    )
    assert all(isinstance(x, str) for x in res.item_ids + res.titles)
    assert all(isinstance(x, float) for x in res.scores)
    assert client.recommend("t1", "unknown", k=1).strategy == "popularity"


def test_exclusion(client):
    res = client.recommend("t1", "u1", k=5, exclude_item_ids=["i2", "i4", "not-an-item"])
    assert res.item_ids == ["i1", "i3", "i5"]
    assert res.titles == ["title-i1", "title-i3", "title-i5"]
    assert res.scores == sorted(res.scores, reverse=True)


def test_http_and_grpc_identical(server):
    with RecommendClient(server.http_url) as h, RecommendClient(server.grpc_url, protocol="grpc") as g:
        for args in [("t1", "u1", 10, ()), ("t1", "ü-user", 4, ("i1",)), ("t1", "unknown", 2, ("i9", "i2"))]:
            assert h.recommend(*args) == g.recommend(*args)


def test_invalid_tenant_is_recommend_error(client):
    with pytest.raises(RecommendError, match="unknown tenant 'nope'") as info:
        client.recommend("nope", "u1", k=3)
    err = info.value
    assert "unknown tenant 'nope'" in err.message
    assert err.status == ("400" if client.protocol == "http" else "INVALID_ARGUMENT")
    assert err.invalid_argument and err.protocol == client.protocol


def test_wrong_model_name_is_recommend_error(server):
    with RecommendClient(server.http_url, model_name="missing") as c:
        with pytest.raises(RecommendError, match="missing") as info:
            c.recommend("t1", "u1")
    assert "missing" in info.value.message and info.value.status is not None


def test_wait_until_ready(client):
    client.wait_until_ready(timeout=10)
    closed = RecommendClient(client.url, protocol=client.protocol, model_name="missing")
    with pytest.raises(TimeoutError, match=r"model 'missing' at .* not ready after 0.3s"):
        closed.wait_until_ready(timeout=0.3, interval=0.05)
    closed.close()
    closed.close()  # idempotent


def test_bad_arguments():
    with pytest.raises(ValueError, match="protocol must be 'http' or 'grpc', not 'soap'"):
        RecommendClient("127.0.0.1:1", protocol="soap")
    with RecommendClient("127.0.0.1:1") as c, pytest.raises(ValueError, match="k must be >= 1, not 0"):
        c.recommend("t1", "u1", k=0)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_unreachable_server_is_recommend_error(protocol):
    from tapestry.serving.triton_server import free_ports

    with RecommendClient(f"127.0.0.1:{free_ports(1)[0]}", protocol=protocol, timeout=2) as c:
        with pytest.raises(RecommendError, match="(?i)refused"):
            c.recommend("t1", "u1")
