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

- decoder: the content's +-1 bits -> pixels, MSE + L1 against the rendered scene;
- encoder: a logistic loss per bit on the latents (sign = the content's bit), so the
  quantizer's sign read-out (`MagvitV2.encode`) returns the ids the decoder was trained on.

    loss, stats = lfq_step(adapter, scenes)       # one training step's loss
    acc = lfq_round_trip_accuracy(adapter, 256)   # encode -> decode -> exact detector
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from gapray.models.showo import ShowoAdapter
from gapray.toy.pretrain_vq import N_CELL_CONTENTS, _cell, cell_codes, random_scenes, to_pixels
from gapray.toy.world import Scene


def lfq_step(
    adapter: ShowoAdapter, scenes: list[Scene], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, dict]:
    """One supervised LFQ step on a batch of scenes (module docstring). Returns (loss, stats);
    an error when the tokenizer has fewer codes than the world's N_CELL_CONTENTS cell contents."""
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
    rec = F.mse_loss(recon, pixels) + F.l1_loss(recon, pixels)
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
