"""tapestry.serving.status without a server: state files, stale pids, listening addresses, the text shown."""
import json
import os
import socket
import subprocess
import sys

from tapestry.serving import status as st


def _own_state(**extra) -> dict:
    return {"pid": os.getpid(), "pid_start": st.process_start(os.getpid()), **extra}


def test_a_pid_is_trusted_only_with_its_start_time():
    assert st.is_serve_process(_own_state())
    assert not st.is_serve_process({**_own_state(), "pid_start": st.process_start(os.getpid()) - 1})  # pid reused
    assert not st.is_serve_process({"pid": os.getpid()})  # no start time recorded
    assert not st.is_serve_process({})
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert st.process_start(int(exited.stdout)) is None


def test_state_files(tmp_path):
    path = st.state_path("acme", tmp_path)
    assert path == tmp_path / "acme" / "serve.json" and st.read_state(path) is None
    st.write_state(path, {"pid": 1})
    assert st.read_state(path) == {"pid": 1}
    path.write_text("{half")
    assert st.read_state(path) == {}  # unreadable: stale, not a crash


def test_live_state_ignores_a_stale_file(tmp_path):
    st.write_state(st.state_path("acme", tmp_path), {"pid": os.getpid(), "pid_start": -1})
    assert st.live_state("acme", tmp_path) is None
    st.write_state(st.state_path("acme", tmp_path), _own_state())
    assert st.live_state("acme", tmp_path)["pid"] == os.getpid()


def test_stale_state_is_reported_as_not_running(tmp_path):
    st.write_state(st.state_path("acme", tmp_path), {"pid": 1, "pid_start": -1, "http_url": "127.0.0.1:1"})
    (tmp_path / "other").mkdir()  # a tenant without a server is not listed
    statuses = st.all_statuses(tmp_path)
    assert [(s["tenant"], s["running"]) for s in statuses] == [("acme", False)]
    text = st.describe(statuses[0])
    assert "tenant acme: not running (stale state, pid 1" in text and "tapestry stop --tenant acme" in text
    assert st.all_statuses(tmp_path / "nowhere") == []


def test_listening_addresses_reads_what_is_bound():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert st.listening_addresses(port) == []  # bound, not listening
        s.listen()
        assert st.listening_addresses(port) == ["127.0.0.1"]


def test_proc_addresses_decode_ipv4_and_ipv4_mapped_ipv6():
    assert st._proc_address("0100007F") == "127.0.0.1"
    assert st._proc_address("00000000") == "0.0.0.0"
    assert st._proc_address("0000000000000000FFFF00000100007F") == "127.0.0.1"  # how gRPC binds 127.0.0.1
    assert st._proc_address("00000000000000000000000000000000") == "::"


def test_probe_of_nothing_says_so():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    assert st.probe_inference(f"127.0.0.1:{port}", "acme", timeout=5).startswith("no answer")


def test_running_server_is_described_on_four_lines():
    status = {
        "tenant": "acme", "running": True, "pid": 10, "triton_pid": 11, "host": "0.0.0.0", "started_at": "T",
        "export_version": "v0003", "served_model": "sasrec_lightgcn", "models_version": "v0002", "export": "/e",
        "http_port": 1, "grpc_port": 2, "metrics_port": 3, "listening": {"http": ["0.0.0.0"], "grpc": ["::"],
                                                                        "metrics": []},
        "live": True, "ready": True, "model_ready": False, "inference": "HTTP 400: bad",
    }
    lines = st.describe(status).splitlines()
    assert lines[0] == "tenant acme: pid 10 (tritonserver pid 11), host 0.0.0.0, since T"
    assert lines[1] == "  model     export v0003 of sasrec_lightgcn (models v0002): /e"
    assert lines[2] == "  ports     http 1 on 0.0.0.0, grpc 2 on ::, metrics 3 on nothing"
    assert lines[3] == "  health    live yes, ready yes, recommend model ready NO, inference HTTP 400: bad"
    json.dumps(status)  # --json prints the same dict
