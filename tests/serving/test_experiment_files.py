"""An A/B experiment's repository files and the supervisor's view of it, without a server."""
import json
import shutil
from pathlib import Path

import pytest

from tapestry.serving import experiment as ex
from tapestry.serving.supervisor import structural_fault
from tapestry.serving.tenant_repository import read_config

TEMPLATES = Path(__file__).resolve().parents[2] / "triton_models"
TENANT = "acme"
STAGES = ("feature_lookup", "user_encoder", "retrieval", "filter", "rerank")


@pytest.fixture
def export(tmp_path):
    path = tmp_path / TENANT / "export" / "v0001"
    shutil.copytree(TEMPLATES, path / "model_repository", ignore=shutil.ignore_patterns("__pycache__"))
    return path


def test_the_routed_ensemble_has_one_step_the_router_and_an_arm_output(tmp_path, export):
    repo = tmp_path / "repo"
    spec = {"experiment": "exp1", "arms": ["control", "treatment"], "percents": [50, 50], "tenant": TENANT,
            "ensembles": {"control": "acme__recommend__control", "treatment": "acme__recommend__treatment"},
            "exposure_log": str(tmp_path / "exposures.jsonl")}
    router = ex.write_router(repo, TENANT, export, spec)
    ensemble = ex.write_routed_ensemble(repo, TENANT, export, router)
    arm = ex.write_arm_ensemble(repo, TENANT, "treatment", export)
    assert (router, ensemble, arm) == ("acme__router__exp1", "acme__recommend", "acme__recommend__treatment")
    exported = read_config(export / "model_repository" / "recommend" / "config.pbtxt")
    r, e = read_config(repo / router / "config.pbtxt"), read_config(repo / ensemble / "config.pbtxt")
    assert r.backend == "python" and r.max_batch_size == exported.max_batch_size
    assert [i.name for i in r.input] == [i.name for i in e.input] == [i.name for i in exported.input]
    assert [o.name for o in r.output] == [o.name for o in e.output] == [o.name for o in exported.output] + ["ARM"]
    assert json.loads(r.parameters["EXPERIMENT"].string_value) == spec
    (step,) = e.ensemble_scheduling.step
    assert step.model_name == router and dict(step.output_map)["ARM"] == "ARM"
    assert "tapestry.serving.router" in (repo / router / "1" / "model.py").read_text()
    a = read_config(repo / arm / "config.pbtxt")
    assert [s.model_name for s in a.ensemble_scheduling.step] == [f"acme__{s}__v0001" for s in STAGES]


def test_arms_parse():
    assert ex.parse_arm("control=v0001:50") == ("control", "v0001", 50.0)
    assert ex.parse_arm("b=latest:33.5") == ("b", "latest", 33.5)
    with pytest.raises(ValueError, match="NAME=VERSION:PERCENT"):
        ex.parse_arm("control:50")


def test_the_supervisor_watches_every_arm_and_the_router():
    stages = [f"acme__{s}__{v}" for v in ("v0001", "v0002") for s in STAGES] + ["acme__router__exp1"]
    arms = ["acme__recommend__control", "acme__recommend__treatment"]
    info = {"model_name": "acme__recommend", "stage_models": stages, "arm_ensembles": arms}
    ready = set(stages) | set(arms) | {"acme__recommend"}
    stubs = {m: [1] for m in stages}
    assert structural_fault(TENANT, info, ready, stubs) is None   # an arm ensemble has no process: not a dead one
    fault = structural_fault(TENANT, info, ready - {arms[1]}, stubs)
    assert fault.kind == "unloaded" and fault.models == [arms[1]]
    fault = structural_fault(TENANT, info, ready, {m: p for m, p in stubs.items() if "router" not in m})
    assert fault.kind == "process_died" and fault.models == ["acme__router__exp1"]
