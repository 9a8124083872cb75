"""The external judges, driver side: which judges a config names, their pools, their verdicts.

Where it sits: between the evaluation's images and its summary, for `eval=judge` and
`gapray diagnose`. Each entry of `eval.judges` is one judge:

- a local directory of a transformers image-text-to-text model: a pool of one `JudgeWorker`
  actor (gapray/workers/judge.py) sized by eval.judge_cpus / eval.judge_gpus, started by the
  run (or the diagnosis) next to the other roles;
- "toy_verifier": the toy world's exact verifier (`ToyDetector` + GenEval's rules) as a perfect
  judge, in this process; only for the toy world's prompt sets, whose scenes it can check.

Every judge is asked the run's question (reward.question) with the run's threshold, about the
exact pixels the generation workers wrote, and each image's verdicts land in its record:

    panel = build_panel(cfg)                     # pools started (Ray must be up)
    panel.attach(prompts, merged_share, settings)  # record["external"][judge] = {"p_yes", "yes"}
    panel.shutdown()
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TOY_VERIFIER = "toy_verifier"
"""eval.judges entry: the toy world's exact verifier as a perfect external judge."""
TOY_SETS = ("toy", "toy/easy", "toy/medium", "toy/hard")
"""Prompt-set names of the toy world's test split (whole, and its tags by difficulty)."""


def toy_set(name: str) -> bool:
    return name in TOY_SETS


def judge_names(specs: Sequence[str]) -> list[str]:
    """Short metric-safe names, one per judge, in order: "verifier" for the toy verifier, else
    the directory's name lower-cased with non-alphanumerics as "_" (Qwen2.5-VL-72B-Instruct ->
    qwen2_5_vl_72b_instruct); repeats get _2, _3."""
    names: list[str] = []
    for spec in specs:
        base = (
            "verifier"
            if spec == TOY_VERIFIER
            else re.sub(r"[^a-z0-9]+", "_", Path(spec.rstrip("/")).name.lower()).strip("_") or "judge"
        )
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def judges_error(specs: Sequence[str], prompts: str | Sequence[str]) -> str | None:
    """Why the judges cannot judge these prompt sets (each named), or None. Reads each judge
    directory's config.json only: nothing is loaded, no actor starts."""
    from gapray.models.vlm_judge import JudgeError, check_judge_dir

    sets = [prompts] if isinstance(prompts, str) else list(prompts)
    problems = []
    for spec in specs:
        if spec == TOY_VERIFIER:
            other = [s for s in sets if not toy_set(s)]
            if other:
                problems.append(
                    f"{TOY_VERIFIER} checks toy-world scenes only ({', '.join(TOY_SETS)}), not {', '.join(other)}"
                )
            continue
        try:
            check_judge_dir(spec)
        except JudgeError as err:
            problems.append(str(err))
    return "; ".join(problems) or None


@dataclass(frozen=True)
class Verdicts:
    """One judge's verdicts on N images (the same type the judge actors return)."""

    p_yes: np.ndarray  # (N,) float32
    yes: np.ndarray  # (N,) bool


class VerifierJudge:
    """The toy world's exact verifier: yes when GenEval's rules pass on the exact detector's
    objects (P(yes) is 1 or 0). In this process: it needs no weights and no accelerator."""

    def __init__(self, name: str = "verifier"):
        self.name = name

    def score(self, images: Sequence[bytes], prompts: Sequence, question: str, threshold: float) -> Verdicts:
        from PIL import Image

        from gapray.eval.geneval import evaluate_image
        from gapray.toy.detector import ToyDetector

        detector = ToyDetector()
        yes = np.array(
            [
                evaluate_image(p, detector.detect(Image.open(io.BytesIO(b)).convert("RGB")))[0]
                for b, p in zip(images, prompts, strict=True)
            ],
            dtype=bool,
        )
        return Verdicts(p_yes=yes.astype(np.float32), yes=yes)


class PoolJudge:
    """An image-text-to-text judge on its own pool of JudgeWorker actors."""

    def __init__(self, name: str, pool):
        self.name, self.pool = name, pool

    def score(self, images: Sequence[bytes], prompts: Sequence, question: str, threshold: float) -> Verdicts:
        images, texts = list(images), [p.text for p in prompts]
        outs = self.pool.map_shares(
            "score", len(images), lambda s: (images[s], texts[s], question, threshold)
        )
        return Verdicts(
            p_yes=np.concatenate([o.p_yes for o in outs]).astype(np.float32),
            yes=np.concatenate([o.yes for o in outs]).astype(bool),
        )


@dataclass
class JudgePanel:
    """The external judges of one evaluation, in eval.judges order."""

    judges: list = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [j.name for j in self.judges]

    def score(
        self, images: Sequence[bytes], prompts: Sequence, question: str, threshold: float
    ) -> dict[str, Verdicts]:
        """Every judge on the same images, at once (each on its own actors)."""
        with ThreadPoolExecutor(max_workers=max(1, len(self.judges))) as ex:
            futures = {j.name: ex.submit(j.score, images, prompts, question, threshold) for j in self.judges}
            return {name: f.result() for name, f in futures.items()}

    def attach(self, prompts: Sequence, merged, settings) -> None:
        """Judge every image of a merged evaluation share; each record gets
        record["external"][judge] = {"p_yes", "yes"}; the images are then dropped."""
        records = merged.records
        missing = [
            (r["index"], r["sample"]) for r in records if (r["index"], r["sample"]) not in merged.images
        ]
        if missing:
            raise RuntimeError(f"external judges: no image for {len(missing)} records, e.g. {missing[0]}")
        images = [merged.images[(r["index"], r["sample"])] for r in records]
        specs = [prompts[r["index"]] for r in records]
        verdicts = self.score(images, specs, settings.question, settings.threshold)
        for i, r in enumerate(records):
            r["external"] = {
                name: {"p_yes": round(float(v.p_yes[i]), 6), "yes": bool(v.yes[i])}
                for name, v in verdicts.items()
            }
        merged.images.clear()

    def actors(self) -> list:
        return [a for j in self.judges if isinstance(j, PoolJudge) for a in j.pool.actors]

    def placement(self) -> dict[str, list[dict]]:
        return {j.name: list(j.pool.placement) for j in self.judges if isinstance(j, PoolJudge)}

    def shutdown(self) -> None:
        import ray

        for a in self.actors():
            ray.kill(a)


def check_room(eval_cfg, available: dict[str, float]) -> None:
    """ResourceError (naming eval.judge_cpus / eval.judge_gpus) when the cluster's free
    resources cannot hold one actor per judge directory: better than an actor waiting forever."""
    from gapray.placement import ResourceError

    n = sum(spec != TOY_VERIFIER for spec in eval_cfg.judges)
    for key, per, res in (
        ("eval.judge_cpus", eval_cfg.judge_cpus, "CPU"),
        ("eval.judge_gpus", eval_cfg.judge_gpus, "GPU"),
    ):
        if n and per and n * per > available.get(res, 0.0) + 1e-9:
            raise ResourceError(
                f"{key}={per}: {n} external judge(s) need {n * per:g} {res}, the cluster has "
                f"{available.get(res, 0.0):g} free after the other roles"
            )


def build_panel(eval_cfg, threads: int | None = None) -> JudgePanel:
    """Start one pool of one JudgeWorker per judge directory (Ray must be initialised), and the
    verifier in this process; sizes from eval.judge_cpus / eval.judge_gpus."""
    import math

    import ray

    from gapray.workers.judge import JudgeWorker
    from gapray.workers.pool import WorkerPool

    check_room(eval_cfg, ray.available_resources())
    judges: list = []
    n_threads = threads or max(1, math.ceil(eval_cfg.judge_cpus))
    for spec, name in zip(eval_cfg.judges, judge_names(eval_cfg.judges), strict=True):
        if spec == TOY_VERIFIER:
            judges.append(VerifierJudge(name))
            continue

        def make(_i: int, spec=spec):
            return (
                ray.remote(JudgeWorker)
                .options(num_cpus=eval_cfg.judge_cpus, num_gpus=eval_cfg.judge_gpus)
                .remote(spec, eval_cfg.judge_dtype, eval_cfg.judge_batch_size, n_threads)
            )

        pool = WorkerPool(f"judge {name}", make, 1)
        judges.append(PoolJudge(name, pool))
    panel = JudgePanel(judges)
    try:
        for j in judges:
            if isinstance(j, PoolJudge):
                j.pool.start()
    except BaseException:
        panel.shutdown()
        raise
    return panel
