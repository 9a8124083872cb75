"""The external-judge role: a Ray actor holding one image-text-to-text judge, and its verdicts.

    images (PNG bytes) + prompts --JudgeWorker.score--> JudgeVerdicts (P(yes), decision)

Where it sits: beside the reward role, for evaluation only (`eval=judge`, `gapray diagnose`).
One pool per judge (`gapray.eval.judges.build_judge_pools`), its actors placed and sized from
`eval.judge_cpus` / `eval.judge_gpus`, never by decorators; the images it scores were made on
a generation worker and travel as PNG bytes (the judge sees exactly the pixels written to
the evaluation folder). A judge never receives weight updates: it is not the policy.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class JudgeVerdicts:
    """One judge's verdicts on a batch, in the order of the images it was sent."""

    p_yes: np.ndarray
    """(N,) float32: P(yes) / (P(yes) + P(no))."""
    yes: np.ndarray
    """(N,) bool: p_yes >= the threshold it was asked with."""


class JudgeWorker:
    """Loads one judge (`VlmJudge`) on this actor's device and scores batches of images."""

    def __init__(self, path: str, dtype: str = "auto", batch_size: int = 8, threads: int = 1):
        from gapray.models.vlm_judge import VlmJudge
        from gapray.workers.model_worker import resolve_dtype

        torch.set_num_threads(max(1, threads))
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.judge = VlmJudge.from_pretrained(
            path, dtype=resolve_dtype(dtype, self.device), device=self.device
        )
        self.batch_size = batch_size

    def ready(self) -> dict:
        from gapray.placement import actor_location

        return {**actor_location(), "device": self.device, "judge": self.judge.name}

    def score(
        self, images: list[bytes], prompts: list[str], question: str, threshold: float
    ) -> JudgeVerdicts:
        """PNG bytes and prompt texts (same length) -> the judge's verdicts."""
        pil = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
        v = self.judge.judge(
            pil, list(prompts), question=question, threshold=threshold, batch_size=self.batch_size
        )
        return JudgeVerdicts(p_yes=v.p_yes.numpy().astype(np.float32), yes=v.decision.numpy().astype(bool))
