"""Preference pairs and SFT selections from the model's own judgements (pure numpy).

Where it sits: after the RewardPool has scored every generated image with the model's own
understanding (P(yes) and a yes/no decision), the controller flattens the scored samples of one
step into three aligned arrays and calls

    pairs, stats = build_pairs(group_ids, p_yes, accepted, rule="paper", min_margin=0.05)
    # pairs: [(chosen_index, rejected_index), ...] into the flat arrays, for the LearnerGroup

or, for self-filtered SFT, `select_sft(group_ids, accepted)`. group_ids is the prompt id of each
sample; samples of one prompt need not be contiguous (they come back from several workers).

Rules:
  - "paper" (Algorithm 2 of the paper): chosen is an image the model accepts, rejected one it
    rejects; the highest-P(yes) accepted image against the lowest-P(yes) rejected one.
  - "best_worst" (HermesFlow): the highest- against the lowest-P(yes) image of the prompt,
    whatever the decisions; HermesFlow keeps a pair only when max > min and max > 0.6
    (min_chosen=0.6 here).
With pairs_per_prompt = k, the k best against the k worst, paired in order (best with worst,
second best with second worst, ...). Ties break towards the lower flat index, so the result does
not depend on the order of equal scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

RULES = ("paper", "best_worst")


@dataclass(frozen=True)
class PairStats:
    """What happened to the prompts of one step; all counts are prompts unless named otherwise."""

    prompts: int
    """Prompts (groups) seen."""
    pairs: int
    """Pairs built (may exceed the prompts that gave one when pairs_per_prompt > 1)."""
    all_pass: int
    """Prompts all of whose images were accepted (no rejected image: no pair under "paper")."""
    all_fail: int
    """Prompts none of whose images was accepted (the curriculum's discard candidates)."""
    below_margin: int
    """Prompts that had candidates for a pair but lost them all to min_margin / min_chosen
    (a gap must exceed min_margin, so images that all scored the same count here)."""
    mean_margin: float
    """Mean P(yes) gap chosen - rejected over the pairs built; 0 when there are none."""

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def _groups(group_ids: Sequence[str]) -> dict[str, list[int]]:
    """Flat indices of each group, in order of first appearance (dicts keep insertion order)."""
    groups: dict[str, list[int]] = {}
    for i, g in enumerate(group_ids):
        groups.setdefault(g, []).append(i)
    return groups


def _check_inputs(group_ids: Sequence[str], p_yes: np.ndarray | None, accepted: np.ndarray) -> None:
    n = len(group_ids)
    if accepted.ndim != 1 or len(accepted) != n:
        raise ValueError(f"accepted must have shape ({n},) like group_ids, got {accepted.shape}")
    if not np.isin(accepted, (0, 1)).all():
        raise ValueError("accepted must hold booleans (or 0/1)")
    if p_yes is not None:
        if p_yes.ndim != 1 or len(p_yes) != n:
            raise ValueError(f"p_yes must have shape ({n},) like group_ids, got {p_yes.shape}")
        if not np.isfinite(p_yes).all():
            raise ValueError("p_yes must be finite")


def build_pairs(
    group_ids: Sequence[str],
    p_yes: np.ndarray,
    accepted: np.ndarray,
    *,
    rule: str = "paper",
    min_margin: float = 0.0,
    min_chosen: float = 0.0,
    pairs_per_prompt: int = 1,
) -> tuple[list[tuple[int, int]], PairStats]:
    """Preference pairs (chosen, rejected) as indices into the flat arrays, and their stats.

    group_ids: (S,) prompt id per sample; p_yes: (S,) the model's P(yes) per image; accepted: (S,)
    its yes/no decision. A pair is kept only if p_yes[chosen] - p_yes[rejected] > min_margin (strict:
    with min_margin 0, equal scores make no pair) and p_yes[chosen] >= min_chosen (both rules).
    Pairs come out grouped by prompt, prompts in order of first appearance.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if pairs_per_prompt < 1:
        raise ValueError(f"pairs_per_prompt must be >= 1, got {pairs_per_prompt!r}")
    if not min_margin >= 0:  # also refuses NaN, which no gap would fail against
        raise ValueError(f"min_margin must be >= 0, got {min_margin!r}")
    p_yes = np.asarray(p_yes, dtype=np.float64)
    accepted = np.asarray(accepted)
    _check_inputs(group_ids, p_yes, accepted)
    accepted = accepted.astype(bool)

    pairs: list[tuple[int, int]] = []
    margins: list[float] = []
    groups = _groups(group_ids)
    all_pass = all_fail = below_margin = 0
    for idx in groups.values():
        n_acc = int(accepted[idx].sum())
        all_pass += n_acc == len(idx)
        all_fail += n_acc == 0

        if rule == "paper":
            pos = [i for i in idx if accepted[i]]
            neg = [i for i in idx if not accepted[i]]
            if not pos or not neg:
                continue  # nothing to contrast: counted in all_pass / all_fail
        else:
            pos = neg = idx
        # Best first / worst first; the index as second key makes ties go to the lower index.
        best = sorted(pos, key=lambda i: (-p_yes[i], i))
        worst = sorted(neg, key=lambda i: (p_yes[i], i))
        if rule == "paper":
            k = min(pairs_per_prompt, len(best), len(worst))
        else:
            k = min(pairs_per_prompt, len(idx) // 2)  # the top k and bottom k must not overlap
            if k == 0:
                continue  # a single image: nothing to contrast

        kept = 0
        for c, r in zip(best[:k], worst[:k], strict=True):
            gap = float(p_yes[c] - p_yes[r])
            # Strict, as PairsConfig.min_margin documents: a gap equal to the margin is dropped, so
            # min_margin 0 drops equal scores under both rules (HermesFlow's max != min).
            if gap <= min_margin or p_yes[c] < min_chosen:
                continue
            pairs.append((c, r))
            margins.append(gap)
            kept += 1
        below_margin += kept == 0

    stats = PairStats(
        prompts=len(groups),
        pairs=len(pairs),
        all_pass=all_pass,
        all_fail=all_fail,
        below_margin=below_margin,
        mean_margin=float(np.mean(margins)) if margins else 0.0,
    )
    return pairs, stats


def select_sft(group_ids: Sequence[str], accepted: np.ndarray) -> list[int]:
    """The paper's Algorithm 1: every accepted image becomes a (prompt, image) training example.

    Returns the flat indices of the accepted samples, in order.
    """
    accepted = np.asarray(accepted)
    _check_inputs(group_ids, None, accepted)
    return [int(i) for i in np.flatnonzero(accepted.astype(bool))]
