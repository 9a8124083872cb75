"""Side by side on 2 gloo ranks (CPU): the learner with FSDP2 (learner.sharding=fsdp: policy,
gradients, AdamW state and the reference's own copy sharded) against the replicated learner
(learner.sharding=none: everything whole on every rank, gradients all-reduced), same model,
same batch. Per rank it measures the bytes each part holds (the tensors' own sizes, local
shards under FSDP) and the seconds per optimizer update, plus the share of an update spent on
the reference's log-probs (computed once per pair, under no_grad, in the micro-batch that
trains on the pair).

    PYTHONPATH=tests python benchmarks/fsdp_reference.py [model=janus_pro_shape] [updates=3]

Writes benchmarks/results/fsdp-reference-<model>-<time>.{md,json}.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def _bytes(tensors) -> int:
    from gapray.workers.fsdp import local

    seen, total = set(), 0
    for t in tensors:  # deduplicated by the (persistent) tensor object, then its local part
        if id(t) in seen:
            continue
        seen.add(id(t))
        part = local(t)
        total += part.numel() * part.element_size()
    return total


def _rank(rank: int, world: int, master: str, out: str, model: str, sharding: str, updates: int, batch):
    import torch.distributed as dist

    from gapray.config import load_config
    from gapray.workers.learner import LearnerWorker, LogprobSettings

    cfg = load_config(
        [
            f"model={model}",
            f"learner.sharding={sharding}",
            "model.trainable=llm",
            "learner.pairs_per_update=4",
            "learner.micro_batch_size=2",
        ]
    )
    learner = LearnerWorker(
        cfg.model,
        cfg.learner,
        rank=rank,
        world_size=world,
        master=master,
        seed=0,
        logprobs=LogprobSettings.from_config(cfg.learner, cfg.generation),
    )
    times, ref_s = [], []
    real = learner._reference_logps

    def timed_ref(*a, **k):
        t0 = time.perf_counter()
        r = real(*a, **k)
        ref_s.append(time.perf_counter() - t0)
        return r

    learner._reference_logps = timed_ref
    for _ in range(updates):
        t0 = time.perf_counter()
        learner.update(batch)
        times.append(time.perf_counter() - t0)
    policy_frozen = [p for p in learner.policy.model.parameters() if not p.requires_grad]
    shared = {id(p) for p in policy_frozen}
    ref_own = [p for p in learner.reference.model.parameters() if id(p) not in shared]
    opt = [t for s in learner.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    grads = [p.grad for p in learner.params if p.grad is not None]
    row = {
        "sharding": sharding,
        "rank": rank,
        "policy_trainable_MB": _bytes(learner.params) / 2**20,
        "grads_MB": _bytes(grads) / 2**20,
        "adamw_state_MB": _bytes(opt) / 2**20,
        "reference_own_MB": _bytes(ref_own) / 2**20,
        "frozen_shared_MB": _bytes(policy_frozen) / 2**20,
        "s_per_update": sorted(times)[len(times) // 2],
        "reference_share": sum(ref_s) / sum(times),
    }
    row["total_MB"] = sum(row[k] for k in row if k.endswith("_MB"))
    torch.save(row, Path(out) / f"{sharding}-{rank}.pt")
    dist.destroy_process_group()


def main(argv: list[str]) -> None:
    from learner_ranks import _free_port

    import gapray.workers.learner  # noqa: F401  (forked ranks inherit the imports)

    args = dict(a.split("=", 1) for a in argv)
    model, updates = args.get("model", "janus_pro_shape"), int(args.get("updates", 3))
    from gapray.config import load_config
    from gapray.models import load_model

    cfg = load_config([f"model={model}"])
    gen = load_model(model)
    prompts = ["a photo of a red circle", "a photo of two blue squares"] * 2
    tokens = gen.generate(prompts, n=2, cfg_scale=cfg.generation.cfg_scale, seed=5).numpy()
    batch = {"prompts": prompts, "chosen": tokens[0::2], "rejected": tokens[1::2]}
    del gen
    out = ROOT / "benchmarks" / "results" / f"fsdp-reference-{model}-{time.strftime('%Y%m%d-%H%M%S')}"
    tmp = out.with_suffix(".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    ctx = torch.multiprocessing.get_context("fork")
    rows = []
    for sharding in ("fsdp", "none"):
        master = f"127.0.0.1:{_free_port()}"
        procs = [
            ctx.Process(target=_rank, args=(r, 2, master, str(tmp), model, sharding, updates, batch))
            for r in range(2)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(600)
        assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
        rows += [torch.load(tmp / f"{sharding}-{r}.pt") for r in range(2)]
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    keys = list(rows[0])
    lines = [
        f"# FSDP2 vs replicated learner, 2 gloo ranks, model={model}, trainable=llm, 4 pairs/update",
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---|" * len(keys),
    ]
    for r in rows:
        lines.append(
            "| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()) + " |"
        )
    rank0 = {r["sharding"]: r for r in rows if r["rank"] == 0}
    ratio = rank0["fsdp"]["total_MB"] / rank0["none"]["total_MB"]
    speed = rank0["fsdp"]["s_per_update"] / rank0["none"]["s_per_update"]
    lines += [
        "",
        f"rank 0 bytes held, fsdp / none: {ratio:.3f}; seconds per update, fsdp / none: {speed:.3f}",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(
        json.dumps({"rows": rows, "bytes_ratio": ratio, "time_ratio": speed}, indent=1)
    )


if __name__ == "__main__":
    main(sys.argv[1:])
