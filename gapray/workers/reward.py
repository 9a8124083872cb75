"""The reward role: a Ray actor holding the model's own understanding branch, and the scores.

    Rollouts --score_rollouts(pool, rollouts)--> Scores (P(yes), decision, judge version)

The judge is frozen at the initial weights, or follows the policy (reward.follow_policy).
Tokens travel; pixels are decoded here and stay here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gapray.eval.verifier import ToyVerifier, Truth
from gapray.types import Prompt
from gapray.workers.generation import Rollouts
from gapray.workers.model_worker import ModelWorker, exclusive
from gapray.workers.pool import WorkerPool


@dataclass(frozen=True)
class Scores:
    p_yes: np.ndarray  # (N,) float32: P(yes) / (P(yes) + P(no))
    accepted: np.ndarray  # (N,) bool: the judge's decision
    versions: np.ndarray  # (N,) int: judge weights' version (0 = frozen initial)
    truth: Truth | None = None  # the verifier's verdicts, where the prompts have a ground truth


class RewardWorker(ModelWorker):
    """Scores images with the held model's understanding; decision s = 1 when S >= reward.threshold."""

    def __init__(self, model_cfg, reward_cfg, threads: int = 1, lora_scaling: float = 1.0):
        super().__init__(model_cfg, threads, lora_scaling)
        self.cfg = reward_cfg
        self.verifier = None  # made on the first share that asks for ground truth

    @exclusive
    def score(
        self, prompts: list[str], tokens: np.ndarray, specs: list[Prompt] | None = None
    ) -> tuple[np.ndarray, np.ndarray, int, Truth | None]:
        """Decode each row's tokens to pixels here (pixels stay where they are made) and ask the
        model's own understanding whether the image shows its prompt. With `specs` (each row's
        Prompt, for prompts with a ground truth) the verifier checks the same images too."""
        images = self.model.decode(
            torch.as_tensor(np.array(tokens), dtype=torch.long), batch_size=self.cfg.batch_size
        )
        verdict = self.model.judge(
            images, list(prompts), question=self.cfg.question, batch_size=self.cfg.batch_size
        )
        p_yes = verdict.p_yes.numpy().astype(np.float32)  # (N,)
        truth = None
        if specs is not None:
            if self.verifier is None:
                self.verifier = ToyVerifier()
            truth = self.verifier.check(specs, images)
        # s = 1 when S >= threshold (RewardConfig.threshold); numpy compares the float32 S with the
        # Python float in float32, so an S that prints as the threshold counts as equal to it.
        return p_yes, p_yes >= self.cfg.threshold, self.version, truth


def score_rollouts(pool: WorkerPool, rollouts: Rollouts, specs: list[Prompt] | None = None) -> Scores:
    """The pool's verdicts on every row; `specs` (one Prompt per row) adds the verifier's."""
    outs = pool.map_shares(
        "score",
        len(rollouts),
        lambda s: (rollouts.prompts[s], rollouts.tokens[s], None if specs is None else specs[s]),
    )
    return Scores(
        p_yes=np.concatenate([o[0] for o in outs]),
        accepted=np.concatenate([o[1] for o in outs]),
        versions=np.concatenate([np.full(len(o[0]), o[2], dtype=np.int64) for o in outs]),
        truth=None if specs is None else Truth.concat([o[3] for o in outs]),
    )
