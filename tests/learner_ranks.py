"""Helpers for the learner tests: K LearnerWorker ranks as spawned processes under
torch.distributed (gloo on CPU, nccl on GPU), without Ray.

    results = run_ranks(2, ["model.trainable=all"], [batch], tmp_path)   # one dict per rank
    results[r]["params"][i][name], results[r]["stats"][i]                # after update i

Not a test module (no `test_` prefix): tests/test_learner.py and tests/test_gpu.py import it.
A rank that hangs in a collective (the bug these tests guard against) is killed after `timeout`
seconds and reported as a failure instead of blocking the suite for gloo's 30-minute timeout.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import torch

PROMPTS = ["a photo of a red circle", "a photo of two blue squares", "a photo of a cross"]


def tiny_pairs(n: int) -> dict:
    """n DPO pairs on the tiny Janus: (chosen, rejected) = two seeded CFG samples per prompt."""
    from gapray.models.tiny import tiny_janus

    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
    tokens = tiny_janus(seed=0).generate(prompts, n=2, cfg_scale=3.0, seed=5).numpy()  # (2n, T)
    return {"prompts": prompts, "chosen": tokens[0::2], "rejected": tokens[1::2]}


def make_learner(overrides: list[str], rank: int = 0, world_size: int = 1, master: str = ""):
    """A LearnerWorker for `load_config(["model=tiny", *overrides])`, as gapray.run builds it."""
    from gapray.config import load_config
    from gapray.workers.learner import LearnerWorker, LogprobSettings

    cfg = load_config(["model=tiny", *overrides])
    logprobs = LogprobSettings.from_config(cfg.learner, cfg.generation)
    return LearnerWorker(
        cfg.model, cfg.learner, rank=rank, world_size=world_size, master=master, seed=0, logprobs=logprobs
    )


def _rank_main(rank: int, world: int, master: str, overrides: list[str], batches: list, out: str) -> None:
    import torch.distributed as dist

    learner = make_learner(overrides, rank, world, master)
    stats, params = [], []
    for b in batches:
        stats.append(learner.update(b))
        params.append(full_params(learner))
    torch.save({"params": params, "stats": stats, "device": learner.device}, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def full_params(learner) -> dict:
    """Every parameter of the learner's policy, whole (gathered from the ranks under FSDP: a
    collective, so every rank calls it), as fp32 CPU copies by name."""
    from gapray.workers.fsdp import full_tensor

    return {
        n: full_tensor(p.detach()).to("cpu", torch.float32, copy=True)
        for n, p in learner.policy.model.named_parameters()
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(
    world: int, overrides: list[str], batches: list[dict], out: Path, timeout: float = 300.0
) -> list[dict]:
    """Run `world` ranks, each doing `update(b)` for every b in `batches`; per rank, its
    parameters (on the CPU) and stats after each update, and its device. Fails (naming the ranks) if one hangs or exits with an error."""
    ctx = torch.multiprocessing.get_context("spawn")
    master = f"127.0.0.1:{_free_port()}"
    procs = [
        ctx.Process(target=_rank_main, args=(r, world, master, overrides, batches, str(out)))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for r in hung:
        procs[r].kill()
        procs[r].join()
    assert not hung, f"ranks {hung} of {world} still running after {timeout:.0f} s (a collective mismatch)"
    failed = {r: p.exitcode for r, p in enumerate(procs) if p.exitcode != 0}
    assert not failed, f"ranks exited with errors (rank: exit code): {failed}"
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


def assert_same_params(a: dict, b: dict, atol: float = 0.0) -> None:
    """Every parameter equal (atol 0: bit for bit), naming the first that differs."""
    assert a.keys() == b.keys()
    for n in a:
        if atol == 0:
            assert torch.equal(a[n], b[n]), n
        else:
            torch.testing.assert_close(a[n], b[n], atol=atol, rtol=0, msg=n)


def moved(before: dict, after: dict) -> list[str]:
    return [n for n in before if not torch.equal(before[n], after[n])]
