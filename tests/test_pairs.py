"""Tests for gapray/algos/pairs.py on hand-made scores: the paper's rule and HermesFlow's
best-vs-worst rule, margins, several pairs per prompt, interleaved groups, ties, SFT selection.

    PYTHONPATH=. python -m pytest tests/test_pairs.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

from gapray.algos.pairs import PairStats, build_pairs, select_sft


def arr(*xs):
    return np.array(xs)


def test_paper_rule_picks_best_accepted_and_worst_rejected():
    # index:       0     1     2     3     4
    p = arr(0.90, 0.70, 0.40, 0.10, 0.45)
    acc = arr(True, True, False, False, True)  # 4 is accepted though P(yes) < 0.5 (decision is given)
    pairs, stats = build_pairs(["a"] * 5, p, acc)
    # best accepted = 0 (0.90), worst rejected = 3 (0.10)
    assert pairs == [(0, 3)]
    assert stats == PairStats(prompts=1, pairs=1, all_pass=0, all_fail=0, below_margin=0, mean_margin=0.8)


def test_paper_rule_ignores_scores_of_the_other_side():
    # Rejected image 1 scores higher than accepted image 0: the decision, not P(yes), decides the side.
    pairs, _ = build_pairs(["a", "a", "a"], arr(0.6, 0.8, 0.2), arr(True, False, False))
    assert pairs == [(0, 2)]


def test_all_pass_all_fail_counted():
    g = ["pass", "pass", "fail", "fail", "mixed", "mixed"]
    p = arr(0.9, 0.8, 0.1, 0.2, 0.7, 0.3)
    acc = arr(1, 1, 0, 0, 1, 0)
    pairs, stats = build_pairs(g, p, acc)
    assert pairs == [(4, 5)]
    assert (stats.prompts, stats.all_pass, stats.all_fail, stats.below_margin) == (3, 1, 1, 0)
    assert stats.mean_margin == pytest.approx(0.4)


def test_min_margin_applies_to_paper_rule():
    g = ["a", "a", "b", "b"]
    p = arr(0.55, 0.50, 0.9, 0.2)  # gaps: a 0.05, b 0.7
    acc = arr(1, 0, 1, 0)
    pairs, stats = build_pairs(g, p, acc, min_margin=0.1)
    assert pairs == [(2, 3)]
    assert stats.below_margin == 1 and stats.mean_margin == pytest.approx(0.7)
    # just above the margin is kept (0.9 - 0.2 = 0.7000000000000001 in floating point)
    pairs, _ = build_pairs(["b", "b"], arr(0.9, 0.2), arr(1, 0), min_margin=0.7 - 1e-12)
    assert pairs == [(0, 1)]


@pytest.mark.parametrize("rule", ["paper", "best_worst"])
def test_margin_equal_to_min_margin_is_not_kept(rule):
    # PairsConfig.min_margin: kept only if S(chosen) - S(rejected) > min_margin (strict).
    # 0.75 - 0.25 = 0.5 exactly in binary floating point.
    g = ["eq", "eq", "above", "above"]
    p = arr(0.75, 0.25, 0.875, 0.25)  # gaps: eq 0.5 (= min_margin), above 0.625
    acc = arr(1, 0, 1, 0)
    pairs, stats = build_pairs(g, p, acc, rule=rule, min_margin=0.5)
    assert pairs == [(2, 3)]
    assert stats.below_margin == 1 and stats.mean_margin == 0.625


@pytest.mark.parametrize("rule", ["paper", "best_worst"])
def test_equal_scores_make_no_pair_at_min_margin_zero(rule):
    # min_margin 0: "any pair whose scores differ"; equal scores are no preference under either rule
    # (under "paper" the decisions differ here, e.g. decided by another threshold, the scores do not).
    g = ["tie", "tie", "apart", "apart"]
    p = arr(0.5, 0.5, 0.5, 0.25)
    acc = arr(1, 0, 1, 0)
    pairs, stats = build_pairs(g, p, acc, rule=rule, min_margin=0.0)
    assert pairs == [(2, 3)]
    assert stats.below_margin == 1 and stats.mean_margin == 0.25


def test_pairs_per_prompt():
    # accepted by P(yes): 1 (0.95), 4 (0.8), 0 (0.6); rejected by P(yes): 3 (0.05), 2 (0.3)
    p = arr(0.6, 0.95, 0.3, 0.05, 0.8)
    acc = arr(1, 1, 0, 0, 1)
    pairs, stats = build_pairs(["a"] * 5, p, acc, pairs_per_prompt=3)
    # k limited by the 2 rejected images; best with worst, second best with second worst
    assert pairs == [(1, 3), (4, 2)]
    assert stats.pairs == 2 and stats.prompts == 1
    assert stats.mean_margin == pytest.approx(((0.95 - 0.05) + (0.8 - 0.3)) / 2)
    # with a margin of 0.6 only the first pair survives; the prompt still gave a pair
    pairs, stats = build_pairs(["a"] * 5, p, acc, pairs_per_prompt=3, min_margin=0.6)
    assert pairs == [(1, 3)] and stats.below_margin == 0


def test_interleaved_groups():
    # samples of "x" and "y" alternate, as they come back from two workers
    g = ["x", "y", "x", "y", "x", "y"]
    p = arr(0.2, 0.9, 0.8, 0.3, 0.6, 0.1)
    acc = arr(0, 1, 1, 0, 1, 0)
    pairs, stats = build_pairs(g, p, acc)
    # x: accepted {2: 0.8, 4: 0.6}, rejected {0: 0.2} -> (2, 0); y: accepted {1}, rejected {3: 0.3, 5: 0.1} -> (1, 5)
    assert pairs == [(2, 0), (1, 5)]
    assert stats.prompts == 2 and stats.pairs == 2


def test_ties_go_to_lower_index():
    p = arr(0.5, 0.9, 0.9, 0.1, 0.1)
    acc = arr(0, 1, 1, 0, 0)
    pairs, _ = build_pairs(["a"] * 5, p, acc)
    assert pairs == [(1, 3)]
    pairs, _ = build_pairs(["a"] * 5, p, acc, pairs_per_prompt=2)
    assert pairs == [(1, 3), (2, 4)]


def test_best_worst_hermesflow():
    g = ["a"] * 3 + ["b"] * 3 + ["c"] * 3 + ["d"] * 2
    p = arr(
        0.9, 0.4, 0.7,  # a: max 0.9 (0), min 0.4 (1) -> kept
        0.55, 0.1, 0.3,  # b: max 0.55 < 0.6 -> dropped by min_chosen
        0.8, 0.8, 0.8,  # c: max == min -> no preference
        0.65, 0.62,  # d: max 0.65 >= 0.6, but the gap 0.03 is below min_margin 0.05
    )  # fmt: skip
    acc = p > 0.5  # all pass in c and d: best_worst still pairs them (decisions are not used)
    pairs, stats = build_pairs(g, p, acc, rule="best_worst", min_chosen=0.6, min_margin=0.05)
    assert pairs == [(0, 1)]
    assert stats.below_margin == 3 and stats.all_pass == 2 and stats.prompts == 4
    # without the margin, d gives a pair even though every image in it passed
    pairs, _ = build_pairs(g, p, acc, rule="best_worst", min_chosen=0.6)
    assert pairs == [(0, 1), (9, 10)]


def test_best_worst_pairs_per_prompt_do_not_overlap():
    p = arr(0.9, 0.1, 0.5)
    pairs, _ = build_pairs(["a"] * 3, p, p > 0.5, rule="best_worst", pairs_per_prompt=3)
    assert pairs == [(0, 1)]  # 3 images give at most 1 disjoint best/worst pair


def test_empty_and_as_dict():
    pairs, stats = build_pairs([], arr(), arr())
    assert pairs == [] and stats.prompts == 0 and stats.mean_margin == 0.0
    d = stats.as_dict()
    assert set(d) == {"prompts", "pairs", "all_pass", "all_fail", "below_margin", "mean_margin"}
    assert all(isinstance(v, float) for v in d.values())


def test_validation():
    with pytest.raises(ValueError, match="rule"):
        build_pairs(["a"], arr(0.5), arr(True), rule="best")
    with pytest.raises(ValueError, match="p_yes"):
        build_pairs(["a", "a"], arr(0.5), arr(True, False))
    with pytest.raises(ValueError, match="accepted"):
        build_pairs(["a", "a"], arr(0.5, 0.5), arr(True))
    with pytest.raises(ValueError, match="accepted"):
        build_pairs(["a"], arr(0.5), arr(2))
    with pytest.raises(ValueError, match="p_yes"):
        build_pairs(["a"], arr(np.nan), arr(True))
    with pytest.raises(ValueError, match="pairs_per_prompt"):
        build_pairs(["a"], arr(0.5), arr(True), pairs_per_prompt=0)
    with pytest.raises(ValueError, match="min_margin"):
        build_pairs(["a"], arr(0.5), arr(True), min_margin=-0.1)
    with pytest.raises(ValueError, match="min_margin"):
        build_pairs(["a"], arr(0.5), arr(True), min_margin=float("nan"))
    with pytest.raises(ValueError, match="accepted"):
        select_sft(["a", "b"], arr(True))


def test_select_sft():
    assert select_sft(["a", "a", "b", "c"], arr(True, False, True, True)) == [0, 2, 3]
    assert select_sft(["a"], arr(0)) == []
