"""Toy-world evaluation of a unified model: GenEval score, understanding, and the internal gap.

Where it sits: the measuring end of the toy run. A checkpoint (the shipped `toy` model, or one
saved by the self-improvement loop) is scored on the toy world's held-out test prompts
(`gapray.toy.world.make_splits`) with fixed seeds, so numbers from before and after training
compare directly:

- generation: `images_per_prompt` samples per prompt, decoded and scored by the exact verifier
  (`ToyDetector` + GenEval's rules in `gapray.eval.geneval`), summed up GenEval's way;
- understanding: balanced yes/no questions on *rendered* ground-truth scenes (the prompt: yes; a
  near miss with one attribute changed: no; and, under exact-scene semantics, an exact scene:
  yes, a near-miss scene with an extra object, a count off by one, a swapped relation, a wrong
  colour or shape: no), overall, per tag and per kind (`understanding_per_kind`);
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
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gapray.config import EvalConfig
from gapray.eval.base import EvalSettings, EvalShare, run_local
from gapray.eval.exact_scene import exact_scene, objects_in
from gapray.eval.geneval import evaluate_image, score_geneval
from gapray.eval.images import ImageCounts, generate_and_judge, image_record
from gapray.toy.detector import ToyDetector
from gapray.toy.render import render
from gapray.toy.world import (
    IMAGE_SIZE,
    NEAR_MISS_KINDS,
    make_splits,
    near_miss,
    near_miss_kinds,
    near_miss_scene,
    sample_scene,
)
from gapray.types import GENEVAL_TAGS, Prompt

SPLIT_SEED = 0
"""Seed of the toy train/test split; the toy model is trained on make_splits(SPLIT_SEED)["train"]."""


def scored_splits() -> list[str]:
    """The toy splits an evaluation may score: every split but train (what the model and the
    run train on)."""
    return [k for k in make_splits(SPLIT_SEED) if k != "train"]


MIN_IMAGES_PER_TAG = EvalConfig.min_images_per_tag
"""Fewest images each tag of the scored split is estimated from (eval.min_images_per_tag)."""


def tag_image_counts(
    prompts: Sequence[Prompt], images_per_prompt: int, min_images_per_tag: int
) -> ImageCounts:
    """Images for each prompt of a split: images_per_prompt, or more where the prompt's tag has
    few prompts, so every tag gets at least min_images_per_tag images (ceil(min / its prompts)
    each: test's 6 single-object prompts get 50 each for 300)."""
    sizes: dict[str | None, int] = {}
    for p in prompts:
        sizes[p.tag] = sizes.get(p.tag, 0) + 1
    per_tag = {t: max(images_per_prompt, math.ceil(min_images_per_tag / k)) for t, k in sizes.items()}
    return ImageCounts(tuple(per_tag[p.tag] for p in prompts))


DEFAULT_CFG_SCALE = 5.0
"""Janus-Pro's CFG weight; used when the checkpoint's gapray_adapter.json names none."""
DEFAULT_TEMPERATURE = 1.0
TOY_TARGETS = (
    # (name, metric key, lowest, highest): what a shipped toy model must show before training
    # (the honest-toy issue): a judge that knows exact scenes, and generation with room to improve.
    ("understanding >= 0.90", "understanding_accuracy", 0.90, None),
    ("understanding on counting >= 0.80", "understanding_counting", 0.80, None),
    ("judge balanced accuracy (exact-scene truth) >= 0.85", "judge_balanced_accuracy_exact", 0.85, None),
    ("exact-scene accuracy in [0.15, 0.50]", "exact_scene_overall", 0.15, 0.50),
)


def check_targets(results: dict) -> dict[str, bool | None]:
    """Each toy-model target -> met (None when the metric is missing, e.g. no counting prompt)."""
    values = dict(results) | {
        "understanding_counting": (results.get("understanding_per_tag") or {}).get("counting")
    }
    out: dict[str, bool | None] = {}
    for name, key, lo, hi in TOY_TARGETS:
        v = values.get(key)
        out[name] = None if v is None else bool((lo is None or v >= lo) and (hi is None or v <= hi))
    return out


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


def understanding_metrics(
    tags: Sequence[str],
    answers: Sequence[bool],
    decisions: Sequence[bool],
    kinds: Sequence[str] | None = None,
) -> dict:
    """Accuracy of yes/no decisions against the true answers, overall and per tag (GENEVAL_TAGS
    order, tags present only), plus the yes-rate on positives and no-rate on negatives. With
    `kinds` (each question's pair kind, QUESTION_KINDS) also the accuracy per kind (over its
    yes and no questions) and the no-rate on each kind's negatives."""
    pairs = [(bool(a), bool(d)) for a, d in zip(answers, decisions, strict=True)]
    hits = [a == d for a, d in pairs]
    per_tag = {t: _rate([h for h, tt in zip(hits, tags, strict=True) if tt == t]) for t in GENEVAL_TAGS}
    out = {
        "understanding_accuracy": _rate(hits),
        "understanding_per_tag": {t: v for t, v in per_tag.items() if v is not None},
        "understanding_yes_rate_on_positive": _rate([d for a, d in pairs if a]),
        "understanding_no_rate_on_negative": _rate([not d for a, d in pairs if not a]),
        "n_questions": len(hits),
    }
    if kinds is not None:
        if len(kinds) != len(hits):
            raise ValueError(f"understanding_metrics: {len(kinds)} kinds for {len(hits)} questions")
        present = [k for k in QUESTION_KINDS if k in set(kinds)]
        unknown = set(kinds) - set(QUESTION_KINDS)
        if unknown:
            raise ValueError(f"understanding_metrics: unknown question kinds {sorted(unknown)}")
        out["understanding_per_kind"] = {
            k: _rate([h for h, kk in zip(hits, kinds, strict=True) if kk == k]) for k in present
        }
        out["understanding_no_rate_per_kind"] = {
            k: _rate([not d for (a, d), kk in zip(pairs, kinds, strict=True) if kk == k and not a])
            for k in present
        }
    return out


# --- progress ---------------------------------------------------------------------------------


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


# --- the evaluator ----------------------------------------------------------------------------


QUESTION_KINDS = ("prompt_near_miss", *NEAR_MISS_KINDS)
"""Kinds of question pair: prompt_near_miss (one scene, asked about its prompt and about a near
miss prompt with one attribute changed) and the exact-scene near-miss scene kinds (an exact
scene and a near-miss scene of that kind, both asked about the prompt)."""


class Question(tuple):
    """One understanding question: the 3-tuple (tag, true answer, decision) that
    EvalShare.questions holds, with its pair kind (QUESTION_KINDS) as `.kind`."""

    def __new__(cls, tag: str | None, answer: bool, decision: bool, kind: str):
        if kind not in QUESTION_KINDS:
            raise ValueError(f"question kind must be one of {QUESTION_KINDS}, got {kind!r}")
        q = super().__new__(cls, (tag, answer, decision))
        q.kind = kind
        return q

    def __getnewargs__(self):  # pickling (a sharded eval sends questions between processes)
        return (*self, self.kind)


def understanding_questions(
    model,
    prompts: Sequence[Prompt],
    indices: Sequence[int],
    *,
    seed: int,
    batch_size: int,
    progress: bool,
    question: str | None = None,
    threshold: float | None = None,
) -> list[Question]:
    """Balanced yes/no questions about rendered ground-truth scenes, with `question` and
    `threshold` (None: the adapter's own). For each prompt:

    - prompt_near_miss: one scene of the prompt, asked about the prompt (yes) and about a near
      miss of it with one attribute changed (no);
    - per exact-scene kind the prompt's tag has (`near_miss_kinds`: extra_object,
      count_off_by_one, swapped_relation, wrong_colour, wrong_shape): an exact scene of the
      prompt (yes) and a near-miss scene of that kind (no), both asked about the prompt, so
      clutter, a count off by one or a reversed relation must get "no".

    Returns one Question (tag, answer, decision; .kind) per question, half of them yes."""
    images, texts, answers, tags, kinds = [], [], [], [], []
    for i, p in zip(indices, prompts, strict=True):
        # Generators keyed by the prompt's index in the set, so a share or a --limit run asks
        # the same questions about the same scenes as the full run.
        image = render(sample_scene(p, np.random.default_rng([seed, int(i), 0])))
        negative = near_miss(p, np.random.default_rng([seed, int(i), 1]))
        images += [image, image]
        texts += [p.text, negative.text]
        answers += [True, False]
        tags += [p.tag, p.tag]
        kinds += ["prompt_near_miss"] * 2
        for kind in near_miss_kinds(p):
            j = 2 + NEAR_MISS_KINDS.index(kind)
            exact = sample_scene(p, np.random.default_rng([seed, int(i), j, 0]))
            miss = near_miss_scene(p, np.random.default_rng([seed, int(i), j, 1]), kind)
            images += [render(exact), render(miss)]
            texts += [p.text, p.text]
            answers += [True, False]
            tags += [p.tag, p.tag]
            kinds += [kind, kind]
    bar = _Progress("understanding questions", len(images), progress)
    decisions: list[bool] = []
    for s in range(0, len(images), batch_size):
        verdict = model.judge(images[s : s + batch_size], texts[s : s + batch_size], question=question)
        decision = verdict.decision if threshold is None else verdict.p_yes >= threshold
        decisions += [bool(d) for d in decision.tolist()]
        bar.update(len(images[s : s + batch_size]))
    return [Question(t, a, d, k) for t, a, d, k in zip(tags, answers, decisions, kinds, strict=True)]


class ToyEvaluator:
    """The toy world's exact evaluation: GenEval's rules on the exact detector, understanding on
    rendered scenes, and the self-judge against the verifier. Only for models whose images are
    the toy world's (IMAGE_SIZE px); preflight refuses it for any other."""

    name = "toy"
    image_size = IMAGE_SIZE

    def __init__(
        self, split: str = "test", progress: bool = False, min_images_per_tag: int = MIN_IMAGES_PER_TAG
    ):
        if split not in scored_splits():
            raise ValueError(f"split must be one of {scored_splits()} (train is what trains), got {split!r}")
        if min_images_per_tag < 0:
            raise ValueError(f"min_images_per_tag must be >= 0, got {min_images_per_tag}")
        self.split, self.progress, self.min_images_per_tag = split, progress, min_images_per_tag

    def counts(self, settings: EvalSettings) -> ImageCounts:
        """Images per prompt of the whole split (`tag_image_counts`): a share or a --limit run
        draws the same images as the whole split."""
        return tag_image_counts(self.prompts(), settings.images_per_prompt, self.min_images_per_tag)

    def prompts(self) -> list[Prompt]:
        return make_splits(SPLIT_SEED)[self.split]

    def share(self, model, prompts, indices, settings: EvalSettings, out, shown) -> EvalShare:
        result = EvalShare(
            questions=understanding_questions(
                model,
                prompts,
                indices,
                seed=settings.seed,
                batch_size=settings.batch_size,
                progress=self.progress,
                question=settings.question,
                threshold=settings.threshold,
            )
        )
        counts = self.counts(settings)
        detector = ToyDetector()
        bar = _Progress("generated images", sum(counts.n(i) for i in indices), self.progress)
        for index, p, images, judged in generate_and_judge(
            model,
            prompts,
            indices,
            settings,
            on_rows=bar.update,
            counts=counts,
        ):
            for k, image in enumerate(images):
                found = detector.detect(image)
                ok, reasons = evaluate_image(p, found)
                exact, exact_reasons = exact_scene(p, found)
                result.records.append(
                    image_record(
                        index,
                        k,
                        p,
                        judged,
                        correct=ok,
                        reasons=reasons,
                        exact=exact,
                        exact_reasons=exact_reasons,
                        objects=objects_in(p, found),
                        ok=exact,  # frames in grid.png: the strict verdict
                    )
                )
            result.keep(index, p, images, shown, out)
        return result

    def summarize(self, prompts, merged: EvalShare, settings: EvalSettings) -> dict[str, Any]:
        correct = [r["correct"] for r in merged.records]  # rows grouped by prompt, in index order
        exact = [r["exact"] for r in merged.records]
        accepted = [r["judge_yes"] for r in merged.records]
        by_prompt: dict[int, list[dict]] = {}
        for r in merged.records:
            by_prompt.setdefault(r["index"], []).append(r)
        geneval = score_geneval([(p, [r["correct"] for r in by_prompt[i]]) for i, p in enumerate(prompts)])
        strict = score_geneval([(p, [r["exact"] for r in by_prompt[i]]) for i, p in enumerate(prompts)])
        images_per_tag: dict[str, int] = {}  # counted from the records: what was drawn
        for i, p in enumerate(prompts):
            images_per_tag[p.tag] = images_per_tag.get(p.tag, 0) + len(by_prompt[i])
        under_exact = self_judge_metrics(exact, accepted)
        tags, answers, decisions = (list(c) for c in zip(*merged.questions, strict=True))
        kinds = [q.kind for q in merged.questions]
        return {
            "split": self.split,
            "n_prompts": len(prompts),
            "n_images": len(correct),
            "images_per_prompt": settings.images_per_prompt,
            "min_images_per_tag": self.min_images_per_tag,
            "images_per_tag": {t: images_per_tag[t] for t in GENEVAL_TAGS if t in images_per_tag},
            "cfg_scale": settings.cfg_scale,
            "temperature": settings.temperature,
            "seed": settings.seed,
            "geneval_overall": geneval["overall"],
            "geneval_per_tag": {t: geneval["per_tag"][t] for t in GENEVAL_TAGS if t in geneval["per_tag"]},
            # The strict rule: exactly the asked objects and nothing else (same aggregation).
            "exact_scene_overall": strict["overall"],
            "exact_scene_per_tag": {t: strict["per_tag"][t] for t in GENEVAL_TAGS if t in strict["per_tag"]},
            "objects_per_image": float(np.mean([r["objects"] for r in merged.records])),
            **understanding_metrics(tags, answers, decisions, kinds),
            **self_judge_metrics(correct, accepted),
            # The self-judge against exact-scene truth: a judge that passes clutter scores low.
            "judge_balanced_accuracy_exact": under_exact["judge_balanced_accuracy"],
            "judge_yes_rate_on_exact": under_exact["judge_yes_rate_on_correct"],
            "judge_no_rate_on_inexact": under_exact["judge_no_rate_on_wrong"],
        }

    def headline(self, results: dict) -> dict[str, float | None]:
        keys = (
            "exact_scene_overall",
            "geneval_overall",
            "objects_per_image",
            "non_unification",
            "understanding_accuracy",
            "judge_balanced_accuracy",
            "judge_balanced_accuracy_exact",
        )
        out = {k: results.get(k) for k in keys}
        for name in ("geneval", "exact_scene"):
            out |= {f"{name}_{tag}": v for tag, v in (results.get(f"{name}_per_tag") or {}).items()}
        return out


def evaluate(
    model,
    out_dir: str | os.PathLike | None = None,
    *,
    split: str = "test",
    images_per_prompt: int = 4,
    min_images_per_tag: int = MIN_IMAGES_PER_TAG,
    cfg_scale: float | None = DEFAULT_CFG_SCALE,
    temperature: float = DEFAULT_TEMPERATURE,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
    limit: int | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate `model` (a `UnifiedModel`) on the toy split in this process; returns the
    metrics dict (see the module docstring), also written to `<out_dir>/results.json` with the
    images when out_dir is given. `limit` keeps the first N prompts; `meta` entries lead the
    results (checkpoint name)."""
    if images_per_prompt < 1:
        raise ValueError(f"images_per_prompt must be >= 1, got {images_per_prompt}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    settings = EvalSettings(images_per_prompt, cfg_scale, temperature, seed, batch_size)
    evaluator = ToyEvaluator(split, progress, min_images_per_tag)
    return run_local(evaluator, model, out_dir, settings, limit=limit, meta=meta)


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
    parser.add_argument(
        "--images-per-prompt", type=_positive_int, default=4, help="images per prompt, at least (GenEval: 4)"
    )
    parser.add_argument(
        "--min-images-per-tag",
        type=int,
        default=MIN_IMAGES_PER_TAG,
        help="more images per prompt where a tag has few prompts, so that every tag has at least this many "
        f"(default {MIN_IMAGES_PER_TAG}; 0 = images-per-prompt everywhere)",
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling and question seed")
    parser.add_argument(
        "--cfg-scale", type=float, help="CFG weight; 1 = no guidance (default: the checkpoint's, else 5.0)"
    )
    parser.add_argument(
        "--temperature", type=float, help="sampling temperature (default: the checkpoint's, else 1.0)"
    )
    parser.add_argument(
        "--split",
        default="test",
        help="toy-world prompt split to score: test (reported figures) or a tuning split (val)",
    )
    parser.add_argument("--limit", type=_positive_int, help="evaluate only the first N prompts of the split")
    parser.add_argument("--batch-size", type=_positive_int, default=64, help="rows per generate/judge call")
    parser.add_argument("--device", help="torch device for the model (default cpu)")
    args = parser.parse_args(argv)
    if args.split not in scored_splits():
        parser.error(f"--split must be one of {scored_splits()}, got {args.split!r}")
    if args.min_images_per_tag < 0:
        parser.error(f"--min-images-per-tag must be >= 0, got {args.min_images_per_tag}")

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
        split=args.split,
        images_per_prompt=args.images_per_prompt,
        min_images_per_tag=args.min_images_per_tag,
        cfg_scale=guidance(cfg_scale),
        temperature=temperature,
        seed=args.seed,
        batch_size=args.batch_size,
        limit=args.limit,
        meta={"checkpoint": args.checkpoint, "out": str(out)},
    )
    metrics["targets"] = check_targets(metrics)
    for name, met in metrics["targets"].items():
        print(
            f"[eval] target {name}: {'met' if met else 'MISSED' if met is False else 'n/a'}", file=sys.stderr
        )
    print(json.dumps(metrics, allow_nan=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
