"""The judge-gaming monitor (gapray/algos/monitor.py) on constructed histories.

PYTHONPATH=. python -m pytest tests/test_monitor.py -q
"""

from __future__ import annotations

import pytest

from gapray.algos.monitor import GamingMonitor, gaming_warning, rise


def test_rise_hand_computed():
    assert rise([0.1, 0.2, 0.3, 0.5], window=2) == pytest.approx(0.4 - 0.15)
    assert rise([0.1, 0.2, 0.3], window=2) is None  # fewer than 2 * window steps
    with pytest.raises(ValueError, match="window"):
        rise([1.0], window=0)


def test_fires_when_the_judged_rate_rises_and_the_true_one_does_not():
    judged = [0.30, 0.32, 0.31, 0.33, 0.30, 0.40, 0.45, 0.50, 0.52, 0.55]  # +0.17
    true = [0.20, 0.21, 0.19, 0.20, 0.20, 0.20, 0.19, 0.18, 0.20, 0.19]  # -0.008
    warn = gaming_warning(judged, true)
    assert warn is not None and "rose by +0.172" in warn and "moved -0.008" in warn


def test_silent_on_an_honest_history():
    judged = [0.30, 0.32, 0.31, 0.33, 0.30, 0.40, 0.45, 0.50, 0.52, 0.55]
    true = [0.20, 0.21, 0.19, 0.20, 0.20, 0.27, 0.30, 0.32, 0.35, 0.36]  # rises with it
    assert gaming_warning(judged, true) is None
    assert gaming_warning(judged[:9], [0.2] * 9) is None  # too short to call a trend
    assert gaming_warning([0.3] * 10, [0.2] * 10) is None  # nothing rose


def test_lengths_must_match():
    with pytest.raises(ValueError, match="3 judged rates for 2 true"):
        gaming_warning([0.1] * 3, [0.1] * 2)


def test_the_monitor_warns_once_per_episode():
    m = GamingMonitor(window=2, min_rise=0.05)
    judged = [0.3, 0.3, 0.5, 0.5, 0.5, 0.3, 0.3, 0.3, 0.3, 0.6]
    fired = [m.observe(s, j, 0.2) is not None for s, j in enumerate(judged, 1)]
    # Holds from step 4 (first 2 vs last 2: +0.2), stops at 6 (last 2 = 0.5, 0.3: +0.1 still;
    # 7: 0.3, 0.3: 0.0 -> stops), starts again at 10 (0.3, 0.6 -> +0.15).
    assert fired == [False, False, False, True, False, False, False, False, False, True]
    assert [(w["step"], w["until"]) for w in m.warnings] == [(4, 6), (10, None)]
