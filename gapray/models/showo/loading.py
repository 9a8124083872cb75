"""Show-o by model.name: which names are a Show-o (`is_showo`: "showo_tiny", "toy_showo" or a
Show-o checkpoint directory), loading one (`load_showo`), and its image size from the configs alone
(`showo_image_size`). What `models.load_model` and the run's checks call."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from gapray.models.showo.adapter import ShowoAdapter
from gapray.models.showo.checkpoint import _read_json, check_showo_checkpoint_dir, is_showo_checkpoint
from gapray.models.showo.layout import MagvitConfig
from gapray.models.showo.tiny import TINY_VQ, tiny_showo

# ------------------------------------------------------------------------- names and loading
TINY_NAME = "showo_tiny"
"""model.name of the tiny Show-o built in code."""
TOY_NAME = "toy_showo"
"""model.name of the toy Show-o, trained by `gapray toy pretrain --family showo`."""
TOY_CHECKPOINT = Path(__file__).resolve().parents[2] / "toy" / "checkpoint_showo"
"""Where the toy Show-o's checkpoint lives (Show-o's checkpoint layout)."""


def _path(name_or_path: str) -> Path:
    return TOY_CHECKPOINT if name_or_path == TOY_NAME else Path(name_or_path)


def is_showo(name_or_path: str) -> bool:
    """Whether a model.name is a Show-o: the tiny one built in code, the toy one (whether or not
    its checkpoint is there: loading it says what is missing) or a Show-o checkpoint dir."""
    return name_or_path in (TINY_NAME, TOY_NAME) or (
        Path(name_or_path).is_dir() and is_showo_checkpoint(name_or_path)
    )


def load_showo(
    name_or_path: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    steps: int | None = None,
    schedule: str | None = None,
    logprob_draws: int | None = None,
) -> ShowoAdapter:
    """The Show-o named: "showo_tiny" (built in code from seed 0), "toy_showo" (TOY_CHECKPOINT) or a
    Show-o checkpoint directory; steps / schedule / logprob_draws override the model's own (None = keep)."""
    overrides = dict(steps=steps, schedule=schedule, logprob_draws=logprob_draws)
    if name_or_path == TINY_NAME:
        return tiny_showo(seed=0, dtype=dtype, device=device, **overrides)
    return ShowoAdapter.from_pretrained(_path(name_or_path), dtype=dtype, device=device, **overrides)


def showo_image_size(name_or_path: str) -> int:
    """Image side in pixels, from the configs only (no weights): sqrt(num_vq_tokens) times the
    MAGVIT-v2 downsampling factor."""
    if name_or_path == TINY_NAME:
        return math.isqrt(16) * TINY_VQ.downsample
    p = _path(name_or_path)
    files = check_showo_checkpoint_dir(p)
    cfg = _read_json(p / "config.json")
    vq = MagvitConfig.from_json(_read_json(files["vq"] / "config.json"))
    return math.isqrt(int(cfg.get("num_vq_tokens", 256))) * vq.downsample
