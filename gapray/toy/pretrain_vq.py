"""Stage 1 of the toy recipe: train the Janus VQ tokenizer as an autoencoder on toy scenes.

Where it sits: `gapray toy pretrain` (gapray/toy/pretrain.py) runs this first; the trained VQ
turns rendered scenes into the 16 image tokens the LM stage learns to generate, and decodes the
model's own generations into pixels for the judge and the verifier.

The world is cell-aligned (one object per 8x8 cell, 1 + 8 shapes x 6 colours = 49 distinct cell contents) and the VQ
downsamples by 8, so one token is one cell. transformers' `JanusVQVAE.decode` L2-normalises
codebook entries (`get_codebook_entry`) while its quantizer's forward does not; here the
quantizer is cosine (encoder output and codebook both L2-normalised before the nearest-code
search), so training and decoding see the same vectors.

    vq_step(model, images)          # one training step's loss, (B, 3, 32, 32) pixels in [-1, 1]
    tokens = vq_encode(model, images)   # (B, 16) long, the codes `adapter.decode` inverts
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from transformers import JanusForConditionalGeneration

from gapray.models.janus import JanusAdapter
from gapray.toy.render import render_batch
from gapray.toy.world import CELL, COLORS, GRID, SHAPES, Scene, ToyObject

N_CELL_CONTENTS = 1 + len(SHAPES) * len(COLORS)
"""Distinct contents of one cell: empty, or one shape in one colour."""


def random_scenes(rng: np.random.Generator, n: int, max_objects: int = 8) -> list[Scene]:
    """n scenes of 0..max_objects objects of random shape and colour in random distinct cells."""
    scenes = []
    for _ in range(n):
        k = int(rng.integers(0, max_objects + 1))
        cells = rng.choice(GRID * GRID, size=k, replace=False)
        objs = [
            ToyObject(
                SHAPES[rng.integers(len(SHAPES))], COLORS[rng.integers(len(COLORS))], c // GRID, c % GRID
            )
            for c in cells
        ]
        scenes.append(Scene(tuple(sorted(objs, key=lambda o: (o.row, o.col)))))
    return scenes


def to_pixels(scenes: list[Scene]) -> torch.Tensor:
    """Scenes -> (B, 3, 32, 32) float pixels in [-1, 1] (the processor's mean/std 0.5 scaling)."""
    return _scaled(render_batch(scenes))


def _scaled(images: np.ndarray) -> torch.Tensor:
    """(B, 32, 32, 3) uint8 -> (B, 3, 32, 32) float in [-1, 1], the processor's 0.5/0.5 scaling."""
    arr = torch.from_numpy(np.ascontiguousarray(images)).float()
    return (arr / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def vq_round_trip(adapter: JanusAdapter, scenes: list[Scene]) -> torch.Tensor:
    """Scenes -> (B, 3, 32, 32) pixels in [-1, 1] as the judge sees the model's own images: each
    cell's code (`cell_codes`) through `adapter.decode` (the VQ decoder, rounded to uint8), then
    the processor's scaling. Rendered and decoded pixels differ (the decoder's reconstruction),
    and a judge trained on rendered pixels alone reads decoded ones worse
    (docs/toy_recipe_notebook.md, R0)."""
    images = adapter.decode(cell_codes(scenes))
    return _scaled(np.stack([np.asarray(im) for im in images]))


def _latents(model: JanusForConditionalGeneration, pixels: torch.Tensor) -> torch.Tensor:
    vq = model.model.vqmodel
    z = vq.quant_conv(vq.encoder(pixels))  # (B, E, 4, 4)
    return F.normalize(z, dim=1)


def _nearest(model: JanusForConditionalGeneration, z: torch.Tensor) -> torch.Tensor:
    """(B, E, h, w) unit latents -> (B, h*w) code ids by cosine similarity."""
    codes = F.normalize(model.model.vqmodel.quantize.embedding.weight, dim=-1)  # (K, E)
    flat = z.permute(0, 2, 3, 1).reshape(z.shape[0], -1, z.shape[1])  # (B, h*w, E)
    return (flat @ codes.T).argmax(-1)


@torch.no_grad()
def vq_encode(model: JanusForConditionalGeneration, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, 32, 32) pixels in [-1, 1] -> (B, 16) image tokens (raster order, as decode reads them)."""
    return _nearest(model, _latents(model, pixels))


def cell_codes(scenes: list[Scene]) -> torch.Tensor:
    """(B, 16) code id of each cell's content in raster order: 0 = empty, 1 + 6*shape + colour
    for an object (N_CELL_CONTENTS codes used of the codebook)."""
    out = torch.zeros(len(scenes), GRID * GRID, dtype=torch.long)
    for b, scene in enumerate(scenes):
        for o in scene.objects:
            out[b, o.row * GRID + o.col] = 1 + SHAPES.index(o.shape) * len(COLORS) + COLORS.index(o.color)
    return out


def vq_step(
    model: JanusForConditionalGeneration,
    scenes: list[Scene],
    temp: float = 0.1,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, dict]:
    """One supervised VQ step on a batch of scenes. The code of each cell is its content id
    (`cell_codes`), so the tokenizer's vocabulary is the world's N_CELL_CONTENTS cell contents (an error when
    the codebook is smaller):
    - decoder: codes -> normalised codebook entries (as `get_codebook_entry`) -> pixels, MSE + L1;
    - encoder: cosine similarity of its unit latents to the unit codebook, cross-entropy on the
      cell's code, so `vq_encode` (nearest code) returns the same ids the decoder was trained on.
    Returns (loss, stats)."""
    vq = model.model.vqmodel
    if vq.quantize.embedding.num_embeddings < N_CELL_CONTENTS:
        raise ValueError(
            f"the VQ codebook has {vq.quantize.embedding.num_embeddings} codes; the toy world needs "
            f"{N_CELL_CONTENTS} (one per cell content): raise codebook_size"
        )
    pixels = to_pixels(scenes).to(device)  # (B, 3, 32, 32)
    codes = cell_codes(scenes).to(device)  # (B, 16)
    q = vq.quantize.get_codebook_entry(codes)  # (B, E, 4, 4) unit vectors
    recon = vq.decoder(vq.post_quant_conv(q))  # (B, 3, 32, 32)
    rec = F.mse_loss(recon, pixels) + F.l1_loss(recon, pixels)
    z = _latents(model, pixels)  # (B, E, 4, 4)
    book = F.normalize(vq.quantize.embedding.weight, dim=-1)  # (K, E)
    sims = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]) @ book.T  # (B*16, K)
    enc = F.cross_entropy(sims / temp, codes.flatten())
    acc = (sims.argmax(-1) == codes.flatten()).float().mean().item()
    return rec + enc, {"rec": rec.item(), "enc": enc.item(), "code_acc": acc}


@torch.no_grad()
def reconstruction_accuracy(model: JanusForConditionalGeneration, n: int = 256, seed: int = 12345) -> float:
    """Share of random scenes whose VQ round trip (encode -> decode) the exact detector reads as
    the same objects (shape, colour, cell)."""
    from gapray.toy.detector import ToyDetector

    scenes = random_scenes(np.random.default_rng(seed), n)
    device = model.lm_head.weight.device
    tokens = vq_encode(model, to_pixels(scenes).to(device))
    pix = model.decode_image_tokens(tokens)  # (B, 32, 32, 3) in [-1, 1]
    arr = ((pix.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    det = ToyDetector()
    ok = 0
    for scene, img in zip(scenes, arr, strict=True):
        want = sorted((o.shape, o.color, o.row, o.col) for o in scene.objects)
        got = sorted((d.cls, d.color, *_cell(d.box)) for d in det.detect(img))
        ok += want == got
    return ok / n


def _cell(box: tuple[float, float, float, float]) -> tuple[int, int]:
    """(row, col) of the cell holding a box's centre."""
    return int((box[1] + box[3]) / 2 // CELL), int((box[0] + box[2]) / 2 // CELL)
