"""A/B experiments without a server: the stable split, the exposure log, the report's maths, the repository files."""
import json
import subprocess
import sys
import threading

import pytest

from tapestry.serving import ab
from tapestry.serving.ab import ExposureLog, Split

USERS = [f"user{i}" for i in range(10_000)]


def test_the_split_is_stable_across_processes():
    split = Split("exp1", ("control", "treatment"), (50, 50))
    here = [split.arm(u) for u in USERS[:500]]
    code = ("import json, sys; from tapestry.serving.ab import Split; s = Split('exp1', ('control', 'treatment'), "
            "(50, 50)); print(json.dumps([s.arm(f'user{i}') for i in range(500)]))")
    # Another interpreter with another hash seed: Python's hash() would differ, the split must not.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345", "PATH": ""}).stdout
    assert json.loads(out) == here
    assert ab.bucket("exp1", "user7") == ab.bucket("exp1", "user7")


@pytest.mark.parametrize("percents", [(50, 50), (90, 10), (20, 30, 50), (33.33, 33.33, 33.34)])
def test_percentages_are_respected_on_10k_ids(percents):
    arms = tuple(f"a{i}" for i in range(len(percents)))
    split = Split("exp-pct", arms, percents)
    counts = {a: 0 for a in arms}
    for u in USERS:
        counts[split.arm(u)] += 1
    for arm, pct in zip(arms, percents):
        # 10k binomial draws: 4 standard deviations of the share is at most 2 %
        assert abs(100 * counts[arm] / len(USERS) - pct) < 2.0, counts


def test_a_user_stays_in_one_arm_and_experiments_reshuffle():
    a = Split("first", ("control", "treatment"), (50, 50))
    assert all(len({a.arm(u) for _ in range(3)}) == 1 for u in USERS[:200])
    b = Split("second", ("control", "treatment"), (50, 50))
    moved = sum(a.arm(u) != b.arm(u) for u in USERS[:2000])
    assert 800 < moved < 1200   # another experiment id: an independent split


@pytest.mark.parametrize("arms,percents", [(("control",), (100,)), (("a", "a"), (50, 50)), (("a", "b"), (60, 60)),
                                           (("a", "b"), (100, 0)), (("A", "b"), (50, 50))])
def test_invalid_splits_are_refused(arms, percents):
    with pytest.raises(ValueError):
        Split("x", arms, percents)


def test_exposure_log_lines_never_interleave(tmp_path):
    path = tmp_path / "exposures.jsonl"
    logs = [ExposureLog(path) for _ in range(4)]

    def write(log, n):
        for i in range(300):
            log.write("e", "control", f"u{n}-{i}", [f"item{j}" for j in range(50)])
    threads = [threading.Thread(target=write, args=(log, n)) for n, log in enumerate(logs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for log in logs:
        log.close()
    with open(path, "ab") as f:
        f.write(b'{"ts": 1, "torn')   # a writer killed mid-line
    rows = ab.read_exposures(path)
    assert len(rows) == 1200 and all(len(r["items"]) == 50 for r in rows)


def test_wilson_interval_matches_known_values():
    low, high = ab.wilson(10, 100)
    assert low == pytest.approx(0.05523, abs=1e-4) and high == pytest.approx(0.17437, abs=1e-4)
    assert ab.wilson(0, 0) == (0.0, 1.0)
    low, high = ab.wilson(0, 50)
    assert low == pytest.approx(0.0, abs=1e-12) and 0.06 < high < 0.08


def test_report_on_a_hand_made_log():
    t = 1_000_000.0
    exposures = [
        # control: u1 hits (i2 within the window), u2 does not (event after the window), u3 not (other item),
        # u4 hits on its SECOND exposure only
        {"ts": t, "arm": "control", "user": "u1", "items": ["i1", "i2"]},
        {"ts": t, "arm": "control", "user": "u2", "items": ["i1"]},
        {"ts": t, "arm": "control", "user": "u3", "items": ["i1"]},
        {"ts": t, "arm": "control", "user": "u4", "items": ["i5"]},
        {"ts": t + 100, "arm": "control", "user": "u4", "items": ["i6"]},
        # treatment: u5 and u6 hit, u7 had its event BEFORE the recommendation (no hit), u8 hits
        {"ts": t, "arm": "treatment", "user": "u5", "items": ["i1"]},
        {"ts": t, "arm": "treatment", "user": "u6", "items": ["i3"]},
        {"ts": t, "arm": "treatment", "user": "u7", "items": ["i4"]},
        {"ts": t, "arm": "treatment", "user": "u8", "items": ["i1", "i9"]},
    ]
    events = [("u1", "i2", t + 10), ("u2", "i1", t + 4000), ("u3", "i7", t + 5), ("u4", "i6", t + 150),
              ("u5", "i1", t + 1), ("u6", "i3", t + 3600), ("u7", "i4", t - 1), ("u8", "i9", t + 30)]
    rows = ab.report(exposures, events, window=3600, arms=["control", "treatment"])
    control, treatment = rows
    assert (control.users, control.exposures, control.hits) == (4, 5, 2)
    assert (treatment.users, treatment.exposures, treatment.hits) == (4, 4, 3)
    assert control.rate == 0.5 and treatment.rate == 0.75
    assert (control.low, control.high) == pytest.approx(ab.wilson(2, 4))
    assert treatment.lift == pytest.approx(0.5)
    assert treatment.lift_low < 0.5 < treatment.lift_high   # tiny samples: a wide interval around the lift
    assert treatment.diff_low < 0.25 < treatment.diff_high
    assert control.lift is None
    text = ab.format_report(rows, 3600, "control")
    assert "+50.0%" in text and "(control)" in text


def test_lift_interval_excludes_zero_on_a_large_clear_difference():
    lift, low, high = ab.relative_lift(300, 1000, 200, 1000)
    assert lift == pytest.approx(0.5) and 0.25 < low < 0.5 < high < 0.8
    assert ab.relative_lift(5, 10, 0, 10) == (None, None, None)   # no control hit: no lift


def test_events_and_windows_parse(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,event_type,timestamp\nu1,i1,click,100\nu2,i2,click,1970-01-01T00:02:00Z\n"
                    "u3,i3,click,not-a-time\n")
    assert ab.read_events(path) == [("u1", "i1", 100.0), ("u2", "i2", 120.0)]
    assert ab.read_events(path, limit=len("user_id,item_id,event_type,timestamp\nu1,i1,click,100\n")) == \
        [("u1", "i1", 100.0)]
    assert [ab.parse_window(w) for w in ("90", "90s", "30m", "2h", "1d")] == [90, 90, 1800, 7200, 86400]
    with pytest.raises(ValueError):
        ab.parse_window("soon")
