"""Slow end-to-end test of the toy recipe (`gapray toy pretrain`) at a shortened length.

Runs both stages with few steps on CPU (about 3 min) and checks that the losses fall, that the
understanding branch reads the image far above chance (the per-patch readout: colour and shape
word of each object cell; the yes/no answer itself needs thousands of steps, see
docs/toy_recipe_notebook.md), that the run writes a loadable save_pretrained checkpoint with
the eval defaults, and that a rerun resumes instead of starting over.

    pytest -m slow tests/test_toy_pretrain.py
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from gapray.models.janus import JanusAdapter
from gapray.toy.pretrain import main
from gapray.toy.pretrain_lm import patch_accuracy
from gapray.toy.pretrain_vq import random_scenes


@pytest.mark.slow
def test_short_recipe_learns_and_resumes(tmp_path, capsys):
    torch.manual_seed(0)
    args = ["--out", str(tmp_path), "--vq-steps", "20", "--lm-steps", "300", "--gen-steps", "300"]
    args += ["--log-every", "25", "--batch", "16"]
    assert main(args) == 0
    log = capsys.readouterr().out
    lines = re.findall(r"\[lm \d+/\d+\] \d+s patch ([\d.]+) answer ([\d.]+) gen ([\d.]+)", log)
    first, last = [tuple(map(float, x)) for x in (lines[0], lines[-1])]
    assert last[0] < 0.5 * first[0] and last[2] < 0.5 * first[2], log  # patch and generation NLL fall

    ckpt = tmp_path / "checkpoint"
    settings = json.loads((ckpt / "gapray_adapter.json").read_text())
    assert {"cfg_scale", "temperature"} <= settings.keys()
    adapter = JanusAdapter.from_pretrained(ckpt)
    acc = patch_accuracy(adapter, random_scenes(np.random.default_rng(7), 32, 6))
    assert acc > 0.2, acc  # chance (the top colour and the top shape word both right) is ~0.02

    # A rerun with the same --out finds the finished state and only rewrites the checkpoint.
    assert main(args) == 0
    assert "resumed" in capsys.readouterr().out
