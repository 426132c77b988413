"""tapestry.artifacts: atomic writes, atomic versions, and latest_version's error."""
from __future__ import annotations

import pytest

from tapestry.artifacts import (atomic_write_bytes, atomic_write_json, atomic_write_text, latest_version, new_version, read_json,
                                stage_dir)


def test_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]
    atomic_write_json(tmp_path / "sub" / "m.json", {"b": 1, "a": [1, 2]})
    assert read_json(tmp_path / "sub" / "m.json") == {"a": [1, 2], "b": 1}
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.json", "out.txt"]


def test_failed_atomic_write_keeps_old_content_and_no_temp_files(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")
    with pytest.raises(TypeError, match="a bytes-like object is required, not 'int'"):
        atomic_write_bytes(target, 123)  # write() of a non-bytes fails after the temp file exists
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    with pytest.raises(TypeError, match="keys must be str, int, float, bool or None, not complex"):
        atomic_write_json(target, {1j: 1})  # unserialisable key: fails before any file is made
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_new_version_success(tmp_path):
    with new_version("acme", "etl", tmp_path) as v:
        assert v.tmp.name.startswith(".") and v.tmp.parent == stage_dir("acme", "etl", tmp_path)
        (v.tmp / "f.txt").write_text("x")
        assert v.path is None
    assert v.path == tmp_path / "acme" / "etl" / "v0001"
    assert (v.path / "f.txt").read_text() == "x"
    with new_version("acme", "etl", tmp_path) as v2:
        (v2.tmp / "f.txt").write_text("y")
    assert v2.path.name == "v0002"
    assert (tmp_path / "acme" / "etl" / "LATEST").read_text().strip() == "v0002"
    assert sorted(p.name for p in (tmp_path / "acme" / "etl").iterdir()) == ["LATEST", "v0001", "v0002"]


def test_exception_inside_new_version_leaves_nothing_behind(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with new_version("acme", "etl", tmp_path) as v:
            (v.tmp / "half.parquet").write_text("partial")
            (v.tmp / "nested").mkdir()
            (v.tmp / "nested" / "x").write_text("x")
            raise RuntimeError("boom")
    stage = tmp_path / "acme" / "etl"
    assert list(stage.iterdir()) == []  # no version, no temp dir, no LATEST
    assert v.path is None
    with pytest.raises(FileNotFoundError, match="no 'etl' artifacts for tenant 'acme'"):
        latest_version("acme", "etl", tmp_path)


def test_exception_keeps_previous_latest(tmp_path):
    with new_version("acme", "models", tmp_path) as v:
        (v.tmp / "ok").write_text("1")
    with pytest.raises(KeyError, match="^'x'$"):
        with new_version("acme", "models", tmp_path) as bad:
            (bad.tmp / "ok").write_text("2")
            raise KeyError("x")
    stage = tmp_path / "acme" / "models"
    assert sorted(p.name for p in stage.iterdir()) == ["LATEST", "v0001"]
    assert latest_version("acme", "models", tmp_path) == v.path


def test_latest_version_error_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"run `tapestry etl --tenant acme` first") as e:
        latest_version("acme", "etl", tmp_path)
    msg = str(e.value)
    assert "tapestry etl" in msg
    assert "acme" in msg
    assert str(tmp_path / "acme" / "etl") in msg


def test_latest_version_falls_back_to_highest_complete_version(tmp_path):
    stage = tmp_path / "acme" / "etl"
    for name in ("v0001", "v0003", ".tmp-abc", "vX", "v0002"):
        (stage / name).mkdir(parents=True)
    assert latest_version("acme", "etl", tmp_path) == stage / "v0003"
    (stage / "LATEST").write_text("v0002\n")
    assert latest_version("acme", "etl", tmp_path) == stage / "v0002"
    (stage / "LATEST").write_text("v0009\n")  # dangling pointer: fall back
    assert latest_version("acme", "etl", tmp_path) == stage / "v0003"


@pytest.mark.parametrize("tenant", ["../x", "a/b", "..", "abc\n", "", "a" * 65])
def test_artifact_paths_reject_bad_tenants(tmp_path, tenant):
    with pytest.raises(ValueError, match="invalid tenant id"):
        stage_dir(tenant, "etl", tmp_path)
    with pytest.raises(ValueError, match="invalid tenant id"):
        new_version(tenant, "etl", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_root_defaults_to_tapestry_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TAPESTRY_HOME", str(tmp_path / "home"))
    with new_version("acme", "etl") as v:
        (v.tmp / "f").write_text("x")
    assert v.path == tmp_path / "home" / "acme" / "etl" / "v0001"
    assert latest_version("acme", "etl") == v.path
