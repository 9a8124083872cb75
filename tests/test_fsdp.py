"""The learner at scale, on CPU: FSDP2 over 2 gloo ranks against 1 rank, checkpoints of a
sharded learner (torch.distributed.checkpoint) resumed on 1 and on 2 ranks, fp32 master
weights under bf16 compute, and the LR schedule.

One spawn of 2 ranks (tests/learner_ranks.py style, no Ray) runs every sharded case, so the
file pays for the processes' start-up once:
- trainable=llm and trainable=lora: 3 updates on the same 4-pair global batch
  (pairs_per_update=4, micro-batches of 1: each rank runs 2 per update);
- llm: a checkpoint after update 3, update 4, then a fresh 2-rank learner resumed from the
  checkpoint redoing update 4.

Tolerance of 2 ranks vs 1 (fp32): atol 1e-5 on weights moved by about 3 x lr = 3e-3. The two
runs add the same per-row gradients in another order (two rank sums reduce-scattered vs one
sequential accumulation), so gradients differ by fp32 rounding (~1e-7 relative); AdamW's
per-element step lr * m / (sqrt(v) + eps) amplifies a gradient error by at most lr / eps =
1e5 at g = 0 (a 1e-12 error -> 1e-7), and is bounded by ~lr elsewhere, so 1e-5 is 100x the
expected error yet 300x below the size of the updates.

    PYTHONPATH=tests python -m pytest tests/test_fsdp.py -q
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from learner_ranks import _free_port, assert_same_params, full_params, make_learner, moved, tiny_pairs

from gapray.algos.schedule import lr_at

ATOL = 1e-5
BASE = ["learner.pairs_per_update=4", "learner.micro_batch_size=1", "learner.lr=1e-3"]
CASES = {
    # weight decay on, so a rank inventing gradients for unreached parameters would show;
    # clipping active (max_grad_norm below the gradients' norm) on the sharded gradients
    "llm": ["model.trainable=llm", "learner.weight_decay=0.1", "learner.max_grad_norm=0.05", *BASE],
    "lora": ["model.trainable=lora", *BASE],
}
UPDATES = 3


def _batch() -> dict:
    return tiny_pairs(4)


# The sharded lora run also checkpoints its decoder layers (FSDP2 + activation checkpointing
# composed); its one-rank twin does not, so the comparison covers both.
RANK_EXTRA = {"lora": ["learner.activation_checkpointing=true"]}


def _rank_main(rank: int, world: int, master: str, out: str, batch: dict) -> None:
    import time

    import torch.distributed as dist

    out = Path(out)
    result, clock = {}, {"start": time.monotonic()}
    for name, overrides in CASES.items():
        overrides = [*overrides, *RANK_EXTRA.get(name, [])]
        learner = make_learner(overrides, rank, world, master)
        clock[f"{name}_built"] = time.monotonic()
        assert learner.sharded
        stats, params = [], []
        for _ in range(UPDATES):
            stats.append(learner.update(batch))
            params.append(full_params(learner))
        clock[f"{name}_updated"] = time.monotonic()
        if name == "llm":
            ckpt = learner.save_checkpoint(str(out / "run"), UPDATES, {"step": UPDATES}, keep=1)
            clock["saved"] = time.monotonic()
            stats.append(learner.update(batch))
            params.append(full_params(learner))
            del learner
            resumed = make_learner(overrides, rank, world, master)
            resumed.load_checkpoint(str(out / "run" / "checkpoints" / "step_0000003"))
            clock["resumed"] = time.monotonic()
            result["resumed_2"] = {"at_load": full_params(resumed), "stats": resumed.update(batch)}
            result["resumed_2"]["after"] = full_params(resumed)
            result["ckpt"] = ckpt
        result[name] = {"stats": stats, "params": params}
        learner = None
    clock["end"] = time.monotonic()
    result["clock"] = clock
    torch.save(result, out / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[list[dict], Path]:
    import time

    import peft  # noqa: F401

    # fork, not spawn: the ranks inherit this process's imports (torch, transformers, peft, the
    # learner), which under spawn take most of the run on a small machine. The ranks compute
    # with one thread (LearnerWorker's default), so no OpenMP pool is forked mid-flight.
    import gapray.models.tiny
    import gapray.workers.learner  # noqa: F401

    out = tmp_path_factory.mktemp("fsdp")
    ctx = torch.multiprocessing.get_context("fork")
    master = f"127.0.0.1:{_free_port()}"
    batch = _batch()
    procs = [ctx.Process(target=_rank_main, args=(r, 2, master, str(out), batch)) for r in range(2)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 240
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for r in hung:
        procs[r].kill()
        procs[r].join()
    assert not hung, f"ranks {hung} still running after 240 s (a collective mismatch)"
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    c = ranks[0]["clock"]
    print("rank 0 seconds from its start:", {k: round(v - c["start"], 1) for k, v in c.items()})
    return ranks, out


def _one_rank(overrides: list[str], updates: int):
    learner = make_learner(overrides)
    before = full_params(learner)
    stats, params = [], []
    for _ in range(updates):
        stats.append(learner.update(_batch()))
        params.append(full_params(learner))
    return learner, before, stats, params


@pytest.mark.parametrize("trainable", sorted(CASES))
def test_two_fsdp_ranks_match_one_rank_after_three_updates(two_ranks, trainable):
    ranks, _ = two_ranks
    _, before, want_stats, want = _one_rank(CASES[trainable], UPDATES)
    got = [r[trainable] for r in ranks]
    for i in range(UPDATES):
        assert_same_params(got[0]["params"][i], got[1]["params"][i])  # the ranks agree exactly
        assert_same_params(got[0]["params"][i], want[i], atol=ATOL)
        s, w = got[0]["stats"][i], want_stats[i]
        assert s["optimizer_steps"] == w["optimizer_steps"] == 1.0
        assert s["loss"] == pytest.approx(w["loss"], rel=1e-5)
        # the clip norm over both ranks' shards is the one-rank norm
        assert s["grad_norm"] == pytest.approx(w["grad_norm"], rel=1e-5)
    last = got[0]["params"][UPDATES - 1]  # (llm's list goes on to the update after the checkpoint)
    worst = max((last[n] - want[-1][n]).abs().max().item() for n in want[-1])
    print(f"trainable={trainable}: largest |2 ranks - 1 rank| after {UPDATES} updates: {worst:.2e}")
    changed = moved(before, got[0]["params"][-1])
    assert changed and all(("lora_" in n) == (trainable == "lora") for n in changed)
    assert got[0]["stats"][-1]["loss"] != got[0]["stats"][0]["loss"]  # the loss moved
    if trainable == "llm":
        assert got[0]["stats"][0]["grad_norm"] > 0.05  # clipping was active


def test_a_two_rank_checkpoint_resumes_on_one_and_on_two_ranks(two_ranks):
    from transformers import JanusForConditionalGeneration

    from gapray.storage.checkpoints import DISTRIBUTED, load_trainer_state, verify_checkpoint

    ranks, _ = two_ranks
    ckpt = Path(ranks[0]["ckpt"])
    assert ckpt.name == "step_0000003"
    verify_checkpoint(ckpt)  # the manifest covers every rank's shard files
    shards = sorted(p.name for p in (ckpt / DISTRIBUTED).glob("*.distcp"))
    assert len(shards) == 2, shards  # each rank wrote its own part: nothing gathered the optimizer
    at3, at4 = ranks[0]["llm"]["params"][UPDATES - 1], ranks[0]["llm"]["params"][UPDATES]
    # The model part is a save_pretrained directory plain transformers loads, at update 3.
    plain = dict(JanusForConditionalGeneration.from_pretrained(str(ckpt)).named_parameters())
    assert_same_params({n: plain[n].detach() for n in at3}, at3)
    trainable = load_trainer_state(ckpt)["trainable"]
    assert trainable.keys() == set(make_learner(CASES["llm"]).named_params)
    # 2 -> 1: the same weights, and update 4 continues like the 2-rank run's.
    one = make_learner(CASES["llm"])
    extra = one.load_checkpoint(str(ckpt))
    assert extra["step"] == UPDATES and one.updates == UPDATES and one.version == UPDATES
    assert_same_params(full_params(one), at3)
    assert all(s["exp_avg"].dtype == torch.float32 for s in one.optimizer.state.values())
    stats = one.update(_batch())
    assert stats["optimizer_steps"] == 1
    assert_same_params(full_params(one), at4, atol=ATOL)
    # 2 -> 2: bit for bit the run that went on without stopping.
    for r in ranks:
        assert_same_params(r["resumed_2"]["at_load"], at3)
        assert_same_params(r["resumed_2"]["after"], at4)


def test_activation_checkpointing_recomputes_the_layers_and_changes_nothing():
    runs = {}
    for ac in (False, True):
        learner = make_learner([*CASES["llm"], f"learner.activation_checkpointing={str(ac).lower()}"])
        calls = []  # forward calls of a module inside the first layer (the recompute calls it again)
        inner = next(
            m for m in learner.policy.decoder_layers()[0].modules() if isinstance(m, torch.nn.Linear)
        )
        hook = inner.register_forward_hook(lambda *a, calls=calls: calls.append(1))
        learner.update(_batch())
        hook.remove()
        runs[ac] = (len(calls), full_params(learner))
    # 4 micro-batches, one policy forward each (the reference is its own copy), and with
    # checkpointing one recompute per policy forward in backward
    assert runs[False][0] == 4 and runs[True][0] == 8
    assert_same_params(runs[True][1], runs[False][1], atol=1e-7)


def test_bf16_compute_keeps_fp32_master_weights_and_small_updates():
    """bf16 compute (torch.autocast on the CPU, as on one GPU rank) over fp32 masters: a
    weight of 1e-2 moved by an AdamW step of 1e-5 (lr 1e-5: the first step is lr * sign(g))
    keeps the step, which bf16 storage (spacing 2^-14 ~ 6.1e-5 at 1e-2) would round away."""
    learner = make_learner(["model.trainable=llm", "learner.compute_dtype=bfloat16", "learner.lr=1e-5"])
    assert learner.compute_dtype == torch.bfloat16
    name, weight = next((n, p) for n, p in learner.named_params.items() if p.ndim == 2)
    with torch.no_grad():
        weight.fill_(1e-2)
    seen = []
    linear = next(m for m in learner.policy.decoder_layers()[0].modules() if isinstance(m, torch.nn.Linear))
    hook = linear.register_forward_hook(lambda m, a, o: seen.append(o.dtype))
    learner.update(tiny_pairs(2))
    hook.remove()
    assert seen and set(seen) == {torch.bfloat16}  # the forward really ran in bf16
    assert all(p.dtype == torch.float32 for p in learner.params)
    state = learner.optimizer.state[weight]
    assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32
    step = (weight.detach() - 1e-2).abs()
    reached = state["exp_avg"].abs() > 0
    assert reached.any()
    torch.testing.assert_close(step[reached], torch.full_like(step[reached], 1e-5), rtol=0.05, atol=0)
    # the same step applied to bf16 storage is lost
    w16 = torch.tensor(1e-2, dtype=torch.bfloat16)
    assert torch.equal(w16 - torch.tensor(1e-5, dtype=torch.bfloat16), w16), name


def test_lr_schedule_by_hand():
    assert lr_at(0, 1e-3) == 1e-3
    assert [lr_at(u, 1e-3, "constant", warmup=4) for u in (0, 1, 3, 9)] == pytest.approx(
        [2.5e-4, 5e-4, 1e-3, 1e-3]
    )
    # cosine from update 2 to 6, floor 0.1: halfway (u=4) is (0.1 + 0.9 * 0.5) = 0.55 of lr
    got = [lr_at(u, 1e-3, "cosine", warmup=2, decay=6, min_ratio=0.1) for u in (0, 1, 2, 3, 4, 6, 9)]
    cos = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25))
    assert got == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3 * cos, 5.5e-4, 1e-4, 1e-4])
    for bad, field in (
        (dict(kind="linear"), "learner.lr_schedule"),
        (dict(kind="cosine", warmup=3, decay=3), "learner.decay_updates"),
        (dict(kind="cosine", decay=None), "learner.decay_updates"),
        (dict(warmup=-1), "learner.warmup_updates"),
        (dict(kind="cosine", decay=5, min_ratio=2.0), "learner.min_lr_ratio"),
    ):
        with pytest.raises(ValueError, match=field):
            lr_at(0, 1e-3, **bad)


def test_the_learner_follows_the_schedule_across_steps():
    learner = make_learner(
        [
            "learner.pairs_per_update=1",
            "learner.lr=1e-3",
            "learner.warmup_updates=4",
            "learner.lr_schedule=cosine",
            "learner.decay_updates=8",
        ]
    )
    first = learner.update(tiny_pairs(3))  # three updates: u = 0, 1, 2
    assert learner.updates == 3 and first["optimizer_steps"] == 3
    assert first["lr"] == pytest.approx((2.5e-4 + 5e-4 + 7.5e-4) / 3)  # the step's mean
    second = learner.update(tiny_pairs(2))  # u = 3, 4
    assert second["lr"] == pytest.approx((1e-3 + lr_at(4, 1e-3, "cosine", 4, 8)) / 2)
    assert learner.optimizer.param_groups[0]["lr"] == pytest.approx(lr_at(4, 1e-3, "cosine", 4, 8))


def test_bad_scale_settings_name_the_field():
    for override, field in (
        ("learner.sharding=zero3", "learner.sharding"),
        ("learner.compute_dtype=float16", "learner.compute_dtype"),
        ("learner.lr_schedule=cosine", "learner.decay_updates"),
    ):
        with pytest.raises(Exception, match=field):
            make_learner([override])
