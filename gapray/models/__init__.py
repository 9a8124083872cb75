"""Model adapters behind the model seam (`base.UnifiedModel`), and name resolution.

load_model("toy")               # the shipped toy checkpoint (gapray/toy/checkpoint)
load_model("tiny")              # a random tiny Janus built in code (tests)
load_model("/ckpt/Janus-Pro-1B")  # a local save_pretrained directory (or a hub id online)
"""

from __future__ import annotations

from pathlib import Path

from gapray.models.base import Judgement, TrainableMode, UnifiedModel
from gapray.models.janus import CheckpointError, JanusAdapter

TOY_CHECKPOINT = Path(__file__).resolve().parent.parent / "toy" / "checkpoint"

__all__ = [
    "TOY_CHECKPOINT",
    "CheckpointError",
    "JanusAdapter",
    "Judgement",
    "TrainableMode",
    "UnifiedModel",
    "load_model",
]


def load_model(name_or_path: str, **kwargs) -> JanusAdapter:
    """Resolve a model name ("toy", "tiny") or checkpoint path to a loaded adapter."""
    if name_or_path == "tiny":
        from gapray.models.tiny import tiny_janus

        return tiny_janus(**kwargs)
    if name_or_path == "toy":
        if not (TOY_CHECKPOINT / "config.json").is_file():
            raise CheckpointError(
                f"the toy checkpoint is missing at {TOY_CHECKPOINT}; train it with `gapray toy pretrain`"
            )
        return JanusAdapter.from_pretrained(TOY_CHECKPOINT, **kwargs)
    return JanusAdapter.from_pretrained(name_or_path, **kwargs)
