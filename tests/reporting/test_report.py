"""`tapestry report`: a self-contained HTML page that a real browser renders to something other than a blank page."""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tapestry.cli import main
from tapestry.config import TrainConfig
from tapestry.reporting import ablation_rows, build_report, format_ablation_table
from tapestry.training.pipeline import run_train

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_SEQ = dict(hidden_dim=16, num_blocks=1, num_heads=1, max_len=20, epochs=3)
CFG = TrainConfig(models=("popularity", "lightgcn", "sasrec"),
                  params={"lightgcn": dict(embedding_dim=16, num_layers=1, epochs=3), "sasrec": _SEQ},
                  serve="", device="cpu")


@pytest.fixture(scope="module")
def trained_root(tiny_etl, tmp_path_factory):
    root = tiny_etl.parents[2]
    run_train("tiny", root=root, cfg=CFG, log=lambda *_: None)
    return root


@pytest.fixture(scope="module")
def latency_json(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    samples = {name: list(rng.gamma(4, 0.5 * (i + 1), 200)) for i, name in enumerate(("in_process", "triton_http"))}
    results = {n: {"requests": 200, "p50_ms": float(np.median(s)), "p99_ms": float(np.percentile(s, 99)),
                   "p50_ratio_to_in_process": 1.0, "samples_ms": s} for n, s in samples.items()}
    path = tmp_path_factory.mktemp("bench") / "serving_latency-tiny.json"
    path.write_text(json.dumps({"benchmark": "serving_latency", "created_at": "now", "results": results}))
    return path


def test_report_is_self_contained_and_has_every_section(trained_root, latency_json):
    text = build_report("tiny", trained_root, latency=latency_json, leaderboard=[])
    for section in ("Data", "Metrics per model and slice", "Training loss", "Serving latency"):
        assert f"<h2>{section}" in text
    for model in CFG.models:
        assert f"<td class=l>{model}</td>" in text
    # Self-contained: every image is inlined and decodes to a PNG; no file or network reference remains.
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == 3                        # metrics plot, loss curves, latency histograms
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert not re.search(r'(src|href)="(?!data:)', text)


def test_the_leaderboard_section_shows_each_path_against_the_baseline(trained_root, tmp_path):
    stat = lambda m: {"mean": m, "ci95": 0.002, "per_seed": [m] * 3}  # noqa: E731
    board = {"dataset": "ml-1m", "seeds": [0, 1, 2], "served": "sasrec+rerank", "baseline": "two_tower+rerank",
             "served_chosen_on": "validation",
             "paths": {"sasrec+rerank": {"ndcg@10": stat(0.2), "recall@10": stat(0.3)},
                       "two_tower+rerank": {"ndcg@10": stat(0.16), "recall@10": stat(0.28)}},
             "paired": {"sasrec+rerank": {"relative": 0.25, "p_value": 0.0004}}}
    path = tmp_path / "leaderboard-ml-1m.json"
    path.write_text(json.dumps(board))
    text = build_report("tiny", trained_root, leaderboard=[path])
    assert "<h2>Leaderboard (multi-seed)" in text and "served path <b>sasrec+rerank</b>" in text
    row = re.search(r"<tr><td class=l>\* sasrec\+rerank</td>(.*?)</tr>", text).group(1)
    assert "0.2000 ± 0.0020" in row and "+25.0%" in row and "0.0004" in row


def test_missing_benchmarks_are_said_not_hidden(trained_root, tmp_path):
    text = build_report("tiny", trained_root, latency=tmp_path / "absent.json")
    assert "No latency benchmark for this tenant" in text


def test_ablation_rows_follow_the_metrics(trained_root):
    metrics = json.loads(next((trained_root / "tiny" / "models").glob("v*/metrics.json")).read_text())
    rows = ablation_rows(metrics, "tiny", "cpu")
    assert {(r["model"], r["slice"]) for r in rows} == {
        (m, s) for m in CFG.models for s in ("overall", "cold_items", "cold_users")}
    overall = {r["model"]: r for r in rows if r["slice"] == "overall"}
    assert overall["sasrec"]["ndcg"] == metrics["sasrec"]["test"]["ndcg@10"]
    assert "sasrec" in format_ablation_table(rows)


def test_cli_writes_the_report_atomically(trained_root, capsys):
    main(["report", "--tenant", "tiny", "--root", str(trained_root)])
    out = Path(capsys.readouterr().out.split("[report] ")[1].strip())
    assert out.parent == trained_root / "tiny" / "reports" and out.name.startswith("report-v")
    assert out.read_text().startswith("<!doctype html>")
    assert not list(out.parent.glob(".*"))        # no temp file or plot left behind


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_headless_chromium_renders_a_non_blank_page(trained_root, latency_json, tmp_path):
    import matplotlib.image as mpimg

    page = tmp_path / "report.html"
    page.write_text(build_report("tiny", trained_root, latency=latency_json))
    shot = tmp_path / "shot.png"
    # The flags keep Chromium off the (closed) network and let it run as root in CI containers.
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1200,1800",
                    f"--screenshot={shot}", page.as_uri()], check=True, timeout=120, capture_output=True)
    pixels = mpimg.imread(shot)[..., :3]
    assert pixels.shape[:2] == (1800, 1200)
    non_white = (pixels.min(axis=-1) < 0.9).mean()
    assert non_white > 0.03, f"only {non_white:.1%} of the screenshot is not white"
    assert pixels.std() > 0.05
