"""progress.py: the log line (share done, loss, rate, ETA by hand), when lines are logged, and the
A2B_PROGRESS_SECONDS setting."""

from __future__ import annotations

import logging

import pytest

from a2b_pipeline.training import progress
from a2b_pipeline.training.progress import DEFAULT_EVERY_S, Progress, _clock, _every_s


def test_clock() -> None:
    assert _clock(0) == "0:00:00"
    assert _clock(59.6) == "0:01:00"
    assert _clock(3 * 3600 + 25 * 60 + 7) == "3:25:07"
    assert _clock(100 * 3600 + 61) == "100:01:01"


@pytest.mark.parametrize(
    ("value", "want"), [(None, DEFAULT_EVERY_S), ("2.5", 2.5), ("-3", 0.0), ("soon", 10.0)]
)
def test_every_seconds_setting(monkeypatch, value: str | None, want: float) -> None:
    if value is None:
        monkeypatch.delenv("A2B_PROGRESS_SECONDS", raising=False)
    else:
        monkeypatch.setenv("A2B_PROGRESS_SECONDS", value)
    assert _every_s() == want
    assert DEFAULT_EVERY_S == 10.0


def test_line_by_hand() -> None:
    p = Progress("pin", total=100, initial=20, enabled=True, bar=False)
    assert p.line(p.start_t) == "pin: step 20/100 (20%)"  # nothing done yet: no rate, no ETA
    p.step = 30
    p.set_postfix(loss="0.123456")
    # 10 steps in 4 s: 2.50 steps/s, 70 steps left: 28 s
    assert p.line(p.start_t + 4.0) == "pin: step 30/100 (30%) · loss 0.1235 · 2.50 steps/s · ETA 0:00:28"
    p.set_postfix(other=1)  # no loss given: the last one stays
    assert p.loss == pytest.approx(0.123456)
    p.close()


def test_lines_when_due_and_at_the_end(monkeypatch, caplog) -> None:
    caplog.set_level(logging.INFO, logger="a2b_pipeline.training.progress")
    monkeypatch.setenv("A2B_PROGRESS_SECONDS", "3600")
    p = Progress("run", total=5, initial=2, enabled=True, bar=False)
    for _ in range(3):
        p.update()
    assert [r.getMessage().split(" · ")[0] for r in caplog.records] == [
        "run: step 5/5 (100%)"
    ]  # the end only
    caplog.clear()
    monkeypatch.setenv("A2B_PROGRESS_SECONDS", "0")
    p = Progress("run", total=4, initial=0, enabled=True, bar=False)
    p.update(2)
    p.update()
    assert [r.getMessage().split(" · ")[0] for r in caplog.records] == [
        "run: step 2/4 (50%)",
        "run: step 3/4 (75%)",
    ]
    caplog.clear()
    quiet = Progress("run", total=2, initial=0, enabled=False, bar=False)  # not the reporting rank
    quiet.update(2)
    bar = Progress("run", total=2, initial=0, enabled=True, bar=True)  # a bar shows it: no lines
    bar.update(2)
    bar.close()
    assert caplog.records == [] and quiet.step == 2 and bar.bar.n == 2


def test_a_line_every_interval(monkeypatch, caplog) -> None:
    caplog.set_level(logging.INFO, logger="a2b_pipeline.training.progress")
    monkeypatch.setenv("A2B_PROGRESS_SECONDS", "10")
    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])  # a clock the test moves
    p = Progress("run", total=50, initial=0, enabled=True, bar=False)
    logged = []
    for t in (105.0, 111.0, 115.0, 120.5, 121.0, 140.0):
        now[0] = t
        p.update()
        logged.append(len(caplog.records))
    assert logged == [0, 1, 1, 1, 2, 3]  # at 111 s, then 10 s after that line (121 s), then 140 s
    assert (
        caplog.records[1].getMessage() == "run: step 5/50 (10%) · 0.24 steps/s · ETA 0:03:09"
    )  # 5 steps in 21 s, 45 to go
