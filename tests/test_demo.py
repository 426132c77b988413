"""`make demo`'s path (`tapestry demo`), smoke-sized on ML-100K: every kind of request is shown and agrees."""
import pytest

from tapestry.config import datasets_dir


def test_demo_shows_known_recent_and_anonymous_requests(tmp_path, capsys):
    from tapestry.demo import run_demo

    if not (datasets_dir() / "ml-100k" / "u.item").exists():
        pytest.skip("MovieLens-100K not found (set TAPESTRY_DATASETS)")
    report = run_demo("demo100k", tmp_path, dataset="ml-100k", quick=True)
    out = capsys.readouterr().out
    assert report["served_equals_in_process"] is True
    for protocol in ("http", "grpc"):
        assert f"(personalized, via Triton {protocol})" in out                          # a known user
        assert f"recent events, 1 unknown recent items ignored, via Triton {protocol})" in out   # + recent events
        assert f"for user visitor-1 (session, 4 recent events, via Triton {protocol})" in out    # anonymous session
        assert f"for user visitor-2 (popularity, via Triton {protocol})" in out         # nothing known
    assert "another tenant's request is refused" in out
    assert "(because you watched " in out and "(popular right now)" in out                # REASONS, per item
