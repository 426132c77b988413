"""tapestry.reporting.monitor and `tapestry monitor`: drift, ANN recall, skew and quarantine rates on a tiny tenant."""
import json
import shutil

import numpy as np
import polars as pl
import pytest

from tapestry.cli import main
from tapestry.config import TrainConfig
from tapestry.ensembles import run_export
from tapestry.etl import run_etl
from tapestry.etl.synthetic import synthetic_tables
from tapestry.reporting import monitor as mon
from tapestry.training.pipeline import run_train

QUIET = {"log": lambda *a, **k: None}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("monitor")
    run_etl(synthetic_tables(num_users=60, num_items=40, seed=0), "mon", root, **QUIET)
    run_train("mon", root, TrainConfig.smoke(), **QUIET)
    run_export("mon", root, max_k=10, **QUIET)
    run_export("mon", root, max_k=10, **QUIET)   # the same models again: no drift at all
    return root


def test_a_rotation_is_no_drift_but_noise_is():
    rng = np.random.default_rng(0)
    old = rng.normal(size=(50, 8))
    rotation, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    same = mon.vector_drift(old, old @ rotation)
    assert same["mean_cosine_raw"] < 0.9 and same["mean_cosine_aligned"] == pytest.approx(1.0, abs=1e-6)
    assert same["neighbour_overlap_at_10"] == pytest.approx(1.0)
    noisy = mon.vector_drift(old, old @ rotation + rng.normal(scale=1.0, size=old.shape))
    assert noisy["mean_cosine_shift_aligned"] > 0.1 and noisy["neighbour_overlap_at_10"] < 0.8
    pop = mon.popularity_drift(np.arange(10.0), np.arange(10.0)[::-1], top=3)
    assert pop["spearman"] == pytest.approx(-1.0) and pop["top_3_overlap"] == 0.0


def test_monitor_on_two_exports_of_the_same_models(root, capsys):
    report = mon.monitor("mon", root, sample=30)
    drift = report["drift"]
    assert drift["exports"] == ["v0001", "v0002"] and drift["items_shared"] == drift["items_new"] > 0
    assert drift["vectors"]["mean_cosine_aligned"] == pytest.approx(1.0, abs=1e-5)
    assert drift["popularity"]["spearman"] == pytest.approx(1.0)
    assert report["ann_recall"]["queries"] == 30 and report["ann_recall"]["recall"] == pytest.approx(1.0)  # Flat
    skew = report["skew"]
    assert skew["known_to_store"] == 30 and skew["history_matches_offline"] == 1.0
    assert skew["events_newer_than_etl_per_user"] == 0.0 and skew["attrs_match_export"] == 1.0
    assert report["quarantine"]["etl"]["rate"] == 0.0 and report["quarantine"]["ingest"]["quarantined_lines"] == 0
    assert "no running `tapestry serve`" in report["live"]["note"]   # the live series: tests/integration/test_metrics
    main(["monitor", "--tenant", "mon", "--root", str(root), "--sample", "5", "--json"])
    assert json.loads(capsys.readouterr().out)["skew"]["users"] == 5
    main(["monitor", "--tenant", "mon", "--root", str(root), "--sample", "5"])
    text = capsys.readouterr().out
    assert "ann_recall" in text and "skew.history_matches_offline" not in text and "history_matches_offline" in text


def test_skew_sees_a_store_that_lost_events_and_counts_newer_ones_apart(root, tmp_path):
    art = tmp_path / "artifacts"
    shutil.copytree(root / "mon" / "export" / "v0002" / "artifacts", art)
    users = pl.read_parquet(art / "users.parquet")
    ids = users["user_id"].to_list()[:4]
    changed = users.with_columns(
        pl.when(pl.col("user_id") == ids[0]).then(pl.col("history").list.head(2))        # lost its newer events
        .when(pl.col("user_id") == ids[1]).then(pl.col("history").list.concat(pl.lit([5, 6])))  # 2 ingested since
        .otherwise(pl.col("history")).alias("history"))
    changed.write_parquet(art / "users.parquet")
    skew = mon.serving_skew(art, ids)
    assert skew["history_matches_offline"] == pytest.approx(3 / 4)
    assert skew["events_newer_than_etl_per_user"] == pytest.approx(2 / 4)


def test_quarantine_rates_of_etl_and_ingest(root, tmp_path):
    source = tmp_path / "events.csv"
    source.write_text("user_id,item_id,event_type,timestamp\n" + "u1,i1,view,1600000000\n" * 8)
    qdir = root / "mon" / "ingest"
    qdir.mkdir(exist_ok=True)
    (qdir / "quarantine.jsonl").write_text("".join(
        json.dumps({"source": str(source), "offset": i, "reason": r}) + "\n"
        for i, r in enumerate(["unknown_item", "unknown_item"])))
    try:
        q = mon.quarantine_rates("mon", root)
    finally:
        shutil.rmtree(qdir)
    assert q["ingest"] == {"quarantined_lines": 2, "by_reason": {"unknown_item": 2}, "source_lines": 8, "rate": 0.25}
    assert q["etl"]["input_rows"] > 0 and q["etl"]["quarantined_rows"] == 0


def test_the_report_page_has_the_monitoring_section(root):
    from tapestry.reporting.html import build_report

    page = build_report("mon", root, leaderboard=[])
    section = page[page.index("<h2>Monitoring</h2>"):]
    assert "export v0002" in section and "mean_cosine_aligned" in section and "history_matches_offline" in section
    assert "error" not in section
