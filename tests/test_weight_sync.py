"""Weight-sync packing and in-place application, LoRA merge on arrival (no Ray needed)."""

from __future__ import annotations

import copy

import pytest
import torch

from gapray.models.tiny import tiny_janus
from gapray.workers.sync import LoraMergeState, apply_update, bucket_bytes, pack_buckets, trainable_tensors

PROMPTS = ["a photo of a red circle", "a photo of two crosses"]


def test_pack_buckets_respects_size_and_keeps_everything():
    tensors = {f"w{i}": torch.zeros(256) for i in range(10)}  # 1 KiB each
    buckets = pack_buckets(tensors, bucket_mb=3 / 1024)  # 3 KiB
    assert [len(b) for b in buckets] == [3, 3, 3, 1]
    assert {k for b in buckets for k in b} == set(tensors)
    assert bucket_bytes(buckets) == 10 * 1024
    big = pack_buckets({"huge": torch.zeros(4096), "small": torch.zeros(1)}, bucket_mb=1 / 1024)
    assert [list(b) for b in big] == [["huge"], ["small"]]  # an oversize tensor gets its own bucket
    with pytest.raises(ValueError, match="bucket_mb"):
        pack_buckets(tensors, 0)


def test_full_update_makes_worker_equal_to_learner():
    learner, worker = tiny_janus(seed=0), tiny_janus(seed=0)
    learner.set_trainable("llm")
    with torch.no_grad():
        for p in learner.trainable_parameters().values():
            p.add_(0.01 * torch.randn_like(p))
    sent = trainable_tensors(learner.model)
    assert all(n.startswith("model.language_model.") for n in sent)
    for bucket in pack_buckets(sent, bucket_mb=0.05):
        apply_update(worker.model, bucket)
    tokens = learner.generate(PROMPTS, n=2, cfg_scale=3.0, seed=1)
    assert torch.equal(worker.generate(PROMPTS, n=2, cfg_scale=3.0, seed=1), tokens)


def test_lora_update_is_merged_on_arrival_and_not_stacked():
    learner, worker = tiny_janus(seed=0), tiny_janus(seed=0)
    learner.set_trainable("lora", lora_rank=4, lora_alpha=8)
    state = LoraMergeState.empty()
    rows = [p for p in PROMPTS for _ in range(2)]
    for _ in range(2):  # two versions: the second must replace the first, not add to it
        with torch.no_grad():
            for n, p in learner.model.named_parameters():
                if "lora_" in n:
                    p.copy_(0.2 * torch.randn_like(p))
        sent = trainable_tensors(learner.model)
        assert sent and all("lora_" in n for n in sent)
        # Small buckets split some A/B pairs across buckets: the merge waits for both halves.
        for bucket in pack_buckets(sent, bucket_mb=0.002):
            apply_update(worker.model, bucket, lora_scaling=8 / 4, merge_state=state)
        assert not state.pending
        tokens = learner.generate(PROMPTS, n=2, cfg_scale=3.0, seed=2)
        with torch.no_grad():
            want = learner.image_logprobs(rows, tokens)[0]
            got = worker.image_logprobs(rows, tokens)[0]
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_bad_update_names_the_tensor_and_changes_nothing():
    worker = tiny_janus(seed=0)
    before = copy.deepcopy(worker.model.state_dict())
    name = "model.language_model.layers.0.self_attn.q_proj.weight"
    good = {name: torch.ones_like(before[name])}
    with pytest.raises(ValueError, match=r"no parameter 'model\.nope'"):
        apply_update(worker.model, {**good, "model.nope": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"q_proj.weight has shape \(3,\)"):
        apply_update(worker.model, {name: torch.zeros(3)})
    with pytest.raises(ValueError, match="keeps no merge state"):
        apply_update(
            worker.model,
            {"model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight": torch.zeros(2, 64)},
        )
    after = worker.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


LAYER = "model.language_model.layers.0.self_attn.q_proj"  # (64, 64) on the tiny Janus
PLAIN = "model.language_model.norm.weight"


@pytest.mark.parametrize(
    ("a_shape", "b_shape", "why"),
    [((4, 64), (32, 4), r"delta .* is \(32, 64\)"), ((5, 64), (64, 4), r"A is \(5, 64\), B is \(64, 4\)")],
    ids=["delta-shape", "inner-rank"],
)
def test_bad_lora_pair_changes_nothing_even_beside_good_plain_tensors(a_shape, b_shape, why):
    worker = tiny_janus(seed=0)
    before = copy.deepcopy(worker.model.state_dict())
    state = LoraMergeState.empty()
    update = {
        PLAIN: torch.full_like(before[PLAIN], 3.0),  # good, and listed first
        LAYER + ".lora_A.default.weight": torch.ones(a_shape),
        LAYER + ".lora_B.default.weight": torch.ones(b_shape),
    }
    with pytest.raises(ValueError, match=why) as info:
        apply_update(worker.model, update, lora_scaling=2.0, merge_state=state)
    assert LAYER in str(info.value)
    after = worker.model.state_dict()
    assert [k for k in before if not torch.equal(before[k], after[k])] == []
    assert state.base == {} and state.pending == {}


def test_bad_half_completing_a_pending_pair_changes_nothing():
    worker = tiny_janus(seed=0)
    state = LoraMergeState.empty()
    a = torch.ones(4, 64)
    assert apply_update(worker.model, {LAYER + ".lora_A.default.weight": a}, merge_state=state) == 0
    before = copy.deepcopy(worker.model.state_dict())
    second = {PLAIN: torch.zeros_like(before[PLAIN]), LAYER + ".lora_B.default.weight": torch.ones(16, 4)}
    with pytest.raises(ValueError, match=LAYER):
        apply_update(worker.model, second, merge_state=state)
    after = worker.model.state_dict()
    assert [k for k in before if not torch.equal(before[k], after[k])] == []
    assert list(state.pending) == [LAYER] and torch.equal(state.pending[LAYER]["A"], a)
    assert state.base == {}
    # The right B still completes the pair afterwards.
    good = {PLAIN: torch.zeros_like(before[PLAIN]), LAYER + ".lora_B.default.weight": torch.ones(64, 4)}
    assert apply_update(worker.model, good, lora_scaling=0.5, merge_state=state) == 2
    w = dict(worker.model.named_parameters())[LAYER + ".weight"]
    torch.testing.assert_close(w.detach(), before[LAYER + ".weight"] + 0.5 * 4.0)
    assert not state.pending
