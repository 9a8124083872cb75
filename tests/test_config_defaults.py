"""Where settings live: algorithm settings in learner/generation groups, run groups hold run.*
keys only, the toy model's sampling settings come with model=toy; and the default `gapray run`
resolves to the values it had before they moved (when configs/run/toy.yaml carried them).

    PYTHONPATH=. python -m pytest tests/test_config_defaults.py -q
"""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from gapray.config import SECTIONS, RunConfig, default_config_dir, load_config, to_dict
from gapray.workers.learner import LogprobSettings

CONFIG_DIR = default_config_dir()

# `gapray run` with no overrides, resolved before the settings moved out of configs/run/toy.yaml
# (commit 83d6afa), less run.out_dir (a timestamp) and the evaluation keys (now the eval group's).
BEFORE = {
    "model": {"name": "toy", "dtype": "float32", "trainable": "all", "lora_rank": 16, "lora_alpha": 32.0},
    "generation": {
        "backend": "hf",
        "num_workers": 1,
        "cpus_per_worker": 1.0,
        "gpus_per_worker": 0.0,
        "images_per_prompt": 8,
        "cfg_scale": 3.0,
        "temperature": 1.0,
        "batch_size": 128,
    },
    "reward": {
        "num_workers": 1,
        "cpus_per_worker": 0.5,
        "gpus_per_worker": 0.0,
        "follow_policy": False,
        "question": "Does this image show {prompt}? Answer yes or no.",
        "threshold": 0.5,
        "batch_size": 128,
    },
    "pairs": {"rule": "paper", "min_margin": 0.0, "min_chosen": 0.0, "pairs_per_prompt": 1},
    "learner": {
        "algorithm": "dpo",
        "loss": "sigmoid",
        "beta": 0.1,
        "nll_weight": 0.0,
        "label_smoothing": 0.0,
        "lr": 1.0e-4,
        "weight_decay": 0.0,
        "betas": [0.9, 0.95],
        "max_grad_norm": 1.0,
        "micro_batch_size": 8,
        "grad_accum": 1,
        "num_ranks": 1,
        "cpus_per_rank": 0.5,
        "gpus_per_rank": 0.0,
        "logprob_cfg_scale": 3.0,  # explicit then; now null, following generation.cfg_scale = 3.0
        "reference": "initial",
        "max_bad_steps": 3,
    },
    "sync": {"bucket_mb": 64.0, "transport": "auto"},
    "curriculum": {
        "kind": "uniform",
        "prompts": "toy",
        "prompts_per_step": 12,
        "replay_every": 5,
        "replay_fraction": 0.25,
        "band_low": 0.2,
        "band_high": 0.8,
        "ema": 0.5,
        "explore": 0.1,
    },
    "run": {
        "steps": 100,
        "seed": 0,
        "placement": "colocate",
        "ray_address": None,
        "eval_every": 50,
        "checkpoint_every": 50,
        "keep_checkpoints": 2,
        "resume": None,
        "progress": True,
        "threads_per_actor": 2,
    },
}
MOVED_TO_EVAL = {"eval_images_per_prompt", "eval_limit"}  # run keys of then, the eval group's now
ADDED = {("reward", "verifier")}  # keys added since, which change no behaviour of then
# settings that transfer and trackers (issue #15): their defaults change no behaviour of then
ADDED |= {("learner", "beta_per_token"), ("learner", "pairs_per_update")}
ADDED |= {("run", "trackers"), ("run", "wandb_project"), ("run", "wandb_mode"), ("run", "mlflow_uri")}
# Show-o's sampler keys (null for Janus), vLLM engine knobs, the learner at scale (sharding,
# compute dtype, checkpointing, LR schedule: one rank, fp32, constant is the old learner), the
# pipeline (sync) and the memory plan (no GPU: no check)
ADDED |= {("model", "mask_steps"), ("model", "mask_schedule"), ("model", "logprob_draws")}
ADDED |= {("generation", k) for k in ("gpu_memory_utilization", "enforce_eager", "tensor_parallel_size")}
ADDED |= {
    ("learner", k)
    for k in (
        "sharding",
        "compute_dtype",
        "activation_checkpointing",
        "lr_schedule",
        "warmup_updates",
        "decay_updates",
        "min_lr_ratio",
    )
}
ADDED |= {("run", "pipeline"), ("run", "max_staleness"), ("run", "gpu_memory_gib")}


def _effective(cfg) -> LogprobSettings:
    return LogprobSettings.from_config(cfg.learner, cfg.generation)


def test_default_run_resolves_to_the_values_it_had():
    cfg = load_config()
    now = to_dict(cfg)
    now["learner"]["logprob_cfg_scale"] = _effective(cfg).cfg_scale  # compare what the learner uses
    now["run"].pop("out_dir")
    assert set(now["run"]) | MOVED_TO_EVAL >= set(BEFORE["run"]) | MOVED_TO_EVAL
    now["run"] = {k: v for k, v in now["run"].items() if k not in MOVED_TO_EVAL}
    for section, key in ADDED:
        now[section].pop(key)
    for section, values in BEFORE.items():
        assert now[section] == values, section
    assert cfg.learner.logprob_cfg_scale is None  # follows the sampler, not a copy of its value
    assert _effective(cfg) == LogprobSettings(cfg_scale=3.0, temperature=1.0)
    assert cfg.run.out_dir.startswith("runs/toy-")


def test_cluster_run_on_another_model_gets_the_tuned_dpo():
    cfg = load_config(["model=tiny", "run=cluster"])
    ln = cfg.learner
    assert (ln.algorithm, ln.beta, ln.nll_weight, ln.logprob_cfg_scale) == ("dpo", 0.1, 0.0, None)
    assert cfg.generation.cfg_scale == 5.0  # Janus-Pro's weight: the toy model's 3.0 stays with it
    assert _effective(cfg) == LogprobSettings(cfg_scale=5.0, temperature=cfg.generation.temperature)
    hot = load_config(["model=tiny", "run=cluster", "generation.temperature=0.8"])
    assert _effective(hot) == LogprobSettings(cfg_scale=5.0, temperature=0.8)


def test_paper_loss_is_its_own_group():
    ln = load_config(["learner=dpo_nll"]).learner
    assert (ln.algorithm, ln.beta, ln.nll_weight, ln.logprob_cfg_scale) == ("dpo", 0.2, 1.0, None)
    conditional = load_config(["learner=dpo_nll", "learner.logprob_cfg_scale=1", "run=cluster"])
    assert _effective(conditional).cfg_scale is None  # 1 = no guidance: the conditional log-probs


@pytest.mark.parametrize(
    ("overrides", "cfg_scale", "batch"),
    [
        (["run=cluster"], 3.0, 128),  # the toy model's settings do not depend on the run group
        (["generation=vllm"], 3.0, 128),  # nor on the backend
        (["generation.cfg_scale=5", "generation.batch_size=16"], 5.0, 16),  # a key override wins
        (["model=tiny"], 5.0, 16),  # and they are the toy model's only
    ],
)
def test_toy_sampling_settings_come_with_the_toy_model(overrides, cfg_scale, batch):
    cfg = load_config(overrides)
    assert (cfg.generation.cfg_scale, cfg.generation.batch_size) == (cfg_scale, batch)
    assert cfg.reward.batch_size == (128 if cfg.model.name == "toy" else 16)


@pytest.mark.parametrize("path", sorted((CONFIG_DIR / "run").glob("*.yaml")), ids=lambda p: p.stem)
def test_run_groups_hold_run_keys_only(path):
    text = path.read_text()
    assert "@package" not in text, f"{path.name}: a run group sets run.* keys, in its own package"
    keys = set(yaml.safe_load(text) or {})
    assert keys <= {f.name for f in dataclasses.fields(RunConfig)}, f"{path.name}: {sorted(keys)}"


@pytest.mark.parametrize("path", sorted((CONFIG_DIR / "model").glob("*.yaml")), ids=lambda p: p.stem)
def test_model_files_set_no_algorithm_keys(path):
    text = path.read_text()
    data = yaml.safe_load(text) or {}
    sections = set(data) if text.startswith("# @package _global_") else {"model"}
    assert sections <= {"model", "generation", "reward"}, f"{path.name} sets {sorted(sections)}"
    assert sections <= set(SECTIONS)
