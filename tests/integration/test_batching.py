"""Dynamic batching through the real Triton server: concurrent requests really share stage calls and each gets its
own answer; an export written unbatched (`--max-batch-size 0`, the contract before batching) still serves."""
import shutil
import threading

import numpy as np
import pytest
import tritonclient.http as th

from tapestry.serving.batching import set_max_batch_size
from tapestry.serving.client import RecommendClient
from tapestry.serving.pipeline import RecommendPipeline
from tapestry.serving.tenant_repository import read_config
from tapestry.serving.triton_server import TritonServer

from .conftest import TENANT, served_and_local

pytestmark = pytest.mark.integration
STAGES = ("feature_lookup", "user_encoder", "retrieval", "filter", "rerank")


@pytest.fixture(scope="module")
def local(exported):
    return RecommendPipeline.from_artifacts(exported[0].artifact_dir)


def _counts(server) -> dict[str, tuple[int, int]]:
    client = th.InferenceServerClient(server.http_url.removeprefix("http://"))
    try:
        stats = {m: client.get_inference_statistics(m)["model_stats"][0] for m in STAGES}
    finally:
        client.close()
    return {m: (s["inference_count"], s["execution_count"]) for m, s in stats.items()}


def test_concurrent_requests_share_stage_calls_and_each_gets_its_own_answer(server, local, exported):
    _, users = exported
    picked = users[:48]
    expected = {u: local.recommend(TENANT, u, k=10).item_ids for u in picked}
    before = _counts(server)
    wrong, errors = [], []

    def worker(chunk):
        with RecommendClient(server.grpc_url, protocol="grpc") as client:
            for _ in range(3):
                for u in chunk:
                    try:
                        if client.recommend(TENANT, u, k=10).item_ids != expected[u]:
                            wrong.append(u)
                    except Exception as e:  # noqa: BLE001 - collected and reported below
                        errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(picked[i::12],)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not wrong
    after = _counts(server)
    requests = {m: after[m][0] - before[m][0] for m in STAGES}
    executions = {m: after[m][1] - before[m][1] for m in STAGES}
    assert all(n == len(picked) * 3 for n in requests.values()), requests
    # 12 clients in flight: some stage call took more than one request (Triton counts an execution per call).
    assert any(executions[m] < requests[m] for m in STAGES), (requests, executions)


@pytest.fixture(scope="module")
def unbatched_server(exported, tmp_path_factory):
    export, _ = exported
    root = tmp_path_factory.mktemp("unbatched")
    shutil.copytree(export.model_repository, root / "model_repository", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "artifacts").symlink_to(export.artifact_dir)       # the stages find ../artifacts
    set_max_batch_size(root / "model_repository", 0)
    assert read_config(root / "model_repository" / "recommend" / "config.pbtxt").max_batch_size == 0
    with TritonServer(root / "model_repository") as s:
        yield s


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_an_unbatched_export_answers_like_the_batched_one(unbatched_server, local, exported, protocol):
    _, users = exported
    for recent in (None, ["50", "181"]):
        for served, expected in served_and_local(unbatched_server, local, protocol, TENANT,
                                                 [users[0], users[-1], "visitor-1"], recent=recent):
            assert served.item_ids == expected.item_ids and served.strategy == expected.strategy
            assert len(served.item_ids) == len(set(served.item_ids)) == 10         # k distinct items, not fewer
            assert len(served.scores) == len(served.titles) == 10
            np.testing.assert_allclose(served.scores, expected.scores, rtol=1e-5, atol=1e-6)
