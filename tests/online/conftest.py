"""Fixtures for the online store tests: a throwaway redis-server per test, and a small exported tenant.

The export is what feature_lookup and ingest read (users.parquet, items.parquet, manifest.json under
<root>/<tenant>/export/vNNNN/artifacts) built from a real run_etl on synthetic tables: no training needed.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

from tapestry.artifacts import atomic_write_json, new_version
from tapestry.etl import run_etl
from tapestry.etl.synthetic import synthetic_tables
from tapestry.online.local_redis import LocalRedis, redis_server_binary

TENANT = "shop"
MAX_LEN = 8


def _quiet(*_a, **_k) -> None:
    pass


def write_export(etl_dir: Path, root: Path, tenant: str, etl_version: str | None = None) -> Path:
    """An export of `etl_dir` with what the online side reads; returns its artifacts directory."""
    events = pl.read_parquet(etl_dir / "events.parquet").with_row_index("_order")
    hist = events.group_by("user_idx").agg(pl.col("item_idx").sort_by("timestamp", "_order").alias("history"))
    ent = pl.read_parquet(etl_dir / "user_entities.parquet").with_columns(
        (pl.col("entity_type") + "=" + pl.col("entity_value")).alias("name"))
    names = sorted(set(ent["name"].to_list()))
    attrs = ent.with_columns(pl.col("name").replace_strict(names, list(range(len(names))), return_dtype=pl.Int64)
                             .alias("a")).group_by("user_idx").agg(pl.col("a").sort().alias("attrs"))
    users = (pl.read_parquet(etl_dir / "user_map.parquet").join(hist, on="user_idx", how="left")
             .join(attrs, on="user_idx", how="left")
             .with_columns(pl.col("history").fill_null(pl.lit([], dtype=pl.List(pl.Int64))),
                           pl.col("attrs").fill_null(pl.lit([], dtype=pl.List(pl.Int64)))))
    with new_version(tenant, "export", root) as v:
        art = v.tmp / "artifacts"
        art.mkdir()
        users.write_parquet(art / "users.parquet")
        pl.read_parquet(etl_dir / "items.parquet").write_parquet(art / "items.parquet")
        atomic_write_json(art / "manifest.json", {
            "tenant": tenant, "etl_version": etl_version or str(etl_dir), "max_len": MAX_LEN,
            "num_user_attrs": len(names), "num_items": int(events["item_idx"].max()) + 1,
            "num_users": users.height + 1})
    return v.path / "artifacts"


def build_tenant(root: Path, tenant: str = TENANT, seed: int = 0) -> Path:
    """ETL of 40 synthetic users x 30 items + its export, under `root`; returns the export's artifacts dir."""
    etl = run_etl(synthetic_tables(num_users=40, num_items=30, seed=seed), tenant, root, log=_quiet).path
    return write_export(etl, root, tenant)


@pytest.fixture(scope="session")
def tenant_template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("online-template")
    build_tenant(root)
    return root


@pytest.fixture
def export(tenant_template, tmp_path) -> tuple[Path, Path]:
    """(artifact root, export artifacts dir): a private copy per test (tests write tombstones and offsets)."""
    root = tmp_path / "artifacts"
    shutil.copytree(tenant_template, root)
    return root, root / TENANT / "export" / "v0001" / "artifacts"


@pytest.fixture
def redis_url(tmp_path):
    """A redis-server of this test's own (free port, no persistence), stopped at the end."""
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)")
    try:        # the client is a dependency of the package (pyproject): missing means a broken install, not a skip
        import redis  # noqa: F401
    except ImportError as e:
        raise ImportError(f"the redis Python client does not import ({e}); it is a tapestry dependency: "
                          "run `make install` (or pip install 'redis>=5,<6')") from e
    with LocalRedis(tmp_path / "redis") as server:
        yield server.url


def exported_users(artifact_dir: Path) -> dict[str, tuple[list[int], list[int]]]:
    users = pl.read_parquet(artifact_dir / "users.parquet")
    return {u: (h, a) for u, h, a in users.select("user_id", "history", "attrs").iter_rows()}


def item_index(artifact_dir: Path) -> dict[str, int]:
    return dict(pl.read_parquet(artifact_dir / "items.parquet").select("item_id", "item_idx").iter_rows())
