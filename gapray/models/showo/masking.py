"""The two mask-prediction algorithms of the Show-o adapter, over its code-logits forward:
MaskGIT sampling (`generate`) and the Monte Carlo masked-token log-likelihood surrogate
(`image_logprobs`, the estimator written out in the package docstring, `__init__.py`), with
their seeds: per-row generation seeds, per-(row, position) counter streams, and the mask-draw
seed of a log-prob row.

`MaskPrediction` is a mixin: `adapter.ShowoAdapter` inherits these methods unchanged; the
sequences and the forward they call (`_gen_inputs`, `_code_logits`) stay in the adapter."""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F

from gapray.models.base import check_generate_args, combine_cfg
from gapray.models.sampling import MASK32, fmix32, inverse_cdf, row_key, uniforms
from gapray.models.showo.layout import mask_schedule, masked_count


def _row_seeds(seed: int | list[int], rows: int) -> list[int]:
    if isinstance(seed, int):
        return [seed * 1_000_003 + r for r in range(rows)]  # as Janus: row r's stream is fixed
    if len(seed) != rows:
        raise ValueError(f"seed: got {len(seed)} per-row seeds for {rows} output rows")
    return [int(s) for s in seed]


def position_keys(seeds: list[int], positions: int, device) -> torch.Tensor:
    """(R * positions,) int64 stream keys for `sampling.uniforms`: row r's key (from its seed,
    `sampling.row_key`) mixed with each image position, so every (row, position) has its own
    counter-based stream on the device, and a row's draws depend on its seed only."""
    rows = torch.tensor([row_key(s) for s in seeds], dtype=torch.long, device=device)  # (R,)
    pos = fmix32((torch.arange(positions, device=device) * 0x9E3779B1 + 0x7F4A7C15) & MASK32)
    return fmix32(rows[:, None] ^ pos[None, :]).reshape(-1)


def logprob_row_seed(base: int, prompt: str, tokens: torch.Tensor) -> int:
    """The mask-draw seed of one image_logprobs row: a hash of (base seed, prompt, tokens), so a
    row's draws do not depend on its batch, and policy and reference draw the same masks."""
    h = hashlib.blake2b(digest_size=8)
    h.update(int(base).to_bytes(8, "little", signed=True))
    h.update(prompt.encode())
    h.update(tokens.detach().to("cpu", torch.int64).numpy().tobytes())
    return int.from_bytes(h.digest(), "little") & (2**63 - 1)


class MaskPrediction:
    """`generate` (MaskGIT sampling) and `image_logprobs` (the masked-token log-likelihood
    surrogate) for `adapter.ShowoAdapter`, which inherits them. What they use of the host:
    `num_image_tokens`, `codebook_size`, `layout` (ShowoLayout), `sampler` (SamplerSettings),
    `device`, `_gen_inputs(prompts, cfg)` -> (text ids, omni mask, Lt) and
    `_code_logits(text, image_ids, mask, Lt)` -> (R', T, K) logits."""

    _cfg = staticmethod(combine_cfg)  # the one CFG combination (models.base)

    # ------------------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        n: int = 1,
        cfg_scale: float | None = 5.0,
        temperature: float = 1.0,
        seed: int | list[int] = 0,
        batch_size: int = 64,
    ) -> torch.Tensor:
        """MaskGIT sampling -> (len(prompts) * n, T) code ids; rows grouped by prompt; each row
        from its own generator (seed or seed[r]), so a row depends only on its prompt and seed."""
        check_generate_args(prompts, n, cfg_scale, temperature)
        rows = [p for p in prompts for _ in range(n)]
        seeds = _row_seeds(seed, len(rows))
        return torch.cat(
            [
                self._generate_rows(
                    rows[i : i + batch_size], seeds[i : i + batch_size], cfg_scale, temperature
                )
                for i in range(0, len(rows), batch_size)
            ]
        )

    def _generate_rows(self, prompts, seeds, cfg_scale, temperature) -> torch.Tensor:
        R, T, K = len(prompts), self.num_image_tokens, self.codebook_size
        S, lay = self.sampler.steps, self.layout
        text, mask, Lt = self._gen_inputs(prompts, cfg_scale is not None)
        keys = position_keys(seeds, T, self.device)  # (R*T,): one counter stream per row and position
        image = torch.full((R, T), lay.mask_id, dtype=torch.long, device=self.device)  # vocab ids
        choice_temperature = self.sampler.mask_temperature
        for step in range(S):
            img_in = image if cfg_scale is None else torch.cat([image, image])
            logits = self._cfg(self._code_logits(text, img_in, mask, Lt).float(), cfg_scale)  # (R, T, K)
            if temperature == 0:
                sampled = logits.argmax(-1)
            else:
                logits = logits / temperature
                probs = F.softmax(logits, dim=-1).reshape(R * T, K)
                sampled = inverse_cdf(probs, uniforms(keys, 2 * step)).view(R, T)  # on the device
            unknown = image == lay.mask_id
            sampled = torch.where(unknown, sampled, image - lay.code_offset)
            if step == S - 1:
                return sampled
            ratio = (step + 1) / S
            mask_ratio = float(mask_schedule(self.sampler.schedule, torch.tensor(ratio)))
            logp = F.log_softmax(logits, dim=-1).gather(-1, sampled[..., None]).squeeze(-1)  # (R, T)
            logp = torch.where(unknown, logp, torch.full_like(logp, float("inf")))  # known stay
            mask_len = torch.clamp(
                torch.minimum(
                    unknown.sum(-1) - 1, torch.full((R,), math.floor(T * mask_ratio), device=self.device)
                ),
                min=1,
            )  # (R,): keep >= 1 new token, re-mask >= 1
            choice_temperature = choice_temperature * (1.0 - ratio)  # Show-o's annealing (cumulative)
            u = uniforms(keys, 2 * step + 1).view(R, T).to(logp.device)
            conf_noise = -torch.log(-torch.log(u)).float()  # Gumbel(0, 1); u in (0, 1)
            confidence = logp + choice_temperature * conf_noise
            cutoff = confidence.sort(-1).values.gather(-1, mask_len[:, None].long())
            remask = confidence < cutoff
            image = torch.where(remask, torch.full_like(image, lay.mask_id), sampled + lay.code_offset)
        raise AssertionError("unreachable: the last step returns")

    # ------------------------------------------------------------------------------- log-probs
    def image_logprobs(
        self,
        prompts: list[str],
        tokens: torch.Tensor,
        cfg_scale: float | None = None,
        temperature: float = 1.0,
        *,
        draws: int | None = None,
        seed: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The masked-token log-likelihood surrogate (module docstring): summed (N,) and per
        token (N, T), differentiable; K = draws (default sampler.logprob_draws) seeded mask
        draws per row from (seed (default sampler.logprob_seed), prompt, tokens)."""
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 for log-probs, got {temperature}")
        if len(prompts) != tokens.shape[0]:
            raise ValueError(f"image_logprobs: {len(prompts)} prompts for {tokens.shape[0]} token rows")
        T = self.num_image_tokens
        if tokens.ndim != 2 or tokens.shape[1] != T:
            raise ValueError(f"image_logprobs: tokens must be (N, {T}), got {tuple(tokens.shape)}")
        if cfg_scale is not None and not cfg_scale > 1:
            raise ValueError(f"cfg_scale: classifier-free guidance needs a scale > 1, got {cfg_scale}")
        K = self.sampler.logprob_draws if draws is None else draws
        if not isinstance(K, int) or K < 1:
            raise ValueError(f"draws must be an integer >= 1, got {K!r}")
        base = self.sampler.logprob_seed if seed is None else seed
        tokens = tokens.to(self.device).long()
        masks, weights = self._logprob_masks(list(prompts), tokens, K, base)  # (K, N, T) bool, (K, N)
        masks, weights = masks.to(self.device), weights.to(self.device)
        text, attn, Lt = self._gen_inputs(list(prompts), cfg_scale is not None)
        per_token = torch.zeros(tokens.shape, dtype=torch.float32, device=self.device)
        for k in range(K):
            img = torch.where(
                masks[k], torch.full_like(tokens, self.layout.mask_id), tokens + self.layout.code_offset
            )
            img_in = img if cfg_scale is None else torch.cat([img, img])
            logits = self._cfg(self._code_logits(text, img_in, attn, Lt), cfg_scale).float()
            logp = F.log_softmax(logits / temperature, dim=-1).gather(-1, tokens[..., None]).squeeze(-1)
            per_token = per_token + masks[k] * logp * weights[k][:, None]
        per_token = per_token / K
        return per_token.sum(-1), per_token

    def _logprob_masks(self, prompts, tokens, K, base) -> tuple[torch.Tensor, torch.Tensor]:
        T = self.num_image_tokens
        masks = torch.zeros(K, len(prompts), T, dtype=torch.bool)
        weights = torch.zeros(K, len(prompts))
        for i, p in enumerate(prompts):
            g = torch.Generator().manual_seed(logprob_row_seed(base, p, tokens[i]))
            for k in range(K):
                t = (k + float(torch.rand((), generator=g))) / K  # stratified along the schedule
                n_k = masked_count(T, float(mask_schedule(self.sampler.schedule, torch.tensor(t))))
                masks[k, i, torch.randperm(T, generator=g)[:n_k]] = True
                weights[k, i] = T / n_k
        return masks, weights
