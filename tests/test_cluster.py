"""A Ray cluster of three nodes on this machine: the run where users run it, role by role.

    pytest -m ray tests/test_cluster.py

A head and two worker nodes are started with `ray start` on loopback (each its own raylet and
object store, 1 CPU each), so under `run.placement=split` with one CPU per role the generation
pool, the reward pool and the learner must land on three different nodes. `gapray run
model=janus_pro_shape run=cluster` (Janus-Pro-1B's real layout at reduced width) runs there
with eval=self at start and end: as a user runs it on the head (`run.ray_address=HEAD`) with
the hf generation backend, and through `ray job submit` with the vLLM backend, which must reach
SUCCEEDED. Both runs must learn (the loss moves, every trainable tensor changes). The tests check where each role ran (placement.json) and that the weight-sync
buckets were copied into the other nodes' object stores (sync_nodes).

What works here (Ray 2.60): `ray start --head` turns token authentication on unless
RAY_AUTH_MODE=disabled is set for it, and a process fixes its auth mode when it imports ray
(a local `ray.init` earlier in a process also switches it to token mode). So every driver
here is a fresh process with RAY_AUTH_MODE=disabled, as the cluster. Every node gets free
ports (another Ray on the machine holds the defaults) and its processes their own process
group, stopped by id at the end (never `ray stop`, which would stop every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gapray.config import load_config
from gapray.models.shapes import janus_pro_shape
from gapray.storage import RunDir
from gapray.storage.checkpoints import load_trainer_state

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
NODES = 3  # head + 2 workers
# One CPU per role, one CPU per node: split placement cannot put two roles on one node.
ONE_CPU_EACH = [
    "generation.cpus_per_worker=1",
    "reward.cpus_per_worker=1",
    "learner.cpus_per_rank=1",
]
SHAPE_RUN = [
    "model=janus_pro_shape",
    "run=cluster",
    *ONE_CPU_EACH,
    "reward=follow",  # the judge follows the policy: every sync reaches both pools' nodes
    "pairs=best_worst",  # a random model's judge is near 0.5 everywhere: pair best vs worst
    "pairs.min_chosen=0",
    "curriculum.prompts=geneval",  # any prompt set; GenEval's vocabulary is the model's
    "curriculum.prompts_per_step=2",
    "generation.images_per_prompt=2",
    "generation.batch_size=4",
    "reward.batch_size=4",
    "learner.micro_batch_size=2",
    "eval=self",
    "eval.limit=2",
    "eval.images_per_prompt=2",
    "run.steps=2",
    "run.eval_every=0",  # start and end
    "run.checkpoint_every=0",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # the nodes' `python` is this one
    env["RAY_AUTH_MODE"] = "disabled"
    return env


def _agent_ports() -> list[str]:
    # Free ports for each node's agents: the defaults (e.g. 52365) are taken when another Ray
    # runs on the machine, and a node whose job agent never registers refuses submissions.
    return [
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
    ]


@pytest.fixture(scope="module")
def cluster():
    if shutil.which("ray", path=str(BIN)) is None:
        pytest.skip("the ray CLI is not installed next to this Python")
    pytest.importorskip("ray.dashboard")
    temp = Path(f"/tmp/gapray-cluster-{os.getpid()}")  # Ray's socket paths must fit in 107 bytes
    port, dash = free_port(), free_port()
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--object-store-memory=200000000"]
    head = [
        "--head",
        f"--port={port}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        f"--ray-client-server-port={free_port()}",
        f"--temp-dir={temp}",
    ]
    procs = []
    try:
        for i in range(NODES):
            # Each node its own temp dir, as separate machines have: nodes sharing one would
            # unpack a job's working_dir into the same folder, one rewriting it while another's
            # driver imports from it.
            role = (
                head
                if i == 0
                else [
                    f"--address=127.0.0.1:{port}",
                    f"--node-manager-port={free_port()}",
                    f"--temp-dir={temp}-{i}",
                ]
            )
            proc = subprocess.Popen(
                [str(BIN / "ray"), "start", *role, *common, *_agent_ports(), "--disable-usage-stats"],
                env=_env(),
                start_new_session=True,  # the node's daemons stay in this group: stopped below
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            procs.append(proc)
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, out[-3000:]
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import json, sys, ray; ray.init(address=sys.argv[1], log_to_driver=False); "
                "print(json.dumps({n['NodeID']: n['Resources'].get('CPU') for n in ray.nodes() if n['Alive']}))",
                f"127.0.0.1:{port}",
            ],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        nodes = json.loads(probe.stdout.strip().splitlines()[-1])
        assert len(nodes) == NODES and set(nodes.values()) == {1.0}, probe.stdout + probe.stderr
        yield {"gcs": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dash}", "nodes": set(nodes)}
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for proc in reversed(procs):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
            time.sleep(3)
        for i in range(NODES):
            shutil.rmtree(temp if i == 0 else f"{temp}-{i}", ignore_errors=True)


def _roles_on(placement: dict) -> dict[str, set[str]]:
    return {role: {a["node_id"] for a in actors} for role, actors in placement.items()}


def _check_shape_run(out: Path, cluster_nodes: set[str]) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["version"] == 2
    assert summary["evaluator"] == "self"
    for key in ("self_non_unification", "self_mean_p_yes"):
        assert summary["start"][key] is not None and summary["final"][key] is not None
    run = RunDir(out)
    metrics = run.read_metrics().to_pylist()
    assert [m["step"] for m in metrics] == [0, 1, 2]
    # It learned: a pair per prompt each step, the loss moved, every trainable tensor changed.
    assert [m["pairs"] for m in metrics[1:]] == [2, 2]
    losses = [m["loss"] for m in metrics[1:]]
    assert all(math.isfinite(v) for v in losses) and losses[1] != losses[0]
    state = load_trainer_state(run.latest_checkpoint())
    initial = dict(janus_pro_shape(seed=0).model.named_parameters())
    changed = [n for n, t in state["trainable"].items() if not torch.equal(t, initial[n].detach())]
    assert len(changed) == len(state["trainable"]) > 0
    assert {(r["step"], r["version"]) for r in run.read_rollouts().to_pylist()} == {(1, 0), (2, 1)}
    assert all(m["sync_nodes"] == 3 for m in metrics[1:])  # learner, generation, reward nodes
    where = _roles_on(run.read_json("placement.json"))
    nodes = [where[role] for role in ("generation", "reward", "learner")]
    assert all(len(n) == 1 for n in nodes), where  # one actor each
    assert len(set().union(*nodes)) == 3 and set().union(*nodes) <= cluster_nodes, where  # three nodes
    tokens = run.read_rollouts().column("tokens").to_pylist()
    assert len(tokens) == 2 * 2 * 2 and all(len(t) == 576 for t in tokens)  # Janus-Pro's 24x24
    for step in (0, 2):
        results = run.read_json(f"evals/step_{step:07d}/results.json")
        assert results["n_prompts"] == 2 and results["n_images"] == 4 and results["version"] == step
        from PIL import Image

        with Image.open(out / f"evals/step_{step:07d}/00000/samples/0000.png") as im:
            assert im.size == (384, 384)
    return summary


def test_janus_pro_shape_run_on_the_cluster(cluster, tmp_path):
    backend = "hf"  # the vLLM backend runs the same on this cluster through ray job submit below
    out = tmp_path / "run"
    overrides = [
        *SHAPE_RUN,
        f"generation={backend}",
        f"run.out_dir={out}",
        f"run.ray_address={cluster['gcs']}",
    ]
    load_config(overrides)  # the overrides validate (a typo fails here, not in the subprocess)
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "gapray.cli", "run", *overrides],
        env=_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    assert f"on Ray ({cluster['gcs']})" in res.stderr
    _check_shape_run(out, cluster["nodes"])
    print(f"janus_pro_shape on 3 nodes, {backend}: {time.monotonic() - t0:.0f} s")


@pytest.mark.vllm
def test_ray_job_submit_to_the_cluster_succeeds_with_the_vllm_backend(cluster, tmp_path):
    pytest.importorskip("vllm")
    out = tmp_path / "run"
    cmd = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        cluster["dashboard"],
        "--working-dir",
        str(REPO),
        "--",
        "python",
        "-m",
        "gapray.cli",
        "run",
        *SHAPE_RUN,
        "generation=vllm",
        f"run.out_dir={out}",
    ]
    t0 = time.monotonic()
    for _ in range(24):
        res = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
        log = res.stdout + res.stderr
        # A head on a busy machine answers before its job agent has registered; the submission
        # was refused (no job created), so submitting again is safe.
        if "No available agent to submit job" not in log:
            break
        time.sleep(5)
    assert res.returncode == 0, log[-4000:]
    job_id = next(w.strip("'") for w in log.split() if w.strip("'").startswith("raysubmit_"))
    status = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from ray.job_submission import JobSubmissionClient as C; "
            "print(C(sys.argv[1]).get_job_status(sys.argv[2]).value)",
            cluster["dashboard"],
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
    _check_shape_run(out, cluster["nodes"])
    print(f"ray job submit: {time.monotonic() - t0:.0f} s")
