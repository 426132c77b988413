"""Export writes what explanations and rules read (item_facts.npz), stores a tenant's rules.json after checking it
against the items, and refuses bad rules before writing a version."""
import json
import shutil

import numpy as np
import polars as pl
import pytest

from tapestry.artifacts import latest_version
from tapestry.config import TrainConfig
from tapestry.ensembles import run_export
from tapestry.serving.item_facts import ItemFacts
from tapestry.serving.pipeline import RecommendPipeline
from tapestry.serving.rules import RULES_FILE, Rules, RulesError
from tapestry.training.pipeline import run_train

QUIET = {"log": lambda *a, **k: None}


@pytest.fixture(scope="module")
def root(tiny_etl, tmp_path_factory):
    root = tmp_path_factory.mktemp("rules-root")
    shutil.copytree(tiny_etl, root / "tiny" / "etl" / tiny_etl.name)
    run_train("tiny", root, TrainConfig.smoke(models=("popularity", "two_tower")), **QUIET)
    return root


def test_export_writes_item_facts_and_no_rules_by_default(root, tiny_etl):
    export = run_export("tiny", root, max_k=20, **QUIET)
    facts = ItemFacts.load(export.artifact_dir)
    events = pl.read_parquet(tiny_etl / "events.parquet")
    assert facts.num_items == json.loads((export.artifact_dir / "manifest.json").read_text())["num_items"]
    assert facts.data_end == events["timestamp"].max()
    first = events.group_by("item_idx").agg(pl.col("timestamp").min()).sort("item_idx")
    assert facts.first_seen[first["item_idx"].to_numpy()].tolist() == first["timestamp"].to_list()
    assert {n.partition("=")[0] for n in facts.entity_names} == set(
        pl.read_parquet(tiny_etl / "item_entities.parquet")["entity_type"].unique().to_list())
    np.testing.assert_allclose(np.linalg.norm(facts.vectors[1:], axis=1), 1.0, rtol=1e-5)
    assert not (export.artifact_dir / RULES_FILE).exists()


def test_export_stores_checked_rules_that_the_served_stages_apply(root, tmp_path):
    genre = ItemFacts.load(latest_version("tiny", "export", root) / "artifacts").entity_types()[0]
    (tmp_path / "rules.json").write_text(json.dumps({"max_per": {genre: 1}, "mmr_weight": 0.3}))
    export = run_export("tiny", root, max_k=20, rules=tmp_path / "rules.json", **QUIET)
    assert Rules.for_export(export.artifact_dir) == Rules(max_per={genre: 1}, mmr_weight=0.3)
    stage = RecommendPipeline.from_artifacts(export.artifact_dir).stages[-1]
    assert stage.rules is not None and stage.rules.rules.mmr_weight == 0.3


@pytest.mark.parametrize("rules, message", [
    ({"max_per": {"brand": 2}}, r"entity type\(s\) \['brand'\]"),
    ({"mmr_weight": 2}, "between 0 and 1"),
])
def test_bad_rules_are_refused_before_a_version_is_written(root, tmp_path, rules, message):
    before = latest_version("tiny", "export", root)
    (tmp_path / "rules.json").write_text(json.dumps(rules))
    with pytest.raises(RulesError, match=message):
        run_export("tiny", root, max_k=20, rules=tmp_path / "rules.json", **QUIET)
    assert latest_version("tiny", "export", root) == before


def test_cli_export_reports_bad_rules_as_a_message(root, tmp_path):
    from tapestry.cli import main

    (tmp_path / "rules.json").write_text('{"max_per": {"genre": 2}, "mmr": 0.3}')
    with pytest.raises(SystemExit, match=r"tapestry export: error: .*unknown key\(s\) \['mmr'\]"):
        main(["export", "--tenant", "tiny", "--root", str(root), "--rules", str(tmp_path / "rules.json")])
