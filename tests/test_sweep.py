"""`gapray sweep` end to end: a sweep over learner.beta (2 values) x 2 seeds (run.seed) of the
tiny model, 4 trials, on one local Ray head, submitted with `ray job submit`, its driver killed
after the first trial finished, then resumed by a second job that must reach SUCCEEDED; the resumed sweep runs only
the unfinished trials and writes the table, the plots, the page and Tune's logger files.

    pytest -m ray tests/test_sweep.py

One sweep serves every test here (a module-scoped fixture), so the suite pays for four tiny
trials once (it ran 8, two keys x 2 x 2 seeds, until the suite passed 30 minutes; the table
and plots over several keys are tested on a hand-made table in test_sweep_table.py). The head
is started as in tests/test_cluster.py (free ports, RAY_AUTH_MODE disabled, its own process
group stopped by id, never `ray stop`), with 6 logical CPUs: each trial reserves 2
(generation 1, reward 0.5, learner 0.5), so three trials run at once and the fourth is left
for the resumed job.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_cluster import BIN, REPO, _agent_ports, _env, free_port
from tracker_files import mlflow_metrics, tensorboard_scalars, wandb_history

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SWEEP = [
    "learner.beta=0.05,0.2",
    "run.seed=0,1",
    "model=tiny",
    "pairs=best_worst",
    "pairs.min_chosen=0",
    "curriculum.prompts_per_step=2",
    "generation.images_per_prompt=2",
    "eval.limit=2",
    "eval.images_per_prompt=1",
    "run.steps=1",
    "run.eval_every=0",
    "run.checkpoint_every=0",
    "run.threads_per_actor=1",
    "run.trackers=[tensorboard,wandb,mlflow]",
    "run.wandb_mode=offline",
    "sweep.name=beta-seeds",
]
TRIALS = {f"learner.beta={b},run.seed={s}" for b in (0.05, 0.2) for s in (0, 1)}


def _ray(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "ray"), *args], env=_env(), cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def _submit(dashboard: str, argv: list[str], wait: bool) -> tuple[str, str]:
    """(submission id, log) of `ray job submit [--no-wait] -- python -m gapray.cli sweep ...`."""
    cmd = ["job", "submit", "--address", dashboard, "--working-dir", str(REPO)]
    cmd += [] if wait else ["--no-wait"]
    cmd += ["--", "python", "-m", "gapray.cli", "sweep", *argv]
    for _ in range(24):
        res = _ray(*cmd)
        log = res.stdout + res.stderr
        # a busy head answers before its job agent registered; nothing was submitted then
        if "No available agent to submit job" not in log:
            break
        time.sleep(5)
    assert res.returncode == 0, log[-4000:]
    job = re.search(r"raysubmit_\w+", log)
    assert job, log[-2000:]
    return job.group(0), log


def _status(dashboard: str, job: str) -> str:
    """The job's status (SUCCEEDED, STOPPED, ...) from the job client, as tests/test_cluster.py reads it."""
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from ray.job_submission import JobSubmissionClient as C; "
            "print(C(sys.argv[1]).get_job_status(sys.argv[2]).value)",
            dashboard,
            job,
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return (res.stdout.strip().splitlines() or [res.stderr])[-1]


@pytest.fixture(scope="module")
def head():
    if shutil.which("ray", path=str(BIN)) is None:
        pytest.skip("the ray CLI is not installed next to this Python")
    pytest.importorskip("ray.dashboard")
    pytest.importorskip("ray.tune")
    temp = Path(f"/tmp/gapray-sweep-{os.getpid()}")  # Ray's socket paths must fit in 107 bytes
    port, dash = free_port(), free_port()
    cmd = [
        str(BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=6", "--node-ip-address=127.0.0.1",
        "--object-store-memory=200000000", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}", f"--temp-dir={temp}", *_agent_ports(), "--disable-usage-stats",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=_env(), start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out[-3000:]
        yield f"http://127.0.0.1:{dash}"
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            time.sleep(3)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def sweep(head, tmp_path_factory):
    """Submit the sweep, stop its driver once a trial has finished, resume it in a second job."""
    out = tmp_path_factory.mktemp("sweep") / "s"
    t0 = time.monotonic()
    first, _ = _submit(head, [*SWEEP, f"sweep.out_dir={out}"], wait=False)
    deadline = time.monotonic() + 600
    done: list[Path] = []
    while not done:
        assert time.monotonic() < deadline, "no trial finished within 600 s"
        status = _status(head, first)
        if status not in ("PENDING", "RUNNING"):
            logs = _ray("job", "logs", "--address", head, first, timeout=120)
            pytest.fail(f"the sweep job is {status}:\n{(logs.stdout + logs.stderr)[-4000:]}")
        done = sorted((out / "runs").glob("*/summary.json")) if (out / "runs").is_dir() else []
        time.sleep(1)
    res = _ray("job", "stop", "--address", head, first, timeout=120)  # the driver is killed
    assert _status(head, first) == "STOPPED", res.stdout + res.stderr
    finished = {p.parent.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*/summary.json")}
    files = {name: sorted(f.name for f in (out / "runs" / name / "metrics").iterdir()) for name in finished}
    t1 = time.monotonic()
    second, log = _submit(head, [f"resume={out}"], wait=True)
    t2 = time.monotonic()
    print(f"sweep: first job {t1 - t0:.0f} s ({len(finished)} trials finished), resumed job {t2 - t1:.0f} s")
    return {"dir": out, "finished": finished, "files": files, "job": second, "log": log, "head": head}


def test_the_resumed_sweep_job_reaches_succeeded(sweep):
    assert _status(sweep["head"], sweep["job"]) == "SUCCEEDED", sweep["log"][-3000:]
    last = json.loads(next(ln for ln in sweep["log"].splitlines() if ln.startswith('{"sweep_dir"')))
    assert last == {"sweep_dir": str(sweep["dir"]), "trials": 4, "ok": 4, "failed": 0}
    assert "on Ray (" in sweep["log"] and "on Ray (local)" not in sweep["log"]  # the head's Ray


def test_resume_runs_only_the_trials_that_had_not_finished(sweep):
    runs = sweep["dir"] / "runs"
    assert {p.name for p in runs.iterdir()} == TRIALS
    assert 1 <= len(sweep["finished"]) < 4, sweep["finished"]
    for name, mtime in sweep["finished"].items():
        assert (runs / name / "summary.json").stat().st_mtime_ns == mtime  # not written again
        assert sorted(f.name for f in (runs / name / "metrics").iterdir()) == sweep["files"][name]
        assert len(json.loads((runs / name / "trial.json").read_text())["attempts"]) == 1
    for name in TRIALS - set(sweep["finished"]):
        assert (runs / name / "summary.json").is_file()


def test_the_results_table_has_a_row_per_trial_and_a_group_per_point(sweep):
    rows = pq.read_table(sweep["dir"] / "results.parquet").to_pylist()
    assert {r["trial"] for r in rows} == TRIALS and len(rows) == 4
    for col in (
        "learner.beta", "run.seed", "status", "attempts", "self_non_unification_start",
        "self_non_unification_final", "self_non_unification_delta", "self_mean_p_yes_delta",
        "optimizer_updates", "images", "pairs_per_step", "wall_s", "cpu_hours", "gpu_hours",
    ):  # fmt: skip
        assert col in rows[0], col
    for r in rows:
        assert r["status"] == "ok" and r["images"] == 2 * 2 and r["optimizer_updates"] == 1
        assert r["wall_s"] > 0 and r["gpu_hours"] == 0.0 and r["cpu_hours"] > 0
        assert r["self_mean_p_yes_delta"] == pytest.approx(
            r["self_mean_p_yes_final"] - r["self_mean_p_yes_start"]
        )
    grouped = pq.read_table(sweep["dir"] / "results_grouped.parquet").to_pylist()
    points = sorted(g["learner.beta"] for g in grouped)
    assert points == [0.05, 0.2] and all(g["n"] == 2 for g in grouped)
    for g in grouped:
        assert g["self_mean_p_yes_delta_lo"] <= g["self_mean_p_yes_delta"] <= g["self_mean_p_yes_delta_hi"]
    md = (sweep["dir"] / "results.md").read_text()
    assert md.count("| ok |") == 4 and "Grouped over run.seed" in md


def test_every_plot_opens_and_the_page_joins_table_plots_and_reports(sweep):
    from PIL import Image

    d = sweep["dir"]
    pngs = sorted((d / "plots").glob("*.png"))
    names = {p.name for p in pngs}
    want = {
        f"scaling_{m}__{a}.png"
        for m in ("self_non_unification", "self_mean_p_yes")
        for a in ("learner.beta",)
    }
    assert want | {"compute_self_mean_p_yes.png", "compute_self_non_unification.png"} == names
    page = (d / "index.html").read_text()
    for p in pngs:
        with Image.open(p) as im:
            im.load()
            assert im.format == "PNG"
        assert f'src="plots/{p.name}"' in page
    for name in TRIALS:
        report = d / "runs" / name / "report" / "index.html"
        assert report.is_file() and f'href="runs/{name}/report/index.html"' in page
        for img in re.findall(r'src="([^"]+\.png)"', report.read_text()):
            with Image.open(report.parent / img) as im:
                im.load()


def test_tunes_logger_callbacks_hold_the_metrics_parquet_names(sweep):
    d = sweep["dir"]
    names = {}
    for name in TRIALS:
        table = pq.read_table(d / "runs" / name / "metrics.parquet")
        names[name] = {
            c for c in table.column_names if any(v is not None for v in table.column(c).to_pylist())
        }
    common = set.intersection(*names.values())
    want = {"loss", "optimizer_updates", "self_mean_p_yes", "self_non_unification", "pairs", "time_step"}
    assert want <= common
    # TensorBoard: Tune's TBXLoggerCallback, one directory per trial, tags ray/tune/<metric>
    tb = [tensorboard_scalars(p) for p in sorted((d / "tune").glob("trial_*"))]
    assert len(tb) == 4
    for tags in tb:
        assert {f"ray/tune/{m}" for m in want} <= set(tags)
    # W&B: one offline run per trial; MLflow: one run per trial in <sweep dir>/mlruns
    wb = wandb_history(d / "wandb")
    assert (
        want <= set(wb) and len({p.name.rsplit("-", 1)[1] for p in (d / "wandb").glob("offline-run-*")}) == 4
    )
    ml = mlflow_metrics(d / "mlruns")
    assert len(ml) == 4 and all(want <= set(m) for m in ml.values())
