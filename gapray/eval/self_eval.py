"""The self evaluation: any model, a held-out prompt set, the model's own judge.

Where it sits: the default evaluator (`eval=self`) of every run whose model is not the toy
world's. For each prompt of a held-out set (default GenEval's 553 prompts; any prompt set the
loaders accept: GenEval-schema .jsonl, one-prompt-per-line .txt, a built-in name), N images
with fixed seeds (`images.eval_seeds`), each judged by the model's own understanding:

- `non_unification`: the share of its own images the model's judge rejects (the paper's
  non-unification score; lower is more unified), overall and per tag;
- `mean_p_yes`: the mean of P(yes) / (P(yes) + P(no)) over the images, overall and per tag.

It measures the internal gap, not image quality: a model can close it by generating better or
by judging more leniently; an external judge (or the toy world's exact verifier, `eval=toy`)
tells the two apart. The images land in GenEval's folder layout (`<index:05d>/metadata.jsonl`,
`<index:05d>/samples/NNNN.png`), so GenEval's own `evaluate_images.py` scores them as they are.

    gapray run model=janus_pro_7b model.name=/ckpt/Janus-Pro-7B run=cluster   # eval=self by default
    gapray run model=tiny eval=self eval.prompts=my_prompts.jsonl eval.limit=20
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gapray.eval.base import EvalSettings, EvalShare
from gapray.eval.images import generate_and_judge, image_record
from gapray.types import Prompt


def gap_metrics(tags: list[str | None], p_yes: list[float], yes: list[bool]) -> dict[str, Any]:
    """Per-image verdicts -> non_unification (share judged no) and mean P(yes), overall and per
    tag (tags in first-seen order; an untagged image counts in the overall figures only)."""
    if not (len(tags) == len(p_yes) == len(yes)):
        raise ValueError(f"gap_metrics: {len(tags)} tags, {len(p_yes)} scores, {len(yes)} decisions")
    if not yes:
        return {"non_unification": None, "mean_p_yes": None, "per_tag": {}, "n_images": 0}
    per_tag: dict[str, dict[str, Any]] = {}
    for tag in dict.fromkeys(t for t in tags if t is not None):
        mine = [i for i, t in enumerate(tags) if t == tag]
        per_tag[tag] = {
            "non_unification": float(np.mean([not yes[i] for i in mine])),
            "mean_p_yes": float(np.mean([p_yes[i] for i in mine])),
            "n_images": len(mine),
        }
    return {
        "non_unification": float(np.mean([not y for y in yes])),
        "mean_p_yes": float(np.mean(p_yes)),
        "per_tag": per_tag,
        "n_images": len(yes),
    }


class SelfEvaluator:
    """Held-out prompts, N seeded images each, the model's own yes/no judgement of each."""

    name = "self"

    def __init__(self, prompts: str = "geneval"):
        self.source = prompts

    def prompts(self) -> list[Prompt]:
        from gapray.data.prompts import load_prompts

        return load_prompts(self.source)

    def share(self, model, prompts, indices, settings: EvalSettings, out, shown) -> EvalShare:
        result = EvalShare()
        for index, p, images, judged in generate_and_judge(
            model,
            prompts,
            indices,
            settings,
        ):
            result.records += [image_record(index, k, p, judged) for k in range(len(images))]
            result.keep(index, p, images, shown, out)
        return result

    def summarize(self, prompts, merged: EvalShare, settings: EvalSettings) -> dict[str, Any]:
        r = merged.records
        gap = gap_metrics([x["tag"] for x in r], [x["judge_p_yes"] for x in r], [x["judge_yes"] for x in r])
        return {
            "prompts": self.source,
            "n_prompts": len(prompts),
            "images_per_prompt": settings.images_per_prompt,
            "cfg_scale": settings.cfg_scale,
            "temperature": settings.temperature,
            "seed": settings.seed,
            **gap,
        }

    def headline(self, results: dict) -> dict[str, float | None]:
        out = {"non_unification": results["non_unification"], "mean_p_yes": results["mean_p_yes"]}
        for tag, m in results["per_tag"].items():
            out[f"non_unification_{tag}"] = m["non_unification"]
            out[f"mean_p_yes_{tag}"] = m["mean_p_yes"]
        return out
