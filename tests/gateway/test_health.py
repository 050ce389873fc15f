"""Health rates come from fixed windows: asking for a snapshot changes nothing."""

from __future__ import annotations

from gateway.health import Health
from tests.helpers import ManualClock


def clocked(window: float = 10.0) -> tuple[Health, ManualClock]:
    """A ``Health`` on a clock the test moves by hand."""
    clock = ManualClock()
    return Health(window=window, clock=clock), clock


def test_snapshots_in_quick_succession_report_the_same_window_rate() -> None:
    health, clock = clocked()
    health.totals["commands"] += 20
    clock.now += 10.0
    first = health.snapshot()["rates"]["commands_per_s"]
    clock.now += 0.012  # a second request 12 ms later (issue 12.7 reported 80/s here)
    second = health.snapshot()["rates"]["commands_per_s"]
    assert first == second == 2.0


def test_the_next_window_reports_its_own_rate() -> None:
    health, clock = clocked()
    health.totals["state"] += 100
    clock.now += 10.0
    assert health.rates()["state_per_s"] == 10.0
    health.totals["state"] += 50
    clock.now += 5.0
    assert health.rates()["state_per_s"] == 10.0  # the window is not complete yet
    clock.now += 5.0
    assert health.rates()["state_per_s"] == 5.0


def test_before_the_first_window_the_rate_is_since_start() -> None:
    health, clock = clocked()
    health.totals["events"] += 8
    clock.now += 2.0
    assert health.rates()["events_per_s"] == 4.0
