"""The diagnosis's arithmetic: quadrants of self x judge verdicts, the paper's split, Cohen's
kappa and a seeded bootstrap interval. Pure functions (numpy only), tested on hand-computed values.

Where it sits: under `gapray.eval.judge_eval` (eval=judge inside runs) and `gapray diagnose`;
each image has the model's own verdict (self yes/no) and one verdict per external judge.

    q = quadrants(self_yes, judge_yes)          # Quadrants(both_yes=.., self_no_judge_yes=.., ...)
    q.weak_generation, q.misunderstanding       # where self says no: judge no too / judge yes
    cohen_kappa(judge_a_yes, judge_b_yes)       # agreement beyond chance
    bootstrap_interval(no_flags, groups, seed=0)  # 95% interval of a rate, resampling prompts

The paper's reading of the split: when the model rejects its own image and an external judge
rejects it too, the generation was weak; when the judge accepts it, the model misunderstood
its own (good) image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Quadrants:
    """Counts of the four (self, judge) verdict combinations over a set of images."""

    both_yes: int
    """Self yes, judge yes: a good image the model recognises."""
    self_yes_judge_no: int
    """Self yes, judge no: the model accepts an image the judge rejects (a lenient self-judge)."""
    self_no_judge_yes: int
    """Self no, judge yes: the model rejects a good image (misunderstanding)."""
    both_no: int
    """Self no, judge no: a bad image both reject (weak generation)."""

    @property
    def total(self) -> int:
        return self.both_yes + self.self_yes_judge_no + self.self_no_judge_yes + self.both_no

    @property
    def self_no(self) -> int:
        return self.self_no_judge_yes + self.both_no

    @property
    def weak_generation(self) -> float | None:
        """Of the images the model rejects, the share the judge rejects too (None: none rejected)."""
        return self.both_no / self.self_no if self.self_no else None

    @property
    def misunderstanding(self) -> float | None:
        """Of the images the model rejects, the share the judge accepts (None: none rejected)."""
        return self.self_no_judge_yes / self.self_no if self.self_no else None

    @property
    def non_unification(self) -> float | None:
        """The share the model itself rejects (the paper's non-unification score)."""
        return self.self_no / self.total if self.total else None

    @property
    def judge_yes_rate(self) -> float | None:
        """The share the judge accepts (its pass rate of the model's images)."""
        return (self.both_yes + self.self_no_judge_yes) / self.total if self.total else None

    def to_dict(self) -> dict[str, int | float | None]:
        return {
            "both_yes": self.both_yes,
            "self_yes_judge_no": self.self_yes_judge_no,
            "self_no_judge_yes": self.self_no_judge_yes,
            "both_no": self.both_no,
            "n_images": self.total,
            "weak_generation": self.weak_generation,
            "misunderstanding": self.misunderstanding,
            "judge_yes_rate": self.judge_yes_rate,
        }


QUADRANT_NAMES = ("both_yes", "self_yes_judge_no", "self_no_judge_yes", "both_no")


def _bools(name: str, values: Sequence[bool]) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a flat sequence of verdicts, got shape {arr.shape}")
    return arr.astype(bool)


def quadrants(self_yes: Sequence[bool], judge_yes: Sequence[bool]) -> Quadrants:
    """Per-image self and judge verdicts (same length, same order) -> the four counts."""
    s, j = _bools("self_yes", self_yes), _bools("judge_yes", judge_yes)
    if len(s) != len(j):
        raise ValueError(f"quadrants: {len(s)} self verdicts for {len(j)} judge verdicts")
    return Quadrants(
        both_yes=int(np.sum(s & j)),
        self_yes_judge_no=int(np.sum(s & ~j)),
        self_no_judge_yes=int(np.sum(~s & j)),
        both_no=int(np.sum(~s & ~j)),
    )


def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> float | None:
    """Cohen's kappa of two raters' yes/no verdicts on the same items:
    (p_o - p_e) / (1 - p_e), p_o the observed agreement, p_e the agreement expected from each
    rater's own yes-rate. None when p_e = 1 (both raters gave one and the same answer to
    everything: agreement beyond chance is undefined) or when there are no items."""
    x, y = _bools("a", a), _bools("b", b)
    if len(x) != len(y):
        raise ValueError(f"cohen_kappa: {len(x)} verdicts against {len(y)}")
    if not len(x):
        return None
    p_o = float(np.mean(x == y))
    pa, pb = float(np.mean(x)), float(np.mean(y))
    p_e = pa * pb + (1 - pa) * (1 - pb)
    if p_e >= 1.0:
        return None
    return (p_o - p_e) / (1 - p_e)


def bootstrap_interval(
    values: Sequence[float],
    groups: Sequence[object] | None = None,
    *,
    seed: int = 0,
    n_boot: int = 2000,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of `values` (e.g. 1.0 per rejected image).

    With `groups` (e.g. each image's prompt index), whole groups are resampled with
    replacement, since images of one prompt are not independent; without, single values are.
    Each resample's mean is over the values of the drawn groups. Seeded: the same inputs and
    seed give the same interval. None for no values."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"bootstrap_interval: expected a flat sequence, got shape {v.shape}")
    if not 0 < level < 1:
        raise ValueError(f"bootstrap_interval: level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"bootstrap_interval: n_boot must be >= 1, got {n_boot}")
    if not len(v):
        return None
    if groups is None:
        keys = np.arange(len(v))
    else:
        if len(groups) != len(v):
            raise ValueError(f"bootstrap_interval: {len(groups)} groups for {len(v)} values")
        _, keys = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    n_groups = int(keys.max()) + 1
    sums = np.bincount(keys, weights=v, minlength=n_groups)  # (G,)
    counts = np.bincount(keys, minlength=n_groups).astype(np.float64)  # (G,)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_groups, size=(n_boot, n_groups))  # (B, G) group indices
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)  # (B,)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)
