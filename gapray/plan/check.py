"""Preflight's memory check: `check_plan` refuses a role whose plan does not fit its GPU
share, naming the role, the estimate, its largest lines and the knobs that would make it fit
(for the learner: the fewest that together do); `plan_error` is its ConfigError form."""

from __future__ import annotations

import copy

from gapray.plan.roles import _gib, build_plan, gpu_memory_bytes, learner_plan, learner_settings
from gapray.plan.sizes import ModelSizes, model_sizes


def _with(cfg, **changes):
    """A copy of cfg with dotted-key changes ("learner.num_ranks": 8)."""
    new = copy.deepcopy(cfg)
    for key, value in changes.items():
        section, _, name = key.partition(".")
        setattr(getattr(new, section), name, value)
    return new


def _learner_fixes(cfg, model: str | None, gpu_memory: int) -> list[str]:
    """The fewest learner knobs that together make its plan fit: each knob alone first, then
    pairs, then triples (more ranks with learner.sharding=fsdp, activation checkpointing,
    LoRA, a smaller micro-batch); for ranks and micro-batch the least change that fits."""
    import itertools

    ln = cfg.learner
    sharding, ckpt, _ = learner_settings(ln)
    knobs: list[list[dict]] = []
    ranks = [
        n for n in (2, 4, 8, 16, 32, 64) if n > ln.num_ranks or (sharding != "fsdp" and n >= ln.num_ranks)
    ]
    knobs.append([{"learner.sharding": "fsdp", "learner.num_ranks": n} for n in ranks])
    if not ckpt:
        knobs.append([{"learner.activation_checkpointing": True}])
    if cfg.model.trainable != "lora":
        knobs.append([{"model.trainable": "lora"}])
    knobs.append([{"learner.micro_batch_size": n} for n in (4, 2, 1) if n < ln.micro_batch_size])
    knobs = [k for k in knobs if k]
    budget = int(min(ln.gpus_per_rank, 1.0) * gpu_memory)
    for size in (1, 2, 3):
        fixes = []
        for kinds in itertools.combinations(knobs, size):
            for combo in itertools.product(*kinds):
                change = {k: v for part in combo for k, v in part.items()}
                total = learner_plan(_with(cfg, **change), _sizes_for(cfg, model, change), gpu_memory).total
                if total <= budget:
                    fixes.append(" ".join(f"{k}={_show(v)}" for k, v in change.items()) + f" ({_gib(total)})")
                    break  # the least change of this kind that fits
        if fixes:
            return fixes[:4]
    return []


def _sizes_for(cfg, model: str | None, change: dict) -> ModelSizes:
    m = cfg.model
    trainable = change.get("model.trainable", m.trainable)
    return model_sizes(model or m.name, trainable, m.lora_rank, m.lora_alpha)


def _show(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def check_plan(cfg, *, model: str | None = None, gpu_memory: int | str | None = "auto") -> list[str]:
    """One message per role whose plan does not fit its GPU share: the role, the estimate
    against the budget, its largest lines, and the knobs that would make it fit. [] when every
    role fits, or when the GPU's memory is unknown (a CPU run: nothing to check)."""
    if gpu_memory == "auto":
        gpu_memory, source = gpu_memory_bytes(cfg)
    else:
        source = "given"
    gpus = (cfg.generation.gpus_per_worker, cfg.reward.gpus_per_worker, cfg.learner.gpus_per_rank)
    if gpu_memory is None or not any(g > 0 for g in gpus):
        return []  # a CPU run, or a GPU of unknown size: nothing to check (and no model built)
    plan = build_plan(cfg, model=model, gpu_memory=gpu_memory)
    plan.gpu_source = source
    errors = []
    for rp in plan.roles.values():
        if rp.fits:
            continue
        top = sorted(rp.lines, key=lambda line: -line.bytes)[:3]
        parts = ", ".join(f"{line.what} {_gib(line.bytes)}" for line in top)
        msg = (
            f"{rp.role}: the plan needs {_gib(rp.total)} per GPU, more than its "
            f"{_gib(rp.budget)} ({_share(rp.gpus)} of {_gib(plan.gpu_memory)}, {plan.gpu_source}); "
            f"largest: {parts}"
        )
        if rp.role == "learner":
            fixes = _learner_fixes(cfg, model, plan.gpu_memory)
            hint = (
                "; fits with " + " or ".join(fixes)
                if fixes
                else (
                    "; no combination of more ranks (learner.num_ranks with learner.sharding=fsdp), "
                    "model.trainable=lora, learner.activation_checkpointing=true and a smaller "
                    "learner.micro_batch_size makes it fit"
                )
            )
        elif rp.role == "generation":
            hint = "; lower generation.batch_size, use model.dtype=bfloat16 or a whole GPU (generation.gpus_per_worker=1)"
        else:
            hint = "; lower reward.batch_size, use model.dtype=bfloat16 or a whole GPU (reward.gpus_per_worker=1)"
        errors.append(msg + hint)
    return errors


ROLE_KEYS = {
    "generation": ["generation.gpus_per_worker", "generation.batch_size"],
    "reward": ["reward.gpus_per_worker", "reward.batch_size"],
    "learner": ["learner.num_ranks", "learner.micro_batch_size", "learner.activation_checkpointing"],
}
"""The keys a refusal names for each role (ConfigError.keys)."""


def plan_error(cfg):
    """Preflight's form of `check_plan`: a ConfigError listing every role that does not fit
    (keys: the role's knobs and run.gpu_memory_gib), or None."""
    from gapray.config import ConfigError

    errors = check_plan(cfg)
    if not errors:
        return None
    roles = [e.partition(":")[0] for e in errors]
    keys = [k for role in roles for k in ROLE_KEYS[role]] + ["run.gpu_memory_gib"]
    return ConfigError("memory plan (gapray plan):\n  " + "\n  ".join(errors), keys)


def _share(gpus: float) -> str:
    return "1 GPU" if gpus >= 1 else f"{gpus:g} GPU"
