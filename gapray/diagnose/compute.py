"""The diagnosis itself: per prompt set, the model's images, its own verdicts and every external
judge's, on the Ray pool.

Where it sits: under `gapray diagnose` (command.py), over the same machinery as `eval=judge`
inside runs: a generation pool (GenerationWorker actors holding the model, sized by
generation.*) draws N images per prompt with fixed seeds (`images.eval_seeds`) and judges them
with the model's own understanding; the external judges (one actor each, eval.judge_*; the toy
verifier in this process) judge the same pixels; `JudgeEvaluator.summarize` computes the
quadrants, the split, kappa and the bootstrap intervals. The images land in GenEval's folder
layout under <out>/<set>/.

    diag = diagnose(cfg, ["geneval", "geneval_hard"], Path("runs/diagnose-x"))
    diag.sets[0].results["judges"]["qwen2_5_vl_72b_instruct"]["weak_generation"]
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gapray.config import Config, ConfigError
from gapray.diagnose.sets import load_sets, slug
from gapray.types import Prompt


@dataclass(frozen=True)
class SetResult:
    """One prompt set's diagnosis."""

    name: str
    folder: str
    """Relative to the diagnosis folder: <set slug>/ (GenEval layout, verdicts.jsonl, results.json)."""
    results: dict[str, Any]
    """JudgeEvaluator.summarize's dict (non-unification + CI, per tag, per judge, kappa)."""
    seconds: float


@dataclass(frozen=True)
class Diagnosis:
    model: str
    judges: list[str]
    """Judge names, in eval.judges order."""
    judge_specs: list[str]
    sets: list[SetResult]
    images_per_prompt: int
    seed: int


def check_diagnosis(cfg: Config, sets: list[str]) -> dict[str, list[Prompt]]:
    """Everything that needs no actor: the sets load, the judges can judge them, the model
    makes images its judges can read. Returns the loaded sets."""
    from gapray.eval.judge_eval import JudgeEvaluator
    from gapray.eval.judges import judges_error
    from gapray.run import model_image_size

    loaded = load_sets(sets)
    error = judges_error(cfg.eval.judges, sets)
    if error:
        raise ConfigError(f"eval.judges: {error}", ["eval.judges"])
    needs = getattr(JudgeEvaluator(sets[0], cfg.eval.judges), "image_size", None)
    if needs is not None and (size := model_image_size(cfg.model.name)) != needs:
        raise ConfigError(
            f"eval.judges: the toy verifier reads {needs} px images, but model {cfg.model.name!r} "
            f"makes {size} px images",
            ["eval.judges"],
        )
    return loaded


def _start_ray(cfg: Config) -> str:
    import os

    import ray

    if ray.is_initialized():
        return "existing"
    address = cfg.run.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return address
    g, ev = cfg.generation, cfg.eval
    need = g.num_workers * g.cpus_per_worker + len(ev.judges) * ev.judge_cpus
    ray.init(
        num_cpus=max(os.cpu_count() or 1, math.ceil(need)),
        include_dashboard=False,
        log_to_driver=True,
        configure_logging=False,
    )
    return "local"


def _generation_pool(cfg: Config):
    import ray

    from gapray.workers.generation import GenerationWorker
    from gapray.workers.pool import WorkerPool

    g = cfg.generation
    threads = cfg.run.threads_per_actor or max(1, math.ceil(g.cpus_per_worker))

    def make(_i: int):
        return (
            ray.remote(GenerationWorker)
            .options(num_cpus=g.cpus_per_worker, num_gpus=g.gpus_per_worker)
            .remote(cfg.model, g, threads, 1.0)
        )

    pool = WorkerPool("generation", make, g.num_workers)
    pool.start()
    return pool


def diagnose(cfg: Config, sets: list[str], out: Path, *, progress: bool = True) -> Diagnosis:
    """Measure every set in order (a progress line per set on stderr); actors are stopped at
    the end, and a Ray this started is shut down."""
    import ray

    from gapray.eval.judge_eval import JudgeEvaluator
    from gapray.eval.judges import build_panel, judge_names
    from gapray.eval.stage import EvalStage

    loaded = check_diagnosis(cfg, sets)
    where = _start_ray(cfg)
    pool = panel = None
    results: list[SetResult] = []
    try:
        pool = _generation_pool(cfg)
        panel = build_panel(cfg.eval, cfg.run.threads_per_actor)
        for k, name in enumerate(sets, 1):
            evaluator = JudgeEvaluator(name, cfg.eval.judges)
            stage = EvalStage(cfg, pool, loaded[name], judges=panel, evaluator=evaluator)
            n = len(stage.prompts)
            if progress:
                print(
                    f"[diagnose] set {k}/{len(sets)} {name}: {n} prompts x {cfg.eval.images_per_prompt} images, "
                    f"{len(panel.judges)} external judge(s) ...",
                    file=sys.stderr,
                    flush=True,
                )
            start = time.perf_counter()
            res, _ = stage.evaluate(out / slug(name))
            seconds = round(time.perf_counter() - start, 2)
            results.append(SetResult(name=name, folder=slug(name), results=res, seconds=seconds))
            if progress:
                lo, hi = res["non_unification_ci"] or (float("nan"), float("nan"))
                split = "; ".join(
                    f"{j}: weak generation {_pct(v['weak_generation'])}, misunderstanding {_pct(v['misunderstanding'])}"
                    for j, v in res["judges"].items()
                )
                print(
                    f"[diagnose] set {k}/{len(sets)} {name} done in {seconds:.0f}s: non-unification "
                    f"{_pct(res['non_unification'])} [{lo:.3f}, {hi:.3f}]; {split}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        for a in [*(pool.actors if pool is not None else []), *(panel.actors() if panel is not None else [])]:
            ray.kill(a)
        if where == "local":
            ray.shutdown()
    return Diagnosis(
        model=cfg.model.name,
        judges=judge_names(cfg.eval.judges),
        judge_specs=list(cfg.eval.judges),
        sets=results,
        images_per_prompt=cfg.eval.images_per_prompt,
        seed=cfg.run.seed,
    )


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"
