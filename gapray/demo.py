"""`gapray demo`: one round of the self-judging loop on a model, without training.

Generates N images per prompt with CFG, decodes them, asks the model's own understanding
branch whether each image shows its prompt, and writes a PNG grid plus a JSON summary
(mean P(yes), the non-unification score: the share of its own images the model rejects).

    gapray demo --model tiny --n 4 --out runs/demo
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from PIL import Image

from gapray.models import load_model

DEFAULT_PROMPTS = [
    "a photo of a red circle",
    "a photo of two blue squares",
    "a photo of a cross above a triangle",
]


def image_grid(images: list[Image.Image], cols: int, scale: int = 4) -> Image.Image:
    """Tile equally sized images row by row, upscaled (nearest) so small images stay readable."""
    w, h = images[0].size
    rows = -(-len(images) // cols)
    grid = Image.new("RGB", (cols * w * scale, rows * h * scale), (128, 128, 128))
    for i, im in enumerate(images):
        grid.paste(
            im.resize((w * scale, h * scale), Image.NEAREST),
            ((i % cols) * w * scale, (i // cols) * h * scale),
        )
    return grid


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="gapray demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", help="tiny, toy, or a checkpoint path")
    ap.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    ap.add_argument("--n", type=int, default=4, help="images per prompt")
    ap.add_argument("--cfg-scale", type=float, default=5.0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/demo")
    args = ap.parse_args(argv)
    prompts = args.prompt or DEFAULT_PROMPTS
    model = load_model(args.model)
    t0 = time.perf_counter()
    tokens = model.generate(
        prompts, n=args.n, cfg_scale=args.cfg_scale, temperature=args.temperature, seed=args.seed
    )
    images = model.decode(tokens)
    rows = [p for p in prompts for _ in range(args.n)]
    verdict = model.judge(images, rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    image_grid(images, cols=args.n).save(out / "grid.png")
    summary = {
        "model": args.model,
        "images": len(images),
        "mean_p_yes": round(verdict.p_yes.mean().item(), 4),
        "non_unification": round(1 - verdict.decision.float().mean().item(), 4),
        "seconds": round(time.perf_counter() - t0, 2),
        "grid": str(out / "grid.png"),
    }
    print(json.dumps(summary))
    return 0
