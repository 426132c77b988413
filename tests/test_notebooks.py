"""The notebooks a new user opens first run top to bottom on ML-100K, executed by a real Jupyter kernel (nbclient)."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from tapestry.config import PROJECT_ROOT, datasets_dir

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = PROJECT_ROOT / "notebooks"


@pytest.fixture
def isolated_home(tmp_path, monkeypatch) -> Path:
    if not (datasets_dir() / "ml-100k" / "u.item").exists():
        pytest.skip("MovieLens-100K not found (set TAPESTRY_DATASETS)")
    # The kernel inherits this environment: the notebooks' artifacts land in the test's temp dir.
    monkeypatch.setenv("TAPESTRY_HOME", str(tmp_path / "artifacts"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return tmp_path / "artifacts"


def _run(name: str, cwd: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def _outputs(nb, kind: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == kind]


def test_etl_notebook(isolated_home, tmp_path):
    nb = _run("etl.ipynb", tmp_path)
    assert not _outputs(nb, "error")
    assert (isolated_home / "nb-etl" / "etl" / "v0001" / "quarantine.parquet").exists()
    text = "".join(str(o.get("data", {}).get("text/plain", "")) + o.get("text", "")
                   for o in _outputs(nb, "execute_result") + _outputs(nb, "stream"))
    for reason in ("missing_user_id", "missing_item_id", "bad_weight", "bad_timestamp", "unknown_event_type"):
        assert reason in text
    # the degree plot came back as an image
    assert any("image/png" in o.get("data", {}) for o in _outputs(nb, "display_data"))


def _cell_with(nb, code: str):
    [cell] = [c for c in nb.cells if c.cell_type == "code" and code in c.source]
    return cell


def _recommendation(text: str) -> dict:
    """The fields of a shown RecommendationResult(...) (its dataclass repr), read as literals, never evaluated."""
    call = ast.parse(text.strip(), mode="eval").body
    assert isinstance(call, ast.Call) and call.func.id == "RecommendationResult", text
    return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}


@pytest.mark.integration
def test_quickstart_notebook(isolated_home, tmp_path):
    nb = _run("quickstart.ipynb", tmp_path)
    assert not _outputs(nb, "error")
    assert (isolated_home / "nb-ml100k" / "export").is_dir()
    # The in-process pipeline's answer (the cell's value) and the real Triton server's (printed over gRPC).
    [local] = [o for o in _cell_with(nb, "local.recommend(").outputs if o.output_type == "execute_result"]
    local = _recommendation(local["data"]["text/plain"])
    served = _recommendation("".join(o.get("text", "") for o in _cell_with(nb, "client.recommend(").outputs
                                     if o.output_type == "stream" and o.name == "stdout"))
    assert local["strategy"] == "personalized" and len(local["item_ids"]) == 5
    assert served["item_ids"] == local["item_ids"] and served["titles"] == local["titles"]
    assert served["strategy"] == local["strategy"] and served["ignored_items"] == local["ignored_items"]
    np.testing.assert_allclose(served["scores"], local["scores"], rtol=1e-5, atol=1e-6)
