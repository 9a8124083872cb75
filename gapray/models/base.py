"""The model seam: the four operations gapray needs from a unified multimodal model.

Everything in the self-improvement loop (generation pool, reward pool, learner) talks to a model
through this interface only; one adapter per model family implements it (`janus.py` first).
Nothing outside an adapter reaches into model internals.

    tokens = model.generate(prompts, n=4, cfg_scale=5.0, temperature=1.0, seed=0)   # (B*n, T)
    images = model.decode(tokens)                                                   # list[PIL.Image]
    verdict = model.judge(images, prompts_repeated)                                 # P(yes), decision
    logp, per_tok = model.image_logprobs(prompts_repeated, tokens, cfg_scale=None)  # (N,), (N, T)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from PIL import Image

TrainableMode = Literal["llm", "all", "lora"]
"""Which parameters train: the LLM backbone only (the paper), all but the frozen image tokenizer,
or LoRA adapters on the LLM backbone (peft)."""

DEFAULT_QUESTION = "Does this image show {prompt}? Answer yes or no."


def guidance(cfg_scale: float) -> float | None:
    """A configured CFG weight -> the adapters' `cfg_scale` argument. The one place the rule
    lives: a weight of 1 is the conditional distribution itself, so no unconditional rows run."""
    return None if cfg_scale == 1 else cfg_scale


@dataclass(frozen=True)
class Judgement:
    """The understanding branch's verdicts on a batch of (image, prompt) pairs."""

    p_yes: torch.Tensor
    """(N,) float in [0, 1]: P(yes) / (P(yes) + P(no)) at the answer position."""
    decision: torch.Tensor
    """(N,) bool: p_yes >= threshold (s = 1 when S >= threshold, as reward.threshold documents)."""


class UnifiedModel(Protocol):
    """What every model family adapter provides."""

    num_image_tokens: int
    """Image tokens per generated image (T), e.g. 576 for Janus-Pro at 384 px."""
    codebook_size: int
    """Size of the image-token vocabulary (the VQ codebook), e.g. 16,384."""

    def generate(
        self,
        prompts: list[str],
        n: int = 1,
        cfg_scale: float | None = 5.0,
        temperature: float = 1.0,
        seed: int | list[int] = 0,
    ) -> torch.Tensor:
        """Image token ids (len(prompts) * n, T); rows grouped by prompt; deterministic per seed."""
        ...

    def decode(self, tokens: torch.Tensor) -> list[Image.Image]:
        """Image token ids (N, T) -> N RGB images."""
        ...

    def judge(self, images: list[Image.Image], prompts: list[str], question: str | None = None) -> Judgement:
        """Ask the understanding branch whether each image shows its prompt."""
        ...

    def image_logprobs(
        self,
        prompts: list[str],
        tokens: torch.Tensor,
        cfg_scale: float | None = None,
        temperature: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced log-probs of given image tokens: summed (N,) and per token (N, T);
        differentiable; with cfg_scale, under the CFG-combined distribution used for sampling."""
        ...

    def set_trainable(self, mode: TrainableMode) -> None:
        """Freeze everything but the chosen parameter set."""
        ...

    def save_pretrained(self, path: str) -> None:
        """Write a checkpoint that transformers can load without gapray."""
        ...


def combine_cfg(logits: torch.Tensor, cfg_scale: float | None) -> torch.Tensor:
    """(2R, ..., K) cond rows then uncond rows -> (R, ..., K) guided logits,
    uncond + w (cond - uncond) (Show-o's (1 + s) cond - s uncond is w = 1 + s); None: the
    conditional rows alone were given and come back unchanged. Every adapter combines here."""
    if cfg_scale is None:
        return logits
    cond, uncond = logits.chunk(2)
    return uncond + cfg_scale * (cond - uncond)


def check_generate_args(prompts, n, cfg_scale, temperature) -> None:
    """The arguments of `UnifiedModel.generate`, checked alike for every family."""
    if not isinstance(prompts, (list, tuple)) or len(prompts) == 0:
        raise ValueError("prompts: the prompt list is empty")
    if any(not isinstance(p, str) for p in prompts):
        raise ValueError("prompts: every prompt must be a string")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n: images per prompt must be an integer >= 1, got {n!r}")
    if cfg_scale is not None and not cfg_scale > 1:
        raise ValueError(f"cfg_scale: classifier-free guidance needs a scale > 1, got {cfg_scale}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")


def check_judge_args(images, prompts, question: str) -> None:
    """The arguments of `UnifiedModel.judge` (question: the template in use, after the
    adapter's default), checked alike for every family."""
    if len(images) != len(prompts):
        raise ValueError(f"judge: {len(images)} images for {len(prompts)} prompts")
    if not prompts:
        raise ValueError("judge: nothing to judge (empty batch)")
    for i, im in enumerate(images):
        if not isinstance(im, Image.Image):
            raise ValueError(f"judge: image {i} is a {type(im).__name__}, not a PIL image")
    if "{prompt}" not in question:
        raise ValueError(f"judge: question template {question!r} has no {{prompt}} field")
