"""Shared fixtures: a tiny synthetic tenant (planted structure, ~1 s to build) and the real ML-100K."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tapestry.config import datasets_dir
from tapestry.etl import run_etl
from tapestry.etl.synthetic import synthetic_tables

TINY_TENANT = "tiny"

# The tests fit tiny models: one intra-op thread is faster than two (no fork/join per small op) and is not
# slowed 10x when the machine's other core is busy (measured here: a tiny HGT epoch 0.8 s vs ~50 s).
torch.set_num_threads(1)


def _quiet(*_args, **_kwargs) -> None:
    pass


@pytest.fixture(scope="session")
def tiny_etl(tmp_path_factory) -> Path:
    """ETL version dir of a synthetic tenant: 200 users, 100 items, 5 genres (root = path.parents[2])."""
    root = tmp_path_factory.mktemp("artifacts")
    return run_etl(synthetic_tables(num_users=200, num_items=100, seed=0), TINY_TENANT, root=root, log=_quiet).path


@pytest.fixture(scope="session")
def ml100k_etl(tmp_path_factory) -> Path:
    """ETL version dir of the real MovieLens-100K (skipped when the data set is not on this machine)."""
    from tapestry.etl.movielens import movielens_100k

    directory = datasets_dir() / "ml-100k"
    if not (directory / "u.item").exists():
        pytest.skip(f"MovieLens-100K not found under {directory} (set TAPESTRY_DATASETS)")
    root = tmp_path_factory.mktemp("artifacts-ml100k")
    return run_etl(movielens_100k(directory), "ml100k", root=root, log=_quiet).path
