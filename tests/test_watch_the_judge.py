"""The judge watched in a real toy loop, in one process (the roles of `gapray bench loop`, no
Ray): each step's rollouts are checked by the toy verifier where the pixels are (the reward
worker), logged beside the judge's pass rate, and stored per image in the rollouts.

    PYTHONPATH=. python -m pytest tests/test_watch_the_judge.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

from gapray.bench.loop import LocalSync, sequential_roles
from gapray.config import load_config
from gapray.controller import Controller
from gapray.eval.exact_scene import exact_scene
from gapray.storage import RunDir
from gapray.toy.detector import ToyDetector
from gapray.toy.world import make_splits

SMALL = ["curriculum.prompts_per_step=3", "generation.images_per_prompt=2", "run.progress=false"]


@pytest.fixture(scope="module")
def toy_steps(tmp_path_factory):
    cfg = load_config([*SMALL, f"run.out_dir={tmp_path_factory.mktemp('watch')}"])
    assert cfg.reward.verifier == "auto" and cfg.curriculum.prompts == "toy"
    roles = sequential_roles(cfg)
    ctl = Controller(cfg, RunDir(cfg.run.out_dir), roles)
    ctl.sync = LocalSync()
    rows = [ctl.step(s) for s in (1, 2)]
    return ctl, roles, rows


def test_each_step_logs_true_beside_judged_pass_rate(toy_steps):
    ctl, _, rows = toy_steps
    for row in rows:
        for key in ("true_pass_rate", "true_pass_rate_geneval", "rollout_objects_per_image"):
            assert 0 <= row[key] <= (1 if "rate" in key else 16), key
        assert row["true_pass_rate"] <= row["true_pass_rate_geneval"]  # exact scene is stricter
        assert row["gaming_warning"] == 0.0  # two steps are no trend
    assert ctl.monitor.judged == [r["pass_rate"] for r in rows]
    assert ctl.monitor.true == [r["true_pass_rate"] for r in rows]


def test_the_verdicts_are_the_verifiers_on_the_same_pixels(toy_steps):
    ctl, roles, _ = toy_steps
    rollouts = ctl.run.read_rollouts(1).to_pylist()
    assert len(rollouts) == 6 and {"true_exact", "true_geneval", "objects"} <= set(rollouts[0])
    # Decode the logged tokens again and check the stored verdicts against the rule.
    model = roles.reward.worker.model
    tokens = np.array([r["tokens"] for r in rollouts])
    import torch

    images = model.decode(torch.as_tensor(tokens, dtype=torch.long))
    by_text = {p.text: p for p in make_splits(0)["train"]}
    detector = ToyDetector()
    for r, image in zip(rollouts, images, strict=True):
        assert r["true_exact"] == exact_scene(by_text[r["prompt"]], detector.detect(image))[0]
