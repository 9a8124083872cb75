"""The learner rank's update, without Ray: in-process (world size 1) the reference gives zero
rewards and log 2 loss at the start, the trainable parameters move, the frozen ones do not;
two gloo ranks (spawned processes, tests/learner_ranks.py) enter the same collectives even
when one gets no rows and match the one-rank update; log-probs follow the sampler's CFG weight
and temperature (learner.logprob_cfg_scale null), or are conditional at 1; SFT without a
reference holds none.

    PYTHONPATH=. python -m pytest tests/test_learner.py -q
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from learner_ranks import PROMPTS, assert_same_params, make_learner, moved, run_ranks, tiny_pairs

from gapray.models.tiny import tiny_janus
from gapray.workers.learner import LearnerWorker


def _learner(*overrides: str) -> LearnerWorker:
    return make_learner(list(overrides))


def _pairs() -> dict:
    m = tiny_janus(seed=0)
    tokens = m.generate(PROMPTS, n=2, cfg_scale=3.0, seed=5).numpy()  # rows grouped by prompt
    return {"prompts": PROMPTS, "chosen": tokens[0::2], "rejected": tokens[1::2]}


@pytest.mark.parametrize("trainable", ["all", "llm", "lora"])
def test_first_dpo_step_starts_at_the_reference_and_moves_the_policy(trainable):
    learner = _learner(f"model.trainable={trainable}", "learner.nll_weight=0")
    before = {n: p.detach().clone() for n, p in learner.policy.model.named_parameters()}
    stats = learner.update(_pairs())
    # Policy == reference before the first step: zero implicit rewards, loss = log 2.
    assert stats["reward_chosen"] == 0.0 and stats["reward_rejected"] == 0.0
    assert stats["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert stats["optimizer_steps"] == 1 and learner.version == 1
    after = dict(learner.policy.model.named_parameters())
    moved = [n for n, p in after.items() if not torch.equal(p.detach(), before[n])]
    trainable_names = set(learner.policy.trainable_parameters())
    assert moved and set(moved) <= trainable_names
    # The second step sees a policy that differs from the reference.
    stats2 = learner.update(_pairs())
    assert stats2["reward_margin"] != 0.0 and np.isfinite(stats2["loss"])


def test_sft_step_lowers_the_nll_of_its_examples():
    learner = _learner("learner=sft", "learner.lr=1e-3")
    batch = _pairs()
    batch = {"prompts": batch["prompts"], "tokens": batch["chosen"]}
    first = learner.update(batch)["nll"]
    for _ in range(5):
        last = learner.update(batch)["nll"]
    assert last < first


def test_a_non_finite_loss_skips_the_step_and_is_counted():
    learner = _learner()
    before = {n: p.detach().clone() for n, p in learner.policy.trainable_parameters().items()}
    batch = _pairs()
    with torch.no_grad():  # poison the policy: every log-prob becomes NaN
        learner.policy.model.model.generation_head.vision_head.bias.fill_(float("nan"))
    stats = learner.update(batch)
    assert stats["skipped_steps"] == 1 and stats["optimizer_steps"] == 0
    assert stats["bad_steps_in_a_row"] == 1 and learner.version == 0
    for n, p in learner.policy.trainable_parameters().items():
        if "vision_head.bias" not in n:
            assert torch.equal(p.detach(), before[n]), n


# ---- collectives: every rank enters the same ones, on the learner's device ---------------------


class _PairOfRanks:
    """Two ranks in one process, one after the other, with a stand-in for all_reduce: rank 0
    (which gets every row of a 1-pair batch) sees only its own contribution, which is the sum,
    since rank 1 adds zeros; rank 1 then adds rank 0's recorded tensors to its own, call by
    call. Records (dtype, shape, on the learner's device) of every call per rank."""

    def __init__(self, monkeypatch):
        import torch.distributed as dist

        self.calls: dict[int, list[tuple]] = {0: [], 1: []}
        self.sent: list[torch.Tensor] = []
        self.rank = 0
        self.device = "cpu"
        monkeypatch.setattr(dist, "all_reduce", self.all_reduce)

    def all_reduce(self, t: torch.Tensor, *args, **kwargs) -> None:
        calls = self.calls[self.rank]
        calls.append((t.dtype, tuple(t.shape), t.device == torch.device(self.device)))
        if self.rank == 0:
            self.sent.append(t.clone())
        elif len(calls) <= len(self.sent) and self.sent[len(calls) - 1].shape == t.shape:
            t.add_(self.sent[len(calls) - 1])

    def update(self, rank: int, batch: dict, overrides: list[str]) -> LearnerWorker:
        learner = make_learner(overrides)
        learner.rank, learner.world_size = rank, 2
        self.rank, self.device = rank, learner.device
        learner.update(batch)
        return learner


def test_a_rank_without_rows_makes_the_same_collective_calls(monkeypatch):
    ranks = _PairOfRanks(monkeypatch)
    batch = tiny_pairs(1)  # one pair, two ranks: rank 1 gets no rows
    overrides = ["model.trainable=all"]
    learners = [ranks.update(r, batch, overrides) for r in (0, 1)]
    assert ranks.calls[0] == ranks.calls[1]
    assert all(on_device for _, _, on_device in ranks.calls[0])
    assert len(ranks.calls[0]) >= 2  # the flags, then the gradient bucket(s)
    assert_same_params(*(dict(ln.policy.model.named_parameters()) for ln in learners))


def test_two_gloo_ranks_with_one_pair_match_one_rank(tmp_path):
    """Two CPU ranks, a batch of 1 pair (rank 1 gets none), then 3 pairs: both ranks finish,
    hold identical parameters, and equal the one-rank learner's (weight decay on, so a rank
    that invented gradients for parameters nothing reached would show)."""
    overrides = ["model.trainable=all", "learner.weight_decay=0.1", "learner.lr=1e-3"]
    batches = [tiny_pairs(1), tiny_pairs(3)]
    one = make_learner(overrides)
    before = {n: p.detach().clone() for n, p in one.policy.model.named_parameters()}
    one_stats, want = [], []
    for b in batches:
        one_stats.append(one.update(b))
        want.append({n: p.detach().clone() for n, p in one.policy.model.named_parameters()})
    ranks = run_ranks(2, overrides, batches, tmp_path)
    for i in range(len(batches)):
        assert_same_params(ranks[0]["params"][i], ranks[1]["params"][i])
    assert ranks[0]["stats"] == ranks[1]["stats"]
    assert [s["optimizer_steps"] for s in ranks[0]["stats"]] == [1.0, 1.0]
    assert moved(before, ranks[0]["params"][0])
    # 1 pair: rank 1 adds exact zeros, so the step is the one-rank step bit for bit.
    assert_same_params(ranks[0]["params"][0], want[0])
    # 3 pairs split 2 + 1: the same sum in another order.
    assert_same_params(ranks[0]["params"][1], want[1], atol=1e-5)
    for got, ref in zip(ranks[0]["stats"], one_stats, strict=True):
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-6)
        assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-6)  # Adam hides a scale


# ---- log-probs under the sampler's guidance and temperature -------------------------------------


def test_logprob_cfg_scale_1_trains_on_conditional_logprobs():
    learner = make_learner(["learner.logprob_cfg_scale=1", "generation.temperature=0.7"])
    batch = _pairs()
    rows = batch["prompts"] * 2
    tokens = torch.from_numpy(np.concatenate([batch["chosen"], batch["rejected"]])).long()
    with torch.no_grad():
        got = learner._logps(learner.policy, rows, tokens)[0]
        want = learner.policy.image_logprobs(rows, tokens, cfg_scale=None, temperature=0.7)[0]
    torch.testing.assert_close(got, want)
    before = {n: p.detach().clone() for n, p in learner.policy.model.named_parameters()}
    stats = learner.update(batch)
    assert stats["optimizer_steps"] == 1 and np.isfinite(stats["loss"])
    assert moved(before, {n: p.detach() for n, p in learner.policy.model.named_parameters()})


def test_null_logprob_cfg_scale_follows_the_sampler():
    sampler = ["generation.cfg_scale=2.5", "generation.temperature=0.7"]
    follow = make_learner([*sampler, "learner.logprob_cfg_scale=null"])
    explicit = make_learner([*sampler, "learner.logprob_cfg_scale=2.5"])
    batch = _pairs()
    rows = batch["prompts"] * 2
    tokens = torch.from_numpy(np.concatenate([batch["chosen"], batch["rejected"]])).long()
    with torch.no_grad():
        want = follow.policy.image_logprobs(rows, tokens, cfg_scale=2.5, temperature=0.7)[0]
        torch.testing.assert_close(follow._logps(follow.policy, rows, tokens)[0], want)
        torch.testing.assert_close(explicit._logps(explicit.policy, rows, tokens)[0], want)
    a, b = follow.update(batch), explicit.update(batch)
    a2, b2 = follow.update(batch), explicit.update(batch)
    assert a == b and a2 == b2 and a2["reward_margin"] != 0.0
    assert_same_params(
        dict(follow.policy.model.named_parameters()), dict(explicit.policy.model.named_parameters())
    )


# ---- reference=none holds no reference ----------------------------------------------------------


@pytest.mark.parametrize("trainable", ["all", "llm"])
def test_sft_without_reference_loads_one_model(monkeypatch, trainable):
    import gapray.workers.learner as learner_module

    loads = []
    real = learner_module.load_adapter
    monkeypatch.setattr(learner_module, "load_adapter", lambda *a, **k: loads.append(a) or real(*a, **k))
    learner = make_learner(["learner=sft", f"model.trainable={trainable}"])
    assert learner.reference is None and len(loads) == 1
    batch = _pairs()
    before = {n: p.detach().clone() for n, p in learner.policy.trainable_parameters().items()}
    stats = learner.update({"prompts": batch["prompts"], "tokens": batch["chosen"]})
    assert stats["optimizer_steps"] == 1
    assert moved(before, {n: p.detach() for n, p in learner.policy.trainable_parameters().items()})


# ---- settings that transfer: beta per image token, a global batch fixed over ranks ---------------


def test_beta_per_token_trains_on_per_token_log_ratios():
    from gapray.algos.dpo import dpo_objective

    learner = make_learner(["model.trainable=all", "learner.beta_per_token=true", "learner.lr=1e-3"])
    batch = _pairs()
    P, T = len(batch["prompts"]), batch["chosen"].shape[1]
    before = {n: p.detach().clone() for n, p in learner.policy.model.named_parameters()}
    first = learner.update(batch)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference
    assert moved(before, {n: p.detach() for n, p in learner.policy.model.named_parameters()})
    # The learner's loss on the moved policy is the pure loss with num_tokens=T, not the sum's.
    rows = batch["prompts"] * 2
    tokens = torch.from_numpy(np.concatenate([batch["chosen"], batch["rejected"]])).long()
    with torch.no_grad():
        logp = learner._logps(learner.policy, rows, tokens)[0]
        ref = learner._reference_logps(rows, tokens)
        loss, _ = learner._dpo_loss(batch["prompts"], batch["chosen"], batch["rejected"])
        per_token, _ = dpo_objective(logp[:P], logp[P:], ref[:P], ref[P:], beta=0.1, num_tokens=T)
        summed, _ = dpo_objective(logp[:P], logp[P:], ref[:P], ref[P:], beta=0.1)
    assert loss.item() == pytest.approx(per_token.item(), rel=1e-6)
    assert abs(per_token.item() - summed.item()) > 1e-6
    second = learner.update(batch)
    assert second["loss"] != pytest.approx(first["loss"], abs=1e-7)  # the loss moved


def test_pairs_per_update_fixes_the_global_batch_whatever_the_ranks():
    learner = make_learner(["learner.pairs_per_update=2", "learner.micro_batch_size=1"])
    assert learner.rows_per_update() == 2
    learner.world_size = 4  # the global batch does not grow with the ranks
    assert learner.rows_per_update() == 2
    default = make_learner(["learner.micro_batch_size=2", "learner.grad_accum=3"])
    default.world_size = 2
    assert default.rows_per_update() == 2 * 3 * 2
    # 3 pairs, 2 per update: updates of 2 and 1 pairs; the parameters move.
    learner.world_size = 1
    before = {n: p.detach().clone() for n, p in learner.policy.trainable_parameters().items()}
    stats = learner.update(tiny_pairs(3))
    assert stats["optimizer_steps"] == 2 and stats["rows"] == 3
    assert moved(before, {n: p.detach() for n, p in learner.policy.trainable_parameters().items()})


def test_two_gloo_ranks_with_pairs_per_update_match_one_rank(tmp_path):
    """pairs_per_update=2 on 3 pairs: one rank and two ranks make the same two updates."""
    overrides = ["model.trainable=all", "learner.pairs_per_update=2", "learner.lr=1e-3"]
    batches = [tiny_pairs(3)]
    one = make_learner(overrides)
    one_stats = one.update(batches[0])
    want = {n: p.detach().clone() for n, p in one.policy.model.named_parameters()}
    ranks = run_ranks(2, overrides, batches, tmp_path)
    assert ranks[0]["stats"][0]["optimizer_steps"] == one_stats["optimizer_steps"] == 2
    # atol 5e-5: micro-batches of 1 row (2 ranks, FSDP) vs 2 rows reorder fp32 sums; AdamW
    # amplifies that where a gradient sits near its eps (1e-8): one generation-head bias
    # element with sqrt(v) = 4e-8 measured 1.1e-5 apart, every other weight <= 3e-6.
    assert_same_params(ranks[0]["params"][0], want, atol=5e-5)
    assert ranks[0]["stats"][0]["loss"] == pytest.approx(one_stats["loss"], rel=1e-6)
