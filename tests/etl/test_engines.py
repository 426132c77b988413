"""The Polars engine choice (CPU here; the GPU comparison runs only where CUDA and cudf-polars are)."""
from __future__ import annotations

import pytest

from tapestry.config import ETLConfig
from tapestry.etl.compare import compare_artifacts
from tapestry.etl.engines import gpu_status, select_polars_engine
from tapestry.etl.pipeline import run_etl
from tapestry.etl.synthetic import synthetic_tables

QUIET = dict(log=lambda *a, **k: None)
GPU_OK, GPU_WHY = gpu_status()


def test_selection_follows_what_is_present():
    present, absent = (lambda: (True, "yes")), (lambda: (False, "no CUDA device"))
    assert select_polars_engine("auto", present) == "gpu"
    assert select_polars_engine("auto", absent) == "cpu"
    assert select_polars_engine("cpu", present) == "cpu"
    assert select_polars_engine("gpu", present) == "gpu"
    with pytest.raises(RuntimeError, match="no CUDA device"):
        select_polars_engine("gpu", absent)
    with pytest.raises(ValueError, match="polars_engine"):
        select_polars_engine("tpu", present)


def test_this_host_probe_agrees_with_auto():
    assert select_polars_engine("auto") == ("gpu" if GPU_OK else "cpu")


@pytest.mark.skipif(GPU_OK, reason="a GPU host: 'gpu' is allowed here")
def test_asking_for_the_gpu_without_one_writes_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="GPU engine is not usable"):
        run_etl(synthetic_tables(num_users=20, num_items=10), "acme", tmp_path, ETLConfig(polars_engine="gpu"), **QUIET)
    assert not (tmp_path / "acme" / "etl").exists() or not any((tmp_path / "acme" / "etl").glob("v*"))


@pytest.mark.skipif(not GPU_OK, reason=f"no Polars GPU engine here: {GPU_WHY}")
def test_gpu_engine_writes_the_cpu_artifacts(tmp_path):
    runs = [run_etl(synthetic_tables(num_users=80, num_items=40, bad_rows=2, seed=1), "acme", tmp_path,
                    ETLConfig(polars_engine=engine), **QUIET).path for engine in ("cpu", "gpu")]
    assert compare_artifacts(*runs) == []
