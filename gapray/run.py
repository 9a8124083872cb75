"""`gapray run [overrides]`: the online self-improvement run, on a local Ray or a cluster.

    gapray run                                  # the toy run: local Ray, CPU, shipped toy model
    gapray run learner=sft curriculum=replay    # hydra group overrides
    gapray run run.steps=5 model=tiny           # key overrides
    gapray run resume=runs/toy-20261126-120000  # continue an interrupted run

Under `ray job submit` the same command connects to the cluster (RAY_ADDRESS). The config is
validated and the cluster's resources checked against every role's request before any actor
starts. The last line printed is the run's summary as one JSON object.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from gapray.config import Config, ConfigError, from_run_dir, load_config


@dataclass
class Roles:
    generation: object  # WorkerPool of GenerationWorker
    reward: object  # WorkerPool of RewardWorker
    learner: object  # LearnerGroup
    groups: list  # placement groups
    judges: object = None  # eval=judge: the external judges (gapray.eval.judges.JudgePanel)
    closers: list = field(default_factory=list)  # run first at shutdown (a compiled graph's teardown)

    def placement(self) -> dict[str, list[dict]]:
        """role -> per actor: the Ray node, IP and pid it runs on (the run's placement.json)."""
        out = {
            "generation": list(self.generation.placement),
            "reward": list(self.reward.placement),
            "learner": list(self.learner.placement),
        }
        for name, info in (self.judges.placement() if self.judges is not None else {}).items():
            out[f"judge {name}"] = info
        return out

    def shutdown(self) -> None:
        """Kill every actor and free the placement groups (a shared Ray stays usable)."""
        import ray
        from ray.util.placement_group import remove_placement_group

        errors = []
        for close in self.closers:
            try:
                close()
            except Exception as err:  # the actors still go; the error is raised after
                errors.append(err)
        self.closers = []
        judges = self.judges.actors() if self.judges is not None else []
        for actor in [*self.generation.actors, *self.reward.actors, *self.learner.actors, *judges]:
            ray.kill(actor)
        for pg in self.groups:
            remove_placement_group(pg)
        if errors:
            raise errors[0]


def _threads(cfg: Config, cpus: float) -> int:
    return cfg.run.threads_per_actor or max(1, math.ceil(cpus))


def build_roles(cfg: Config, within: tuple[object, int] | None = None) -> Roles:
    """Place and start every actor (generation, reward, learner ranks). `within` = (placement
    group, first bundle): place them in that group's bundles (a `gapray sweep` trial's, which
    Tune reserved) instead of creating groups (see gapray.placement.place_roles)."""
    import ray

    from gapray.placement import actor_options, place_roles
    from gapray.workers.generation import GenerationWorker
    from gapray.workers.learner import LearnerGroup, LearnerWorker, LogprobSettings
    from gapray.workers.pool import WorkerPool
    from gapray.workers.reward import RewardWorker

    places = place_roles(cfg, within=within)
    m = cfg.model
    lora_scaling = m.lora_alpha / m.lora_rank if m.trainable == "lora" else 1.0
    g, r, ln = cfg.generation, cfg.reward, cfg.learner

    def gen_actor(i: int):
        opts = actor_options(places["generation"][i], g.cpus_per_worker, g.gpus_per_worker)
        return (
            ray.remote(GenerationWorker)
            .options(**opts)
            .remote(m, g, _threads(cfg, g.cpus_per_worker), lora_scaling)
        )

    def reward_actor(i: int):
        opts = actor_options(places["reward"][i], r.cpus_per_worker, r.gpus_per_worker)
        return (
            ray.remote(RewardWorker)
            .options(**opts)
            .remote(m, r, _threads(cfg, r.cpus_per_worker), lora_scaling)
        )

    generation = WorkerPool("generation", gen_actor, g.num_workers)
    reward = WorkerPool("reward", reward_actor, r.num_workers)
    generation.start()
    reward.start()

    # Rank 0's address, found from inside rank 0's bundle so it is reachable on a cluster.
    rank0 = actor_options(places["learner"][0], 0.0, 0.0)
    master = ray.get(ray.remote(_free_address).options(**rank0).remote())
    learners = [
        ray.remote(LearnerWorker)
        .options(**actor_options(places["learner"][k], ln.cpus_per_rank, ln.gpus_per_rank))
        .remote(
            m,
            ln,
            k,
            ln.num_ranks,
            master,
            cfg.run.seed,
            _threads(cfg, ln.cpus_per_rank),
            logprobs=LogprobSettings.from_config(ln, g),  # the sampler's CFG weight and temperature
        )
        for k in range(ln.num_ranks)
    ]
    group = LearnerGroup(learners)
    group.start()
    # A trial's group is Tune's to free; only the groups made here are removed at shutdown.
    groups = [] if within else list({id(pg): pg for role in places.values() for pg, _ in role}.values())
    judges = None
    if cfg.eval.kind == "judge":  # the external judges: one actor each, sized by eval.judge_*
        from gapray.eval.judges import build_panel

        judges = build_panel(cfg.eval, cfg.run.threads_per_actor)
    return Roles(generation=generation, reward=reward, learner=group, groups=groups, judges=judges)


def _free_address() -> str:
    """host:port for the learner ranks' rendezvous. The port is free now and drawn from
    20000-32767: below the kernel's ephemeral range (32768+), which every outgoing connection
    and Ray's own port-0 listeners draw from, and above Ray's worker ports (10002-19999). A port
    the kernel handed out by bind(0) was taken again before rank 0 listened (EADDRINUSE in
    test_two_learner_ranks_with_lora_stay_in_step, 2026-12-08)."""
    import random
    import socket

    import ray

    for port in random.sample(range(20000, 32768), 64):
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
        return f"{ray.util.get_node_ip_address()}:{port}"
    raise RuntimeError("no free port in 20000-32767 for the learner ranks' rendezvous (64 tried)")


def parse(argv: list[str]) -> Config:
    """Overrides -> validated Config; `resume=DIR` (or run.resume=DIR) continues a saved run."""
    resume = None
    rest = []
    for a in argv:
        key, _, value = a.partition("=")
        if key in ("resume", "run.resume"):
            resume = value
        else:
            rest.append(a)
    if resume:
        return from_run_dir(resume, rest)
    return load_config(rest)


@dataclass(frozen=True)
class Checked:
    """What preflight loaded, so the run does not load it again."""

    prompts: list  # the training prompt set
    eval_prompts: list  # the evaluated prompt set
    verify: bool  # the training rollouts are checked by the toy world's verifier


def preflight(cfg: Config) -> Checked:
    """Checks that need no Ray and no actor: the prompt sets parse (file and line named), a
    checkpoint directory looks like one, every role's memory plan fits its GPU share
    (`gapray plan`), and the evaluator can read the model's images."""
    from gapray.config import BUILTIN_MODELS
    from gapray.controller import load_prompt_set
    from gapray.eval.stage import make_evaluator
    from gapray.eval.verifier import verifies
    from gapray.models.janus import check_checkpoint_dir
    from gapray.models.showo import check_showo_checkpoint_dir, is_showo_checkpoint
    from gapray.plan import plan_error
    from gapray.toy.world import IMAGE_SIZE as TOY_IMAGE_SIZE

    if cfg.model.name not in BUILTIN_MODELS:
        if is_showo_checkpoint(cfg.model.name):
            check_showo_checkpoint_dir(Path(cfg.model.name))
        else:
            check_checkpoint_dir(Path(cfg.model.name))  # CheckpointError naming what is missing
    refused = plan_error(cfg)  # a role whose memory plan does not fit its GPU share
    if refused is not None:
        raise refused
    evaluator = make_evaluator(cfg.eval)
    needs = getattr(evaluator, "image_size", None)  # an evaluator bound to one image size (toy)
    size = model_image_size(cfg.model.name)
    if needs is not None and size != needs:
        raise ConfigError(
            f"eval.kind={cfg.eval.kind!r}: the {evaluator.name} evaluator reads {needs} px images, "
            f"but model {cfg.model.name!r} makes {size} px images; use eval=self",
            ["eval.kind"],
        )
    if cfg.reward.verifier == "toy" and size != TOY_IMAGE_SIZE:
        raise ConfigError(
            f"reward.verifier={cfg.reward.verifier!r}: the toy world's verifier reads {TOY_IMAGE_SIZE} px "
            f"images, but model {cfg.model.name!r} makes {size} px images; use reward.verifier=none",
            ["reward.verifier"],
        )
    return Checked(
        prompts=load_prompt_set(cfg.curriculum.prompts),
        eval_prompts=evaluator.prompts(),
        verify=verifies(cfg, size),
    )


def model_image_size(name: str) -> int:
    """The side in pixels of the images a model generates, read from its config.json (a
    checkpoint) or from the model built in code, without loading any weights file."""
    from gapray.models import TOY_CHECKPOINT, load_model
    from gapray.models.showo import is_showo, showo_image_size

    if is_showo(name):
        return showo_image_size(name)
    path = TOY_CHECKPOINT if name == "toy" else Path(name)
    if path.is_dir():
        return int(json.loads((path / "config.json").read_text())["vision_config"]["image_size"])
    return int(load_model(name).image_size)  # built in code ("tiny"): small, random weights


def execute(
    cfg: Config,
    progress: bool | None = None,
    *,
    trackers: list | None = None,
    within: tuple[object, int] | None = None,
) -> dict:
    """Run (or resume) the loop described by a validated config; returns the summary.

    Uses the Ray instance already initialised in this process if there is one (tests),
    else connects or starts one (and shuts a local one down at the end). Nothing is written
    before the prompts, the model path, the cluster's resources and every actor's start-up
    have passed. trackers: what each metrics row also goes to (None: those of run.trackers,
    gapray.trackers); within: see `build_roles` (a sweep trial passes both)."""
    import ray

    from gapray.controller import Controller, resolve_out_dir
    from gapray.placement import check_resources, connect_ray
    from gapray.storage import RunDir

    checked = preflight(cfg)
    out_dir = resolve_out_dir(cfg)
    where = connect_ray(cfg)
    roles = None
    opened: list = []
    try:
        check_resources(cfg, ray.cluster_resources())
        roles = build_roles(cfg, within=within)
        run = RunDir(out_dir)
        run.write_json("placement.json", roles.placement())
        if trackers is None:
            from gapray.trackers import open_trackers

            trackers = opened = open_trackers(cfg, run.root)
        controller = Controller(
            cfg, run, roles, checked.prompts, checked.eval_prompts, trackers=trackers, verify=checked.verify
        )
        if cfg.run.resume:
            controller.resume()
        print(
            f"gapray run: {run.root} on Ray ({where}), steps {controller.start_step}..{cfg.run.steps}",
            file=sys.stderr,
        )
        show = cfg.run.progress if progress is None else progress
        return controller.run_loop(progress=_progress(cfg, controller.start_step) if show else None)
    finally:
        for tracker in opened:
            tracker.close()
        if roles is not None:
            roles.shutdown()
        if where == "local":
            ray.shutdown()


def main(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from gapray.controller import ResumeError, RunStopped
    from gapray.data.prompts import PromptFileError
    from gapray.models import CheckpointError
    from gapray.placement import ResourceError
    from gapray.storage import CorruptCheckpointError
    from gapray.workers.pool import WorkerError

    try:
        summary = execute(parse(argv))
    except (
        ConfigError,
        ResourceError,
        CorruptCheckpointError,
        ResumeError,
        PromptFileError,
        CheckpointError,
        WorkerError,
    ) as err:
        # Bad input, found before the loop started: nothing was written.
        print(f"gapray run: {err}", file=sys.stderr)
        return 2
    except RunStopped as err:
        # Stopped mid-run: the steps and checkpoints written so far stay valid.
        print(f"gapray run: {err}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


def _progress(cfg: Config, start: int):
    from tqdm import tqdm

    bar = tqdm(total=cfg.run.steps, initial=start - 1, desc="self-improve", unit="step", file=sys.stderr)

    def update(step: int, row: dict) -> None:
        post = {
            "p_yes": f"{row['mean_p_yes']:.3f}",
            "pairs": int(row.get("pairs", row.get("sft_examples", 0))),
        }
        if "loss" in row:
            post["loss"] = f"{row['loss']:.3f}"
        for key, short in (("toy_geneval_overall", "geneval"), ("self_non_unification", "non_unif")):
            if row.get(key) is not None:
                post[short] = f"{row[key]:.3f}"
        bar.set_postfix(post)
        bar.update(1)
        if step == cfg.run.steps:
            bar.close()

    return update
