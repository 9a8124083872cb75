"""The judge evaluation (`eval=judge`): the self-judge beside external judges, per image.

Where it sits: an evaluator of the seam in base.py, run like `eval=self` over the generation
pool (each worker generates its share with fixed seeds and judges it with the model's own
understanding), except that the images also come back (PNG bytes) so the run's external judges
(`gapray.eval.judges`, their own Ray actors) judge the same pixels with the same question
(reward.question) and threshold (reward.threshold). For each judge, each (image, prompt) falls
in one of four quadrants (self yes/no x judge yes/no); where the model says no, the judge's no
means weak generation and its yes misunderstanding (the paper's split). Judges' agreement with
each other and with the self-judge is Cohen's kappa. So a self-improvement run shows whether
its gap closed because generation improved (weak_generation falls, judge_yes_rate rises) or
because the self-judge changed its mind.

    gapray run model=tiny eval=judge eval.judges=[/ckpt/Qwen2.5-VL-7B-Instruct]
    gapray run eval=judge eval.prompts=toy eval.judges=[toy_verifier]          # the toy world

Metrics (prefixed judge_): non_unification (+ per tag), and per judge J: J_both_yes,
J_self_yes_judge_no, J_self_no_judge_yes, J_both_no (counts), J_weak_generation,
J_misunderstanding, J_yes_rate, J_kappa_self.
"""

from __future__ import annotations

import itertools
from typing import Any

from gapray.diagnose.stats import bootstrap_interval, cohen_kappa, quadrants
from gapray.eval.base import EvalSettings, EvalShare
from gapray.eval.images import generate_and_judge, image_record, png_bytes
from gapray.eval.judges import TOY_SETS, TOY_VERIFIER, judge_names
from gapray.types import Prompt

TOY_DIFFICULTY = {
    "toy/easy": ("single_object", "colors"),
    "toy/medium": ("two_object", "position"),
    "toy/hard": ("counting", "color_attr"),
}
"""The toy world's test split cut by task difficulty (GenEval's tags, Janus-Pro's per-task
scores fall in this order: single/colors > two/position > counting/color_attr)."""
BOOTSTRAP = 2000
"""Bootstrap resamples for every interval."""


def load_set(name: str) -> list[Prompt]:
    """A prompt set by name: the toy world's (TOY_SETS), or anything `load_prompts` accepts."""
    if name in TOY_SETS:
        from gapray.eval.toy_eval import SPLIT_SEED
        from gapray.toy.world import make_splits

        test = make_splits(SPLIT_SEED)["test"]
        return test if name == "toy" else [p for p in test if p.tag in TOY_DIFFICULTY[name]]
    from gapray.data.prompts import load_prompts

    return load_prompts(name)


def judge_summary(
    records: list[dict[str, Any]], names: list[str], seed: int, tags: list[str | None] | None = None
) -> dict[str, Any]:
    """Records with self verdicts ("judge_yes") and external ones (record["external"][name]) ->
    non-unification with its bootstrap interval (prompts resampled), per tag, and per judge the
    quadrants, the split and kappa, overall and per tag; kappa between every pair of raters."""
    tags = [r["tag"] for r in records] if tags is None else tags
    self_yes = [bool(r["judge_yes"]) for r in records]
    groups = [r["index"] for r in records]

    def gap(mine: list[int]) -> dict[str, Any]:
        no = [float(not self_yes[i]) for i in mine]
        ci = bootstrap_interval(no, [groups[i] for i in mine], seed=seed, n_boot=BOOTSTRAP)
        return {
            "non_unification": sum(no) / len(no) if no else None,
            "non_unification_ci": list(ci) if ci else None,
            "n_images": len(no),
        }

    everything = list(range(len(records)))
    by_tag = {
        t: [i for i in everything if tags[i] == t] for t in dict.fromkeys(t for t in tags if t is not None)
    }
    out: dict[str, Any] = {**gap(everything), "per_tag": {t: gap(ix) for t, ix in by_tag.items()}}
    verdicts = {"self": self_yes} | {n: [bool(r["external"][n]["yes"]) for r in records] for n in names}
    judges: dict[str, Any] = {}
    for n in names:
        j = verdicts[n]

        def quads(mine: list[int], j=j) -> dict[str, Any]:
            q = quadrants([self_yes[i] for i in mine], [j[i] for i in mine])
            d = q.to_dict()
            ci = bootstrap_interval(
                [float(j[i]) for i in mine], [groups[i] for i in mine], seed=seed, n_boot=BOOTSTRAP
            )
            d["judge_yes_rate_ci"] = list(ci) if ci else None
            d["kappa_self"] = cohen_kappa([self_yes[i] for i in mine], [j[i] for i in mine])
            return d

        judges[n] = {**quads(everything), "per_tag": {t: quads(ix) for t, ix in by_tag.items()}}
    out["judges"] = judges
    out["kappa"] = {
        f"{a}|{b}": cohen_kappa(verdicts[a], verdicts[b]) for a, b in itertools.combinations(verdicts, 2)
    }
    return out


class JudgeEvaluator:
    """Held-out prompts, N seeded images each, the self-judge's verdict and every external
    judge's (attached by the stage: `external = True`)."""

    name = "judge"
    external = True

    def __init__(self, prompts: str = "geneval", judges: list[str] | tuple[str, ...] = ()):
        self.source = prompts
        self.judges = judge_names(judges)
        if TOY_VERIFIER in judges:  # the verifier reads toy-world images only (preflight checks)
            from gapray.toy.world import IMAGE_SIZE

            self.image_size = IMAGE_SIZE

    def prompts(self) -> list[Prompt]:
        return load_set(self.source)

    def share(self, model, prompts, indices, settings: EvalSettings, out, shown) -> EvalShare:
        result = EvalShare()
        for index, p, images, judged in generate_and_judge(
            model,
            prompts,
            indices,
            settings,
        ):
            for k, image in enumerate(images):
                result.records.append(image_record(index, k, p, judged))
                result.images[(index, k)] = png_bytes(image)  # the pixels the judges see
            result.keep(index, p, images, shown, out)
        return result

    def summarize(self, prompts, merged: EvalShare, settings: EvalSettings) -> dict[str, Any]:
        missing = [n for n in self.judges if any(n not in r.get("external", {}) for r in merged.records)]
        if missing:
            raise RuntimeError(f"judge evaluation: no verdicts of judges {missing} (were they attached?)")
        return {
            "prompts": self.source,
            "n_prompts": len(prompts),
            "images_per_prompt": settings.images_per_prompt,
            "cfg_scale": settings.cfg_scale,
            "temperature": settings.temperature,
            "seed": settings.seed,
            "question": settings.question,
            "threshold": settings.threshold,
            "judge_names": self.judges,
            **judge_summary(merged.records, self.judges, settings.seed),
        }

    def headline(self, results: dict) -> dict[str, float | None]:
        out: dict[str, float | None] = {"non_unification": results["non_unification"]}
        for tag, m in results["per_tag"].items():
            out[f"non_unification_{tag}"] = m["non_unification"]
        for n, j in results["judges"].items():
            for key in ("both_yes", "self_yes_judge_no", "self_no_judge_yes", "both_no"):
                out[f"{n}_{key}"] = float(j[key])
            out[f"{n}_weak_generation"] = j["weak_generation"]
            out[f"{n}_misunderstanding"] = j["misunderstanding"]
            out[f"{n}_yes_rate"] = j["judge_yes_rate"]
            out[f"{n}_kappa_self"] = j["kappa_self"]
        return out
