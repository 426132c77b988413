"""Serving tiers (tapestry.serving.tiers): the tier -> rank stage mapping, the ensemble an export gets for a tier,
the retrieval tier's rank stage, and `set_tier`'s new export. No Triton, no training: the templates and a manifest."""
import json
import shutil

import numpy as np
import pytest

from tapestry.cli_tiers import TIERS as CLI_TIERS
from tapestry.config import PROJECT_ROOT
from tapestry.serving import tiers
from tapestry.serving.rerank import Rerank
from tapestry.serving.stage import USER_COLD, USER_KNOWN, as_str, bytes_array
from tapestry.serving.tenant_repository import exported_models, read_config

ITEM_IDS = ["", "a", "b", "c", "d", "e"]
STEPS = ["feature_lookup", "user_encoder", "retrieval", "filter"]


def test_tiers_an_export_can_serve_depend_on_its_reranker():
    assert CLI_TIERS == tiers.TIERS == ("retrieval", "feature", "full")
    assert tiers.supported_tiers("feature") == ("retrieval", "feature")
    for ranker in ("dlrm", "fusion"):
        assert tiers.supported_tiers(ranker) == tiers.TIERS
    assert tiers.check_tier(None, "feature") == "feature" and tiers.check_tier(None, "fusion") == "full"
    with pytest.raises(tiers.TierError, match="needs a DLRM or fusion reranker"):
        tiers.check_tier("full", "feature")
    with pytest.raises(tiers.TierError, match="unknown tier 'gold'"):
        tiers.check_tier("gold", "dlrm")


@pytest.mark.parametrize("tier, reranker, stage, cls", [
    ("full", "dlrm", "rerank", Rerank),                        # the richest tier keeps the template's rank model
    ("feature", "dlrm", "rerank_feature", tiers.FeatureRank),
    ("retrieval", "fusion", "rerank_retrieval", tiers.RetrievalRank),
    ("feature", "feature", "rerank", Rerank),                  # the richest a feature-only export has
    ("retrieval", "feature", "rerank_retrieval", tiers.RetrievalRank),
])
def test_each_tier_names_one_rank_stage(tier, reranker, stage, cls):
    assert tiers.rank_stage_name(tier, reranker) == stage
    manifest = {"reranker": reranker, "tier": tier}
    assert tiers.rank_stage_class(manifest) is cls
    assert tiers.rank_stage_class({"reranker": reranker}, tier) is cls
    assert cls.name == stage


def test_a_manifest_without_a_tier_serves_the_richest():
    assert tiers.manifest_tier({"reranker": "dlrm"}) == "full"
    assert tiers.manifest_tier({}) == "feature"
    assert tiers.rank_stage_class({"reranker": "fusion"}) is Rerank


def _repository(tmp_path):
    repo = tmp_path / "model_repository"
    shutil.copytree(PROJECT_ROOT / "triton_models", repo, ignore=shutil.ignore_patterns("__pycache__"))
    return repo


@pytest.mark.parametrize("tier, stage", [("retrieval", "rerank_retrieval"), ("feature", "rerank_feature"),
                                         ("full", "rerank")])
def test_apply_tier_points_the_ensemble_at_the_tiers_rank_stage_only(tmp_path, tier, stage):
    repo = _repository(tmp_path)
    rerank_inputs = [i.name for i in read_config(repo / "rerank" / "config.pbtxt").input]
    assert tiers.apply_tier(repo, tier, "dlrm") == stage
    _, steps = exported_models(tmp_path)
    assert steps == STEPS + [stage]
    # Only the tier's rank model stays (a single-tenant server loads every model of the repository).
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == sorted(STEPS + ["recommend", stage])
    config = read_config(repo / stage / "config.pbtxt")
    assert config.name == stage and [i.name for i in config.input] == rerank_inputs
    code = (repo / stage / "1" / "model.py").read_text()
    assert f"triton_model({tiers.RANK_CLASSES[stage].__name__})" in code
    namespace = {}
    exec(compile(code.replace("triton_model(", "(lambda c: c)("), "model.py", "exec"), namespace)
    assert namespace["TritonPythonModel"] is tiers.RANK_CLASSES[stage]
    # And back: any tier's repository becomes any other's.
    assert tiers.apply_tier(repo, "full", "dlrm") == "rerank"
    assert exported_models(tmp_path)[1] == STEPS + ["rerank"]
    assert "from tapestry.serving.rerank import Rerank" in (repo / "rerank" / "1" / "model.py").read_text()


def test_retrieval_rank_keeps_the_filtered_order_and_the_rerank_stages_checks():
    stage = tiers.RetrievalRank("acme", tiers.RetrievalOrder(1), ITEM_IDS, ["", "A", "B", "C", "D", "E"], max_k=3,
                                max_len=4)
    inputs = {"TENANT": bytes_array(["acme"]), "FILTERED": np.array([5, 2, 3]),
              "FILTERED_SCORES": np.array([3.0, 2.0, 2.0], np.float32), "HISTORY": np.array([0, 4]),
              "SEEN": np.array([0, 4]), "USER_ATTRS": np.zeros(1, np.float32), "USER_KIND": np.array([USER_KNOWN],
                                                                                                     np.int32),
              "K": np.array([3], np.int32)}
    out = stage(inputs)
    assert [as_str(x) for x in out["ITEM_IDS"]] == ["e", "b", "c"]   # retrieval order, ties as retrieved
    assert out["SCORES"].tolist() == [3.0, 2.0, 2.0] and [as_str(x) for x in out["TITLES"]] == ["E", "B", "C"]
    cold = stage({**inputs, "USER_KIND": np.array([USER_COLD], np.int32), "K": np.array([1], np.int32)})
    assert as_str(cold["STRATEGY"][0]) == "popularity" and [as_str(x) for x in cold["ITEM_IDS"]] == ["e"]
    with pytest.raises(ValueError, match="tenant"):
        stage({**inputs, "TENANT": bytes_array(["globex"])})


def _export(root, tenant="acme", reranker="feature"):
    export = root / tenant / "export" / "v0001"
    _repository(export)
    (export / "artifacts").mkdir(parents=True)
    (export / "artifacts" / "items.faiss").write_bytes(b"index")
    (export / "artifacts" / "manifest.json").write_text(json.dumps({"tenant": tenant, "reranker": reranker}))
    (root / tenant / "export" / "LATEST").write_text("v0001\n")
    return export


def test_set_tier_writes_a_new_export_with_the_same_artifacts(tmp_path):
    source = _export(tmp_path)
    new = tiers.set_tier("acme", "retrieval", tmp_path)
    assert new.name == "v0002" and (tmp_path / "acme" / "export" / "LATEST").read_text().strip() == "v0002"
    manifest = json.loads((new / "artifacts" / "manifest.json").read_text())
    assert manifest["tier"] == "retrieval" and manifest["tier_from"] == "v0001" and manifest["reranker"] == "feature"
    assert (new / "artifacts" / "items.faiss").stat().st_ino == (source / "artifacts" / "items.faiss").stat().st_ino
    assert exported_models(new)[1] == STEPS + ["rerank_retrieval"]
    assert exported_models(source)[1] == STEPS + ["rerank"], "the source export is left as it was"
    assert "tier" not in json.loads((source / "artifacts" / "manifest.json").read_text())
    # Already that tier: nothing written.
    assert tiers.set_tier("acme", "retrieval", tmp_path) == new
    assert tiers.set_tier("acme", "feature", tmp_path).name == "v0003"


def test_set_tier_refuses_a_tier_the_export_cannot_serve_and_writes_nothing(tmp_path):
    _export(tmp_path)
    with pytest.raises(tiers.TierError, match="needs a DLRM or fusion reranker"):
        tiers.set_tier("acme", "full", tmp_path)
    assert sorted(p.name for p in (tmp_path / "acme" / "export").iterdir()) == ["LATEST", "v0001"]
