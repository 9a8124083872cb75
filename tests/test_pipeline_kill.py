"""A real driver kill: `gapray run` (async, k = 1) as a fresh subprocess, SIGKILLed while a step
is in flight, then the same command with `run.resume`, must log every step once, train no sample
twice, and redo the killed step with the prompts and seeds the killed run had launched for it.
The resume is `gapray run run.resume=DIR` (the saved config.yaml; the CLI takes no group
overrides on resume).

The in-process variant (an exception inside the learner's update) is
tests/test_pipeline.py::test_async_run_killed_mid_step_resumes_without_duplicate_steps; this one
kills the process group (driver, its local Ray's GCS / raylet, and the actors), so nothing of
the killed run can finish a write after the kill.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import TINY_RUN

STEPS, KILL_AFTER = 4, 2  # kill once step 2 is logged, before step 3 is
ROWS = 16  # curriculum.prompts_per_step=4 x generation.images_per_prompt=4 (TINY_RUN)


def _ray_processes(ray_dir: str) -> list[int]:
    """Pids of live processes whose command line names this test's Ray temp dir (GCS, raylet,
    workers, agents all carry --temp-dir / --session-dir under it)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        if ray_dir.encode() in cmd and state != "Z":
            pids.append(int(entry.name))
    return pids


def _start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    # Own session: the driver and everything it starts share a process group we can kill.
    return subprocess.Popen(
        cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.fault
def test_sigkilled_async_driver_resumes_without_duplicate_steps_or_samples(tmp_path):
    from gapray.controller import row_seeds
    from gapray.storage import RunDir
    from gapray.storage.checkpoints import checkpoint_step, latest_checkpoint, load_trainer_state

    out = tmp_path / "run"
    # Ray's socket paths must stay short (AF_UNIX limit): a temp dir under /tmp, not tmp_path.
    ray_dir = tempfile.mkdtemp(prefix="gk", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_dir, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    cmd = [
        sys.executable,
        "-m",
        "gapray.cli",
        "run",
        *TINY_RUN,
        "run.pipeline=async",
        "run.max_staleness=1",
        f"run.steps={STEPS}",
        "run.checkpoint_every=1",
        "run.eval_every=100",
        "run.threads_per_actor=1",
        f"run.out_dir={out}",
    ]
    metrics = out / "metrics"
    try:
        # ---- run 1: kill the whole process group mid-step 3
        log1 = tmp_path / "killed.log"
        proc = _start(cmd, env, log1)
        deadline = time.monotonic() + 600
        while not (metrics / f"step_{KILL_AFTER:07d}.parquet").exists():
            assert proc.poll() is None, (
                f"driver exited (rc {proc.returncode}) before step {KILL_AFTER}:\n{_tail(log1)}"
            )
            assert time.monotonic() < deadline, "no step logged in 600 s"
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        end = time.monotonic() + 30
        while (left := _ray_processes(ray_dir)) and time.monotonic() < end:
            time.sleep(0.2)
        assert not left, f"processes of the killed run's Ray still alive: {left}"

        run = RunDir(out)
        logged = sorted(int(p.stem.removeprefix("step_")) for p in metrics.glob("step_*.parquet"))
        # The kill landed after step KILL_AFTER was logged (maybe while its checkpoint was being
        # written) and before step KILL_AFTER + 1 was, whose generation was launched a step ahead.
        assert logged == list(range(KILL_AFTER + 1)), f"kill was not mid-step {KILL_AFTER + 1}: {logged}"
        ckpt = latest_checkpoint(out / "checkpoints")  # verified (manifest + hashes): no torn one
        assert ckpt is not None
        c = checkpoint_step(ckpt)
        assert c in (KILL_AFTER - 1, KILL_AFTER)  # step 2's may or may not be finished at the kill
        state = load_trainer_state(ckpt, trainable=False)
        launched = state["pipeline"]["launched"]  # k = 1: the prompts of step c + 1, already drawn
        assert list(launched) == [str(c + 1)] and len(launched[str(c + 1)]) == 4
        first = {s: run.read_rollouts(s).to_pydict() for s in range(1, KILL_AFTER + 1)}
        print(f"killed with checkpoint step {c} the newest; steps {list(first)} logged")

        # ---- run 2: `gapray run run.resume=DIR` (a saved run takes its config.yaml; the CLI
        # refuses group overrides such as model=tiny on resume)
        log2 = tmp_path / "resumed.log"
        again = _start([*cmd[:4], f"run.resume={out}"], env, log2)
        assert again.wait(timeout=600) == 0, _tail(log2)
        assert f"steps {c + 1}..{STEPS}" in log2.read_text(errors="replace")

        rows = run.read_metrics().to_pylist()
        assert [m["step"] for m in rows] == list(range(STEPS + 1))  # every step exactly once
        # Steps in the checkpoint stay as the killed run trained them; the rest are redone.
        for s in range(1, c + 1):
            assert run.read_rollouts(s).to_pydict()["tokens"] == first[s]["tokens"]
        redone = run.read_rollouts(c + 1).to_pydict()
        # The redone step generates what the killed run had launched for it: same prompts, and
        # the seeds an uninterrupted run gives that step (fixed by run seed and step).
        assert redone["prompt_id"] == [pid for pid in launched[str(c + 1)] for _ in range(4)]
        assert redone["seed"] == row_seeds(0, c + 1, ROWS).tolist()
        if c + 1 in first:  # killed between logging step c + 1 and finishing its checkpoint:
            # the killed run's own records of that step are an uninterrupted run's; the redo has
            # its prompts and seeds (its tokens may differ: it generates from checkpoint c's weights)
            assert (redone["prompt_id"], redone["seed"]) == (first[c + 1]["prompt_id"], first[c + 1]["seed"])
        # The killed run's optimizer steps after the checkpoint are not counted (nor kept): the
        # final update count is exactly the sum of the logged steps'.
        assert rows[-1]["optimizer_updates"] == sum(m["optimizer_steps"] for m in rows[1:]) > 0
        # No sample trained twice: one rollout record per (step, prompt, sample), ROWS per step.
        samples = run.read_rollouts().to_pylist()
        keys = [(r["step"], r["prompt_id"], r["sample_index"]) for r in samples]
        assert len(keys) == len(set(keys)) == STEPS * ROWS
        assert all(r["staleness"] <= 1 for r in samples)
        assert rows[-1]["version"] - rows[0]["version"] == STEPS  # one weight sync per step
    finally:
        for pid in _ray_processes(ray_dir):  # only this test's Ray, by pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(ray_dir, ignore_errors=True)
