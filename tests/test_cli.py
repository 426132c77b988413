"""The `tapestry` command line, as a user runs it: etl -> train -> evaluate -> export -> serve -> recommend -> stop."""
import json
import subprocess
import sys

import pytest

from tapestry.cli import main

pytestmark = pytest.mark.integration
TENANT = "cli100k"


def tapestry(*args, root, check=True):
    cmd = [sys.executable, "-m", "tapestry.cli", *args, "--tenant", TENANT, "--root", str(root)]
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=300)


@pytest.fixture(scope="module")
def trained_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    main(["etl", "--tenant", TENANT, "--root", str(root), "--dataset", "ml-100k"])
    main(["train", "--tenant", TENANT, "--root", str(root), "--quick"])
    main(["export", "--tenant", TENANT, "--root", str(root), "--max-k", "20"])
    return root


def test_evaluate_writes_full_ranking_metrics(trained_root, capsys):
    main(["evaluate", "--tenant", TENANT, "--root", str(trained_root)])
    out = capsys.readouterr().out
    assert "recall@10" in out and "ndcg@10" in out
    evaluation = json.loads(next((trained_root / TENANT / "models").glob("v*/evaluation.json")).read_text())
    assert set(evaluation) >= {"popularity", "lightgcn", "sasrec_lightgcn", "sasrec_lightgcn+rerank"}
    assert evaluation["sasrec_lightgcn"]["test"]["num_users"] == 943


def test_serve_detach_on_chosen_ports_status_recommend_then_stop(trained_root):
    from tapestry.serving.status import listening_addresses
    from tapestry.serving.triton_server import free_ports

    http, grpc, metrics = free_ports(3)
    started = tapestry("serve", "--detach", "--http-port", str(http), "--grpc-port", str(grpc),
                       "--metrics-port", str(metrics), root=trained_root)
    assert f"HTTP 127.0.0.1:{http}, gRPC 127.0.0.1:{grpc}, metrics 127.0.0.1:{metrics}" in started.stdout
    state = trained_root / TENANT / "serve.json"
    try:
        for port in (http, grpc, metrics):  # the ports asked for, on loopback only (the default --host)
            assert listening_addresses(port) == ["127.0.0.1"]
        [status] = json.loads(tapestry("status", "--json", root=trained_root).stdout)
        assert status["tenant"] == TENANT and status["running"] and status["host"] == "127.0.0.1"
        assert (status["http_port"], status["grpc_port"], status["metrics_port"]) == (http, grpc, metrics)
        assert status["export_version"] == "v0001" and status["served_model"] == "sasrec_lightgcn"
        assert status["live"] and status["ready"] and status["model_ready"] and status["inference"] == "ok"
        assert status["pid"] == json.loads(state.read_text())["pid"]
        text = tapestry("status", root=trained_root).stdout
        assert f"tenant {TENANT}: pid {status['pid']}" in text and f"http {http} on 127.0.0.1" in text
        assert "inference ok" in text
        again = tapestry("serve", "--detach", root=trained_root, check=False)
        assert again.returncode != 0 and f"a server for tenant {TENANT} already runs" in again.stderr

        http_rec = tapestry("recommend", "--user", "1", "-k", "5", root=trained_root)
        grpc_rec = tapestry("recommend", "--user", "1", "-k", "5", "--protocol", "grpc", root=trained_root)
        assert "top 5 for user 1 (personalized, via Triton http)" in http_rec.stdout
        assert http_rec.stdout.splitlines()[1:] == grpc_rec.stdout.splitlines()[1:]
        cold = tapestry("recommend", "--user", "nobody", "-k", "3", root=trained_root)
        assert "(popularity," in cold.stdout
        bad = tapestry("recommend", "--user", "1", "-k", "999", root=trained_root, check=False)
        assert bad.returncode != 0 and "K must be between 1 and 20" in bad.stderr
    finally:
        stopped = tapestry("stop", root=trained_root)
    assert "stopped" in stopped.stdout and not state.exists()
    assert all(listening_addresses(port) == [] for port in (http, grpc, metrics))  # stop returns once it is down
    assert "no server running" in tapestry("status", root=trained_root).stdout
    after = tapestry("recommend", "--user", "1", root=trained_root, check=False)
    assert after.returncode != 0 and "no server running" in after.stderr


def test_detached_serve_passes_every_serving_option_to_its_child(tmp_path):
    from tapestry.cli import build_parser, serve_child_command

    args = build_parser().parse_args(["serve", "--tenant", TENANT, "--root", str(tmp_path), "--detach", "--host",
                                      "0.0.0.0", "--http-port", "8100", "--grpc-port", "8101", "--metrics-port",
                                      "8102", "--timeout", "30"])
    cmd = serve_child_command(args)
    assert cmd[:4] == [sys.executable, "-m", "tapestry.cli", "serve"] and "--detach" not in cmd
    options = dict(zip(cmd[4::2], cmd[5::2]))
    assert options == {"--tenant": TENANT, "--host": "0.0.0.0", "--timeout": "30.0", "--root": str(tmp_path),
                       "--http-port": "8100", "--grpc-port": "8101", "--metrics-port": "8102"}


def test_serve_refuses_bad_ports_before_starting_anything(tmp_path):
    bad = tapestry("serve", "--http-port", "70000", root=tmp_path, check=False)
    assert bad.returncode != 0 and "70000 is not a TCP port" in bad.stderr
    same = tapestry("serve", "--http-port", "8100", "--grpc-port", "8100", root=tmp_path, check=False)
    assert same.returncode != 0 and "must differ" in same.stderr


def test_status_and_stop_with_a_stale_state_file(tmp_path):
    """kill -9 leaves serve.json behind; its pid may since belong to another process, which is never signalled."""
    (tmp_path / TENANT).mkdir()
    (tmp_path / TENANT / "serve.json").write_text(json.dumps({"pid": 1, "pid_start": -1, "http_url": "x:1"}))
    status = tapestry("status", root=tmp_path)
    assert f"tenant {TENANT}: not running (stale state, pid 1" in status.stdout
    stopped = tapestry("stop", root=tmp_path)
    assert "removed a stale serve.json" in stopped.stdout and not (tmp_path / TENANT / "serve.json").exists()


def test_missing_stage_names_the_command_to_run(tmp_path):
    result = tapestry("train", root=tmp_path, check=False)
    assert result.returncode != 0 and "tapestry etl --tenant cli100k" in result.stderr


def _head_copy(src_dir, dst_dir, names, lines=300):
    """The first `lines` users of each named .xz file (user-per-line formats), as a small data set."""
    import lzma

    dst_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        with lzma.open(src_dir / name, "rt") as f:
            # A JSON side table (one line) is copied whole; user-per-line files are cut after `lines` users.
            head = f.readlines() if ".json" in name else [next(f) for _ in range(lines)]
        with lzma.open(dst_dir / name, "wt") as f:
            f.writelines(head)


@pytest.mark.parametrize("dataset, folder, files, models, k", [
    ("gowalla", "gowalla-lightgcn", ["train.txt.xz", "test.txt.xz"], "popularity,lightgcn", 20),
    ("beauty", "s3rec-sequential", ["Beauty.txt.xz", "Beauty_item2attributes.json.xz"],
     "popularity,lightgcn,sasrec_lightgcn", 10),
])
def test_standard_protocol_data_sets_run_from_the_cli(tmp_path, capsys, dataset, folder, files, models, k):
    """ETL -> train -> evaluate on (the first users of) Gowalla's fixed split and Amazon Beauty's sequences."""
    from tapestry.config import datasets_dir

    src = datasets_dir() / folder
    if not (src / files[0]).exists():
        pytest.skip(f"{src} not on this machine")
    _head_copy(src, tmp_path / "data", files)
    tenant = ["--tenant", dataset, "--root", str(tmp_path / "art")]
    main(["etl", *tenant, "--dataset", dataset, "--data-dir", str(tmp_path / "data")])
    main(["train", *tenant, "--quick", "--models", models])
    main(["evaluate", *tenant])
    out = capsys.readouterr().out
    assert f"ndcg@{k}" in out and "cold items" in out
    evaluation = json.loads(next((tmp_path / "art" / dataset / "models").glob("v*/evaluation.json")).read_text())
    assert set(evaluation) >= set(models.split(","))
    for name in models.split(","):
        assert evaluation[name]["test"]["num_users"] == 300
        assert set(evaluation[name]["slices"]) == {"cold_items", "cold_users"}
