"""The ensemble, in process: the same stage objects, chained over one tensor namespace like the Triton ensemble.

Used by tests (Triton's answer must equal this one), by offline evaluation of the served path, and as a
no-server fallback.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tapestry.serving.client import RecommendationResult
from tapestry.serving.feature_lookup import FeatureLookup
from tapestry.serving.filtering import CandidateFilter
from tapestry.serving.multi_source import MultiSourceRetrieval
from tapestry.serving.rerank import Rerank
from tapestry.serving.retrieval import Retrieval
from tapestry.serving.stage import Stage, as_str, bytes_array, export_manifest
from tapestry.serving.tiers import rank_stage_class
from tapestry.serving.user_encoder import UserEncoder

STAGE_ORDER = (FeatureLookup, UserEncoder, Retrieval, CandidateFilter, Rerank)


def request_tensors(tenant: str, user_id: str, k: int, exclude_item_ids=(), recent_item_ids=None,
                    event_types=None) -> dict[str, np.ndarray]:
    """The ensemble's request; RECENT_ITEM_IDS and EVENT_TYPES (one type name per recent item) only when given
    (they are optional inputs)."""
    exclude = list(exclude_item_ids) or [""]
    out = {
        "TENANT": bytes_array([tenant]),
        "USER_ID": bytes_array([str(user_id)]),
        "K": np.array([k], dtype=np.int32),
        "EXCLUDE_ITEM_IDS": bytes_array(exclude),
    }
    if recent_item_ids is not None:
        out["RECENT_ITEM_IDS"] = bytes_array(list(recent_item_ids) or [""])
    if event_types is not None:
        out["EVENT_TYPES"] = bytes_array(list(event_types) or [""])
    return out


class RecommendPipeline:
    def __init__(self, stages: list[Stage]):
        self.stages = stages

    @classmethod
    def from_artifacts(cls, artifact_dir: Path, tier: str | None = None) -> "RecommendPipeline":
        """The export's stages; its serving tier's rank stage in the rerank step (``tier``: another tier's)."""
        manifest = export_manifest(Path(artifact_dir))
        # The export's rank stage for the tier, and multi-source retrieval when it has extra candidate sources.
        chosen = {Rerank: rank_stage_class(manifest, tier),
                  Retrieval: MultiSourceRetrieval if manifest.get("sources") else Retrieval}
        return cls([chosen.get(stage, stage).from_artifacts(Path(artifact_dir)) for stage in STAGE_ORDER])

    def run(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        env = dict(tensors)
        for stage in self.stages:
            env.update(stage({name: env[name] for name in stage.inputs if name in env}))
        return env

    def recommend(self, tenant: str, user_id: str, k: int = 10, exclude_item_ids=(),
                  recent_item_ids=None, event_types=None) -> RecommendationResult:
        out = self.run(request_tensors(tenant, user_id, k, exclude_item_ids, recent_item_ids, event_types))
        return RecommendationResult(
            item_ids=[as_str(x) for x in out["ITEM_IDS"]],
            scores=[float(x) for x in out["SCORES"]],
            titles=[as_str(x) for x in out["TITLES"]],
            strategy=as_str(out["STRATEGY"][0]),
            ignored_items=int(out["IGNORED_ITEMS"][0]),
            reasons=[as_str(x) for x in out.get("REASONS", [])],
        )
