"""Per-row seeded sampling on the model's device: one counter-based uniform per row and step.

Where it sits: the transformers generation backend (`JanusAdapter.generate`) draws each image
token with `RowSampler.sample`. Each row r has a 64-bit seed s_r; at step t its uniform is a
hash of (s_r, t) only, computed as tensor ops on whatever device the logits live on, and the
token is the inverse CDF of the row's own distribution at that uniform:

    key_r      = mix(seed_lo ^ mix(seed_hi ^ SALT))                  (Python ints, once per call)
    u_r(t)     = (53 bits of mix(key_r + t*GOLD), mix(... ^ SALT2)) / 2^53, in (0, 1)
    token_r(t) = #{k : cdf_r[k] <= u_r(t) * cdf_r[K-1]}                (searchsorted, right)

So a row's tokens depend on its prompt and seed only, never on the other rows of the batch
(tested), nothing is drawn on the CPU and copied per token, and the same seed gives the same
uniforms on every device (the hash is exact integer arithmetic: every product stays below 2^48,
so int64 never overflows). `mix` is MurmurHash3's 32-bit finalizer (fmix32).

Inverse-CDF sampling is exact: P(token = k) = p_k. Temperature 0 is greedy (argmax).
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
GOLD = 0x9E3779B9  # 2^32 / golden ratio: the step stride of the counter
SALT = 0x632BE5AB
SALT2 = 0x85157AF5


def _mul32(x: torch.Tensor, m: int) -> torch.Tensor:
    """(x * m) mod 2^32 for int64 x in [0, 2^32) and a constant m < 2^32, without overflow:
    m is split into 16-bit halves, so each product is below 2^48."""
    lo = x * (m & 0xFFFF)
    hi = ((x * (m >> 16)) & 0xFFFF) << 16
    return (lo + hi) & MASK32


def fmix32(x: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's finalizer on int64 tensors holding 32-bit values (a bijection of [0, 2^32))."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def fmix32_int(x: int) -> int:
    """The same finalizer on a Python int (the reference the tensor version is tested against)."""
    x &= MASK32
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & MASK32
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & MASK32
    return x ^ (x >> 16)


def row_key(seed: int) -> int:
    """A row's 32-bit stream key from its seed (any int; taken mod 2^64)."""
    s = int(seed) % (1 << 64)
    return fmix32_int((s & MASK32) ^ fmix32_int((s >> 32) ^ SALT))


def uniforms(keys: torch.Tensor, step: int) -> torch.Tensor:
    """(R,) int64 row keys, step t -> (R,) float64 uniforms in (0, 1), 53 random bits each."""
    c = (keys + (step * GOLD) % (1 << 32)) & MASK32
    h1 = fmix32(c)
    h2 = fmix32(h1 ^ SALT2)
    bits = (h1 >> 5) * (1 << 26) + (h2 >> 6)  # 27 + 26 = 53 bits
    return (bits.double() + 0.5) / float(1 << 53)


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(R, K) non-negative weights, (R,) uniforms in (0, 1) -> (R,) long: the k with
    cdf[k-1] <= u * total < cdf[k]; a zero-weight k is never chosen."""
    cdf = probs.double().cumsum(-1)  # float64: exact enough over 16,384 codes
    target = (u.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)  # (R, 1)
    idx = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return idx.clamp(max=probs.shape[-1] - 1)


class RowSampler:
    """Draws one token per row per step from (R, K) logits, row r from its own seed's stream.

        sampler = RowSampler(seeds, device)
        tokens, logprobs = sampler.sample(logits, temperature, step)

    logprobs are log-softmax(logits / temperature) at the drawn tokens (at temperature 0, the
    argmax's, under temperature 1)."""

    def __init__(self, seeds: list[int], device: torch.device | str = "cpu"):
        self.keys = torch.tensor([row_key(s) for s in seeds], dtype=torch.long, device=device)

    def __len__(self) -> int:
        return self.keys.shape[0]

    def sample(
        self, logits: torch.Tensor, temperature: float, step: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if logits.shape[0] != len(self):
            raise ValueError(f"RowSampler: {logits.shape[0]} logit rows for {len(self)} seeds")
        logp = torch.log_softmax(logits.float() / (temperature or 1.0), dim=-1)  # (R, K)
        tokens = logits.argmax(-1) if temperature == 0 else inverse_cdf(logp.exp(), uniforms(self.keys, step))
        return tokens, logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
