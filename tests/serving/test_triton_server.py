"""TritonServer starts and stops the real tritonserver from the nvidia-pytriton wheel (no mocks)."""

from __future__ import annotations

import glob
import json
import os
import sys
import socket
import subprocess
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tapestry.serving.status import listening_addresses
from tapestry.serving.triton_server import (SHM_DIR, SHM_PREFIX, TritonServer, TritonServerError, find_triton_bundle,
                                            free_ports)

from .toy_repository import TOY_RECOMMEND_CONFIG

pytestmark = pytest.mark.integration

MODEL_PY = textwrap.dedent(
    '''
    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                k = int(pb_utils.get_input_tensor_by_name(request, "K").as_numpy().reshape(-1)[0])
                ids = [f"i{j}".encode() for j in range(1, k + 1)]
                out = [
                    pb_utils.Tensor("ITEM_IDS", np.array(ids, dtype=np.object_)),
                    pb_utils.Tensor("SCORES", np.arange(k, 0, -1, dtype=np.float32)),
                    pb_utils.Tensor("TITLES", np.array([b"title-" + i for i in ids], dtype=np.object_)),
                    pb_utils.Tensor("STRATEGY", np.array([b"personalized"], dtype=np.object_)),
                ]
                responses.append(pb_utils.InferenceResponse(output_tensors=out))
            return responses
    '''
)

BROKEN_MODEL_PY = textwrap.dedent(
    """
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def initialize(self, args):
            raise RuntimeError("tapestry-broken-model-marker")
    """
)


def write_repo(root: Path, model_py: str = MODEL_PY) -> Path:
    (root / "recommend" / "1").mkdir(parents=True)
    (root / "recommend" / "config.pbtxt").write_text(TOY_RECOMMEND_CONFIG)
    (root / "recommend" / "1" / "model.py").write_text(model_py)
    return root


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://{url}", timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def port_open(hostport: str) -> bool:
    host, port = hostport.rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, int(port))) == 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def own_shm_regions(server: TritonServer) -> list[str]:
    return glob.glob(os.path.join(SHM_DIR, glob.escape(server._shm_prefix) + "*"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with TritonServer(write_repo(tmp_path_factory.mktemp("server_repo"))) as s:
        yield s


def test_bundle_is_found_in_the_installed_wheel():
    bundle = find_triton_bundle()
    assert bundle.binary.name == "tritonserver" and os.access(bundle.binary, os.X_OK)
    assert bundle.stub.parent.name == "{}.{}".format(*sys.version_info[:2])


def test_missing_stub_is_a_clear_error():
    with pytest.raises(TritonServerError, match=r"no python backend stub for Python 3\.99.*available: .*3\.11"):
        find_triton_bundle(python_version=(3, 99))


def test_server_is_ready(server):
    assert server.running and pid_alive(server.pid)
    for url in (server.http_url, server.grpc_url, server.metrics_url):
        assert url.startswith("127.0.0.1:") and port_open(url)
    assert len({server.http_url, server.grpc_url, server.metrics_url}) == 3
    assert http_get(f"{server.http_url}/v2/health/ready")[0] == 200
    assert server.model_ready("recommend") and server.model_ready("recommend", 1)
    assert not server.model_ready("no-such-model")
    assert server.log_path.exists() and "loading: recommend:1" in server.log_path.read_text()


def test_server_listens_on_loopback_only_by_default(server):
    for port in server.ports.values():
        assert listening_addresses(port) == ["127.0.0.1"]


def test_host_and_explicit_ports_are_used(tmp_path):
    """An operator's choice: every interface, on the ports asked for (free ones, picked here)."""
    http, grpc, metrics = free_ports(3, "0.0.0.0")
    with TritonServer(write_repo(tmp_path), host="0.0.0.0", http_port=http, grpc_port=grpc, metrics_port=metrics) as s:
        assert s.ports == {"http": http, "grpc": grpc, "metrics": metrics}
        assert listening_addresses(http) == listening_addresses(metrics) == ["0.0.0.0"]
        assert listening_addresses(grpc) in (["0.0.0.0"], ["::"])  # gRPC binds the dual-stack wildcard
        assert s.http_url == f"127.0.0.1:{http}"  # the wildcard is reached over loopback from here
        assert http_get(f"{s.http_url}/v2/health/ready")[0] == 200


def test_a_port_in_use_is_a_clear_error_not_someone_elses_server(tmp_path):
    # Before this check, another server on the port answered the readiness probe and start() reported success.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        s = TritonServer(write_repo(tmp_path), http_port=port)
        with pytest.raises(TritonServerError, match=f"cannot use http port {port} on 127.0.0.1: Address already"):
            s.start(timeout=60)
        assert s.pid is None


def test_a_host_that_is_not_this_machine_is_a_clear_error(tmp_path):
    s = TritonServer(write_repo(tmp_path), host="192.0.2.1")  # TEST-NET-1: never a local address
    with pytest.raises(TritonServerError, match="cannot listen on host '192.0.2.1'"):
        s.start(timeout=60)
    assert s.pid is None


def test_server_answers_an_inference(server):
    body = {
        "inputs": [
            {"name": "TENANT", "shape": [1], "datatype": "BYTES", "data": ["t1"]},
            {"name": "USER_ID", "shape": [1], "datatype": "BYTES", "data": ["u1"]},
            {"name": "K", "shape": [1], "datatype": "INT32", "data": [2]},
            {"name": "EXCLUDE_ITEM_IDS", "shape": [1], "datatype": "BYTES", "data": [""]},
        ]
    }
    req = urllib.request.Request(
        f"http://{server.http_url}/v2/models/recommend/infer", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        outputs = {o["name"]: o["data"] for o in json.load(resp)["outputs"]}
    assert outputs["ITEM_IDS"] == ["i1", "i2"] and outputs["STRATEGY"] == ["personalized"]
    # the python backend is running with this run's own shm prefix
    assert own_shm_regions(server)
    status, metrics = http_get(f"{server.metrics_url}/metrics")
    assert status == 200 and b"nv_inference_request_success" in metrics


def test_stop_kills_process_closes_ports_and_cleans_up(tmp_path):
    other = os.path.join(SHM_DIR, SHM_PREFIX + f"not-ours-{os.getpid()}")
    Path(other).write_bytes(b"x")  # someone else's region: must survive
    try:
        s = TritonServer(write_repo(tmp_path / "repo"), log_path=tmp_path / "logs" / "triton.log")
        with s:
            pid, urls, tmpdir = s.pid, (s.http_url, s.grpc_url, s.metrics_url), s._tmpdir
            assert pid_alive(pid) and tmpdir.is_dir()
            assert s.model_ready("recommend")
            assert own_shm_regions(s)  # the python backend's regions carry this run's own prefix
        assert s.pid is None and not s.running
        assert not pid_alive(pid)
        assert not any(port_open(u) for u in urls)
        assert not tmpdir.exists()
        assert own_shm_regions(s) == []
        assert os.path.exists(other)
        assert (tmp_path / "logs" / "triton.log").exists()  # a configured log is kept
        s.stop()  # idempotent
        s.stop()
    finally:
        os.unlink(other)


def test_atexit_stops_a_server_left_running(tmp_path):
    script = textwrap.dedent(
        f"""
        from tapestry.serving.triton_server import TritonServer
        s = TritonServer({str(write_repo(tmp_path / "repo"))!r}).start(timeout=60)
        print(s.pid, s.http_url, s._tmpdir, flush=True)
        """
    )  # exits without stop()
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    pid, url, tmpdir = out.stdout.split()
    assert not pid_alive(int(pid)) and not port_open(url) and not os.path.exists(tmpdir)


def test_restart_after_stop(tmp_path):
    s = TritonServer(write_repo(tmp_path))
    try:
        first = s.start(timeout=60).pid
        with pytest.raises(TritonServerError, match="already started"):
            s.start()
        s.stop()
        assert s.start(timeout=60).pid != first and s.model_ready("recommend")
    finally:
        s.stop()


def test_broken_model_fails_start_with_log_tail(tmp_path):
    s = TritonServer(write_repo(tmp_path, BROKEN_MODEL_PY))
    with pytest.raises(TritonServerError, match="exited during startup") as info:
        s.start(timeout=60)
    msg = str(info.value)
    assert "exited during startup" in msg
    assert "tapestry-broken-model-marker" in msg
    assert "failed to load all models" in msg  # the server's own last words
    assert s.pid is None and not s.running


def test_broken_model_fails_start_in_explicit_mode_too(tmp_path):
    s = TritonServer(write_repo(tmp_path, BROKEN_MODEL_PY), model_control_mode="explicit", load_models=["*"])
    with pytest.raises(TritonServerError, match="tapestry-broken-model-marker"):
        s.start(timeout=60)
    assert s.pid is None


def test_missing_repository_is_an_error(tmp_path):
    with pytest.raises(TritonServerError, match="not a directory"):
        TritonServer(tmp_path / "nope").start()
