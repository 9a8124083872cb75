"""Every evaluator asks the run's question with the run's threshold (reward.question and
reward.threshold, through EvalSettings), so evaluation and training judge alike.

    PYTHONPATH=. python -m pytest tests/test_eval_question.py -q
"""

from __future__ import annotations

import pytest

from gapray.config import load_config
from gapray.eval.base import EvalSettings
from gapray.eval.judge_eval import JudgeEvaluator
from gapray.eval.self_eval import SelfEvaluator
from gapray.eval.stage import eval_settings
from gapray.eval.toy_eval import ToyEvaluator
from gapray.models.tiny import tiny_janus

QUESTION = "Is there {prompt} in this image? Answer yes or no."


class Spy:
    """A model whose judge records the questions it is asked."""

    def __init__(self, model):
        self.model, self.asked = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def judge(self, images, prompts, question=None, batch_size=64):
        self.asked.append(question)
        return self.model.judge(images, prompts, question=question, batch_size=batch_size)


@pytest.fixture(scope="module")
def model():
    return tiny_janus(seed=0)


def settings(threshold: float) -> EvalSettings:
    return EvalSettings(2, 3.0, 1.0, 0, 8, question=QUESTION, threshold=threshold)


def test_eval_settings_come_from_reward():
    cfg = load_config(["model=tiny", f"reward.question='{QUESTION}'", "reward.threshold=0.3"])
    s = eval_settings(cfg)
    assert (s.question, s.threshold) == (QUESTION, 0.3)


@pytest.mark.parametrize("evaluator", [SelfEvaluator("geneval"), ToyEvaluator(), JudgeEvaluator("toy")])
def test_evaluators_ask_the_question_and_decide_at_the_threshold(model, evaluator):
    prompts = evaluator.prompts()[:2]
    spy = Spy(model)
    p_yes = [
        r["judge_p_yes"] for r in evaluator.share(spy, prompts, [0, 1], settings(0.5), None, set()).records
    ]
    assert spy.asked and set(spy.asked) == {QUESTION}
    # The tiny judge says P(yes) ~ 0.46: a threshold between its scores splits them as S >= threshold.
    # The cut lies halfway between two neighbouring scores: the records keep P(yes) to 6
    # decimals, so a cut equal to a recorded score could sit above the unrounded one.
    ranked = sorted(p_yes)
    cut = (ranked[len(ranked) // 2 - 1] + ranked[len(ranked) // 2]) / 2
    share = evaluator.share(model, prompts, [0, 1], settings(cut), None, set())
    assert [r["judge_yes"] for r in share.records] == [p >= cut for p in p_yes]
    assert any(p < cut for p in p_yes)
    if isinstance(evaluator, ToyEvaluator):  # its understanding questions too
        low = evaluator.share(model, prompts, [0, 1], settings(0.01), None, set())
        high = evaluator.share(model, prompts, [0, 1], settings(0.99), None, set())
        assert all(d for _, _, d in low.questions) and not any(d for _, _, d in high.questions)
