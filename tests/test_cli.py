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


def test_serve_detach_recommend_over_both_protocols_then_stop(trained_root):
    started = tapestry("serve", "--detach", root=trained_root)
    assert "started in the background" in started.stdout
    state = trained_root / TENANT / "serve.json"
    try:
        http = tapestry("recommend", "--user", "1", "-k", "5", root=trained_root)
        grpc = tapestry("recommend", "--user", "1", "-k", "5", "--protocol", "grpc", root=trained_root)
        assert "top 5 for user 1 (personalized, via Triton http)" in http.stdout
        assert http.stdout.splitlines()[1:] == grpc.stdout.splitlines()[1:]
        cold = tapestry("recommend", "--user", "nobody", "-k", "3", root=trained_root)
        assert "(popularity," in cold.stdout
        bad = tapestry("recommend", "--user", "1", "-k", "999", root=trained_root, check=False)
        assert bad.returncode != 0 and "K must be between 1 and 20" in bad.stderr
    finally:
        tapestry("stop", root=trained_root)
    assert not state.exists()
    after = tapestry("recommend", "--user", "1", root=trained_root, check=False)
    assert after.returncode != 0 and "no server running" in after.stderr


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
