"""The algorithms of gapray's online loop as pure functions and small classes (torch / numpy only).

- `dpo`: preference losses (DPO sigmoid, IPO, hinge) + the NLL term, and the SFT loss.
- `pairs`: the model's own P(yes) judgements -> preference pairs, or the SFT selection.
- `curriculum`: which prompts each step generates for (uniform, the paper's replay, pass-rate band).

None of them imports Ray, vLLM or transformers, so they are tested on hand-made tensors and arrays.
"""

from gapray.algos.curriculum import (
    Curriculum,
    PassRateBandCurriculum,
    ReplayCurriculum,
    UniformCurriculum,
    make_curriculum,
)
from gapray.algos.dpo import dpo_objective, preference_loss, sft_loss
from gapray.algos.pairs import PairStats, build_pairs, select_sft

__all__ = [
    "Curriculum",
    "PairStats",
    "PassRateBandCurriculum",
    "ReplayCurriculum",
    "UniformCurriculum",
    "build_pairs",
    "dpo_objective",
    "make_curriculum",
    "preference_loss",
    "select_sft",
    "sft_loss",
]
