"""Serving tiers: how much of the pipeline a tenant's requests run, chosen per tenant, served by the same server.

    retrieval   feature_lookup -> user_encoder -> retrieval -> filter -> top K in retrieval order (no reranker)
    feature     ... -> filter -> the feature reranker (rerank.npz, in every export)
    full        ... -> filter -> the DLRM or fusion reranker the export has (manifest "reranker")

A tier is the export's ensemble with another rank stage in the rerank step's place; the other stages and every
artifact are the same, so a tier changes without retraining. The export's richest tier keeps the template's
`rerank` model (an export that chose no tier is exactly what it was); a lower tier's rank stage is `rerank_<tier>`,
a copy of the rerank model's config (same inputs and outputs, so the ensemble's tensors are unchanged) whose
model.py runs FeatureRank or RetrievalRank below. An export holds only the rank stage its tier uses: a
single-tenant server loads every model of the export's repository.

The tier is recorded in the manifest ("tier"; absent: the richest). `tapestry export --tier T` sets it;
`tapestry tier set --tenant t --tier T` writes a new export version from the current one (artifacts hard-linked,
manifest and ensemble rewritten, all atomically through tapestry.artifacts.new_version) and, when a multi-tenant
server serves the tenant, hot-swaps to it (tapestry.serving.model_control.swap; `tapestry rollback` undoes it).
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from tapestry.artifacts import atomic_write_json, atomic_write_text, new_version, read_json
from tapestry.inference.rerankers import Reranker, load_reranker
from tapestry.serving.rerank import Rerank
from tapestry.serving.tenant_repository import ENSEMBLE, export_path, read_config

TIERS = ("retrieval", "feature", "full")
RANK_STAGE = "rerank"   # the template's rank model: the manifest's reranker


class TierError(ValueError):
    """A tier the export cannot serve, or an unknown one; nothing was written."""


class RetrievalOrder:
    """The retrieval tier's "reranker": each candidate's retrieval score, so the rerank stage's stable sort keeps the
    filtered list's order (retrieval's max-sim order; popularity for a cold user). Follows the reranker protocol
    (tapestry.inference.rerankers) so that input checks, ids, titles and STRATEGY stay the rerank stage's code."""

    ordered_history = False

    def __init__(self, num_user_attrs: int):
        self.num_user_attrs = int(num_user_attrs)

    def features(self, candidates: np.ndarray, retrieval_scores: np.ndarray, history: np.ndarray,
                 user_attrs: np.ndarray) -> np.ndarray:
        return retrieval_scores

    def score_many(self, features: list[np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(f, dtype=np.float32) for f in features]


class FeatureRank(Rerank):
    """The feature tier's rank stage: the feature reranker, whatever ranker the export also has."""

    name = "rerank_feature"

    @classmethod
    def reranker_for(cls, manifest: dict, artifact_dir: Path) -> Reranker:
        return load_reranker("feature", artifact_dir)


class RetrievalRank(Rerank):
    """The retrieval tier's rank stage: the top K of the filtered candidates, in retrieval order."""

    name = "rerank_retrieval"

    @classmethod
    def reranker_for(cls, manifest: dict, artifact_dir: Path) -> Reranker:
        return RetrievalOrder(manifest["num_user_attrs"])


RANK_CLASSES: dict[str, type[Rerank]] = {RANK_STAGE: Rerank, FeatureRank.name: FeatureRank,
                                         RetrievalRank.name: RetrievalRank}


def supported_tiers(reranker: str) -> tuple[str, ...]:
    """The tiers an export whose manifest names ``reranker`` can serve: `full` needs a ranker beyond the feature one."""
    return TIERS if reranker != "feature" else TIERS[:2]


def richest_tier(reranker: str) -> str:
    return supported_tiers(reranker)[-1]


def check_tier(tier: str | None, reranker: str) -> str:
    """``tier`` (None: the richest) if an export with ``reranker`` can serve it, else TierError saying why."""
    if tier is None:
        return richest_tier(reranker)
    if tier not in TIERS:
        raise TierError(f"unknown tier {tier!r}; tiers: {', '.join(TIERS)}")
    if tier not in supported_tiers(reranker):
        raise TierError(f"tier {tier!r} needs a DLRM or fusion reranker, and this export serves the feature reranker "
                        "only: train one (`tapestry train --models ...,dlrm` or fusion) and export again, or choose "
                        f"tier {' or '.join(repr(t) for t in supported_tiers(reranker))}")
    return tier


def manifest_tier(manifest: dict) -> str:
    """The tier an export serves (exports written before tiers: the richest)."""
    return check_tier(manifest.get("tier"), manifest.get("reranker", "feature"))


def rank_stage_name(tier: str, reranker: str) -> str:
    """The rank model the ensemble's rerank step names for ``tier``: the template's for the richest tier."""
    tier = check_tier(tier, reranker)
    return RANK_STAGE if tier == richest_tier(reranker) else f"{RANK_STAGE}_{tier}"


def rank_stage_class(manifest: dict, tier: str | None = None) -> type[Rerank]:
    """The rank stage class for ``tier`` (default: the manifest's), for the in-process pipeline."""
    reranker = manifest.get("reranker", "feature")
    return RANK_CLASSES[rank_stage_name(tier or manifest_tier(manifest), reranker)]


def _model_py(stage: type[Rerank]) -> str:
    return (f'"""Thin Triton adapter of a serving tier\'s rank stage (written by tapestry.serving.tiers); the logic '
            f'is {stage.__module__}.{stage.__qualname__}."""\n'
            f"from {stage.__module__} import {stage.__qualname__}\n"
            "from tapestry.serving.triton_adapter import triton_model\n\n"
            f"TritonPythonModel = triton_model({stage.__qualname__})\n")


def apply_tier(model_repository: Path, tier: str, reranker: str) -> str:
    """Point an export's ensemble (in ``model_repository``, not yet served: an export being written) at ``tier``'s
    rank stage, replacing the rank model folder it named by one for the tier. Returns the rank model's name."""
    from google.protobuf import text_format

    repo = Path(model_repository)
    ensemble = read_config(repo / ENSEMBLE / "config.pbtxt")
    steps = [s for s in ensemble.ensemble_scheduling.step if s.model_name in RANK_CLASSES]
    if len(steps) != 1:
        raise TierError(f"{repo}: the ensemble has no single rank step ({[s.model_name for s in steps]})")
    step, target = steps[0], rank_stage_name(tier, reranker)
    if step.model_name == target:
        return target
    source = repo / step.model_name
    config = read_config(source / "config.pbtxt")
    config.name = target
    folder = repo / target
    shutil.rmtree(folder, ignore_errors=True)
    for version in (p for p in source.iterdir() if p.is_dir() and p.name.isdigit()):
        atomic_write_text(folder / version.name / "model.py", _model_py(RANK_CLASSES[target]))
    atomic_write_text(folder / "config.pbtxt", f"# {target}: the rank stage of tier {tier} (tapestry.serving.tiers; "
                      "the rerank model's config, renamed)\n" + text_format.MessageToString(config))
    shutil.rmtree(source)
    step.model_name = target
    atomic_write_text(repo / ENSEMBLE / "config.pbtxt", f"# {ENSEMBLE}: tier {tier} (tapestry.serving.tiers)\n"
                      + text_format.MessageToString(ensemble))
    return target


def _link_or_copy(src: str, dst: str) -> str:
    """Artifacts are never rewritten in place (tapestry.artifacts writes by rename), so a hard link is a safe copy."""
    try:
        os.link(src, dst)
    except OSError:   # another file system, or links not allowed
        shutil.copy2(src, dst)
    return dst


def set_tier(tenant: str, tier: str, root: Path | None = None, version: str | None = None) -> Path:
    """A new export version of ``tenant`` serving ``tier``, made from its latest export (or ``version``): the same
    artifacts and stages, another rank stage. Returns its path (the source's when it already serves ``tier``: nothing
    is written); serving it is the caller's choice (a swap)."""
    source = export_path(tenant, root, version)
    manifest = read_json(source / "artifacts" / "manifest.json")
    tier = check_tier(tier, manifest.get("reranker", "feature"))   # before anything is written
    if tier == manifest_tier(manifest):
        return source
    with new_version(tenant, "export", root) as v:
        shutil.copytree(source / "artifacts", v.tmp / "artifacts", copy_function=_link_or_copy,
                        ignore=shutil.ignore_patterns("manifest.json", "__pycache__"))
        atomic_write_json(v.tmp / "artifacts" / "manifest.json", {
            **manifest, "tier": tier, "tier_from": source.name,
            "tier_set_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        shutil.copytree(source / "model_repository", v.tmp / "model_repository",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        apply_tier(v.tmp / "model_repository", tier, manifest.get("reranker", "feature"))
    return v.path
