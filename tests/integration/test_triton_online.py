"""End to end with the Redis online store: a real Triton server whose feature_lookup reads Redis sees an event
ingested a moment ago in its next answer, and an erased user's next answer is the popularity fallback."""
import shutil

import numpy as np
import pytest

from tapestry.online.erase import erase_user
from tapestry.online.ingest import run_ingest
from tapestry.online.local_redis import LocalRedis, redis_server_binary
from tapestry.online.load import load_export_into_redis
from tapestry.online.store import REDIS_URL_ENV, RedisStore
from tapestry.serving.client import RecommendClient
from tapestry.serving.pipeline import RecommendPipeline
from tapestry.serving.triton_server import TritonServer

from .conftest import QUIET, TENANT

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)")
    with LocalRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture(scope="module")
def private_export(exported, tmp_path_factory):
    """The shared export, copied under a root of its own: the tombstone this test writes must not reach the
    session's embedded-store server, which other modules query."""
    export, users = exported
    root = tmp_path_factory.mktemp("online-root")
    copy = root / TENANT / "export" / export.path.name
    shutil.copytree(export.path, copy)
    return root, copy, users


def _same(a, b):
    assert a.item_ids == b.item_ids and a.strategy == b.strategy
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)


def test_ingested_event_and_erasure_reach_the_next_triton_answer(private_export, redis_url, monkeypatch):
    root, export_dir, users = private_export
    art = export_dir / "artifacts"
    load_export_into_redis(art, redis_url, **QUIET)
    monkeypatch.setenv(REDIS_URL_ENV, redis_url)             # the in-process pipeline reads the same Redis
    local = RecommendPipeline.from_artifacts(art)
    assert isinstance(local.stages[0].store, RedisStore)
    user = users[7]
    # The server gets the URL through its environment, which the python-backend stubs inherit.
    with TritonServer(export_dir / "model_repository", env={REDIS_URL_ENV: redis_url}) as server, \
            RecommendClient(server.http_url) as client:
        before = client.recommend(TENANT, user, k=10)
        assert before.strategy == "personalized"
        _same(before, local.recommend(TENANT, user, k=10))

        item = before.item_ids[0]
        events = root / "events.csv"
        events.write_text(f"user_id,item_id,event_type,timestamp\n{user},{item},rating,1700000000\n")
        stats = run_ingest(TENANT, events, root, redis_url, **QUIET)
        assert (stats.applied, stats.quarantined) == (1, 0)
        after = client.recommend(TENANT, user, k=10)
        assert item not in after.item_ids                    # now seen: filtered out
        assert after.item_ids != before.item_ids
        _same(after, local.recommend(TENANT, user, k=10))    # the same answer as the pipeline over the same Redis

        erase_user(TENANT, user, root, redis_url)
        gone = client.recommend(TENANT, user, k=10)
        assert gone.strategy == "popularity"
        _same(gone, local.recommend(TENANT, "a-visitor-never-seen", k=10))
