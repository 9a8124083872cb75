"""The diagnosis's arithmetic on hand-computed values: quadrant counts, the paper's split,
Cohen's kappa and the seeded bootstrap interval (gapray/diagnose/stats.py).

    PYTHONPATH=. python -m pytest tests/test_diagnose_stats.py -q
"""

from __future__ import annotations

import pytest

from gapray.diagnose.stats import Quadrants, bootstrap_interval, cohen_kappa, quadrants

# Ten images, hand-set: self yes on 0-4, judge yes on 0-3 and 5-6.
SELF = [True, True, True, True, True, False, False, False, False, False]
JUDGE = [True, True, True, True, False, True, True, False, False, False]


def test_quadrants_and_split_from_hand_set_verdicts():
    q = quadrants(SELF, JUDGE)
    assert q == Quadrants(both_yes=4, self_yes_judge_no=1, self_no_judge_yes=2, both_no=3)
    assert q.total == len(SELF)  # the four counts add up to the images
    assert q.self_no == 5
    assert q.weak_generation == pytest.approx(3 / 5)  # of the 5 self-rejected, judge says no to 3
    assert q.misunderstanding == pytest.approx(2 / 5)
    assert q.non_unification == pytest.approx(0.5)
    assert q.judge_yes_rate == pytest.approx(6 / 10)
    d = q.to_dict()
    assert (d["both_yes"], d["self_yes_judge_no"], d["self_no_judge_yes"], d["both_no"]) == (4, 1, 2, 3)


def test_split_is_undefined_when_the_model_rejects_nothing():
    q = quadrants([True, True], [True, False])
    assert q.weak_generation is None and q.misunderstanding is None
    assert quadrants([], []).non_unification is None
    with pytest.raises(ValueError, match="3 self verdicts for 2 judge"):
        quadrants([True] * 3, [True] * 2)


def test_cohen_kappa_hand_computed():
    # p_o = 7/10; yes-rates 0.5 and 0.6: p_e = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = 0.2/0.5 = 0.4
    assert cohen_kappa(SELF, JUDGE) == pytest.approx(0.4)
    assert cohen_kappa(SELF, SELF) == pytest.approx(1.0)
    assert cohen_kappa(SELF, [not x for x in SELF]) == pytest.approx(-1.0)
    # a: yes yes no no, b: yes no yes no: p_o = 0.5, p_e = 0.5 -> 0
    assert cohen_kappa([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(0.0)
    assert cohen_kappa([True] * 4, [True] * 4) is None  # p_e = 1: undefined
    assert cohen_kappa([], []) is None


def test_bootstrap_interval_hand_computed_and_seeded():
    # Constant values: every resample has the same mean.
    assert bootstrap_interval([1.0, 1.0, 1.0], seed=3) == (1.0, 1.0)
    # Two groups, one all-yes, one all-no: resampled means are 0, 1/2, 1 with probability
    # 1/4, 1/2, 1/4, so the 2.5th and 97.5th percentiles are 0 and 1.
    assert bootstrap_interval([1.0, 1.0, 0.0, 0.0], groups=[0, 0, 1, 1], seed=0) == (0.0, 1.0)
    # Groups matter: resampling single images of 2 yes / 2 no gives means in steps of 1/4 and
    # P(mean = 0) = 1/16 > 2.5%, so the bounds are still 0 and 1; a 50% interval is narrower.
    lo, hi = bootstrap_interval([1, 1, 0, 0], seed=0, level=0.5)
    assert 0.25 <= lo <= 0.5 <= hi <= 0.75
    a = bootstrap_interval([1, 0, 0, 1, 1, 0, 1], groups=[0, 0, 1, 1, 2, 2, 3], seed=7)
    assert a == bootstrap_interval([1, 0, 0, 1, 1, 0, 1], groups=[0, 0, 1, 1, 2, 2, 3], seed=7)
    assert a[0] <= 4 / 7 <= a[1]
    assert bootstrap_interval([]) is None
    with pytest.raises(ValueError, match="2 groups for 3 values"):
        bootstrap_interval([1, 0, 1], groups=[0, 1])
