"""Evaluation as a stage of the run: the configured evaluator, spread over the generation pool.

Where it sits: the controller evaluates before the first step, every `run.eval_every` steps
and after the last. The evaluated prompts are cut into contiguous shares, one per generation
worker (`WorkerPool.map_shares`, so a worker that dies is replaced and its share redone with
the same seeds); each worker evaluates its share with the weights it holds and writes its
prompts' folders; the driver merges the shares, writes verdicts.jsonl, results.json and
grid.png, and returns the headline metrics under names that say which evaluator made them
(`self_non_unification`, `toy_geneval_overall`, `judge_<judge>_weak_generation`). With
eval=judge the workers' images also go to the external judges' pools (`judges.JudgePanel`)
before the summary.

    stage = EvalStage(cfg, roles.generation)
    results, metrics = stage.evaluate(run.path("evals/step_0000040"))
"""

from __future__ import annotations

from pathlib import Path

from gapray.eval.base import EvalSettings, Evaluator, judge_externally, merge_shares, write_outputs
from gapray.eval.images import grid_rows
from gapray.models.base import guidance


def make_evaluator(eval_cfg) -> Evaluator:
    """The evaluator an `EvalConfig` names (a small picklable object: workers receive it)."""
    if eval_cfg.kind == "self":
        from gapray.eval.self_eval import SelfEvaluator

        return SelfEvaluator(eval_cfg.prompts)
    if eval_cfg.kind == "toy":
        from gapray.eval.toy_eval import ToyEvaluator

        return ToyEvaluator(eval_cfg.split, min_images_per_tag=eval_cfg.min_images_per_tag)
    if eval_cfg.kind == "judge":
        from gapray.eval.judge_eval import JudgeEvaluator

        return JudgeEvaluator(eval_cfg.prompts, eval_cfg.judges)
    raise ValueError(f"eval.kind must be 'self', 'toy' or 'judge', got {eval_cfg.kind!r}")


def eval_settings(cfg) -> EvalSettings:
    """Evaluation images are drawn as the policy samples in training (its CFG weight and
    temperature), with the run's seed, and judged as in training (reward.question and
    reward.threshold), so evaluation and training ask the same question."""
    g = cfg.generation
    return EvalSettings(
        images_per_prompt=cfg.eval.images_per_prompt,
        cfg_scale=guidance(g.cfg_scale),
        temperature=g.temperature,
        seed=cfg.run.seed,
        batch_size=g.batch_size,
        question=cfg.reward.question,
        threshold=cfg.reward.threshold,
    )


class EvalStage:
    """Driver-side: one evaluator, its prompts (loaded once), the generation pool to run on."""

    def __init__(
        self, cfg, pool, prompts: list | None = None, judges=None, evaluator: Evaluator | None = None
    ):
        """`prompts`: the evaluator's prompt set if the caller loaded it already (preflight);
        `judges`: the external judges (`gapray.eval.judges.JudgePanel`) eval=judge needs;
        `evaluator`: one other than cfg.eval's (`gapray diagnose`: one per prompt set)."""
        self.evaluator = make_evaluator(cfg.eval) if evaluator is None else evaluator
        self.judges = judges
        prompts = self.evaluator.prompts() if prompts is None else prompts
        self.prompts = prompts[: cfg.eval.limit] if cfg.eval.limit is not None else prompts
        self.settings = eval_settings(cfg)
        self.pool = pool
        self.shown = set(grid_rows(self.prompts))

    @property
    def name(self) -> str:
        return self.evaluator.name

    def evaluate(self, out: Path) -> tuple[dict, dict[str, float | None]]:
        """Evaluate the weights the generation workers hold now; returns (results, metrics):
        the full results (also in out/results.json) and the prefixed headline scalars."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        p = self.prompts
        shares = self.pool.map_shares(
            "eval_share",
            len(p),
            lambda s: (
                self.evaluator,
                p[s],
                list(range(s.start, s.stop)),
                self.settings,
                str(out),
                self.shown,
            ),
        )
        merged = merge_shares(shares)
        judge_externally(self.evaluator, p, merged, self.settings, self.judges)
        results = self.evaluator.summarize(p, merged, self.settings)
        results |= {"evaluator": self.name, "version": merged.version, "workers": len(shares)}
        write_outputs(out, p, merged, results)
        metrics = {f"{self.name}_{k}": v for k, v in self.evaluator.headline(results).items()}
        return results, metrics
