"""GenerationWorker.load_weights on the vLLM backend is all-or-nothing across its two models.

A vLLM generation worker holds a vLLM engine (sampling) and its transformers adapter
(evaluation); every weight sync must leave both at the same version, bucket by bucket. A
stand-in engine with the real engine's weight interface (version, check_manifest,
apply_bucket, snapshot, restore) replaces vLLM, so these run without it; `ray.get` is replaced
by identity, so bucket "refs" are the buckets.

    pytest tests/test_generation_weights.py -q
"""

from __future__ import annotations

import copy
import re

import pytest
import torch

from gapray.config import load_config
from gapray.workers.generation import GenerationWorker
from gapray.workers.sync import TORN, SyncManifest

NAME = "model.language_model.layers.0.self_attn.q_proj.weight"


class FakeEngine:
    """VllmJanusEngine's weight side: a version and the latest value of each updated tensor;
    `refuse` makes load_weights raise as the real engine does on a bad update."""

    def __init__(self):
        self.version = 0
        self.latest: dict[str, torch.Tensor] = {}
        self.refuse: str | None = None
        self.loads = 0

    def check_manifest(self, manifest) -> None:
        pass

    def apply_bucket(self, tensors: dict[str, torch.Tensor]) -> None:
        from gapray.backends.vllm_worker import WeightUpdateError

        if self.refuse:
            raise WeightUpdateError(self.refuse)
        self.loads += 1
        self.latest = {**self.latest, **{k: v.clone() for k, v in tensors.items()}}

    def snapshot(self):
        return (self.version, dict(self.latest))

    def restore(self, snap) -> None:
        self.version, self.latest = snap[0], dict(snap[1])


@pytest.fixture
def worker(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "get", lambda refs: refs)
    cfg = load_config(["model=tiny"])
    w = GenerationWorker(cfg.model, cfg.generation)  # backend hf: no vLLM is built
    w.engine = FakeEngine()
    return w


def push(w: GenerationWorker, version: int, *buckets: dict) -> int:
    """A WeightSync push of these buckets, as a replay (ray.get is identity here)."""
    w.load_weights(version, [(SyncManifest.of(list(buckets)), list(buckets))])
    return w.version


def _params(w: GenerationWorker) -> dict[str, torch.Tensor]:
    return copy.deepcopy(w.model.model.state_dict())


def _unchanged(before: dict, w: GenerationWorker) -> list[str]:
    after = w.model.model.state_dict()
    return [k for k in before if not torch.equal(before[k], after[k])]


def test_an_update_the_adapter_refuses_leaves_the_engine_untouched(worker):
    before = _params(worker)
    good = torch.ones_like(before[NAME])
    # The engine would skip a Janus tensor it does not use; the adapter has no such parameter.
    bucket = {NAME: good, "model.no_such_layer.weight": torch.zeros(2)}
    with pytest.raises(ValueError, match=re.escape("model.no_such_layer.weight")):
        push(worker, 1, bucket)
    assert (worker.version, worker.engine.version, worker.engine.loads) == (0, 0, 0)
    assert _unchanged(before, worker) == []
    assert push(worker, 1, {NAME: good}) == 1  # a good update still goes through
    assert (worker.version, worker.engine.version) == (1, 1)
    assert torch.equal(worker.model.model.state_dict()[NAME], good)


def test_an_update_the_engine_refuses_leaves_the_adapter_untouched(worker):
    from gapray.backends.vllm_worker import WeightUpdateError

    before = _params(worker)
    worker.engine.refuse = "weight update: the engine says no"
    with pytest.raises(WeightUpdateError, match="engine says no"):
        push(worker, 1, {NAME: torch.ones_like(before[NAME])})
    assert (worker.version, worker.engine.version) == (0, 0)
    assert _unchanged(before, worker) == []


def test_a_failing_adapter_copy_after_the_engine_loaded_restores_the_engine(worker, monkeypatch):
    from gapray.workers.sync import UpdatePlan

    before = _params(worker)
    assert push(worker, 1, {NAME: torch.ones_like(before[NAME])}) == 1
    held = dict(worker.engine.latest)

    def broken(self):
        raise RuntimeError("device lost mid-copy")

    monkeypatch.setattr(UpdatePlan, "apply", broken)
    with pytest.raises(RuntimeError, match="device lost"):
        push(worker, 2, {NAME: torch.full_like(before[NAME], 2.0)})
    assert (worker.version, worker.engine.version) == (1, 1)
    assert held.keys() == worker.engine.latest.keys()
    assert all(torch.equal(held[k], worker.engine.latest[k]) for k in held)


def test_a_failure_after_an_earlier_bucket_leaves_both_torn_until_a_replay(worker):
    from gapray.backends.vllm_worker import WeightUpdateError

    plain = "model.language_model.norm.weight"
    before = _params(worker)
    first, second = {plain: torch.full_like(before[plain], 2.0)}, {NAME: torch.ones_like(before[NAME])}
    manifest = SyncManifest.of([first, second])
    assert worker.begin_update(1, manifest) is None  # checked, nothing applied yet
    assert worker.apply_bucket(1, first) is None
    worker.engine.refuse = "weight update: the engine says no"
    with pytest.raises(WeightUpdateError, match="engine says no"):
        worker.apply_bucket(1, second)
    assert (worker.version, worker.engine.version) == (TORN, TORN)  # part of version 1 is in
    worker.engine.refuse = None
    assert push(worker, 1, first, second) == 1  # the pool's heal replays the push whole
    assert worker.engine.version == 1
    assert torch.equal(worker.model.model.state_dict()[NAME], second[NAME])
