"""The judge-gaming monitor: does the judged pass rate rise while the true one does not?

Where it sits: after each online step of a run whose training prompts have a ground truth (the
toy world's exact verifier checks every training rollout, `reward.verifier`). The controller
keeps the history of (judged pass rate, true pass rate) per step and asks `gaming_warning`
after each step; a warning goes to the log, the step's metrics and the report. A policy that
learns to satisfy its judge without satisfying the prompt (drawing every object everywhere for
a presence-only judge) shows exactly this: judged up, true flat or down.

    warn = gaming_warning(judged=[0.3, 0.35, ...], true=[0.2, 0.2, ...])   # str | None

The rule compares the mean of the most recent `window` steps with the mean of the first
`window` steps: it fires when the judged rate rose by at least `min_rise` and the true rate
rose by less than `min_rise / 2` (flat, or down). With fewer than 2 * window steps it stays
silent: a single noisy step is not a trend.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

WINDOW = 5
MIN_RISE = 0.05


def rise(values: Sequence[float], window: int = WINDOW) -> float | None:
    """Mean of the last `window` values minus the mean of the first `window`; None when there
    are fewer than 2 * window values."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if len(values) < 2 * window:
        return None
    v = np.asarray(values, dtype=np.float64)
    return float(v[-window:].mean() - v[:window].mean())


def gaming_warning(
    judged: Sequence[float], true: Sequence[float], *, window: int = WINDOW, min_rise: float = MIN_RISE
) -> str | None:
    """A one-line warning when the judged pass rate rose and the true one did not, else None."""
    if len(judged) != len(true):
        raise ValueError(f"gaming_warning: {len(judged)} judged rates for {len(true)} true rates")
    up, real = rise(judged, window), rise(true, window)
    if up is None or real is None or up < min_rise or real >= min_rise / 2:
        return None
    return (
        f"judge gaming? the judged pass rate rose by {up:+.3f} (mean of the first {window} steps "
        f"-> the last {window}) while the true pass rate (exact verifier) moved {real:+.3f}: the "
        "policy may be learning what its judge accepts rather than what the prompt asks"
    )


class GamingMonitor:
    """The history of one run's (judged, true) pass rates, and the warnings it raised."""

    def __init__(self, window: int = WINDOW, min_rise: float = MIN_RISE):
        self.window, self.min_rise = window, min_rise
        self.judged: list[float] = []
        self.true: list[float] = []
        self.warnings: list[dict] = []  # {"step", "text"}: each time the rule starts to hold

    def observe(self, step: int, judged: float, true: float) -> str | None:
        """Add a step's rates; returns the warning when the rule starts holding at this step."""
        self.judged.append(float(judged))
        self.true.append(float(true))
        text = gaming_warning(self.judged, self.true, window=self.window, min_rise=self.min_rise)
        holding = bool(self.warnings) and self.warnings[-1].get("until") is None
        if text is None:
            if holding:
                self.warnings[-1]["until"] = step - 1
            return None
        if holding:
            return None
        self.warnings.append({"step": step, "text": text, "until": None})
        return text
