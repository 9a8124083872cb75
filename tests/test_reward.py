"""The reward decision s = 1 when S >= reward.threshold, at S exactly equal to the threshold.

RewardWorker is a plain class (Ray wraps it in gapray.run); here it holds a fake model whose
judge returns fixed P(yes) values, so the decision rule is checked on hand-picked scores without
Ray or a real model. The adapter's own `judge` decision (JanusAdapter.threshold) is checked on
the tiny random Janus, with its threshold set to a score it actually produced.

    PYTHONPATH=. python -m pytest tests/test_reward.py -q
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gapray.config import ModelConfig, RewardConfig
from gapray.models.base import Judgement
from gapray.workers import model_worker
from gapray.workers.reward import RewardWorker


class FixedJudge:
    """A stand-in model: decode makes blank images, judge returns the given P(yes) row by row."""

    def __init__(self, p_yes: list[float]):
        self.p_yes = torch.tensor(p_yes, dtype=torch.float32)  # (N,), float32 like the adapter's
        self.judged: list[str] = []
        self.model = torch.nn.Module()  # the adapter's module: no parameters, nothing to sync

    def decode(self, tokens: torch.Tensor, batch_size: int = 64) -> list[Image.Image]:
        return [Image.new("RGB", (4, 4)) for _ in range(tokens.shape[0])]  # tokens: (N, T)

    def judge(self, images, prompts, question=None, batch_size=64) -> Judgement:
        assert len(images) == len(prompts) == len(self.p_yes)
        self.judged = list(prompts)
        # the fake's own decision is deliberately wrong (always no): the worker must apply its threshold
        return Judgement(p_yes=self.p_yes.clone(), decision=torch.zeros(len(self.p_yes), dtype=torch.bool))


def reward_worker(monkeypatch: pytest.MonkeyPatch, p_yes: list[float], threshold: float) -> RewardWorker:
    fake = FixedJudge(p_yes)
    monkeypatch.setattr(model_worker, "load_adapter", lambda model_cfg, device: fake)
    return RewardWorker(ModelConfig(name="tiny"), RewardConfig(threshold=threshold, batch_size=2))


@pytest.mark.parametrize(
    ("threshold", "p_yes", "expected"),
    [
        # dyadic values: exact in float32 and float64, so S == threshold exactly
        (0.5, [0.25, 0.5, 0.75], [False, True, True]),
        (0.75, [0.5, 0.75, 0.875], [False, True, True]),
        # 0.7 is not exact in binary: the judge's float32 S = float32(0.7) still counts as equal
        # (numpy compares a float32 array with a Python float in float32)
        (0.7, [0.6999, 0.7, 0.7001], [False, True, True]),
    ],
)
def test_reward_worker_accepts_a_score_equal_to_the_threshold(monkeypatch, threshold, p_yes, expected):
    worker = reward_worker(monkeypatch, p_yes, threshold)
    tokens = np.zeros((len(p_yes), 5), dtype=np.int64)  # (N, T) image tokens
    got_p, accepted, version, _ = worker.score(["a", "b", "c"], tokens)
    assert got_p.dtype == np.float32 and got_p.tolist() == np.float32(p_yes).tolist()
    assert accepted.dtype == bool and accepted.tolist() == expected
    assert version == 0 and worker.model.judged == ["a", "b", "c"]


def test_adapter_judge_decision_is_inclusive_at_its_threshold():
    from gapray.models import load_model

    model = load_model("tiny")
    images = model.decode(torch.zeros((2, model.num_image_tokens), dtype=torch.long))
    first = model.judge(images, ["a red circle", "two blue squares"])
    s = first.p_yes  # (2,) float32
    assert s[0] != s[1]  # two prompts, two different scores
    model.threshold = float(s.min())  # the lower score sits exactly on the threshold
    again = model.judge(images, ["a red circle", "two blue squares"])
    assert torch.equal(again.p_yes, s)  # same inputs, same scores (the rule below is then exact)
    assert again.decision.tolist() == [True, True]
    hi = int(s.argmax())
    model.threshold = float(s[hi])  # now only the higher score reaches the threshold
    decision = model.judge(images, ["a red circle", "two blue squares"]).decision.tolist()
    assert decision == [i == hi for i in range(2)]
