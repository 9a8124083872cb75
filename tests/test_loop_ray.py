"""The online loop end to end on a local Ray with the tiny model: roles, sync, resume."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import TINY_RUN

from gapray.config import from_run_dir, load_config
from gapray.run import execute
from gapray.storage import RunDir
from gapray.storage.checkpoints import load_trainer_state

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TINY = TINY_RUN  # see tests/conftest.py


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=4, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_tiny_run_learns_syncs_and_records_versions(ray_local, tmp_path):
    out = tmp_path / "run"
    cfg = load_config(
        [
            *TINY,
            "generation.num_workers=2",
            "generation.cpus_per_worker=0.5",
            "run.steps=3",
            "run.eval_every=3",
            "run.checkpoint_every=3",
            f"run.out_dir={out}",
        ]
    )
    summary = execute(cfg)
    assert summary["version"] == 3
    run = RunDir(out)
    metrics = run.read_metrics().to_pylist()
    assert [m["step"] for m in metrics] == [0, 1, 2, 3]
    assert [m["version"] for m in metrics] == [0, 1, 2, 3]
    assert all(m["pairs"] == 4 for m in metrics[1:])
    assert all(np.isfinite(m["loss"]) for m in metrics[1:])
    # Every sample records the policy version that made it: step k's were made by version k-1,
    # so after the last sync they are visibly stale.
    rollouts = run.read_rollouts().to_pylist()
    assert len(rollouts) == 3 * 4 * 4
    assert all(row["version"] == row["step"] - 1 for row in rollouts)
    # The learner's weights moved away from the initial model.
    state = load_trainer_state(run.latest_checkpoint())
    from gapray.models.tiny import tiny_janus

    initial = dict(tiny_janus(seed=0).model.named_parameters())
    changed = [n for n, t in state["trainable"].items() if not torch.equal(t, initial[n].detach())]
    assert len(changed) == len(state["trainable"]) > 0
    assert (out / "curves.png").is_file() and (out / "summary.json").is_file()
    # eval=self (the tiny model is not the toy world's): its metrics carry the evaluator's name,
    # and both generation workers evaluated a share of the prompts.
    assert summary["evaluator"] == "self"
    assert set(summary["start"]) >= {"self_non_unification", "self_mean_p_yes"}
    assert not any(k.startswith("toy_") or k.startswith("geneval") for k in summary["start"])
    assert metrics[0]["self_non_unification"] == summary["start"]["self_non_unification"]
    for step in (0, 3):
        results = RunDir(out).read_json(f"evals/step_{step:07d}/results.json")
        assert results["workers"] == 2 and results["n_prompts"] == 4 and results["n_images"] == 8
        assert results["version"] == step


def test_every_worker_holds_the_pushed_version(ray_local):
    from gapray.run import build_roles
    from gapray.workers.sync import WeightSync

    cfg = load_config([*TINY, "generation.num_workers=2", "generation.cpus_per_worker=0.5"])
    roles = build_roles(cfg)
    try:
        sync = WeightSync(cfg.sync.bucket_mb)
        assert roles.generation.versions() == [0, 0]
        stats = sync.push(roles.learner, [roles.generation, roles.reward])
        assert stats.version == 1 and stats.bytes > 0
        assert roles.generation.versions() == [1, 1]
        assert roles.reward.versions() == [1]
    finally:
        roles.shutdown()


def test_resume_continues_without_duplicate_steps(ray_local, tmp_path):
    out = tmp_path / "run"
    base = [*TINY, "run.eval_every=100", "run.checkpoint_every=2", f"run.out_dir={out}"]
    execute(load_config([*base, "run.steps=3"]))
    first = pq.read_table(out / "rollouts" / "step_0000003.parquet").to_pylist()
    # Interrupted after step 3 was logged but before its checkpoint: drop that checkpoint.
    shutil.rmtree(out / "checkpoints" / "step_0000003")
    summary = execute(from_run_dir(out, ["run.steps=5"]))
    assert summary["version"] == 5
    steps = [m["step"] for m in RunDir(out).read_metrics().to_pylist()]
    assert steps == [0, 1, 2, 3, 4, 5]
    # The redone step 3 drew exactly the images of the first attempt (same seeds, same weights).
    again = pq.read_table(out / "rollouts" / "step_0000003.parquet").to_pylist()
    assert [r["seed"] for r in again] == [r["seed"] for r in first]
    assert [r["tokens"] for r in again] == [r["tokens"] for r in first]


def test_two_learner_ranks_with_lora_stay_in_step(ray_local, tmp_path):
    # Two ranks under torch.distributed (gloo here) split each step's pairs and all-reduce the
    # gradients; LoRA adapters travel to the workers and are merged there.
    out = tmp_path / "run"
    cfg = load_config(
        [
            *TINY,
            "model.trainable=lora",
            "learner.num_ranks=2",
            "learner.micro_batch_size=1",
            "run.steps=2",
            "run.eval_every=2",
            "run.checkpoint_every=2",
            f"run.out_dir={out}",
        ]
    )
    summary = execute(cfg)
    assert summary["version"] == 2
    metrics = RunDir(out).read_metrics().to_pylist()
    assert [m["optimizer_steps"] for m in metrics[1:]] == [2.0, 2.0]  # 4 pairs / (1 x 1 x 2 ranks)
    state = load_trainer_state(run_dir_checkpoint(out))
    assert state["trainable"] and all("lora_" in n for n in state["trainable"])
    assert any(t.abs().sum() > 0 for n, t in state["trainable"].items() if "lora_B" in n)


def run_dir_checkpoint(out):
    return RunDir(out).latest_checkpoint()
