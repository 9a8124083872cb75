"""The controller: the only place where the online self-improvement loop lives.

One step, as in shared/DESIGN.md:

    rollouts.fill(step)                                       # generation launched (async: k steps ahead)
    prompts, samples, scored = rollouts.take(step)            # curriculum.next_batch -> N images per
                                                              # prompt (seeds fixed here) -> the model's
                                                              # own P(yes), streamed share by share
    pairs   = build_pairs(...)                                # chosen/rejected (or SFT examples)
    stats   = learner_group.update(batch)
    curriculum.observe(step, per-prompt pass counts)
    version = weight_sync.push(learner_group, targets)

`run.pipeline` (sync | async) and `run.max_staleness` k only change how far ahead `fill`
launches generation (gapray/pipeline.py): sync generates each step with the weights of the step
before; async lets the next steps' generation run while this one learns, each sample at most k
versions behind the learner (staleness min / mean / max per step, per sample in rollouts/).

Each stage is timed. The run directory gets config.yaml, metrics/ and rollouts/ Parquet per
step, evaluations (start, every `eval_every`, end) under evals/, checkpoints, curves.png and
summary.json. `run.resume=RUN_DIR` continues from the newest verified checkpoint: step counter,
curriculum, optimizer, RNG and weights restored; redone steps overwrite their own metric files,
so no step is logged twice.

    gapray run                      # the toy run on a local Ray
    gapray run run.steps=5 model=tiny
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np

from gapray.algos.curriculum import make_curriculum
from gapray.algos.monitor import GamingMonitor
from gapray.algos.pairs import build_pairs, select_sft
from gapray.config import TOY_PROMPTS, Config, to_dict
from gapray.eval.stage import EvalStage
from gapray.eval.verifier import verifies
from gapray.pipeline import RolloutPipeline, staleness, staleness_bound
from gapray.storage import CorruptCheckpointError, RunDir
from gapray.types import Prompt
from gapray.workers.generation import Rollouts
from gapray.workers.pool import WorkerError
from gapray.workers.reward import Scores
from gapray.workers.sync import make_sync, resolve_transport

log = logging.getLogger(__name__)


class RunStopped(RuntimeError):
    """The run cannot go on (a learner rank died, NaN/inf losses, a worker error); what was
    written stays valid and the message says how to resume."""


class ResumeError(RuntimeError):
    """`resume=RUN_DIR` cannot continue as asked (e.g. the newest checkpoint is corrupt)."""


def load_prompt_set(name: str) -> list[Prompt]:
    if name == TOY_PROMPTS:
        from gapray.toy.world import make_splits

        return make_splits(seed=0)["train"]  # the eval uses the test split of the same seed
    from gapray.data.prompts import load_prompts

    return load_prompts(name)


def row_seeds(run_seed: int, step: int, rows: int) -> np.ndarray:
    """Sampling seeds of one step's rows: fixed by (run seed, step), so a retried share or a
    resumed step draws exactly the same images."""
    return np.random.SeedSequence([run_seed, step]).generate_state(rows, dtype=np.uint32).astype(np.int64)


class Timer:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        yield
        self.seconds[f"time_{name}"] = time.perf_counter() - t0


class Controller:
    """Drives the roles; holds no model itself."""

    def __init__(
        self,
        cfg: Config,
        run: RunDir,
        roles,
        prompts: list[Prompt] | None = None,
        eval_prompts: list[Prompt] | None = None,
        trackers: list | None = None,
        verify: bool | None = None,
    ):
        """`prompts`, `eval_prompts`, `verify`: what preflight found (gapray.run.preflight), or
        None to work them out here."""
        self.cfg, self.run, self.roles = cfg, run, roles
        self.trackers = list(trackers or [])  # gapray.trackers: each logged row, as metrics.parquet has it
        self.optimizer_updates = 0  # cumulative optimizer updates over the run (all steps so far)
        c = cfg.curriculum
        self.curriculum = make_curriculum(
            c.kind,
            load_prompt_set(c.prompts) if prompts is None else prompts,
            c.prompts_per_step,
            cfg.run.seed,
            **_curriculum_kwargs(c),
        )
        judges = getattr(roles, "judges", None)  # eval=judge: the external judges' pools
        self.eval_stage = EvalStage(cfg, roles.generation, eval_prompts, judges=judges)
        self.sync = make_sync(cfg)
        log.info("weight sync: %s (sync.transport=%s)", resolve_transport(cfg), cfg.sync.transport)
        closers = getattr(roles, "closers", None)
        if closers is not None:  # the compiled graph is torn down before the actors go
            closers.append(self.sync.close)
        self.sync_targets = [roles.generation] + ([roles.reward] if cfg.reward.follow_policy else [])
        self.evals: dict[int, dict] = {}
        if verify is None:
            from gapray.run import model_image_size

            verify = verifies(cfg, model_image_size(cfg.model.name))
        self.verify = verify  # the training rollouts are checked by the toy world's verifier
        self.monitor = GamingMonitor()
        self.start_step = 1
        self.rollouts = self.make_pipeline(cfg.run.pipeline, cfg.run.max_staleness, cfg.run.steps)

    def make_pipeline(self, pipeline: str, max_staleness: int, last_step: int) -> RolloutPipeline:
        """The generate -> score stages, sync or async with bound k (gapray/pipeline.py)."""
        cfg = self.cfg
        return RolloutPipeline(
            k=staleness_bound(pipeline, max_staleness),
            last_step=last_step,
            generation=self.roles.generation,
            reward=self.roles.reward,
            n=cfg.generation.images_per_prompt,
            chunk_rows=cfg.generation.batch_size,
            prompts_for=self.curriculum.next_batch,
            seeds_for=lambda step, rows: row_seeds(cfg.run.seed, step, rows),
            verify=self.verify,
        )

    # ----------------------------------------------------------------------------- one step
    def step(self, step: int) -> dict:
        timer = Timer()
        with timer.stage("step"):
            self.rollouts.fill(step)  # async: steps step+1..step+k start generating too, beside this one
            with timer.stage("rollouts"):  # pairs built prompt by prompt as verdicts come back
                _, samples, scored, pairs, spans = self.rollouts.take(step, self.pair_fn())
            with timer.stage("pairs"):
                batch, pair_stats = self.make_batch(samples, scored, pairs)
            learner_version = self.sync.version
            lag = staleness(learner_version, samples.versions, self.rollouts.k)  # (N,)
            with timer.stage("learn"):
                learn = self.roles.learner.update(batch) if len(batch["prompts"]) else {"rows": 0.0}
            self.optimizer_updates += int(learn.get("optimizer_steps", 0))
            self.curriculum.observe(step, _pass_counts(samples, scored))
            with timer.stage("sync"):
                sync = self.push() if learn.get("optimizer_steps") else None
        self.run.log_rollouts(step, _rollout_columns(step, samples, scored, lag))
        # generate: from the launch (async: during an earlier step) to the last images back;
        # reward: from the first scoring call to the last verdict (the two overlap, streamed).
        timer.seconds["time_generate"] = spans.generated - spans.launched
        timer.seconds["time_reward"] = spans.scored - (spans.first_scored_at or spans.scored)
        row = {
            "step": step,
            "version": self.sync.version,
            "staleness": float(lag.max()),
            "staleness_min": float(lag.min()),
            "staleness_mean": float(lag.mean()),
            "staleness_max": float(lag.max()),
            "images": len(samples),
            "mean_p_yes": float(scored.p_yes.mean()),
            "pass_rate": float(scored.accepted.mean()),
            **pair_stats,
            **{f"learn_{k}" if k in ("rows",) else k: v for k, v in learn.items()},
            "optimizer_updates": self.optimizer_updates,
            **self.curriculum.stats(),
            **timer.seconds,
            "images_per_s": len(samples) / max(timer.seconds["time_generate"], 1e-9),
            "images_per_s_step": len(samples) / max(timer.seconds["time_step"], 1e-9),
            "judged_per_s": len(samples) / max(timer.seconds["time_reward"], 1e-9),
            **(sync.as_metrics() if sync else {}),
            **self.watch_the_judge(step, scored),
        }
        return row

    def watch_the_judge(self, step: int, scored: Scores) -> dict:
        """The verifier's view of this step's rollouts beside the judge's, and the gaming
        monitor (gapray.algos.monitor): a warning when the judged pass rate rises and the true
        one does not. Nothing when the prompts have no ground truth."""
        t = scored.truth
        if t is None:
            return {}
        from gapray.eval.toy_eval import self_judge_metrics

        judged, true = float(scored.accepted.mean()), float(t.exact.mean())
        warning = self.monitor.observe(step, judged, true)
        if warning is not None:
            log.warning("step %d: %s", step, warning)
        agree = self_judge_metrics(t.exact.tolist(), scored.accepted.tolist())
        return {
            "true_pass_rate": true,
            "true_pass_rate_geneval": float(t.geneval.mean()),
            "rollout_objects_per_image": float(t.objects.mean()),
            "judge_balanced_accuracy_rollouts": agree["judge_balanced_accuracy"],
            "gaming_warning": float(warning is not None),
        }

    def push(self):
        """Weight sync; a generation/reward worker that dies during it is replaced and loaded
        (the pool keeps the pushed refs), so the version still advances exactly once."""
        from ray.exceptions import RayActorError

        try:
            return self.sync.push(self.roles.learner, self.sync_targets)
        except RayActorError as err:
            if self._dead_learner(err) is not None:
                raise
            for pool in self.sync_targets:
                pool.heal()
            self.sync.version += 1
            return None

    def _dead_learner(self, err: BaseException) -> int | None:
        """The rank of the learner actor `err` is about, or of any learner that no longer answers."""
        import ray
        from ray.exceptions import RayActorError, RayError

        actors = self.roles.learner.actors
        ids = [a._actor_id.hex() for a in actors]
        if isinstance(err, RayActorError) and getattr(err, "actor_id", None) in ids:
            return ids.index(err.actor_id)
        for rank, a in enumerate(actors):  # e.g. a surviving rank's all_reduce failed first
            try:
                ray.get(a.ready.remote(), timeout=30)
            except (RayError, TimeoutError):
                return rank
        return None

    def pair_fn(self):
        """build_pairs with the run's pair settings (None for SFT, which keeps accepted rows)."""
        if self.cfg.learner.algorithm == "sft":
            return None
        p = self.cfg.pairs
        return partial(
            build_pairs,
            rule=p.rule,
            min_margin=p.min_margin,
            min_chosen=p.min_chosen,
            pairs_per_prompt=p.pairs_per_prompt,
        )

    def make_batch(self, samples: Rollouts, scored: Scores, pairs=None) -> tuple[dict, dict]:
        """The learner's batch; `pairs`: (pairs, PairStats) already built (streamed), else
        built here from the whole step."""
        cfg = self.cfg
        if cfg.learner.algorithm == "sft":
            keep = select_sft(samples.prompt_ids, scored.accepted)
            batch = {"prompts": [samples.prompts[i] for i in keep], "tokens": samples.tokens[keep]}
            return batch, {"sft_examples": len(keep)}
        idx, stats = (
            pairs if pairs is not None else self.pair_fn()(samples.prompt_ids, scored.p_yes, scored.accepted)
        )
        chosen = [c for c, _ in idx]
        rejected = [r for _, r in idx]
        batch = {
            "prompts": [samples.prompts[c] for c in chosen],
            "chosen": samples.tokens[chosen],
            "rejected": samples.tokens[rejected],
        }
        return batch, {f"pairs_{k}" if k != "pairs" else k: v for k, v in stats.as_dict().items()}

    # ---------------------------------------------------------------------------- evaluation
    def evaluate(self, step: int) -> dict:
        """The configured evaluator over the generation pool; its headline metrics, named after
        it ("self_non_unification", "toy_geneval_overall"), go into the step's metrics row.
        A worker error stops the run with a resume hint (config.yaml is already written)."""
        try:
            _, metrics = self.eval_stage.evaluate(self.run.path(f"evals/step_{step:07d}"))
        except WorkerError as err:
            raise RunStopped(f"step {step} evaluation: {err}. {self._resume_hint()}") from None
        self.evals[step] = metrics
        return metrics

    # ------------------------------------------------------------------------------- the loop
    def resume(self) -> None:
        try:
            path = self.run.latest_checkpoint()
        except CorruptCheckpointError as err:
            raise ResumeError(_corrupt_message(err, self.run.root)) from None
        if path is None:
            log.info("resume: no checkpoint in %s; starting at step 1", self.run.root)
            return
        extra = self.roles.learner.load_checkpoint(str(path))
        self.curriculum.load_state_dict(extra["curriculum"])
        self.evals = {int(k): v for k, v in extra.get("evals", {}).items()}
        saved = extra.get("optimizer_updates")
        self.optimizer_updates = int(saved) if saved is not None else self._updates_logged(extra["step"])
        mon = extra.get("monitor") or {}
        self.monitor.judged, self.monitor.true = list(mon.get("judged", [])), list(mon.get("true", []))
        self.monitor.warnings = list(mon.get("warnings", []))
        self.sync.version = extra["sync_version"] - 1
        self.sync.push(self.roles.learner, self.sync_targets)  # workers get the checkpoint's weights
        # async: the steps already launched when it was saved get the same prompts (and seeds)
        self.rollouts.restore(extra.get("pipeline", {}).get("launched", {}), self.curriculum.prompts)
        self.start_step = extra["step"] + 1
        log.info("resumed from %s at step %d (version %d)", path, self.start_step, self.sync.version)

    def checkpoint(self, step: int) -> None:
        extra = {
            "step": step,
            "curriculum": self.curriculum.state_dict(),
            "sync_version": self.sync.version,
            "evals": {str(k): v for k, v in self.evals.items()},
            "optimizer_updates": self.optimizer_updates,
            "pipeline": {"launched": self.rollouts.pending()},  # async: steps step+1..step+k
            "monitor": {
                "judged": self.monitor.judged,
                "true": self.monitor.true,
                "warnings": self.monitor.warnings,
            },
        }
        self.roles.learner.save_checkpoint(str(self.run.root), step, extra, self.cfg.run.keep_checkpoints)

    def run_loop(self, progress=None) -> dict:
        r = self.cfg.run
        self.run.write_config(to_dict(self.cfg))
        if 0 not in self.evals:
            first = {"step": 0, "version": 0, "optimizer_updates": 0, **self.evaluate(0)}
            self.run.log_metrics(0, first)
            self._track(0, first)
        bad = 0
        for step in range(self.start_step, r.steps + 1):
            row = self._guarded_step(step)
            bad = int(row.get("bad_steps_in_a_row", 0))
            if (r.eval_every and step % r.eval_every == 0) or step == r.steps:  # 0: start and end only
                row.update(self.evaluate(step))
            self.run.log_metrics(step, row)
            self._track(step, row)
            if (r.checkpoint_every and step % r.checkpoint_every == 0) or step == r.steps:
                self.checkpoint(step)
            if progress is not None:
                progress(step, row)
            if bad >= self.cfg.learner.max_bad_steps:
                raise RunStopped(
                    f"step {step}: {bad} optimizer steps in a row had a NaN/inf loss or gradient and were "
                    f"skipped (learner.max_bad_steps={self.cfg.learner.max_bad_steps}); stopping. "
                    f"{self._resume_hint('e.g. with a lower learner.lr')}"
                )
        return self.finish()

    def _track(self, step: int, row: dict) -> None:
        for tracker in self.trackers:
            tracker.log(step, row)

    def _updates_logged(self, upto: int) -> int:
        """Optimizer updates the logged steps 1..upto made (a checkpoint written before the
        count was saved with it)."""
        table = self.run.read_metrics()
        if "optimizer_steps" not in table.column_names:
            return 0
        rows = zip(table.column("step").to_pylist(), table.column("optimizer_steps").to_pylist(), strict=True)
        return int(sum(n or 0 for s, n in rows if 1 <= s <= upto))

    def _guarded_step(self, step: int) -> dict:
        """One step; a dead learner rank or a worker error stops the run with a resume hint."""
        from ray.exceptions import RayError

        try:
            return self.step(step)
        except WorkerError as err:
            raise RunStopped(
                f"step {step}: {err}. Nothing of step {step} was written. {self._resume_hint()}"
            ) from None
        except RayError as err:
            rank = self._dead_learner(err)
            if rank is None:
                raise
            raise RunStopped(
                f"step {step}: learner rank {rank} died ({type(err).__name__}); the run stops. "
                f"{self._resume_hint()}"
            ) from None

    def _resume_hint(self, how: str = "") -> str:
        ckpts = self.run.list_checkpoints()
        last = (
            f"its last checkpoint is {ckpts[-1].relative_to(self.run.root)}"
            if ckpts
            else "it has no checkpoint"
        )
        extra = f" ({how})" if how else ""
        return f"Steps logged so far stay in {self.run.root}; {last}. Resume with: gapray run resume={self.run.root}{extra}"

    def finish(self) -> dict:
        from gapray.plots import plot_curves

        self.run.consolidate()
        plot_curves(self.run.read_metrics(), self.run.path("curves.png"))
        first, last = min(self.evals), max(self.evals)
        start, final = self.evals[first], self.evals[last]
        summary = {
            "run_dir": str(self.run.root),
            "steps": self.cfg.run.steps,
            "version": self.sync.version,
            "evaluator": self.eval_stage.name,
            "start": start,
            "final": final,
            "delta": {k: _delta(final.get(k), v) for k, v in start.items()},
            "warnings": self.monitor.warnings,
        }
        self.run.write_summary(summary)
        return summary


def _corrupt_message(err: CorruptCheckpointError, root: Path) -> str:
    bad = err.path
    msg = f"corrupt checkpoint {bad}: {err.file}: {err.reason}."
    if err.previous_good is None:
        return msg + f" No earlier checkpoint verifies; move {bad} aside to restart {root} from step 1."
    aside = bad.with_name(f"corrupt-{bad.name}")
    return (
        f"{msg} The previous good checkpoint is {err.previous_good.name}; to resume from it, move the "
        f"corrupt one aside (mv {bad} {aside}) and run again: gapray run resume={root}"
    )


def _delta(a, b):
    return None if a is None or b is None else a - b


def _pass_counts(samples: Rollouts, scored: Scores) -> dict[str, tuple[int, int]]:
    counts: dict[str, list[int]] = {}
    for pid, ok in zip(samples.prompt_ids, scored.accepted.tolist(), strict=True):
        c = counts.setdefault(pid, [0, 0])
        c[0] += int(ok)
        c[1] += 1
    return {k: (a, t) for k, (a, t) in counts.items()}


def _rollout_columns(step: int, samples: Rollouts, scored: Scores, lag: np.ndarray) -> dict:
    return {
        "step": np.full(len(samples), step, dtype=np.int64),  # the step that trained on it
        "prompt_id": samples.prompt_ids,
        "prompt": samples.prompts,
        "sample_index": samples.sample_index,
        "seed": samples.seeds,
        "version": samples.versions,  # the policy version that generated it
        "staleness": lag,  # versions behind the learner that trained on it
        "tokens": samples.tokens,
        "p_yes": scored.p_yes,
        "accepted": scored.accepted,
        "judge_version": scored.versions,
    } | (
        {}
        if scored.truth is None
        else {
            "true_exact": scored.truth.exact,
            "true_geneval": scored.truth.geneval,
            "objects": scored.truth.objects,
        }
    )


def _curriculum_kwargs(c) -> dict:
    if c.kind == "replay":
        return {"replay_every": c.replay_every, "replay_fraction": c.replay_fraction}
    if c.kind == "band":
        return {"band": (c.band_low, c.band_high), "ema": c.ema, "explore": c.explore}
    return {}


def resolve_out_dir(cfg: Config) -> Path:
    if cfg.run.resume:
        return Path(cfg.run.resume)
    return Path(cfg.run.out_dir.replace("{timestamp}", time.strftime("%Y%m%d-%H%M%S")))
