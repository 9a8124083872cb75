"""gapray.models.sampling: the counter-based per-row sampler of the transformers backend, on
hand-computed values, and JanusAdapter.generate's static KV cache against the dynamic one."""

from __future__ import annotations

import pytest
import torch

from gapray.models.sampling import (
    MASK32,
    RowSampler,
    _mul32,
    fmix32,
    fmix32_int,
    inverse_cdf,
    row_key,
    uniforms,
)


def test_mul32_is_the_low_32_bits_of_the_product():
    xs = [0, 1, 0xFFFF, 0x10000, 0xDEADBEEF, MASK32]
    for m in (0x85EBCA6B, 0xC2B2AE35, 3):
        got = _mul32(torch.tensor(xs), m).tolist()
        assert got == [(x * m) & MASK32 for x in xs]


def test_fmix32_matches_the_integer_reference():
    assert fmix32_int(0) == 0  # the finalizer fixes 0
    # By hand: x = 1 -> 1 ^ 0 = 1 -> * 0x85EBCA6B = 0x85EBCA6B -> ^ (>> 13) -> * 0xC2B2AE35 ...
    x = 1
    x = (x * 0x85EBCA6B) & MASK32
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & MASK32
    x ^= x >> 16
    assert fmix32_int(1) == x
    xs = [0, 1, 2, 12345, 0x7FFFFFFF, 0x80000000, MASK32]
    assert fmix32(torch.tensor(xs)).tolist() == [fmix32_int(v) for v in xs]


def test_uniforms_lie_in_the_open_unit_interval_and_depend_on_key_and_step():
    keys = torch.tensor([row_key(s) for s in range(1000)])
    u0, u1 = uniforms(keys, 0), uniforms(keys, 1)
    assert u0.dtype == torch.float64 and (u0 > 0).all() and (u0 < 1).all()
    assert not torch.equal(u0, u1)
    assert abs(u0.mean().item() - 0.5) < 0.03  # mean of 1000 uniforms: sd 0.009
    assert len(set(keys.tolist())) == 1000  # distinct seeds, distinct streams
    assert row_key(-1) == row_key(2**64 - 1)  # seeds are taken mod 2^64


def test_inverse_cdf_by_hand():
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4]] * 5)
    u = torch.tensor([0.05, 0.1, 0.35, 0.6, 0.999])  # cdf 0.1, 0.3, 0.6, 1.0
    assert inverse_cdf(probs, u).tolist() == [0, 1, 2, 3, 3]
    # unnormalised weights and a zero-weight code: the zero is never drawn
    w = torch.tensor([[2.0, 0.0, 2.0]] * 3)
    assert inverse_cdf(w, torch.tensor([0.49, 0.5, 0.51])).tolist() == [0, 2, 2]


def test_rows_depend_on_their_own_seed_only():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    batch = RowSampler([10, 11, 12, 13, 14, 15])
    alone = RowSampler([12])
    for step in range(5):
        tokens, logp = batch.sample(logits, 1.0, step)
        one, one_logp = alone.sample(logits[2:3], 1.0, step)
        assert tokens[2] == one[0] and torch.equal(logp[2:3], one_logp)
        again, _ = RowSampler([10, 11, 12, 13, 14, 15]).sample(logits, 1.0, step)
        assert torch.equal(tokens, again)  # same seeds, same tokens
    same = RowSampler([7, 7]).sample(logits[:1].expand(2, -1), 1.0, 0)[0]
    assert same[0] == same[1]
    greedy, logp = batch.sample(logits, 0.0, 0)
    assert torch.equal(greedy, logits.argmax(-1))
    assert torch.allclose(logp, logits.log_softmax(-1).max(-1).values)
    with pytest.raises(ValueError, match="logit rows"):
        batch.sample(logits[:2], 1.0, 0)


def test_static_cache_gives_the_dynamic_cache_tokens():
    from gapray.models.tiny import tiny_janus

    model = tiny_janus(seed=0)
    prompts = ["a photo of a red circle", "one"]  # different lengths: left padding
    for temperature, cfg in ((1.0, 3.0), (0.7, None)):
        a, la = model.generate(
            prompts, n=2, cfg_scale=cfg, temperature=temperature, seed=5, return_logprobs=True
        )
        b, lb = model.generate(
            prompts,
            n=2,
            cfg_scale=cfg,
            temperature=temperature,
            seed=5,
            return_logprobs=True,
            cache="dynamic",
        )
        assert torch.equal(a, b)
        assert torch.allclose(la, lb, atol=1e-5)
    with pytest.raises(ValueError, match="cache"):
        model.generate(prompts, cache="paged")


def test_preallocated_cache_returns_the_filled_prefix():
    from gapray.models.kv_cache import PreallocatedLayer

    layer = PreallocatedLayer(max_cache_len=5)
    k, v = torch.ones(2, 1, 3, 4), 2 * torch.ones(2, 1, 3, 4)
    assert layer.get_mask_sizes(3) == (3, 0)
    keys, values = layer.update(k, v)
    assert keys.shape == (2, 1, 3, 4) and torch.equal(values, v) and layer.get_seq_length() == 3
    assert layer.get_mask_sizes(1) == (4, 0)
    keys, _ = layer.update(3 * torch.ones(2, 1, 1, 4), torch.zeros(2, 1, 1, 4))
    assert keys.shape == (2, 1, 4, 4) and keys[:, :, 3].eq(3).all() and keys[:, :, :3].eq(1).all()
    assert layer.keys.shape == (2, 1, 5, 4)  # allocated once
    with pytest.raises(ValueError, match="max_cache_len"):
        layer.update(torch.ones(2, 1, 2, 4), torch.ones(2, 1, 2, 4))


def test_guided_head_is_cfg_of_the_head():
    from gapray.models.tiny import tiny_janus

    model = tiny_janus(seed=0)
    h = torch.randn(6, model.model.config.text_config.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model._cfg(model.model.model.generation_head(h), 3.0)
        got = model._guided_head(h, 3.0)
    assert got.shape == (3, model.codebook_size) and torch.allclose(got, want, atol=1e-5)
