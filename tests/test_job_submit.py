"""`gapray run` under `ray job submit`, against a real head started with `ray start --head`.

    pytest -m ray tests/test_job_submit.py

What works here (Ray 2.60): `ray start --head` turns token authentication on and keeps the token
in ~/.ray/auth_token (creating it if absent); the client then needs RAY_AUTH_MODE=token, else
the job server answers "Unauthorized: Missing authentication token". The dashboard (the job
server) needs ray[default]. The head is started in its own process group and temp dir, and only
that group is stopped at the end (never `ray stop`, which would stop every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_RUN

from gapray.storage import RunDir

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TINY = TINY_RUN


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # the head's `python` is this one
    env["RAY_AUTH_MODE"] = "token"
    return env


@pytest.fixture(scope="module")
def head():
    if shutil.which("ray", path=str(BIN)) is None:
        pytest.skip("the ray CLI is not installed next to this Python")
    pytest.importorskip("ray.dashboard")
    # A short temp dir: Ray's socket paths must fit in 107 bytes.
    temp = Path(f"/tmp/gapray-head-{os.getpid()}")
    port, dash = free_port(), free_port()
    proc = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            f"--port={port}",
            "--num-cpus=4",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            # Free ports for the node's agents too: the defaults (e.g. 52365) are taken when
            # another Ray instance runs on the machine, and the job agent then never registers.
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
        ],
        env=_env(),
        start_new_session=True,  # the head's daemons stay in this group: stopped by its id below
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out, _ = proc.communicate(timeout=120)
    try:
        assert proc.returncode == 0, out[-3000:]
        yield f"http://127.0.0.1:{dash}"
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            time.sleep(3)
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_job_submit_runs_to_success(head, tmp_path):
    out = tmp_path / "run"
    cmd = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        head,
        "--working-dir",
        str(REPO),
        "--",
        "python",
        "-m",
        "gapray.cli",
        "run",
        *TINY,
        "run.steps=2",
        "run.eval_every=2",
        f"run.out_dir={out}",
    ]
    t0 = time.monotonic()
    for _ in range(24):
        res = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
        log = res.stdout + res.stderr
        # A head on a busy machine answers before its job agent has registered; the submission
        # was refused (no job created), so submitting again is safe.
        if "No available agent to submit job" not in log:
            break
        time.sleep(5)
    assert res.returncode == 0, log[-4000:]
    assert "succeeded" in log
    job_id = next(w.strip("'") for w in log.split() if w.strip("'").startswith("raysubmit_"))
    # The job server's own record (RAY_AUTH_MODE is read when ray is imported: a fresh process).
    status = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from ray.job_submission import JobSubmissionClient as C; "
            "print(C(sys.argv[1]).get_job_status(sys.argv[2]).value)",
            head,
            job_id,
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.stdout.strip().splitlines()[-1] == "SUCCEEDED", status.stdout + status.stderr
    # The run happened on the cluster (RAY_ADDRESS set by the job server), not on a local Ray.
    assert "on Ray (" in log and "on Ray (local)" not in log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["version"] == 2
    assert [m["step"] for m in RunDir(out).read_metrics().to_pylist()] == [0, 1, 2]
    assert RunDir(out).read_rollouts().num_rows == 2 * 4 * 4
    assert RunDir(out).latest_checkpoint().name == "step_0000002"
    print(f"ray job submit: {time.monotonic() - t0:.0f} s")
