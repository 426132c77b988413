"""The Triton templates in triton_models/ agree with the stage code they wrap and with the ensemble wiring."""
import re
from pathlib import Path

import pytest

from tapestry.ensembles.export import TEMPLATES
from tapestry.serving.pipeline import STAGE_ORDER

TENSOR = re.compile(r'name:\s*"(\w+)"\s*data_type:\s*(\w+)')


def _section(text: str, kind: str) -> list[str]:
    m = re.search(rf"^{kind} \[(.*?)^\]", text, re.S | re.M)
    return [name for name, _ in TENSOR.findall(m.group(1))] if m else []


@pytest.mark.parametrize("stage", STAGE_ORDER, ids=lambda s: s.name)
def test_config_matches_stage(stage):
    text = (TEMPLATES / stage.name / "config.pbtxt").read_text()
    assert f'name: "{stage.name}"' in text and 'backend: "python"' in text
    assert _section(text, "input") == list(stage.inputs)
    assert _section(text, "output") == list(stage.outputs)
    model_py = (TEMPLATES / stage.name / "1" / "model.py").read_text()
    assert f"triton_model({stage.__name__})" in model_py
    assert len(model_py.splitlines()) < 10, "model.py files stay thin adapters"


def test_ensemble_steps_are_in_pipeline_order_and_fully_wired():
    text = (TEMPLATES / "recommend" / "config.pbtxt").read_text()
    assert (TEMPLATES / "recommend" / "1").is_dir(), "an ensemble needs an (empty) version folder"
    steps = re.findall(r'model_name:\s*"(\w+)"', text)
    assert steps == [s.name for s in STAGE_ORDER]
    available = set(_section(text, "input"))
    for stage in STAGE_ORDER:
        missing = set(stage.inputs) - available
        assert not missing, f"{stage.name} needs {missing} before it runs"
        available |= set(stage.outputs)
    assert set(_section(text, "output")) <= available
    # Triton refuses an ensemble with a tensor that nothing consumes.
    consumed = set(_section(text, "output")).union(*(stage.inputs for stage in STAGE_ORDER))
    produced = set().union(*(stage.outputs for stage in STAGE_ORDER))
    assert produced <= consumed, f"unused tensors: {produced - consumed}"
