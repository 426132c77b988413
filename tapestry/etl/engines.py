"""Which Polars engine the ETL's queries run on: the CPU engines, or the GPU engine (cudf-polars), chosen at run time.

ETLConfig.polars_engine is "auto" (the GPU engine when CUDA and the `cudf_polars` package are both present, else the
CPU), "cpu" or "gpu" (refused with the reason when either is missing). The same queries run either way: only the
`engine=` they are collected or sunk with changes, so the artifacts are meant to be equal (tapestry.etl.compare
checks that, and tests/etl/test_engines.py does on a GPU host).

On the GPU the engine is `pl.GPUEngine(raise_on_fail=False)`: a query cudf-polars does not support (an expression
or regex it lacks) runs on the CPU instead of failing, so GPU hosts get the GPU where
cudf-polars can take the query and the same result everywhere.
"""
from __future__ import annotations

import functools
from typing import Callable

import polars as pl

AUTO, CPU, GPU = "auto", "cpu", "gpu"
CHOICES = (AUTO, CPU, GPU)


@functools.lru_cache(maxsize=1)
def gpu_status() -> tuple[bool, str]:
    """(is the Polars GPU engine usable here, why not). Probed once per process: imports are not cheap."""
    try:
        import cudf_polars  # noqa: F401
    except Exception as e:   # ImportError, or a CUDA library that fails to load
        return False, f"the cudf_polars package is not importable ({type(e).__name__}: {e}); pip install '.[gpu]'"
    count = _cuda_device_count()
    if count < 1:
        return False, "no CUDA device is visible (cudf_polars is installed)"
    return True, f"{count} CUDA device(s) and cudf_polars"


def _cuda_device_count() -> int:
    """CUDA devices through cuda-python (a cudf-polars dependency), else torch; 0 when neither can tell."""
    try:
        from cuda.bindings import runtime

        err, count = runtime.cudaGetDeviceCount()
        return int(count) if int(err) == 0 else 0
    except Exception:
        pass
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def select_polars_engine(requested: str = AUTO, probe: Callable[[], tuple[bool, str]] = gpu_status) -> str:
    """"cpu" or "gpu" for ETLConfig.polars_engine `requested`; `probe` is gpu_status (tests pass their own)."""
    if requested not in CHOICES:
        raise ValueError(f"polars_engine must be one of {CHOICES}, not {requested!r}")
    if requested == CPU:
        return CPU
    ok, why = probe()
    if requested == GPU and not ok:
        raise RuntimeError(f"polars_engine='gpu' was asked for, but the Polars GPU engine is not usable: {why}")
    return GPU if ok else CPU


def gpu_engine() -> "pl.GPUEngine":
    return pl.GPUEngine(raise_on_fail=False)


def sink_engine(selected: str):
    """The `engine=` for sinks: Polars' default ("auto": streaming) on the CPU, as the ETL always used."""
    return gpu_engine() if selected == GPU else "auto"


def collect_engine(selected: str, cpu_default: str = "auto"):
    """The `engine=` for an in-memory collect: `cpu_default` on the CPU (the caller's existing choice)."""
    return gpu_engine() if selected == GPU else cpu_default
