"""Ground truth for training rollouts: the toy world's exact verifier, run where the pixels are.

Where it sits: inside the reward worker, beside the model's own judge, when the run's training
prompts have a ground truth (`reward.verifier`: "auto" = the toy world's verifier when
`curriculum.prompts` is the toy world's train split). It never feeds the reward: it is the
judge-gaming monitor's other half (`gapray.algos.monitor`), logged as the true pass rate beside
the judged one, per step.

    truth = ToyVerifier().check(prompts, images)    # Truth(exact, geneval, objects), (N,) each
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gapray.types import Prompt


@dataclass(frozen=True)
class Truth:
    """What the verifier says about N images."""

    exact: np.ndarray
    """(N,) bool: the exact-scene rule (the asked objects and nothing else)."""
    geneval: np.ndarray
    """(N,) bool: GenEval's lenient rule."""
    objects: np.ndarray
    """(N,) int: objects detected in each image."""

    @staticmethod
    def concat(parts: Sequence[Truth]) -> Truth:
        return Truth(
            exact=np.concatenate([t.exact for t in parts]),
            geneval=np.concatenate([t.geneval for t in parts]),
            objects=np.concatenate([t.objects for t in parts]),
        )


class ToyVerifier:
    """The toy world's exact detector under both rules."""

    def __init__(self):
        from gapray.toy.detector import ToyDetector

        self.detector = ToyDetector()

    def check(self, prompts: Sequence[Prompt], images) -> Truth:
        from gapray.eval.exact_scene import exact_scene, objects_in
        from gapray.eval.geneval import evaluate_image

        exact, geneval, objects = [], [], []
        for p, image in zip(prompts, images, strict=True):
            found = self.detector.detect(image)
            exact.append(exact_scene(p, found)[0])
            geneval.append(evaluate_image(p, found)[0])
            objects.append(objects_in(p, found))
        return Truth(np.array(exact, bool), np.array(geneval, bool), np.array(objects, np.int64))


def verifies(cfg, image_size: int) -> bool:
    """Whether a run checks its training rollouts with the toy world's verifier: "toy" always
    (preflight refuses it for a model of another image size), "auto" when the training prompts
    are the toy world's and the model's images (`image_size` px) are too."""
    from gapray.config import TOY_PROMPTS
    from gapray.toy.world import IMAGE_SIZE

    v = cfg.reward.verifier
    return v == "toy" or (v == "auto" and cfg.curriculum.prompts == TOY_PROMPTS and image_size == IMAGE_SIZE)
