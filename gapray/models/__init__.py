"""Model adapters behind the model seam (`base.UnifiedModel`), and name resolution.

load_model("toy")               # the shipped toy checkpoint (gapray/toy/checkpoint)
load_model("toy_showo")         # the toy Show-o (gapray/toy/checkpoint_showo, `gapray toy pretrain --family showo`)
load_model("tiny")              # a random tiny Janus built in code (tests)
load_model("janus_pro_shape")   # Janus-Pro-1B's real layout (576 tokens, 16,384 codes, 384 px), CPU size
load_model("/ckpt/Janus-Pro-1B")  # a local save_pretrained directory (or a hub id online)
"""

from __future__ import annotations

from pathlib import Path

from gapray.models.base import Judgement, TrainableMode, UnifiedModel
from gapray.models.janus import CheckpointError, JanusAdapter
from gapray.models.showo.loading import TOY_CHECKPOINT as TOY_SHOWO_CHECKPOINT
from gapray.models.showo.loading import TOY_NAME as TOY_SHOWO

TOY_CHECKPOINT = Path(__file__).resolve().parent.parent / "toy" / "checkpoint"
BUILT_IN_CODE = ("tiny", "janus_pro_shape", "showo_tiny")
"""Model names built in code from a seed (no checkpoint on disk; a vLLM engine needs one saved)."""

__all__ = [
    "BUILT_IN_CODE",
    "TOY_CHECKPOINT",
    "TOY_SHOWO",
    "TOY_SHOWO_CHECKPOINT",
    "CheckpointError",
    "JanusAdapter",
    "Judgement",
    "TrainableMode",
    "UnifiedModel",
    "load_model",
]


def load_model(name_or_path: str, **kwargs) -> JanusAdapter:
    """Resolve a model name ("toy", "toy_showo", "tiny", "janus_pro_shape", "showo_tiny") or
    checkpoint path to a loaded adapter. kwargs: dtype and device (tiny: dtype only; it is
    CPU-only, built for tests). A missing toy checkpoint is a CheckpointError naming the recipe."""
    if name_or_path == "tiny":
        from gapray.models.tiny import tiny_janus

        return tiny_janus(**kwargs)
    if name_or_path == "janus_pro_shape":
        from gapray.models.shapes import janus_pro_shape

        return janus_pro_shape(**kwargs)
    from gapray.models.showo import is_showo, load_showo, loading

    if name_or_path == TOY_SHOWO:
        path = loading.TOY_CHECKPOINT  # read at call time: the one place the path lives
        if not (path / "config.json").is_file():
            raise CheckpointError(
                f"the toy Show-o checkpoint is missing at {path}; train it with "
                "`gapray toy pretrain --family showo`"
            )
    if is_showo(name_or_path):  # "showo_tiny", "toy_showo" or a Show-o checkpoint directory
        return load_showo(name_or_path, **kwargs)
    if name_or_path == "toy":
        if not (TOY_CHECKPOINT / "config.json").is_file():
            raise CheckpointError(
                f"the toy checkpoint is missing at {TOY_CHECKPOINT}; train it with `gapray toy pretrain`"
            )
        return JanusAdapter.from_pretrained(TOY_CHECKPOINT, **kwargs)
    return JanusAdapter.from_pretrained(name_or_path, **kwargs)
