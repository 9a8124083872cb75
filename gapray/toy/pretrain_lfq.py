"""Stage 1 of the toy Show-o recipe: train the MAGVIT-v2 LFQ tokenizer on toy scenes.

Where it sits: `gapray toy pretrain --family showo` (gapray/toy/pretrain_showo_run.py) runs this
first; the trained tokenizer turns rendered scenes into the 16 image tokens the Show-o stage
learns to predict, and decodes the model's own generations into pixels for the judge and the
verifier. The Janus counterpart is pretrain_vq.py, whose scene sampling (`random_scenes`),
pixel scaling (`to_pixels`) and cell contents (`cell_codes`) this stage reuses.

A look-up-free quantizer has no codebook to learn: code c is the sign pattern of the encoder's
z_channels latents (most significant bit first) and its embedding the bits as +-1
(`magvit.LFQuantizer`). As for the Janus VQ, the tokens are supervised: the world is
cell-aligned and the tokenizer downsamples by 8, so one token is one cell and its code is the
cell's content id (`cell_codes`: 0 empty, 1 + 6 x shape + colour; 49 of the 2^z_channels codes):

- decoder: the content's +-1 bits -> pixels, MSE + L1 against the rendered scene; then a
  polish of the decoder alone (`polish_steps`: half the stage's steps more, its own optimizer
  and warmup-cosine schedule) in which each pixel an object covers weighs FOREGROUND_WEIGHT
  times a background pixel. Most of a scene is background: unweighted, the decoder's colours
  drifted (red read as orange, blue as purple; round trip 0.83 after 1,500 steps), weighted
  from the start it painted blobs the detector reads as squares (0.25), weighted over the
  stage's low-lr last third it still lost purple shapes (0.87); docs/toy_recipe_notebook.md, S1-S4;
- encoder: a logistic loss per bit on the latents (sign = the content's bit), so the
  quantizer's sign read-out (`MagvitV2.encode`) returns the ids the decoder was trained on.

    loss, stats = lfq_step(adapter, scenes)       # one training step's loss
    acc = lfq_round_trip_accuracy(adapter, 256)   # encode -> decode -> exact detector
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from gapray.models.showo import ShowoAdapter
from gapray.toy.pretrain_vq import N_CELL_CONTENTS, _cell, cell_codes, random_scenes, to_pixels
from gapray.toy.world import Scene

FOREGROUND_WEIGHT = 5.0
"""Weight of a pixel an object covers in the decoder's loss (a background pixel weighs 1)."""


POLISH_LR = 1e-3
"""Peak learning rate of the decoder's polish (warmup-cosine over `polish_steps`)."""


def polish_steps(vq_steps: int) -> int:
    """Decoder-only polish steps after `vq_steps` LFQ steps: half as many (750 after 1,500)."""
    return vq_steps // 2


@functools.cache
def _empty_scene_pixels() -> torch.Tensor:
    """(1, 3, H, W): the empty scene, rendered once (every LFQ step compares against it)."""
    return to_pixels([Scene()])


def foreground_weights(pixels: torch.Tensor, weight: float = FOREGROUND_WEIGHT) -> torch.Tensor:
    """(B, 1, H, W): `weight` where a scene's pixels differ from the empty scene's, else 1."""
    empty = _empty_scene_pixels().to(pixels.device)
    covered = (pixels - empty).abs().sum(1, keepdim=True) > 1e-3
    return 1.0 + (weight - 1.0) * covered.float()


def lfq_step(
    adapter: ShowoAdapter, scenes: list[Scene], device: torch.device | str = "cpu", fg_weight: float = 1.0
) -> tuple[torch.Tensor, dict]:
    """One supervised LFQ step on a batch of scenes (module docstring), covered pixels weighing
    `fg_weight` in the decoder's loss. Returns (loss, stats); an error when the tokenizer has
    fewer codes than the world's N_CELL_CONTENTS cell contents."""
    vq = adapter.model.vq_model
    if vq.config.codebook_size < N_CELL_CONTENTS:
        raise ValueError(
            f"the LFQ tokenizer has {vq.config.codebook_size} codes (z_channels {vq.config.z_channels}); "
            f"the toy world needs {N_CELL_CONTENTS} (one per cell content): raise z_channels"
        )
    pixels = to_pixels(scenes).to(device)  # (B, 3, 32, 32) in [-1, 1]
    codes = cell_codes(scenes).to(device)  # (B, 16)
    bits = vq.quantize.codes_to_latents(codes)  # (B, z, 4, 4), +-1
    recon = vq.decoder(bits)  # (B, 3, 32, 32)
    w = foreground_weights(pixels, fg_weight)
    rec = ((recon - pixels) ** 2 * w).mean() + ((recon - pixels).abs() * w).mean()
    z = vq.encoder(pixels)  # (B, z, 4, 4)
    enc = F.binary_cross_entropy_with_logits(z, (bits > 0).float())
    acc = (vq.quantize.indices(z) == codes).float().mean().item()
    return rec + enc, {"rec": rec.item(), "enc": enc.item(), "code_acc": acc}


@torch.no_grad()
def lfq_round_trip_accuracy(adapter: ShowoAdapter, n: int = 256, seed: int = 12345) -> float:
    """Share of random scenes whose round trip through the adapter (`encode_images` ->
    `decode`, the path of the judge and of generated images) the exact detector reads as the
    same objects (shape, colour, cell)."""
    from PIL import Image

    from gapray.toy.detector import ToyDetector
    from gapray.toy.render import render_batch

    scenes = random_scenes(np.random.default_rng(seed), n)
    rendered = [Image.fromarray(a) for a in render_batch(scenes)]
    decoded = adapter.decode(adapter.encode_images(rendered))
    det = ToyDetector()
    ok = 0
    for scene, img in zip(scenes, decoded, strict=True):
        want = sorted((o.shape, o.color, o.row, o.col) for o in scene.objects)
        got = sorted((d.cls, d.color, *_cell(d.box)) for d in det.detect(np.asarray(img)))
        ok += want == got
    return ok / n
