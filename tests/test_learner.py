"""The learner rank's update in-process (world size 1, no Ray): the reference gives zero
rewards and log 2 loss at the start, the trainable parameters move, the frozen ones do not."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gapray.config import load_config
from gapray.models.tiny import tiny_janus
from gapray.workers.learner import LearnerWorker

PROMPTS = ["a photo of a red circle", "a photo of two blue squares", "a photo of a cross"]


def _learner(*overrides: str) -> LearnerWorker:
    cfg = load_config(["model=tiny", *overrides])
    return LearnerWorker(cfg.model, cfg.learner, rank=0, world_size=1, master="", seed=0)


def _pairs() -> dict:
    m = tiny_janus(seed=0)
    tokens = m.generate(PROMPTS, n=2, cfg_scale=3.0, seed=5).numpy()  # rows grouped by prompt
    return {"prompts": PROMPTS, "chosen": tokens[0::2], "rejected": tokens[1::2]}


@pytest.mark.parametrize("trainable", ["all", "llm", "lora"])
def test_first_dpo_step_starts_at_the_reference_and_moves_the_policy(trainable):
    learner = _learner(f"model.trainable={trainable}", "learner.nll_weight=0")
    before = {n: p.detach().clone() for n, p in learner.policy.model.named_parameters()}
    stats = learner.update(_pairs())
    # Policy == reference before the first step: zero implicit rewards, loss = log 2.
    assert stats["reward_chosen"] == 0.0 and stats["reward_rejected"] == 0.0
    assert stats["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert stats["optimizer_steps"] == 1 and learner.version == 1
    after = dict(learner.policy.model.named_parameters())
    moved = [n for n, p in after.items() if not torch.equal(p.detach(), before[n])]
    trainable_names = set(learner.policy.trainable_parameters())
    assert moved and set(moved) <= trainable_names
    # The second step sees a policy that differs from the reference.
    stats2 = learner.update(_pairs())
    assert stats2["reward_margin"] != 0.0 and np.isfinite(stats2["loss"])


def test_sft_step_lowers_the_nll_of_its_examples():
    learner = _learner("learner=sft", "learner.lr=1e-3")
    batch = _pairs()
    batch = {"prompts": batch["prompts"], "tokens": batch["chosen"]}
    first = learner.update(batch)["nll"]
    for _ in range(5):
        last = learner.update(batch)["nll"]
    assert last < first


def test_a_non_finite_loss_skips_the_step_and_is_counted():
    learner = _learner()
    before = {n: p.detach().clone() for n, p in learner.policy.trainable_parameters().items()}
    batch = _pairs()
    with torch.no_grad():  # poison the policy: every log-prob becomes NaN
        learner.policy.model.model.generation_head.vision_head.bias.fill_(float("nan"))
    stats = learner.update(batch)
    assert stats["skipped_steps"] == 1 and stats["optimizer_steps"] == 0
    assert stats["bad_steps_in_a_row"] == 1 and learner.version == 0
    for n, p in learner.policy.trainable_parameters().items():
        if "vision_head.bias" not in n:
            assert torch.equal(p.detach(), before[n]), n
