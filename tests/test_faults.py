"""Faults on purpose: workers, a learner rank and the driver die; checkpoints get corrupted.

    pytest -m fault tests/test_faults.py

Workers die inside their own method (a hooked subclass, defined here and imported by the Ray
workers from this file, calls os._exit mid-call, once, claimed through a marker file so exactly
one process dies), which is what a node loss or an OOM kill looks like to the driver. The driver is killed with SIGKILL as a subprocess (`gapray run`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import TINY_RUN

from gapray.controller import row_seeds
from gapray.run import main
from gapray.storage import RunDir
from gapray.workers.generation import GenerationWorker
from gapray.workers.learner import LearnerWorker
from gapray.workers.reward import RewardWorker

pytestmark = [pytest.mark.ray, pytest.mark.fault, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
TINY = [*TINY_RUN, "run.eval_every=100"]
ROWS = 4 * 4  # prompts per step x images per prompt


@pytest.fixture(scope="module")
def fault_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def ray_local(fault_dir):
    ray = pytest.importorskip("ray")
    # The workers import the Dying* classes below from this file (pickled by reference).
    path = os.pathsep.join([str(Path(__file__).parent), str(REPO)])
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        configure_logging=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path, "GAPRAY_FAULT_DIR": str(fault_dir)}},
    )
    yield ray
    ray.shutdown()


def arm(fault_dir: Path, kind: str, from_call: int) -> Path:
    """The next process of `kind` reaching its `from_call`-th call dies in it."""
    (marker := fault_dir / f"kill-{kind}").write_text(str(from_call))
    return marker


def _maybe_die(kind: str, calls: int) -> None:
    marker = Path(os.environ.get("GAPRAY_FAULT_DIR", "/nonexistent")) / f"kill-{kind}"
    try:
        if calls < int(marker.read_text()):
            return
        os.rename(marker, f"{marker}.claimed")  # atomic: one process wins, once
    except (FileNotFoundError, ValueError):
        return
    os._exit(1)  # mid-call: the work is done, the result never returned


class DyingGenerationWorker(GenerationWorker):
    calls = 0

    def generate(self, *args, **kwargs):
        out = super().generate(*args, **kwargs)
        self.calls += 1
        _maybe_die("generation", self.calls)
        return out


class DyingRewardWorker(RewardWorker):
    calls = 0

    def score(self, *args, **kwargs):
        out = super().score(*args, **kwargs)
        self.calls += 1
        _maybe_die("reward", self.calls)
        return out


class DyingLearnerWorker(LearnerWorker):
    calls = 0

    def update(self, *args, **kwargs):
        self.calls += 1
        _maybe_die("learner", self.calls)  # before the update: the step's batch is lost
        return super().update(*args, **kwargs)


def metric_steps(out: Path) -> list[int]:
    return [m["step"] for m in RunDir(out).read_metrics().to_pylist()]


def check_rollouts_exact(out: Path, steps: int) -> None:
    """Every step has exactly its rows, once each, with the driver's seeds."""
    rows = RunDir(out).read_rollouts().to_pylist()
    assert len(rows) == steps * ROWS
    keys = [(r["step"], r["prompt_id"], r["sample_index"]) for r in rows]
    assert len(set(keys)) == len(keys)
    for step in range(1, steps + 1):
        seeds = [r["seed"] for r in rows if r["step"] == step]
        assert seeds == row_seeds(0, step, ROWS).tolist()


def test_dead_generation_and_reward_workers_are_replaced(ray_local, fault_dir, tmp_path, monkeypatch):
    import gapray.workers.generation as generation
    import gapray.workers.reward as reward

    # Step 2 (each worker's second call): after a weight sync, so the replacement must load
    # version 1 before it redoes the share.
    gen_marker, rew_marker = arm(fault_dir, "generation", 2), arm(fault_dir, "reward", 2)
    monkeypatch.setattr(generation, "GenerationWorker", DyingGenerationWorker)
    monkeypatch.setattr(reward, "RewardWorker", DyingRewardWorker)
    out = tmp_path / "run"
    rc = main(
        [
            *TINY,
            "run.steps=3",
            "generation.num_workers=2",
            "generation.cpus_per_worker=0.5",
            "reward.num_workers=2",
            "reward.cpus_per_worker=0.5",
            f"run.out_dir={out}",
        ]
    )
    assert rc == 0
    assert not gen_marker.exists() and not rew_marker.exists()  # both kills happened
    assert metric_steps(out) == [0, 1, 2, 3]
    check_rollouts_exact(out, 3)
    rows = RunDir(out).read_rollouts().to_pylist()
    assert all(r["version"] == r["step"] - 1 for r in rows)  # the replacement held version 1
    assert [m["version"] for m in RunDir(out).read_metrics().to_pylist()] == [0, 1, 2, 3]


def test_dead_learner_stops_cleanly_and_resume_continues(ray_local, fault_dir, tmp_path, monkeypatch, capsys):
    import gapray.workers.learner as learner

    marker = arm(fault_dir, "learner", 2)
    monkeypatch.setattr(learner, "LearnerWorker", DyingLearnerWorker)
    out = tmp_path / "run"
    rc = main([*TINY, "run.steps=3", "run.checkpoint_every=1", f"run.out_dir={out}"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "step 2: learner rank 0 died" in err
    assert "its last checkpoint is checkpoints/step_0000001" in err
    assert f"Resume with: gapray run resume={out}" in err
    assert metric_steps(out) == [0, 1]
    RunDir(out).verify_checkpoint(out / "checkpoints" / "step_0000001")

    assert not marker.exists()
    monkeypatch.undo()
    assert main([f"resume={out}"]) == 0
    assert "steps 2..3" in capsys.readouterr().err
    assert metric_steps(out) == [0, 1, 2, 3]
    check_rollouts_exact(out, 3)


class _WaitingRank:
    """A learner rank stand-in that sits in its update, as a survivor does in a collective."""

    def update(self, batch):
        time.sleep(600)


class _DyingRank:
    def update(self, batch):
        os._exit(1)


def test_learner_group_raises_on_a_dead_rank_while_another_still_waits(ray_local):
    from ray.exceptions import RayActorError

    from gapray.workers.learner import LearnerGroup

    waiting = ray_local.remote(num_cpus=0)(_WaitingRank).remote()
    dying = ray_local.remote(num_cpus=0)(_DyingRank).remote()
    start = time.monotonic()
    with pytest.raises(RayActorError):
        LearnerGroup([waiting, dying]).update({})
    assert time.monotonic() - start < 120  # not the 600 s the waiting rank would take
    ray_local.kill(waiting)


def test_dead_rank_of_two_stops_the_run_without_waiting_on_the_survivor(
    ray_local, fault_dir, tmp_path, monkeypatch, capsys
):
    import gapray.workers.learner as learner

    # One of two gloo ranks dies before its all_reduce; the other may sit in the collective
    # (gloo's timeout is 30 min). The driver must report the dead rank and stop now.
    marker = arm(fault_dir, "learner", 2)
    monkeypatch.setattr(learner, "LearnerWorker", DyingLearnerWorker)
    out = tmp_path / "run"
    start = time.monotonic()
    rc = main(
        [
            *TINY,
            "run.steps=3",
            "run.checkpoint_every=1",
            "learner.num_ranks=2",
            "learner.cpus_per_rank=0.5",
            f"run.out_dir={out}",
        ]
    )
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert rc == 1
    assert not marker.exists()
    assert "step 2: learner rank" in err and "died" in err
    assert f"Resume with: gapray run resume={out}" in err
    assert metric_steps(out) == [0, 1]
    assert elapsed < 300, f"the run took {elapsed:.0f} s to notice a dead rank"  # a hang is 30 min


def test_corrupt_checkpoint_is_named_and_previous_good_one_is_used(ray_local, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY, "run.steps=2", "run.checkpoint_every=1", f"run.out_dir={out}"]) == 0
    state = out / "checkpoints" / "step_0000002" / "trainer_state.pt"
    with open(state, "r+b") as f:  # a copy that stopped half-way
        f.truncate(state.stat().st_size // 2)
    metrics_before = {p.name: p.read_bytes() for p in (out / "metrics").iterdir()}
    capsys.readouterr()

    assert main([f"resume={out}", "run.steps=3"]) == 2
    err = capsys.readouterr().err
    bad = out / "checkpoints" / "step_0000002"
    assert f"corrupt checkpoint {bad}: trainer_state.pt: truncated" in err
    assert "The previous good checkpoint is step_0000001" in err
    aside = out / "checkpoints" / "corrupt-step_0000002"
    assert f"mv {bad} {aside}" in err and f"gapray run resume={out}" in err
    # The failed resume damaged nothing.
    assert {p.name: p.read_bytes() for p in (out / "metrics").iterdir()} == metrics_before

    shutil.move(bad, aside)  # what the message says to do
    assert main([f"resume={out}", "run.steps=3"]) == 0
    assert "steps 2..3" in capsys.readouterr().err
    assert metric_steps(out) == [0, 1, 2, 3]
    check_rollouts_exact(out, 3)


def _gapray(args: list[str], **kw) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "gapray.cli", "run", *args],
        cwd=REPO,
        env=env,
        start_new_session=True,  # its own process group: the local Ray it starts goes with it
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the group this test started, by its id
    proc.wait(timeout=30)


def test_sigkilled_driver_resumes_from_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    args = [*TINY, "run.steps=4", "run.checkpoint_every=1", f"run.out_dir={out}"]
    proc = _gapray(args)
    first = out / "checkpoints" / "step_0000001"
    try:
        deadline = time.monotonic() + 180
        while not first.is_dir():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint after 180 s"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)  # the driver only, mid-run
        proc.wait(timeout=30)
    finally:
        _kill_group(proc)  # then the local Ray it had started
    assert proc.returncode == -signal.SIGKILL
    done = RunDir(out).latest_checkpoint()  # verifies: the kill left no half checkpoint
    k = int(done.name.removeprefix("step_"))
    assert 1 <= k < 4

    proc = _gapray([f"resume={out}"])
    try:
        _, err = proc.communicate(timeout=240)
    finally:
        _kill_group(proc)
    assert proc.returncode == 0, err[-3000:]
    assert f"steps {k + 1}..4" in err
    assert metric_steps(out) == [0, 1, 2, 3, 4]  # one row per step, none twice
    check_rollouts_exact(out, 4)
    assert [m["step"] for m in pq.read_table(out / "metrics.parquet").to_pylist()] == [0, 1, 2, 3, 4]
