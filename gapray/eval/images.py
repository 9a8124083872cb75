"""What every evaluator does with images: sample them with fixed seeds, judge them with the
model's own understanding, write them in GenEval's folder layout, and draw the grid.

Where it sits: under the evaluators (`self_eval.py`, `toy_eval.py`), which run on the
generation pool's workers one share of prompts each (`stage.py` splits and gathers). Every
image is addressed by (prompt index in the evaluated set, sample k), and its seed depends on
those and the set's image counts alone (`eval_seeds`, `ImageCounts`), so a share, a `--limit` run or a rerun on other workers draws
exactly the same images as the whole set on one worker.

    for index, prompt, images, judged in generate_and_judge(model, prompts, indices, settings):
        write_prompt_folder(out / f"{index:05d}", prompt, images)
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from gapray.storage.atomic import atomic_write_bytes, atomic_write_text
from gapray.types import Prompt

GRID_ROWS = 16
"""Prompts shown in grid.png (spread over the tags)."""
GRID_TILE = 128
"""Grid tiles are scaled to this many pixels a side (a 32 px toy image x4, a 384 px one /3)."""
GREEN, RED = (0, 170, 0), (230, 0, 0)


def eval_seeds(seed: int, first_row: int, n: int) -> list[int]:
    """The sampling seeds of one prompt's n evaluation images, whose first row in the whole set
    is `first_row` (`ImageCounts.first_row`; i*n for prompt i when every prompt has n): image k
    is row first_row + k, seeded seed*1_000_003 + row (the adapter's rule for one int seed, so a
    one-call evaluation of the whole set draws the same images)."""
    return [seed * 1_000_003 + first_row + k for k in range(n)]


@dataclass(frozen=True)
class ImageCounts:
    """How many images each prompt of the whole evaluated set gets (by prompt index), and so
    where its rows start: the rows of the whole set are prompt 0's images, then prompt 1's, ..."""

    per_prompt: tuple[int, ...]

    def __post_init__(self) -> None:
        if any(n < 1 for n in self.per_prompt):
            raise ValueError(f"every prompt needs at least one image, got counts {self.per_prompt}")

    @classmethod
    def uniform(cls, n: int, size: int) -> ImageCounts:
        """n images for each of `size` prompts (GenEval's way: 4 each)."""
        return cls((n,) * size)

    def n(self, index: int) -> int:
        return self.per_prompt[index]

    def first_row(self, index: int) -> int:
        return sum(self.per_prompt[:index])


@dataclass(frozen=True)
class Judged:
    """The model's own verdicts on one prompt's n images."""

    p_yes: list[float]
    """(n,) P(yes) / (P(yes) + P(no))."""
    yes: list[bool]
    """(n,) the judge's decision."""


def generate_and_judge(
    model,
    prompts: Sequence[Prompt],
    indices: Sequence[int],
    settings,
    on_rows=None,
    counts: ImageCounts | None = None,
) -> Iterator[tuple[int, Prompt, list[Image.Image], Judged]]:
    """The images of each prompt (prompts[j] has index indices[j] in the evaluated set):
    counts.n(index) of them, settings.images_per_prompt for every prompt when counts is None;
    decoded and judged by the same model, about settings.batch_size rows per chunk of
    consecutive prompts, one generate call per image count in the chunk (`settings`: a
    base.EvalSettings). Yields per prompt, in order. settings.question / threshold: what the
    judge is asked and where it says yes (an evaluation in a run passes reward.question /
    reward.threshold); None = the adapter's own."""
    if counts is None:
        counts = ImageCounts.uniform(settings.images_per_prompt, max(indices, default=-1) + 1)
    for chunk in _chunks(list(zip(indices, prompts, strict=True)), counts, settings.batch_size):
        done: dict[int, tuple[list[Image.Image], Judged]] = {}
        for n in dict.fromkeys(counts.n(i) for i, _ in chunk):
            same = [(i, p) for i, p in chunk if counts.n(i) == n]
            done |= _generate_and_judge(model, same, n, counts, settings)
        for index, p in chunk:
            yield (index, p, *done[index])
        if on_rows is not None:
            on_rows(sum(counts.n(i) for i, _ in chunk))


def _chunks(items: list[tuple[int, Prompt]], counts: ImageCounts, batch_size: int):
    """Consecutive (index, prompt) runs of about batch_size rows (at least one prompt each)."""
    chunk: list[tuple[int, Prompt]] = []
    rows = 0
    for index, p in items:
        if chunk and rows + counts.n(index) > batch_size:
            yield chunk
            chunk, rows = [], 0
        chunk.append((index, p))
        rows += counts.n(index)
    if chunk:
        yield chunk


def _generate_and_judge(model, items, n: int, counts: ImageCounts, settings) -> dict:
    """index -> (images, Judged) for (index, prompt) items that all get n images, in one call."""
    seeds = [s for i, _ in items for s in eval_seeds(settings.seed, counts.first_row(i), n)]
    texts = [p.text for _, p in items]
    tokens = model.generate(
        texts,
        n=n,
        cfg_scale=settings.cfg_scale,
        temperature=settings.temperature,
        seed=seeds,
        batch_size=settings.batch_size,
    )  # (len(items) * n, T)
    images = model.decode(tokens)
    judged = model.judge(images, [t for t in texts for _ in range(n)], question=settings.question)
    # s = 1 when S >= threshold, compared in S's own float32 as the reward worker does.
    threshold = settings.threshold
    decision = judged.decision if threshold is None else judged.p_yes >= threshold
    out = {}
    for j, (index, _) in enumerate(items):
        rows = slice(j * n, (j + 1) * n)
        out[index] = (
            images[rows],
            Judged(
                p_yes=[round(float(v), 6) for v in judged.p_yes[rows]],
                yes=[bool(v) for v in decision[rows]],
            ),
        )
    return out


def image_record(index: int, k: int, prompt: Prompt, judged: Judged, **extra) -> dict:
    """The per-image line of verdicts.jsonl every evaluator writes: where the image is, its
    prompt, the model's own verdict, then the evaluator's own fields (`extra`); `ok` (the
    verdict that colours its grid frame) defaults to the own judge's."""
    return {
        "index": index,
        "sample": k,
        "prompt_id": prompt.id,
        "tag": prompt.tag,
        "prompt": prompt.text,
        "judge_p_yes": judged.p_yes[k],
        "judge_yes": judged.yes[k],
        "ok": judged.yes[k],
    } | extra


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_prompt_folder(folder: Path, prompt: Prompt, images: Sequence[Image.Image]) -> None:
    """GenEval's layout: `metadata.jsonl` (the prompt's record as one JSON object, which
    GenEval reads with json.load) and `samples/NNNN.png`."""
    atomic_write_text(folder / "metadata.jsonl", json.dumps(prompt.to_geneval()) + "\n")
    for k, image in enumerate(images):
        atomic_write_bytes(folder / "samples" / f"{k:04d}.png", png_bytes(image))


# --- the grid -------------------------------------------------------------------------------


def grid_rows(prompts: Sequence[Prompt], max_rows: int = GRID_ROWS) -> list[int]:
    """Indices of up to `max_rows` prompts, taken round-robin over the tags (so every tag shows
    up), returned in set order."""
    by_tag: dict[str | None, list[int]] = {}
    for i, p in enumerate(prompts):
        by_tag.setdefault(p.tag, []).append(i)
    chosen: list[int] = []
    for k in range(max(map(len, by_tag.values()), default=0)):
        for idx in by_tag.values():
            if k < len(idx) and len(chosen) < max_rows:
                chosen.append(idx[k])
    return sorted(chosen)


def tile(image: Image.Image, size: int = GRID_TILE) -> bytes:
    """One grid tile as PNG bytes, small enough to travel back from a worker (nearest-neighbour
    up, area-averaged down)."""
    method = Image.NEAREST if image.width <= size else Image.BOX
    return png_bytes(image.convert("RGB").resize((size, size), method))


def open_png(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def make_grid(
    rows: Sequence[tuple[str, Sequence[Image.Image], Sequence[bool]]],
    scale: int = 1,
    border: int = 3,
) -> Image.Image:
    """One row per prompt: its text, then its images upscaled (nearest) by `scale`, each framed
    by a `border`-px frame, green when its verdict is true, red when not."""
    if not rows:
        raise ValueError("make_grid: no rows")
    w, h = rows[0][1][0].size
    tile_w, tile_h = w * scale + 2 * border, h * scale + 2 * border
    gap = 4
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = int(max(probe.textlength(text) for text, _, _ in rows)) + 2 * gap
    cols = max(len(images) for _, images, _ in rows)
    grid = Image.new("RGB", (label_w + cols * (tile_w + gap), len(rows) * (tile_h + gap) + gap), "white")
    draw = ImageDraw.Draw(grid)
    for r, (text, images, verdicts) in enumerate(rows):
        y = gap + r * (tile_h + gap)
        draw.text((gap, y + tile_h // 2), text, fill="black", anchor="lm")
        for c, (image, ok) in enumerate(zip(images, verdicts, strict=True)):
            x = label_w + c * (tile_w + gap)
            draw.rectangle((x, y, x + tile_w - 1, y + tile_h - 1), fill=GREEN if ok else RED)
            grid.paste(
                image.convert("RGB").resize((w * scale, h * scale), Image.NEAREST), (x + border, y + border)
            )
    return grid
