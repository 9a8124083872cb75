"""Toy-world evaluation of a unified model: GenEval score, understanding, and the internal gap.

Where it sits: the measuring end of the toy run. A checkpoint (the shipped `toy` model, or one
saved by the self-improvement loop) is scored on the toy world's held-out test prompts
(`gapray.toy.world.make_splits`) with fixed seeds, so numbers from before and after training
compare directly:

- generation: `images_per_prompt` samples per prompt, decoded and scored by the exact verifier
  (`ToyDetector` + GenEval's rules in `gapray.eval.geneval`), summed up GenEval's way;
- understanding: balanced yes/no questions on *rendered* ground-truth scenes (the prompt: yes; a
  near miss with one attribute changed: no);
- the internal gap (the paper's non-unification score): how often the model's own understanding
  rejects its own generations, and how well those self-judgements agree with the verifier.

With an output folder it also writes the images in GenEval's layout
(`<out>/<index:05d>/metadata.jsonl`, `<out>/<index:05d>/samples/0000.png`), per-image verdicts
(`verdicts.jsonl`), the metrics (`results.json`) and a verdict-coloured image grid (`grid.png`).

    gapray eval toy                          # the shipped toy checkpoint, all test prompts
    gapray eval runs/x/checkpoint --limit 8  # a quick look at the first 8 test prompts
    python -m gapray.eval.toy_eval tiny --limit 6 --out /tmp/eval-tiny

    metrics = evaluate(load_model("toy"), "runs/eval-toy", seed=0)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from gapray.eval.geneval import evaluate_image, score_geneval
from gapray.toy.detector import ToyDetector
from gapray.toy.render import render
from gapray.toy.world import make_splits, near_miss, sample_scene
from gapray.types import GENEVAL_TAGS, Prompt

SPLIT_SEED = 0
"""Seed of the toy train/test split; the toy model is trained on make_splits(SPLIT_SEED)["train"]."""
DEFAULT_CFG_SCALE = 5.0
"""Janus-Pro's CFG weight; used when the checkpoint's gapray_adapter.json names none."""
DEFAULT_TEMPERATURE = 1.0
GRID_ROWS = 16
"""Prompts shown in grid.png (spread over the tags)."""
GRID_SCALE = 4
"""Nearest-neighbour upscaling of each tile in grid.png (32 px -> 128 px)."""
GREEN, RED = (0, 170, 0), (230, 0, 0)


# --- pure metric functions ------------------------------------------------------------------


def _rate(flags: Sequence[bool]) -> float | None:
    return float(np.mean(flags)) if len(flags) else None


def self_judge_metrics(correct: Sequence[bool], accepted: Sequence[bool]) -> dict[str, Any]:
    """Agreement of the model's self-judgements with the verifier over its own generations.

    `correct[i]`: the verifier's verdict on image i; `accepted[i]`: the model's own judge said yes
    on (image i, its prompt). Returns non_unification (share rejected), the judge's yes-rate on
    verifier-correct images, no-rate on verifier-wrong images, their mean (balanced accuracy),
    and both side counts. A rate with no images on its side is None, and so is the balanced
    figure then (a mean over one side would read as a balanced accuracy and mislead).
    """
    if len(correct) != len(accepted):
        raise ValueError(f"self_judge_metrics: {len(correct)} verdicts for {len(accepted)} judgements")
    pairs = [(bool(c), bool(a)) for c, a in zip(correct, accepted, strict=True)]
    yes_on_correct = _rate([a for c, a in pairs if c])
    no_on_wrong = _rate([not a for c, a in pairs if not c])
    balanced = None if yes_on_correct is None or no_on_wrong is None else (yes_on_correct + no_on_wrong) / 2
    return {
        "non_unification": _rate([not a for _, a in pairs]),
        "judge_yes_rate_on_correct": yes_on_correct,
        "judge_no_rate_on_wrong": no_on_wrong,
        "judge_balanced_accuracy": balanced,
        "n_correct": sum(c for c, _ in pairs),
        "n_wrong": sum(not c for c, _ in pairs),
    }


def understanding_metrics(tags: Sequence[str], answers: Sequence[bool], decisions: Sequence[bool]) -> dict:
    """Accuracy of yes/no decisions against the true answers, overall and per tag (GENEVAL_TAGS
    order, tags present only), plus the yes-rate on positives and no-rate on negatives."""
    pairs = [(bool(a), bool(d)) for a, d in zip(answers, decisions, strict=True)]
    hits = [a == d for a, d in pairs]
    per_tag = {t: _rate([h for h, tt in zip(hits, tags, strict=True) if tt == t]) for t in GENEVAL_TAGS}
    return {
        "understanding_accuracy": _rate(hits),
        "understanding_per_tag": {t: v for t, v in per_tag.items() if v is not None},
        "understanding_yes_rate_on_positive": _rate([d for a, d in pairs if a]),
        "understanding_no_rate_on_negative": _rate([not d for a, d in pairs if not a]),
        "n_questions": len(hits),
    }


# --- progress and atomic files ----------------------------------------------------------------


class _Progress:
    """A compact progress line on stderr (tqdm is not a dependency): redrawn in place on a
    terminal, one line every few seconds otherwise (logs)."""

    def __init__(self, label: str, total: int, enabled: bool):
        self.label, self.total, self.enabled = label, total, enabled
        self.done, self.start, self.last = 0, time.perf_counter(), 0.0
        self.tty = enabled and sys.stderr.isatty()

    def update(self, k: int) -> None:
        self.done += k
        now = time.perf_counter()
        if not self.enabled or (self.done < self.total and now - self.last < (0.5 if self.tty else 10)):
            return
        self.last = now
        elapsed = now - self.start
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        line = f"[eval] {self.label} {self.done}/{self.total}  {elapsed:.0f}s elapsed, ~{eta:.0f}s left"
        end = "\n" if not self.tty or self.done >= self.total else ""
        print(("\r" if self.tty else "") + line, end=end, file=sys.stderr, flush=True)


def _atomic_write(path: Path, data: bytes) -> None:
    # Temp name in the same directory, then rename: a killed run leaves the old file or none.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# --- the grid ---------------------------------------------------------------------------------


def grid_rows(prompts: Sequence[Prompt], max_rows: int = GRID_ROWS) -> list[int]:
    """Indices of up to `max_rows` prompts, taken round-robin over the tags (so every tag shows
    up), returned in split order."""
    by_tag: dict[str | None, list[int]] = {}
    for i, p in enumerate(prompts):
        by_tag.setdefault(p.tag, []).append(i)
    chosen: list[int] = []
    for k in range(max(map(len, by_tag.values()), default=0)):
        for idx in by_tag.values():
            if k < len(idx) and len(chosen) < max_rows:
                chosen.append(idx[k])
    return sorted(chosen)


def make_grid(
    rows: Sequence[tuple[str, Sequence[Image.Image], Sequence[bool]]],
    scale: int = GRID_SCALE,
    border: int = 3,
) -> Image.Image:
    """One row per prompt: its text, then its images upscaled (nearest) by `scale`, each framed
    by a `border`-px frame, green when the verifier found it correct, red when not."""
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


# --- evaluation -------------------------------------------------------------------------------


def understanding_eval(
    model, prompts: Sequence[Prompt], *, n_questions: int | None, seed: int, batch_size: int, progress: bool
) -> dict:
    """Balanced yes/no questions about rendered ground-truth scenes: for each prompt (or a
    seeded subset of `n_questions` of them) one scene of the prompt, asked about the prompt
    (answer yes) and about a near miss of it (answer no)."""
    chosen = range(len(prompts))
    if n_questions is not None and n_questions < len(prompts):
        chosen = sorted(np.random.default_rng([seed, 2]).choice(len(prompts), n_questions, replace=False))
    images, texts, answers, tags = [], [], [], []
    for i in chosen:
        # Per-prompt generators keyed by the prompt's index, so a subset or a --limit run asks
        # the same questions about the same scenes as the full run.
        p = prompts[i]
        image = render(sample_scene(p, np.random.default_rng([seed, int(i), 0])))
        negative = near_miss(p, np.random.default_rng([seed, int(i), 1]))
        images += [image, image]
        texts += [p.text, negative.text]
        answers += [True, False]
        tags += [p.tag, p.tag]
    bar = _Progress("understanding questions", len(images), progress)
    decisions: list[bool] = []
    for s in range(0, len(images), batch_size):
        verdict = model.judge(images[s : s + batch_size], texts[s : s + batch_size])
        decisions += verdict.decision.tolist()
        bar.update(len(images[s : s + batch_size]))
    return understanding_metrics(tags, answers, decisions)


def evaluate(
    model,
    out_dir: str | os.PathLike | None = None,
    *,
    split: str = "test",
    images_per_prompt: int = 4,
    n_questions: int | None = None,
    cfg_scale: float | None = DEFAULT_CFG_SCALE,
    temperature: float = DEFAULT_TEMPERATURE,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
    limit: int | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate `model` (a `UnifiedModel`) on the toy split; returns the metrics dict (see the
    module docstring), also written to `<out_dir>/results.json` with the images when out_dir is
    given. `limit` keeps the first N prompts; `meta` entries lead the results (checkpoint name)."""
    if images_per_prompt < 1:
        raise ValueError(f"images_per_prompt must be >= 1, got {images_per_prompt}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    splits = make_splits(SPLIT_SEED)
    if split not in splits:
        raise ValueError(f"split must be one of {sorted(splits)}, got {split!r}")
    prompts = splits[split][:limit] if limit is not None else splits[split]
    if not prompts:
        raise ValueError("no prompts to evaluate (limit < 1?)")
    start = time.perf_counter()
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)

    und = understanding_eval(
        model, prompts, n_questions=n_questions, seed=seed, batch_size=batch_size, progress=progress
    )

    n = images_per_prompt
    detector = ToyDetector()
    shown = set(grid_rows(prompts))
    grid_images: dict[int, list[Image.Image]] = {}
    correct: list[bool] = []  # (P * n,) verifier verdicts, rows grouped by prompt
    accepted: list[bool] = []  # (P * n,) the model's own judge on (own image, own prompt)
    records: list[str] = []  # verdicts.jsonl lines
    per_chunk = max(1, batch_size // n)  # prompts per generate call: about batch_size rows
    bar = _Progress("generated images", len(prompts) * n, progress)
    for lo in range(0, len(prompts), per_chunk):
        chunk = prompts[lo : lo + per_chunk]
        # Row r of the whole run (prompt r // n) draws from seed*1_000_003 + r whatever the
        # chunking, so a --limit run makes exactly the first images of the full run.
        seeds = [seed * 1_000_003 + lo * n + r for r in range(len(chunk) * n)]
        tokens = model.generate(
            [p.text for p in chunk],
            n=n,
            cfg_scale=cfg_scale,
            temperature=temperature,
            seed=seeds,
            batch_size=batch_size,
        )  # (len(chunk) * n, T)
        images = model.decode(tokens)
        texts = [p.text for p in chunk for _ in range(n)]
        judged = model.judge(images, texts)  # p_yes, decision: (len(chunk) * n,)
        for j, p in enumerate(chunk):
            index = lo + j
            mine = images[j * n : (j + 1) * n]
            for k, image in enumerate(mine):
                ok, reasons = evaluate_image(p, detector.detect(image))
                yes = bool(judged.decision[j * n + k])
                correct.append(ok)
                accepted.append(yes)
                records.append(
                    json.dumps(
                        {
                            "index": index,
                            "sample": k,
                            "prompt_id": p.id,
                            "tag": p.tag,
                            "prompt": p.text,
                            "correct": ok,
                            "reasons": reasons,
                            "judge_p_yes": round(float(judged.p_yes[j * n + k]), 6),
                            "judge_yes": yes,
                        }
                    )
                )
            if index in shown:
                grid_images[index] = mine
            if out is not None:
                _write_prompt_folder(out / f"{index:05d}", p, mine)
        bar.update(len(chunk) * n)

    geneval = score_geneval([(p, correct[i * n : (i + 1) * n]) for i, p in enumerate(prompts)])
    results: dict[str, Any] = dict(meta or {})
    results.update(
        {
            "split": split,
            "n_prompts": len(prompts),
            "n_images": len(correct),
            "images_per_prompt": n,
            "cfg_scale": cfg_scale,
            "temperature": temperature,
            "seed": seed,
            "geneval_overall": geneval["overall"],
            "geneval_per_tag": {t: geneval["per_tag"][t] for t in GENEVAL_TAGS if t in geneval["per_tag"]},
            **und,
            **self_judge_metrics(correct, accepted),
        }
    )
    results["seconds"] = round(time.perf_counter() - start, 2)
    if out is not None:
        rows = [(prompts[i].text, grid_images[i], correct[i * n : (i + 1) * n]) for i in sorted(grid_images)]
        _atomic_write(out / "grid.png", _png_bytes(make_grid(rows)))
        _atomic_write(out / "verdicts.jsonl", ("\n".join(records) + "\n").encode())
        _atomic_write(out / "results.json", (json.dumps(results, indent=2, allow_nan=False) + "\n").encode())
    return results


def _write_prompt_folder(folder: Path, prompt: Prompt, images: Sequence[Image.Image]) -> None:
    """GenEval's layout: metadata.jsonl (the prompt's record, one line) and samples/NNNN.png."""
    (folder / "samples").mkdir(parents=True, exist_ok=True)
    _atomic_write(folder / "metadata.jsonl", (json.dumps(prompt.to_geneval()) + "\n").encode())
    for k, image in enumerate(images):
        _atomic_write(folder / "samples" / f"{k:04d}.png", _png_bytes(image))


# --- the command ------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    """`gapray eval CHECKPOINT [options]`: evaluate, write the run folder, print the metrics as
    one JSON object on the last line of stdout. Exit code 2 on a bad checkpoint."""
    parser = argparse.ArgumentParser(
        prog="gapray eval",
        description="Evaluate a unified model on the toy world (GenEval + self-judgement).",
    )
    parser.add_argument("checkpoint", help="a save_pretrained directory, `toy` (the shipped model) or `tiny`")
    parser.add_argument("--out", help="output folder (default runs/eval-<checkpoint name>-<timestamp>)")
    parser.add_argument("--images-per-prompt", type=_positive_int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="sampling and question seed")
    parser.add_argument(
        "--cfg-scale", type=float, help="CFG weight; 1 = no guidance (default: the checkpoint's, else 5.0)"
    )
    parser.add_argument(
        "--temperature", type=float, help="sampling temperature (default: the checkpoint's, else 1.0)"
    )
    parser.add_argument("--limit", type=_positive_int, help="evaluate only the first N test prompts")
    parser.add_argument("--batch-size", type=_positive_int, default=64, help="rows per generate/judge call")
    parser.add_argument("--device", help="torch device for the model (default cpu)")
    args = parser.parse_args(argv)

    from gapray.models import CheckpointError, load_model
    from gapray.models.base import guidance

    try:
        model = load_model(args.checkpoint, **({"device": args.device} if args.device else {}))
    except CheckpointError as err:
        print(f"gapray eval: {err}", file=sys.stderr)
        return 2
    name = Path(args.checkpoint.rstrip("/")).name or "checkpoint"
    out = Path(args.out or f"runs/eval-{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    # The toy recipe stores the cfg_scale / temperature it was tuned with beside its checkpoint.
    tuned = getattr(model, "extra_settings", {})
    cfg_scale = args.cfg_scale if args.cfg_scale is not None else tuned.get("cfg_scale", DEFAULT_CFG_SCALE)
    temperature = (
        args.temperature if args.temperature is not None else tuned.get("temperature", DEFAULT_TEMPERATURE)
    )
    if cfg_scale < 1 or temperature < 0:
        parser.error(f"need --cfg-scale >= 1 and --temperature >= 0, got {cfg_scale} and {temperature}")
    print(f"[eval] {args.checkpoint} -> {out} (cfg {cfg_scale}, temperature {temperature})", file=sys.stderr)
    metrics = evaluate(
        model,
        out,
        images_per_prompt=args.images_per_prompt,
        cfg_scale=guidance(cfg_scale),
        temperature=temperature,
        seed=args.seed,
        batch_size=args.batch_size,
        limit=args.limit,
        meta={"checkpoint": args.checkpoint, "out": str(out)},
    )
    print(json.dumps(metrics, allow_nan=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
