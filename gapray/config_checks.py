"""Config validation: every out-of-range value and incompatible combination, all at once.

Where it sits: `gapray.config` builds a `Config` from YAML and overrides, then calls
`validate(cfg)` before anything starts; a failure is one `ConfigError` listing each offending
key with its rule. Kept apart from the schema so each file reads in one sitting.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from gapray.config import BUILTIN_MODELS, SECTIONS, TOY_PROMPTS, Config, ConfigError


def _is_showo(name: str) -> bool:
    """model.name is a Show-o: the tiny one built in code, or a directory whose config.json is
    Show-o's (_class_name "Showo"); read without importing the model code (gapray.models.showo
    has the same rule in is_showo)."""
    if name in ("showo_tiny", "toy_showo"):
        return True
    cfg = Path(name) / "config.json"
    try:
        return cfg.is_file() and json.loads(cfg.read_text()).get("_class_name") == "Showo"
    except (OSError, json.JSONDecodeError):
        return False


def validate(cfg: Config) -> None:
    """Raise `ConfigError` listing every out-of-range value and incompatible combination."""
    errors: list[tuple[str, str]] = []

    def need(ok: bool, key: str, rule: str) -> None:
        if not ok:
            section, _, name = key.partition(".")
            value = getattr(getattr(cfg, section), name)
            errors.append((key, f"{key}={value!r}: {rule}"))

    def one_of(key: str, *choices: str) -> None:
        need(_get(cfg, key) in choices, key, "must be one of " + ", ".join(repr(c) for c in choices))

    m, g, r, p, ln, s, c, ev, run = (getattr(cfg, k) for k in SECTIONS)
    # model
    need(
        m.name in BUILTIN_MODELS or Path(m.name).is_dir(),
        "model.name",
        "must be " + ", ".join(map(repr, BUILTIN_MODELS)) + " or an existing checkpoint directory",
    )
    one_of("model.dtype", "float32", "bfloat16", "auto")
    one_of("model.trainable", "llm", "all", "lora")
    need(m.lora_rank >= 1, "model.lora_rank", "must be >= 1")
    need(m.lora_alpha > 0, "model.lora_alpha", "must be > 0")
    showo = _is_showo(m.name)
    for key in ("mask_steps", "mask_schedule", "logprob_draws"):
        need(showo or getattr(m, key) is None, f"model.{key}", "is for mask-prediction models (Show-o) only")
    need(m.mask_steps is None or m.mask_steps >= 1, "model.mask_steps", "must be >= 1")
    need(m.mask_schedule in (None, "cosine", "linear"), "model.mask_schedule", "must be 'cosine' or 'linear'")
    need(m.logprob_draws is None or m.logprob_draws >= 1, "model.logprob_draws", "must be >= 1")
    need(
        not (showo and g.backend == "vllm"),
        "generation.backend",
        "Show-o generates by mask prediction (MaskGIT), not autoregressively: vLLM cannot run it; use 'hf'",
    )
    # resources
    for sec, count, cpus, gpus in (
        ("generation", "num_workers", "cpus_per_worker", "gpus_per_worker"),
        ("reward", "num_workers", "cpus_per_worker", "gpus_per_worker"),
        ("learner", "num_ranks", "cpus_per_rank", "gpus_per_rank"),
    ):
        need(_get(cfg, f"{sec}.{count}") >= 1, f"{sec}.{count}", "must be >= 1")
        need(_get(cfg, f"{sec}.{cpus}") > 0, f"{sec}.{cpus}", "must be > 0")
        gp = _get(cfg, f"{sec}.{gpus}")
        need(gp >= 0 and (gp <= 1 or gp == int(gp)), f"{sec}.{gpus}", "must be >= 0; a fraction only below 1")
    # generation
    one_of("generation.backend", "hf", "vllm")
    need(g.images_per_prompt >= 1, "generation.images_per_prompt", "must be >= 1")
    need(g.cfg_scale >= 1, "generation.cfg_scale", "must be >= 1 (1 = no guidance)")
    need(g.temperature > 0, "generation.temperature", "must be > 0")
    need(g.batch_size >= 1, "generation.batch_size", "must be >= 1")
    need(0 < g.gpu_memory_utilization <= 1, "generation.gpu_memory_utilization", "must be in (0, 1]")
    tp = g.tensor_parallel_size
    need(isinstance(tp, int) and tp >= 1, "generation.tensor_parallel_size", "must be an integer >= 1")
    if isinstance(tp, int) and tp > 1:
        need(g.backend == "vllm", "generation.tensor_parallel_size", "> 1 needs generation.backend=vllm")
        need(
            g.gpus_per_worker == tp,
            "generation.gpus_per_worker",
            f"must equal generation.tensor_parallel_size ({tp}): a tensor-parallel engine holds that many GPUs",
        )
    need(
        g.enforce_eager or g.gpus_per_worker > 0,
        "generation.enforce_eager",
        "false (CUDA graphs) needs a GPU: generation.gpus_per_worker > 0",
    )
    # reward
    need(0 < r.threshold < 1, "reward.threshold", "must be in (0, 1)")
    need(r.batch_size >= 1, "reward.batch_size", "must be >= 1")
    one_of("reward.verifier", "auto", "toy", "none")
    need(
        r.verifier != "toy" or c.prompts == TOY_PROMPTS,
        "reward.verifier",
        f"'toy' checks the toy world's prompts; curriculum.prompts={c.prompts!r} has no ground truth",
    )
    need(_formats_with_prompt(r.question), "reward.question", "must contain {prompt} and no other {field}")
    # pairs
    one_of("pairs.rule", "paper", "best_worst")
    need(0 <= p.min_margin < 1, "pairs.min_margin", "must be in [0, 1)")
    need(0 <= p.min_chosen <= 1, "pairs.min_chosen", "must be in [0, 1]")
    need(p.pairs_per_prompt >= 1, "pairs.pairs_per_prompt", "must be >= 1")
    # learner
    one_of("learner.algorithm", "dpo", "sft")
    one_of("learner.loss", "sigmoid", "ipo", "hinge")
    one_of("learner.reference", "initial", "none")
    need(ln.beta > 0, "learner.beta", "must be > 0")
    need(ln.nll_weight >= 0, "learner.nll_weight", "must be >= 0")
    need(0 <= ln.label_smoothing < 0.5, "learner.label_smoothing", "must be in [0, 0.5)")
    need(ln.lr > 0, "learner.lr", "must be > 0")
    need(ln.weight_decay >= 0, "learner.weight_decay", "must be >= 0")
    need(
        len(ln.betas) == 2 and all(0 <= b < 1 for b in ln.betas),
        "learner.betas",
        "must be two values in [0, 1)",
    )
    need(ln.max_grad_norm > 0, "learner.max_grad_norm", "must be > 0")
    need(ln.micro_batch_size >= 1, "learner.micro_batch_size", "must be >= 1")
    need(ln.grad_accum >= 1, "learner.grad_accum", "must be >= 1")
    need(
        ln.pairs_per_update is None or ln.pairs_per_update >= 1,
        "learner.pairs_per_update",
        "must be null (micro_batch_size * grad_accum * num_ranks) or >= 1",
    )
    need(
        ln.pairs_per_update is None or ln.grad_accum == 1,
        "learner.grad_accum",
        f"must be 1 when learner.pairs_per_update is set ({ln.pairs_per_update!r} rows per update)",
    )
    need(
        ln.logprob_cfg_scale is None or ln.logprob_cfg_scale >= 1,
        "learner.logprob_cfg_scale",
        "must be null (follow generation.cfg_scale) or >= 1 (1 = conditional)",
    )
    need(ln.max_bad_steps >= 1, "learner.max_bad_steps", "must be >= 1")
    # the learner at scale (gapray/workers/fsdp.py, gapray/algos/schedule.py)
    one_of("learner.sharding", "fsdp", "none")
    one_of("learner.compute_dtype", "auto", "float32", "bfloat16")
    one_of("learner.lr_schedule", "constant", "cosine")
    need(ln.warmup_updates >= 0, "learner.warmup_updates", "must be >= 0")
    need(
        ln.lr_schedule != "cosine" or (ln.decay_updates is not None and ln.decay_updates > ln.warmup_updates),
        "learner.decay_updates",
        f"must be > learner.warmup_updates ({ln.warmup_updates}) for learner.lr_schedule=cosine",
    )
    need(0 <= ln.min_lr_ratio <= 1, "learner.min_lr_ratio", "must be in [0, 1]")
    # sync
    need(s.bucket_mb > 0, "sync.bucket_mb", "must be > 0")
    one_of("sync.transport", "auto", "object_store", "compiled_graph")
    if s.transport == "compiled_graph":
        for rule in compiled_graph_misfits(cfg):
            need(False, "sync.transport", rule)
    # curriculum
    one_of("curriculum.kind", "uniform", "replay", "band")
    need(c.prompts_per_step >= 1, "curriculum.prompts_per_step", "must be >= 1")
    need(c.replay_every >= 1, "curriculum.replay_every", "must be >= 1")
    need(0 <= c.replay_fraction <= 1, "curriculum.replay_fraction", "must be in [0, 1]")
    need(0 <= c.band_low <= 1, "curriculum.band_low", "must be in [0, 1]")
    need(0 <= c.band_high <= 1, "curriculum.band_high", "must be in [0, 1]")
    need(c.band_low < c.band_high, "curriculum.band_high", f"must be > curriculum.band_low={c.band_low!r}")
    need(0 < c.ema <= 1, "curriculum.ema", "must be in (0, 1]")
    need(0 <= c.explore <= 1, "curriculum.explore", "must be in [0, 1]")
    prompts_error = _prompts_error(c.prompts)
    need(prompts_error is None, "curriculum.prompts", prompts_error or "")
    # eval
    one_of("eval.kind", "self", "toy", "judge")
    need(ev.images_per_prompt >= 1, "eval.images_per_prompt", "must be >= 1")
    need(ev.min_images_per_tag >= 0, "eval.min_images_per_tag", "must be >= 0")
    need(ev.limit is None or ev.limit >= 1, "eval.limit", "must be null (all) or >= 1")
    if ev.kind == "toy":
        from gapray.eval.toy_eval import scored_splits

        scored = scored_splits()
        need(
            ev.split in scored,
            "eval.split",
            f"must be one of {scored} (the toy world's held-out splits; train is what the run trains on), "
            f"got {ev.split!r}",
        )
    if ev.kind == "self":
        eval_prompts_error = _prompts_error(ev.prompts, allow_toy=False)
        need(eval_prompts_error is None, "eval.prompts", eval_prompts_error or "")
    from gapray.eval.judges import judges_error, toy_set

    if ev.kind == "judge":
        eval_prompts_error = None if toy_set(ev.prompts) else _prompts_error(ev.prompts, allow_toy=False)
        need(eval_prompts_error is None, "eval.prompts", eval_prompts_error or "")
        need(bool(ev.judges), "eval.judges", "eval=judge needs at least one external judge")
    judge_error = judges_error(ev.judges, ev.prompts) if ev.judges else None
    need(judge_error is None, "eval.judges", judge_error or "")
    need(ev.judge_cpus > 0, "eval.judge_cpus", "must be > 0")
    need(
        ev.judge_gpus >= 0 and (ev.judge_gpus <= 1 or ev.judge_gpus == int(ev.judge_gpus)),
        "eval.judge_gpus",
        "must be >= 0; a fraction only below 1",
    )
    need(ev.judge_batch_size >= 1, "eval.judge_batch_size", "must be >= 1")
    one_of("eval.judge_dtype", "float32", "bfloat16", "auto")
    # run
    need(run.steps >= 1, "run.steps", "must be >= 1")
    need(
        run.gpu_memory_gib is None or run.gpu_memory_gib > 0,
        "run.gpu_memory_gib",
        "must be null (the driver's GPU) or > 0",
    )
    need(bool(run.out_dir.strip()), "run.out_dir", "must not be empty")
    one_of("run.placement", "colocate", "split")
    need(run.ray_address is None or bool(run.ray_address.strip()), "run.ray_address", "null or an address")
    need(run.eval_every >= 0, "run.eval_every", "must be >= 0 (0 = only before and after)")
    need(run.checkpoint_every >= 0, "run.checkpoint_every", "must be >= 0 (0 = only at the end)")
    need(run.keep_checkpoints >= 0, "run.keep_checkpoints", "must be >= 0 (0 = keep all)")
    need(
        run.resume is None or (Path(run.resume) / "config.yaml").is_file(),
        "run.resume",
        "must be null or a run directory holding config.yaml",
    )
    one_of("run.pipeline", "sync", "async")
    need(
        isinstance(run.max_staleness, int) and run.max_staleness >= 0,
        "run.max_staleness",
        "must be an integer >= 0 (0 = sync's samples; read when run.pipeline=async)",
    )
    need(
        run.threads_per_actor is None or run.threads_per_actor >= 1,
        "run.threads_per_actor",
        "must be >= 1 (or null for the role's CPUs)",
    )
    from gapray.trackers import TRACKERS, missing_extra

    need(
        all(t in TRACKERS for t in run.trackers) and len(set(run.trackers)) == len(run.trackers),
        "run.trackers",
        "must list each of " + ", ".join(map(repr, TRACKERS)) + " at most once",
    )
    for tracker in (t for t in run.trackers if t in TRACKERS):
        missing = missing_extra(tracker)
        need(missing is None, "run.trackers", f"{tracker!r}: {missing}")
    need(bool(run.wandb_project.strip()), "run.wandb_project", "must not be empty")
    need(
        run.wandb_mode in (None, "online", "offline"), "run.wandb_mode", "must be null, 'online' or 'offline'"
    )
    need(run.mlflow_uri is None or bool(run.mlflow_uri.strip()), "run.mlflow_uri", "null or a tracking URI")
    # combinations
    if ln.algorithm == "dpo":
        need(
            g.images_per_prompt >= 2,
            "generation.images_per_prompt",
            "learner.algorithm=dpo needs >= 2 (a pair is two images of one prompt)",
        )
        need(
            ln.reference != "none", "learner.reference", "learner.algorithm=dpo needs a reference ('initial')"
        )
        need(
            ln.label_smoothing == 0 or ln.loss == "sigmoid",
            "learner.label_smoothing",
            f"only loss=sigmoid uses label smoothing (loss={ln.loss!r})",
        )
    if errors:
        keys = list(dict.fromkeys(k for k, _ in errors))
        lines = "\n  ".join(msg for _, msg in errors)
        raise ConfigError(f"invalid config:\n  {lines}", keys)


def compiled_graph_misfits(cfg: Config) -> list[str]:
    """Why sync.transport=compiled_graph cannot serve this config (empty: it can). The one list
    both the refusal in `validate` and sync.transport=auto's choice read."""
    out = []
    # gapray/workers/sync/compiled.py: one learner node in the graph (a sharded export needs
    # every rank); a push never overlaps a generation (the async pipeline is untested with it)
    if cfg.learner.num_ranks != 1:
        out.append("compiled_graph needs learner.num_ranks=1")
    if cfg.run.pipeline != "sync":
        out.append("compiled_graph needs run.pipeline=sync")
    # a vLLM generation worker under the graph: the run's first push never returned (a Ray
    # error after 694 s in tests/test_vllm_loop.py, 2026-12-08); the object store serves it
    if cfg.generation.backend != "hf":
        out.append("compiled_graph needs generation.backend=hf")
    return out


def _get(cfg: Config, key: str) -> Any:
    section, _, name = key.partition(".")
    return getattr(getattr(cfg, section), name)


def _formats_with_prompt(template: str) -> bool:
    try:
        return "{prompt}" in template and template.format(prompt="x") is not None
    except (KeyError, IndexError, ValueError):
        return False


def _prompts_error(prompts: str, allow_toy: bool = True) -> str | None:
    """Why `prompts` names no prompt set, or None. Files must exist (name in message)."""
    if prompts == TOY_PROMPTS:
        return None if allow_toy else "the toy world's prompts are evaluated by eval=toy, not eval=self"
    if Path(prompts).suffix in (".jsonl", ".txt"):
        return None if Path(prompts).is_file() else f"prompt file {prompts} does not exist"
    from gapray.data.prompts import builtin_names

    names = [TOY_PROMPTS, *builtin_names()]
    if prompts in names:
        return None
    close = difflib.get_close_matches(prompts, names, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"not a prompt set ({', '.join(names[:4])}, t2i_compbench/<category>_<split>) nor a .jsonl/.txt file{hint}"
