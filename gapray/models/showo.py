"""Show-o family adapter: a mask-prediction (MaskGIT) generator behind the model seam of `base.py`.

Show-o (showlab/Show-o) is one Phi-1.5 transformer over one vocabulary: Phi's text ids, then
10 new tokens ([PAD] and <|soi|> <|eoi|> <|sov|> <|eov|> <|t2i|> <|mmu|> <|t2v|> <|v2v|> <|lvg|>),
then the codes of a MAGVIT-v2 LFQ tokenizer, then one [MASK] id last:

    ids  [0, llm_vocab)  text   |  llm_vocab: [PAD], +1..+9 the task/image tokens
         code c          code_offset + c   (code_offset = llm_vocab + 10)
         [MASK]          vocab_size - 1    (Show-o-512: 50,295 + 10 + 8,192 + 1 = 58,498)

Attention is "omni": causal over text, full over the image segment (<|soi|> ... <|eoi|>).

    generation     [PAD]* <|t2i|> <bos> prompt <eos> | <|soi|> T image ids <|eoi|>
                   (the text part left-padded to max_text_len + 1 tokens; image tokens see all
                   real tokens, text is causal, nothing attends to [PAD])
    understanding  <|mmu|> <|soi|> T image ids <|eoi|> <bos> question ... (full attention over
                   the image prefix, causal after; the answer is read at the last position)

Operations, as the seam wants them:

- `generate`: MaskGIT sampling as Show-o's `t2i_generate`: start all [MASK]; each of `steps`
  steps samples every masked token, keeps known ones, and re-masks the floor(T * schedule((s+1)/S))
  least confident (confidence = log p of the drawn token + annealed Gumbel noise; at least one
  kept and one re-masked per step); the last step's draws are the image. Every (row, image
  position) draws from its own counter-based stream on the model's device (`sampling.uniforms`
  keyed by the row's seed, per-row seeds as for Janus): the token by the inverse CDF of its
  distribution, the re-masking noise as Gumbel(-log(-log u)); the text part has a fixed
  length, so a row depends only on its prompt and seed, not on its batch.
- CFG, through the project's one rule (`base.guidance`): logits = uncond + w * (cond - uncond)
  with w = the configured cfg_scale. Show-o writes (1 + s) * cond - s * uncond, which is the
  same with w = 1 + s: Show-o's guidance_scale s corresponds to generation.cfg_scale = s + 1
  (its 512 px demo, s = 5, is cfg_scale 6). The unconditional row is Show-o's: the empty
  prompt through the same template.
- temperature: the softmax temperature of the token draws (Show-o fixes it at 1; gapray's
  default 1.0 is Show-o's sampler). Show-o's own `generation_temperature` scales the
  re-masking noise instead; here it is `mask_temperature`, annealed as Show-o does
  (multiplied by (1 - (s+1)/S) at every step, cumulatively).
- `decode`: LFQ codes -> bits (+-1, most significant first) -> the MAGVIT-v2 decoder.
- `judge`: P(yes) / (P(yes) + P(no)) at the answer position of the understanding path; the image
  is encoded by the MAGVIT-v2 encoder + LFQ (resize shorter side, centre crop, as Show-o).
- `image_logprobs`: a mask-prediction model has no exact image likelihood. The surrogate is the
  Monte Carlo masked-token log-likelihood (the MaskGIT / masked-diffusion ELBO form, as LLaDA
  estimates it): for each of K draws, t_k = (k + u_k) / K (stratified on (0, 1)), a mask ratio
  r_k = schedule(t_k), n_k = clamp(ceil(T * r_k), 1, T) positions masked uniformly at random;
  the model sees the image with those positions [MASK]ed and scores the true tokens there:

      per_token[i] = (1/K) sum_k (T / n_k) * 1[i masked in draw k] * log p_k(x_i | unmasked_k)
      summed       = sum_i per_token[i]

  (T / n_k is the inverse masking probability, so per_token[i] estimates the expected masked
  log-likelihood of token i over the schedule, and summed is on the scale of T tokens, like an
  autoregressive log-likelihood.) With cfg_scale the CFG-combined logits are scored (both rows
  see the same mask). The draws are seeded from (logprob_seed, the row's prompt, its tokens):
  the same row always gets the same masks, alone or batched, and the policy and the reference
  see the same masks (common random numbers: the DPO log-ratio's variance comes only from the
  two models' difference). The variance over seeds falls at least as 1/K (the stratified
  draws do better: on the tiny Show-o, summed over T = 16 tokens, 0.61 / 0.096 / 0.024 at
  K = 1 / 4 / 16, 10 seeds; tested); K = `logprob_draws`, default 4: each draw costs one
  forward (two with CFG) with gradients, and at T = 1,024 one draw already scores about 0.64 T
  tokens on average (the mean of cos(pi t / 2) over t).
- `set_trainable`: "llm" the Phi backbone (showo.model: embeddings, layers, final norm); "all"
  also the LM head (everything but the frozen MAGVIT-v2); "lora" LoRA on the layers' attention
  and MLP projections (peft), the rest frozen.
- Checkpoints: a directory in the official layout (see `check_showo_checkpoint_dir`): Show-o's
  config.json + weights (names showo.model.*, showo.lm_head.*), `llm/` (Phi-1.5's config.json
  and tokenizer), `vq/` (showlab/magvitv2: config.json + weights encoder.*, decoder.*,
  quantize.*). Names are mapped explicitly; a missing, unexpected or misshapen key is named.

    adapter = tiny_showo(seed=0)                       # built in code: 16 tokens, 64 codes, 32 px
    tokens = adapter.generate(["a red circle"], n=2, cfg_scale=4.0, seed=0)   # (2, 16)
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from transformers import PhiConfig, PhiForCausalLM, PreTrainedTokenizerFast

from gapray.models.base import DEFAULT_QUESTION, Judgement, TrainableMode, check_generate_args, combine_cfg
from gapray.models.sampling import MASK32, fmix32, inverse_cdf, row_key, uniforms

FAMILY = "showo"
NEW_TOKENS = (
    "<|soi|>",
    "<|eoi|>",
    "<|sov|>",
    "<|eov|>",
    "<|t2i|>",
    "<|mmu|>",
    "<|t2v|>",
    "<|v2v|>",
    "<|lvg|>",
)
"""UniversalPrompting's special tokens, added after [PAD] in this order (Show-o's ids)."""
PAD_TOKEN = "[PAD]"
NUM_NEW_TOKENS = 1 + len(NEW_TOKENS)  # config num_new_special_tokens: 10
DEFAULT_JUDGE_TEMPLATE = "USER: \n{question} ASSISTANT:"
"""Show-o's understanding prompt without CLIP (inference_mmu.py), after <bos>."""
ADAPTER_FILE = "gapray_adapter.json"
SHOWO_WEIGHT_FILES = ("pytorch_model.bin", "model.safetensors", "pytorch_model.safetensors")
VQ_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "diffusion_pytorch_model.safetensors")
LORA_TARGETS = r".*showo\.model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|dense)|mlp\.(fc1|fc2))"
SCHEDULES = ("cosine", "linear")


class CheckpointError(ValueError):
    """A model path that is missing or does not hold a loadable Show-o checkpoint."""


# ------------------------------------------------------------------------------------ schedules
def mask_schedule(name: str, t: torch.Tensor) -> torch.Tensor:
    """Mask ratio at progress t in [0, 1]: "cosine" cos(pi t / 2) (Show-o's default), "linear"
    1 - t (clamped to [1e-6, 1] as Show-o's linear_schedule)."""
    if name == "cosine":
        return torch.cos(t * math.pi * 0.5)
    if name == "linear":
        return (1 - t).clamp(min=1e-6, max=1.0)
    raise ValueError(f"mask schedule must be one of {SCHEDULES}, got {name!r}")


def masked_count(num_tokens: int, ratio: float) -> int:
    """Tokens masked in one log-prob draw at mask ratio `ratio`: ceil(T * r) in [1, T]."""
    return int(min(num_tokens, max(1, math.ceil(num_tokens * ratio - 1e-9))))


# ------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class ShowoLayout:
    """Show-o's config.json (Showo.register_to_config) facts the adapter needs."""

    vocab_size: int
    llm_vocab_size: int
    codebook_size: int
    num_vq_tokens: int
    max_text_len: int = 128
    """dataset.preprocessing.max_seq_length: text tokens after the task token (Show-o-512: 128)."""

    @property
    def pad_id(self) -> int:
        return self.llm_vocab_size

    def token_id(self, name: str) -> int:
        return self.llm_vocab_size + 1 + NEW_TOKENS.index(name)

    @property
    def code_offset(self) -> int:
        return self.llm_vocab_size + NUM_NEW_TOKENS

    @property
    def mask_id(self) -> int:
        return self.vocab_size - 1

    def check(self) -> None:
        want = self.code_offset + self.codebook_size + 1
        if self.vocab_size != want:
            raise CheckpointError(
                f"Show-o config: vocab_size {self.vocab_size} != llm_vocab_size {self.llm_vocab_size} + "
                f"{NUM_NEW_TOKENS} new tokens + codebook_size {self.codebook_size} + 1 mask = {want}"
            )
        grid = math.isqrt(self.num_vq_tokens)
        if grid * grid != self.num_vq_tokens:
            raise CheckpointError(f"Show-o config: num_vq_tokens {self.num_vq_tokens} is not a square grid")


@dataclass(frozen=True)
class SamplerSettings:
    """Generation and log-prob settings (model config, else the checkpoint's gapray_adapter.json)."""

    steps: int = 18
    """MaskGIT steps (Show-o's default 18; its 512 px demo uses 50)."""
    schedule: str = "cosine"
    mask_temperature: float = 1.0
    """Show-o's generation_temperature: the re-masking noise, annealed over the steps."""
    logprob_draws: int = 4
    """K: seeded mask draws per image_logprobs row."""
    logprob_seed: int = 0

    def check(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps: MaskGIT steps must be an integer >= 1, got {self.steps!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.mask_temperature < 0:
            raise ValueError(f"mask_temperature must be >= 0, got {self.mask_temperature}")
        if not isinstance(self.logprob_draws, int) or self.logprob_draws < 1:
            raise ValueError(f"logprob_draws must be an integer >= 1, got {self.logprob_draws!r}")


@dataclass(frozen=True)
class MagvitConfig:
    """MAGVIT-v2 (LFQ) tokenizer architecture. Defaults are showlab/magvitv2's (its config.json
    holds none: MAGViTv2() builds VQGANEncoder() / VQGANDecoder() / LFQuantizer() defaults)."""

    ch: int = 128
    encoder_ch_mult: tuple[int, ...] = (1, 2, 2, 4, 4)
    encoder_num_res_blocks: tuple[int, ...] = (4, 3, 4, 3, 4)
    decoder_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    decoder_num_res_blocks: tuple[int, ...] = (4, 4, 3, 4, 3)
    z_channels: int = 13
    """LFQ bits: 2^13 = 8,192 codes."""

    @property
    def codebook_size(self) -> int:
        return 2**self.z_channels

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.encoder_ch_mult) - 1)

    def check(self) -> None:
        if len(self.encoder_ch_mult) != len(self.encoder_num_res_blocks):
            raise CheckpointError(
                "MAGVIT-v2 config: encoder_ch_mult and encoder_num_res_blocks differ in length"
            )
        if len(self.decoder_ch_mult) != len(self.decoder_num_res_blocks):
            raise CheckpointError(
                "MAGVIT-v2 config: decoder_ch_mult and decoder_num_res_blocks differ in length"
            )
        if len(self.decoder_ch_mult) != len(self.encoder_ch_mult):
            raise CheckpointError("MAGVIT-v2 config: encoder and decoder downsample by different factors")
        if any((self.ch * m) % 32 for m in (*self.encoder_ch_mult, *self.decoder_ch_mult)):
            raise CheckpointError(
                "MAGVIT-v2 config: every level's channels must be a multiple of 32 (GroupNorm)"
            )

    @classmethod
    def from_json(cls, d: dict) -> MagvitConfig:
        known = {f: d[f] for f in cls.__dataclass_fields__ if f in d}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in known.items()})


# ------------------------------------------------------------------------------ MAGVIT-v2 (own)
def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice plus a (1x1 when widths differ) shortcut; names as taming's."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv q, k, v, proj_out."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = _norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, hh, ww = x.shape
        q, k, v = (m(h).reshape(b, c, hh * ww).transpose(1, 2) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # (b, hw, c), scale c^-0.5
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, hh, ww))


class _Resample(nn.Module):
    def __init__(self, c: int, down: bool):
        super().__init__()
        self.down = down
        self.conv = nn.Conv2d(c, c, 3, stride=2 if down else 1, padding=0 if down else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric padding, as taming
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _mid(c: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1, mid.attn_1, mid.block_2 = ResnetBlock(c, c), AttnBlock(c), ResnetBlock(c, c)
    return mid


class MagvitEncoder(nn.Module):
    def __init__(self, cfg: MagvitConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(3, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin = cfg.ch
        mults = cfg.encoder_ch_mult
        for i, (m, n) in enumerate(zip(mults, cfg.encoder_num_res_blocks, strict=True)):
            level = nn.Module()
            level.block = nn.ModuleList()
            for _ in range(n):
                level.block.append(ResnetBlock(cin, cfg.ch * m))
                cin = cfg.ch * m
            level.attn = nn.ModuleList()  # Show-o's attn_resolutions [5] never match: no attention
            if i != len(mults) - 1:
                level.downsample = _Resample(cin, down=True)
            self.down.append(level)
        self.mid = _mid(cin)
        self.norm_out = _norm(cin)
        self.conv_out = nn.Conv2d(cin, cfg.z_channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.quant_conv(self.conv_out(F.silu(self.norm_out(h))))


class MagvitDecoder(nn.Module):
    def __init__(self, cfg: MagvitConfig):
        super().__init__()
        mults = cfg.decoder_ch_mult
        cin = cfg.ch * mults[-1]
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, padding=1)
        self.mid = _mid(cin)
        levels: list[nn.Module] = []
        for i in reversed(range(len(mults))):
            level = nn.Module()
            level.block = nn.ModuleList()
            for _ in range(cfg.decoder_num_res_blocks[i]):
                level.block.append(ResnetBlock(cin, cfg.ch * mults[i]))
                cin = cfg.ch * mults[i]
            level.attn = nn.ModuleList()
            if i != 0:
                level.upsample = _Resample(cin, down=False)
            levels.insert(0, level)  # up[0] is the finest level, as taming orders them
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(cin)
        self.conv_out = nn.Conv2d(cin, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(self.post_quant_conv(z))
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class LFQuantizer(nn.Module):
    """Look-up-free quantizer: a code is the sign pattern of z_channels latents, most
    significant bit first; code c's embedding is its bits mapped to +-1."""

    def __init__(self, bits: int):
        super().__init__()
        powers = 2 ** torch.arange(bits - 1, -1, -1)
        binary = (torch.arange(2**bits).unsqueeze(1) >> torch.arange(bits - 1, -1, -1)) & 1
        # Persistent buffers: the official state dict holds them (quantize.embedding, .power_vals).
        self.register_buffer("embedding", binary.float() * 2 - 1)
        self.register_buffer("power_vals", powers)

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """(B, bits, h, w) latents -> (B, h*w) codes."""
        bits = (z > 0).long()
        return (bits * self.power_vals.view(1, -1, 1, 1)).sum(1).flatten(1)

    def codes_to_latents(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, T) codes -> (B, bits, g, g) +-1 latents."""
        b, t = codes.shape
        g = math.isqrt(t)
        return self.embedding[codes.reshape(-1)].view(b, g, g, -1).permute(0, 3, 1, 2).contiguous()


class MagvitV2(nn.Module):
    def __init__(self, cfg: MagvitConfig):
        super().__init__()
        self.config = cfg
        self.encoder = MagvitEncoder(cfg)
        self.decoder = MagvitDecoder(cfg)
        self.quantize = LFQuantizer(cfg.z_channels)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, T) codes."""
        return self.quantize.indices(self.encoder(pixels))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, T) codes -> (B, 3, H, W) pixels (about [-1, 1])."""
        z = self.quantize.codes_to_latents(codes).to(self.decoder.conv_in.weight.dtype)
        return self.decoder(z)


# ---------------------------------------------------------------------------------- the model
class ShowoUnified(nn.Module):
    """Show-o's transformer (`showo`: transformers' PhiForCausalLM over the extended vocabulary;
    its parameter names are the official checkpoint's) and the MAGVIT-v2 tokenizer
    (`vq_model`; its names are showlab/magvitv2's under this prefix)."""

    def __init__(self, phi: PhiConfig, vq: MagvitConfig):
        super().__init__()
        phi = copy.deepcopy(phi)
        phi._attn_implementation = "sdpa"  # the omni-attention mask is a boolean 4D mask
        self.showo = PhiForCausalLM(phi)
        self.vq_model = MagvitV2(vq)

    @property
    def dtype(self) -> torch.dtype:
        return self.showo.lm_head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.showo.lm_head.weight.device


class _CodeLogits(nn.Module):
    """forward(ids (R, L) = [text, soi, T image ids, eoi], omni mask, Lt) -> (R, T, K) logits
    over the codes at the image positions: the LM head's code rows only (Show-o's
    logits[..., code_offset:-1]), so no full-vocabulary logits are formed at image positions."""

    def __init__(self, model: ShowoUnified, layout: ShowoLayout):
        super().__init__()
        self.model = model
        self.code_rows = slice(layout.code_offset, layout.code_offset + layout.codebook_size)
        self.num_image_tokens = layout.num_vq_tokens

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, Lt: int) -> torch.Tensor:
        showo = self.model.showo
        h = showo.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        h = h[:, Lt + 1 : Lt + 1 + self.num_image_tokens]  # (R, T, D)
        head = showo.lm_head
        bias = None if head.bias is None else head.bias[self.code_rows]
        return F.linear(
            h, head.weight[self.code_rows].to(h.dtype), None if bias is None else bias.to(h.dtype)
        )


def omni_mask(
    is_pad: torch.Tensor, full_upto: torch.Tensor | None, image: torch.Tensor | None
) -> torch.Tensor:
    """Boolean (B, 1, L, L) attention mask, True = attend. Causal, plus: queries in `image`
    ((B, L) bool) see every position; with `full_upto` ((B,) index), every query sees positions
    <= full_upto (the understanding prefix); no query sees [PAD]; a [PAD] query sees itself (so no
    row is empty; its output is never read)."""
    B, L = is_pad.shape
    dev = is_pad.device
    idx = torch.arange(L, device=dev)
    allowed = (idx[None, :] <= idx[:, None]).expand(B, L, L).clone()  # causal
    if image is not None:
        allowed |= image[:, :, None]
    if full_upto is not None:
        allowed |= idx[None, None, :] <= full_upto[:, None, None]
    allowed &= ~is_pad[:, None, :]
    allowed |= torch.eye(L, dtype=torch.bool, device=dev)[None] & is_pad[:, :, None]
    return allowed[:, None]


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


class ShowoAdapter:
    """One Show-o model, its tokenizer and sampler settings, behind the model seam."""

    family = FAMILY

    def __init__(
        self,
        model: ShowoUnified,
        tokenizer,
        layout: ShowoLayout,
        *,
        sampler: SamplerSettings = SamplerSettings(),
        judge_template: str = DEFAULT_JUDGE_TEMPLATE,
        question: str = DEFAULT_QUESTION,
        yes_words: tuple[str, ...] = ("yes", "Yes", "\u0120yes", "\u0120Yes"),
        no_words: tuple[str, ...] = ("no", "No", "\u0120no", "\u0120No"),
        threshold: float = 0.5,
        extra_settings: dict | None = None,
    ):
        layout.check()
        sampler.check()
        self.model, self.tokenizer, self.layout, self.sampler = model, tokenizer, layout, sampler
        self.judge_template, self.question, self.threshold = judge_template, question, threshold
        self.extra_settings = dict(extra_settings or {})
        vq = model.vq_model.config
        if vq.codebook_size != layout.codebook_size:
            raise CheckpointError(
                f"MAGVIT-v2 has {vq.codebook_size} codes (z_channels {vq.z_channels}), Show-o config "
                f"codebook_size is {layout.codebook_size}"
            )
        if model.showo.config.vocab_size != layout.vocab_size:
            raise CheckpointError(
                f"Phi vocab_size {model.showo.config.vocab_size} != Show-o vocab_size {layout.vocab_size}"
            )
        self._check_tokenizer()
        self.num_image_tokens = layout.num_vq_tokens
        self.codebook_size = layout.codebook_size
        self.image_size = math.isqrt(layout.num_vq_tokens) * vq.downsample
        self.bos_id = self.tokenizer.bos_token_id
        self.eos_id = self.tokenizer.eos_token_id
        self.yes_ids = self._answer_ids(yes_words, "yes_words")
        self.no_ids = self._answer_ids(no_words, "no_words")
        self._yes_words, self._no_words = yes_words, no_words
        self.trainable_mode: TrainableMode | None = None
        self._peft = None
        self._teacher: _CodeLogits | None = None  # built by training_module()

    def _check_tokenizer(self) -> None:
        lay, tok = self.layout, self.tokenizer
        got = {PAD_TOKEN: tok.convert_tokens_to_ids(PAD_TOKEN)}
        got.update({t: tok.convert_tokens_to_ids(t) for t in NEW_TOKENS})
        want = {PAD_TOKEN: lay.pad_id, **{t: lay.token_id(t) for t in NEW_TOKENS}}
        bad = [f"{t} is {got[t]}, Show-o's layout needs {want[t]}" for t in want if got[t] != want[t]]
        if bad:
            raise CheckpointError("Show-o tokenizer ids do not fit the layout: " + "; ".join(bad))
        if tok.bos_token_id is None or tok.eos_token_id is None:
            raise CheckpointError("Show-o tokenizer: needs bos and eos tokens (<|sot|> / <|eot|>)")

    def _answer_ids(self, words: tuple[str, ...], field_name: str) -> list[int]:
        vocab = self.tokenizer.get_vocab()
        ids = sorted({vocab[w] for w in words if w in vocab})
        if not ids:
            raise CheckpointError(f"{field_name}: none of {list(words)} is a single token of this tokenizer")
        return ids

    # ------------------------------------------------------------------------------ parameters
    @property
    def device(self) -> torch.device:
        return self.model.device

    def set_trainable(self, mode: TrainableMode, *, lora_rank: int = 8, lora_alpha: float = 16) -> None:
        """Choose what trains. "llm": the Phi backbone (showo.model.*); "all": also the LM head (all but the frozen
        MAGVIT-v2); "lora": LoRA adapters on the layers' q/k/v/dense and fc1/fc2, the rest frozen."""
        if mode not in ("llm", "all", "lora"):
            raise ValueError(f"trainable mode must be one of llm, all, lora; got {mode!r}")
        if self._peft is not None and mode != "lora":
            raise ValueError("LoRA adapters are attached; merge them (save and reload) before another mode")
        if mode == "lora" and self._peft is None:
            from peft import LoraConfig, get_peft_model

            cfg = LoraConfig(
                r=lora_rank, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules=LORA_TARGETS
            )
            self._peft = get_peft_model(self.model, cfg)  # injects into self.model in place
        for name, p in self.model.named_parameters():
            if mode == "lora":
                p.requires_grad_("lora_" in name)
            elif mode == "llm":
                p.requires_grad_(name.startswith("showo.model."))
            else:
                p.requires_grad_(name.startswith("showo."))
        self.trainable_mode = mode

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def reference_mode(self):
        """Forwards inside run the frozen reference (LoRA adapters disabled); LoRA only."""
        if self._peft is None:
            raise ValueError("reference_mode needs LoRA adapters (set_trainable('lora'))")
        return self._peft.disable_adapter()

    # ------------------------------------------------------------------------------- sequences
    def _text_part(self, prompt: str) -> list[int]:
        """Show-o's t2i_gen_prompt text part: [PAD]* <|t2i|> <bos> ids <eos>, max_text_len + 1 long."""
        n = self.layout.max_text_len + 1
        ids = list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if not ids or ids[0] != self.bos_id:
            ids = [self.bos_id, *ids]
        ids = [self.layout.token_id("<|t2i|>"), *ids, self.eos_id]
        if len(ids) > n:
            ids = [*ids[: n - 1], self.eos_id]
        return [self.layout.pad_id] * (n - len(ids)) + ids

    def _gen_inputs(self, prompts: list[str], cfg: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Text parts (R', Lt) of the rows (cond rows, then the empty prompt's when cfg) and the
        omni mask (R', 1, L, L) of the full sequence; returns (text ids, mask, Lt)."""
        rows = [self._text_part(p) for p in prompts]
        if cfg:
            rows += [self._text_part("")] * len(prompts)
        text = torch.tensor(rows, device=self.device)
        Lt, T = text.shape[1], self.num_image_tokens
        is_pad = torch.cat(
            [text == self.layout.pad_id, text.new_zeros(len(rows), T + 2, dtype=torch.bool)], 1
        )
        image = torch.zeros_like(is_pad)
        image[:, Lt:] = True  # <|soi|> ... <|eoi|>
        return text, omni_mask(is_pad, None, image), Lt

    def _code_logits(
        self, text: torch.Tensor, image_ids: torch.Tensor, mask: torch.Tensor, Lt: int
    ) -> torch.Tensor:
        """(R', T, K) logits over the K codes at the T image positions of [text, soi, image, eoi]."""
        R = text.shape[0]
        soi = text.new_full((R, 1), self.layout.token_id("<|soi|>"))
        eoi = text.new_full((R, 1), self.layout.token_id("<|eoi|>"))
        return self.training_module()(torch.cat([text, soi, image_ids, eoi], dim=1), mask, Lt)

    # ------------------------------------------------------------------- what the learner wraps
    def training_module(self) -> nn.Module:
        """The code-logits forward as one module call, (ids, mask, Lt) -> (R, T, K): the module
        the learner shards with FSDP (its forward is the entry point) and every generation and
        log-prob forward goes through. Its child `model` is `self.model`."""
        if self._teacher is None:
            self._teacher = _CodeLogits(self.model, self.layout)
        return self._teacher

    def decoder_layers(self) -> list[nn.Module]:
        """The Phi decoder layers, in order (FSDP units, activation checkpointing)."""
        return list(self.model.showo.model.layers)

    def frozen_copy(self) -> ShowoAdapter:
        """A frozen reference: trainable parameters copied and frozen, every frozen one (the
        MAGVIT-v2, and under trainable=llm the LM head) the same tensor as here. Needs
        set_trainable first; not under LoRA (its reference is `reference_mode`)."""
        if self.trainable_mode is None or self._peft is not None:
            raise ValueError(
                "frozen_copy: call set_trainable('llm' | 'all') first (LoRA uses reference_mode)"
            )
        shared = {id(p): p for p in self.model.parameters() if not p.requires_grad}
        model = copy.deepcopy(self.model, memo=dict(shared))
        model.requires_grad_(False).eval()
        return ShowoAdapter(
            model,
            self.tokenizer,
            self.layout,
            sampler=self.sampler,
            judge_template=self.judge_template,
            question=self.question,
            yes_words=self._yes_words,
            no_words=self._no_words,
            threshold=self.threshold,
            extra_settings=self.extra_settings,
        )

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

    # -------------------------------------------------------------------------------- decoding
    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, batch_size: int = 64) -> list[Image.Image]:
        """(N, T) codes -> N RGB images through the MAGVIT-v2 decoder."""
        T = self.num_image_tokens
        if tokens.ndim != 2 or tokens.shape[1] != T:
            raise ValueError(f"decode: tokens must be (N, {T}), got {tuple(tokens.shape)}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.codebook_size):
            raise ValueError(f"decode: token ids must lie in [0, {self.codebook_size})")
        out = []
        for i in range(0, tokens.shape[0], batch_size):
            pix = self.model.vq_model.decode(tokens[i : i + batch_size].to(self.device).long())
            arr = (
                ((pix.float().clamp(-1, 1) + 1) * 127.5)
                .round()
                .to(torch.uint8)
                .permute(0, 2, 3, 1)
                .cpu()
                .numpy()
            )
            out.extend(Image.fromarray(np.ascontiguousarray(a)) for a in arr)
        return out

    def _pixels(self, images: list[Image.Image]) -> torch.Tensor:
        """Show-o's image_transform: shorter side to image_size (bilinear), centre crop, [-1, 1]."""
        s = self.image_size
        out = []
        for im in images:
            im = im.convert("RGB")
            w, h = im.size
            scale = s / min(w, h)
            im = im.resize((max(s, round(w * scale)), max(s, round(h * scale))), Image.BILINEAR)
            w, h = im.size
            left, top = (w - s) // 2, (h - s) // 2
            arr = np.asarray(im.crop((left, top, left + s, top + s)), dtype=np.float32) / 127.5 - 1
            out.append(torch.from_numpy(arr).permute(2, 0, 1))
        return torch.stack(out).to(self.device, self.model.dtype)

    @torch.no_grad()
    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        """N images -> (N, T) codes (MAGVIT-v2 encoder + LFQ)."""
        return self.model.vq_model.encode(self._pixels(images))

    # --------------------------------------------------------------------------- understanding
    @torch.no_grad()
    def judge(
        self, images: list[Image.Image], prompts: list[str], question: str | None = None, batch_size: int = 64
    ) -> Judgement:
        """P(yes)/(P(yes)+P(no)) for "does image i show prompts[i]?" via the understanding path."""
        if len(images) != len(prompts):
            raise ValueError(f"judge: {len(images)} images for {len(prompts)} prompts")
        if not prompts:
            raise ValueError("judge: nothing to judge (empty batch)")
        for i, im in enumerate(images):
            if not isinstance(im, Image.Image):
                raise ValueError(f"judge: image {i} is a {type(im).__name__}, not a PIL image")
        q = question or self.question
        if "{prompt}" not in q:
            raise ValueError(f"judge: question template {q!r} has no {{prompt}} field")
        scores = []
        for i in range(0, len(images), batch_size):
            codes = self.encode_images(images[i : i + batch_size])
            texts = [
                self.judge_template.format(question=q.format(prompt=p)) for p in prompts[i : i + batch_size]
            ]
            scores.append(self._yes_no(codes, texts))
        p_yes = torch.cat(scores).cpu()
        return Judgement(p_yes=p_yes, decision=p_yes >= self.threshold)

    def _yes_no(self, codes: torch.Tensor, texts: list[str]) -> torch.Tensor:
        lay = self.layout
        T = self.num_image_tokens
        rows = []
        for c, text in zip(codes.tolist(), texts, strict=True):
            ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            rows.append(
                [
                    lay.token_id("<|mmu|>"),
                    lay.token_id("<|soi|>"),
                    *[x + lay.code_offset for x in c],
                    lay.token_id("<|eoi|>"),
                    self.bos_id,
                    *ids,
                ]
            )
        L = max(len(r) for r in rows)
        last = torch.tensor([len(r) - 1 for r in rows], device=self.device)
        ids = torch.tensor([r + [lay.pad_id] * (L - len(r)) for r in rows], device=self.device)  # right pad
        is_pad = torch.arange(L, device=self.device)[None] > last[:, None]
        eoi = torch.full((len(rows),), T + 2, device=self.device)  # full attention up to <|eoi|>
        h = self.model.showo.model(
            input_ids=ids, attention_mask=omni_mask(is_pad, eoi, None)
        ).last_hidden_state
        logits = self.model.showo.lm_head(h[torch.arange(len(rows)), last]).float()  # (B, V)
        logp = F.log_softmax(logits, dim=-1)
        return torch.sigmoid(logp[:, self.yes_ids].logsumexp(-1) - logp[:, self.no_ids].logsumexp(-1))

    # ----------------------------------------------------------------------------- checkpoints
    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write the official layout (LoRA merged): config.json + pytorch_model.bin (Show-o),
        llm/ (Phi config + tokenizer), vq/ (MAGVIT-v2 config + weights), gapray_adapter.json."""
        path = Path(path)
        (path / "llm").mkdir(parents=True, exist_ok=True)
        (path / "vq").mkdir(parents=True, exist_ok=True)
        model = copy.deepcopy(self._peft).merge_and_unload() if self._peft is not None else self.model
        lay = self.layout
        showo_cfg = {
            "_class_name": "Showo",
            "w_clip_vit": False,
            "vocab_size": lay.vocab_size,
            "llm_vocab_size": lay.llm_vocab_size,
            "llm_model_path": "llm",
            "codebook_size": lay.codebook_size,
            "num_vq_tokens": lay.num_vq_tokens,
            "num_new_special_tokens": NUM_NEW_TOKENS,
            "mask_token_id": lay.mask_id,
        }
        (path / "config.json").write_text(json.dumps(showo_cfg, indent=2))
        sd = {k: v.detach().cpu().contiguous() for k, v in model.showo.state_dict().items()}
        torch.save({f"showo.{k}": v for k, v in sd.items()}, path / "pytorch_model.bin")
        model.showo.config.save_pretrained(path / "llm")
        self.tokenizer.save_pretrained(path / "llm")
        vq = model.vq_model
        vq_cfg = {
            "_class_name": "MAGVITv2",
            **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(vq.config).items()},
        }
        (path / "vq" / "config.json").write_text(json.dumps(vq_cfg, indent=2))
        from safetensors.torch import save_file

        save_file(
            {k: v.detach().cpu().contiguous() for k, v in vq.state_dict().items()},
            str(path / "vq" / "model.safetensors"),
        )
        settings = {
            "family": FAMILY,
            "max_text_len": lay.max_text_len,
            **asdict(self.sampler),
            "judge_template": self.judge_template,
            "question": self.question,
            "yes_words": list(self._yes_words),
            "no_words": list(self._no_words),
            "threshold": self.threshold,
            **self.extra_settings,
        }
        (path / ADAPTER_FILE).write_text(json.dumps(settings, indent=2))

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
        **sampler_overrides,
    ) -> ShowoAdapter:
        """Load a local checkpoint directory in the official layout (`check_showo_checkpoint_dir`).
        sampler_overrides (steps, schedule, mask_temperature, logprob_draws, logprob_seed; None
        = keep) win over the checkpoint's gapray_adapter.json."""
        p = Path(path)
        files = check_showo_checkpoint_dir(p)
        cfg = _read_json(p / "config.json")
        settings = _read_json(p / ADAPTER_FILE) if (p / ADAPTER_FILE).is_file() else {}
        layout = ShowoLayout(
            vocab_size=int(cfg["vocab_size"]),
            llm_vocab_size=int(cfg["llm_vocab_size"]),
            codebook_size=int(cfg.get("codebook_size", 8192)),
            num_vq_tokens=int(cfg.get("num_vq_tokens", 256)),
            max_text_len=int(settings.get("max_text_len", 128)),
        )
        layout.check()
        if "mask_token_id" in cfg and int(cfg["mask_token_id"]) != layout.mask_id:
            raise CheckpointError(
                f"{p}/config.json: mask_token_id {cfg['mask_token_id']} != vocab_size - 1 = {layout.mask_id}"
            )
        try:
            phi = PhiConfig.from_pretrained(str(files["llm"]))
        except Exception as err:
            raise CheckpointError(
                f"{files['llm']}: cannot read the Phi config: {type(err).__name__}: {err}"
            ) from err
        phi.vocab_size = layout.vocab_size  # Show-o's resize_token_embeddings(vocab_size)
        vq_cfg = MagvitConfig.from_json(_read_json(files["vq"] / "config.json"))
        vq_cfg.check()
        with torch.device("meta"):
            model = ShowoUnified(phi, vq_cfg)
        showo_sd = _load_weights(files["showo_weights"])
        vq_sd = _load_weights(files["vq_weights"])
        load_official_state(model, showo_sd, vq_sd, where=str(p))
        model = model.to(dtype).to(device).eval()
        tokenizer = _load_tokenizer(files["llm"])
        known = set(SamplerSettings.__dataclass_fields__)
        sampler = SamplerSettings(**{k: settings[k] for k in known if k in settings})
        sampler = replace(sampler, **{k: v for k, v in sampler_overrides.items() if v is not None})
        kwargs = {k: settings[k] for k in ("judge_template", "question", "threshold") if k in settings}
        for k in ("yes_words", "no_words"):
            if k in settings:
                kwargs[k] = tuple(settings[k])
        skip = known | {
            "family",
            "max_text_len",
            "judge_template",
            "question",
            "threshold",
            "yes_words",
            "no_words",
        }
        extra = {k: v for k, v in settings.items() if k not in skip}
        return cls(model, tokenizer, layout, sampler=sampler, extra_settings=extra, **kwargs)


# ---------------------------------------------------------------------- checkpoint directories
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise CheckpointError(f"{path}: missing") from err
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: malformed JSON: {err}") from err


def _first(p: Path, names: tuple[str, ...]) -> Path | None:
    return next((p / n for n in names if (p / n).is_file()), None)


def is_showo_checkpoint(path: str | os.PathLike) -> bool:
    """Whether a directory's config.json is Show-o's (_class_name "Showo")."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("_class_name") == "Showo"
    except json.JSONDecodeError:
        return False


def check_showo_checkpoint_dir(p: Path) -> dict[str, Path]:
    """The official layout, checked file by file (errors name what is missing):

        <dir>/config.json                        Show-o's (_class_name "Showo", vocab_size, ...)
        <dir>/pytorch_model.bin | model.safetensors   showo.model.*, showo.lm_head.*
        <dir>/llm/config.json + tokenizer files  microsoft/phi-1_5 (Show-o's llm_model_path)
        <dir>/vq/config.json + model.safetensors | pytorch_model.bin   showlab/magvitv2

    gapray_adapter.json may name other llm_path / vq_path directories (relative to <dir>)."""
    p = Path(p)
    if not p.is_dir():
        raise CheckpointError(f"model path {p}: does not exist or is not a directory")
    cfg = _read_json(p / "config.json")
    if cfg.get("_class_name") != "Showo":
        raise CheckpointError(
            f"model path {p}: config.json _class_name is {cfg.get('_class_name')!r}, not 'Showo'"
        )
    if cfg.get("w_clip_vit"):
        raise CheckpointError(
            f"model path {p}: w_clip_vit checkpoints (CLIP-ViT understanding) are not supported"
        )
    for key in ("vocab_size", "llm_vocab_size"):
        if key not in cfg:
            raise CheckpointError(f"model path {p}: config.json has no {key}")
    settings = _read_json(p / ADAPTER_FILE) if (p / ADAPTER_FILE).is_file() else {}
    llm = p / settings.get("llm_path", "llm")
    vq = p / settings.get("vq_path", "vq")
    weights = _first(p, SHOWO_WEIGHT_FILES)
    if weights is None:
        raise CheckpointError(f"model path {p}: no Show-o weights (one of {list(SHOWO_WEIGHT_FILES)})")
    if not (llm / "config.json").is_file():
        raise CheckpointError(
            f"model path {p}: no {llm.name}/config.json (the Phi-1.5 config, microsoft/phi-1_5)"
        )
    if not (llm / "tokenizer_config.json").is_file():
        raise CheckpointError(f"model path {p}: no {llm.name}/tokenizer_config.json (Phi-1.5's tokenizer)")
    if not (vq / "config.json").is_file():
        raise CheckpointError(
            f"model path {p}: no {vq.name}/config.json (the MAGVIT-v2 tokenizer, showlab/magvitv2)"
        )
    vq_weights = _first(vq, VQ_WEIGHT_FILES)
    if vq_weights is None:
        raise CheckpointError(
            f"model path {p}: no MAGVIT-v2 weights in {vq.name}/ (one of {list(VQ_WEIGHT_FILES)})"
        )
    return {"showo_weights": weights, "llm": llm, "vq": vq, "vq_weights": vq_weights}


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot read weights: {type(err).__name__}: {err}") from err


def official_names(model: ShowoUnified) -> dict[str, str]:
    """gapray parameter/buffer name -> (file, official name): "showo.X" -> Show-o's "showo.X";
    "vq_model.X" -> MAGVIT-v2's "X". The one place the mapping lives."""
    out = {}
    for name in model.state_dict():
        if name.startswith("showo."):
            out[name] = f"showo:{name}"
        elif name.startswith("vq_model."):
            out[name] = f"vq:{name[len('vq_model.') :]}"
        else:
            raise AssertionError(f"unmapped parameter {name}")
    return out


def load_official_state(model: ShowoUnified, showo_sd: dict, vq_sd: dict, where: str) -> None:
    """Copy both official state dicts into `model` (built on meta) by the explicit mapping;
    refuse, naming the keys, on any missing, unexpected or misshapen tensor."""
    files = {"showo": showo_sd, "vq": vq_sd}
    mapping = official_names(model)
    expected = {f: set() for f in files}
    for src in mapping.values():
        f, key = src.split(":", 1)
        expected[f].add(key)
    problems = []
    for f, sd in files.items():
        missing = sorted(expected[f] - set(sd))
        unexpected = sorted(set(sd) - expected[f])
        label = "Show-o weights" if f == "showo" else "MAGVIT-v2 weights"
        if missing:
            problems.append(f"{label}: missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        if unexpected:
            problems.append(
                f"{label}: unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}"
            )
    state = {}
    own = model.state_dict()
    for name, src in mapping.items():
        f, key = src.split(":", 1)
        if key not in files[f]:
            continue
        t = files[f][key]
        if tuple(t.shape) != tuple(own[name].shape):
            problems.append(
                f"{key}: shape {tuple(t.shape)} in the checkpoint, the model needs {tuple(own[name].shape)}"
            )
        state[name] = t
    if problems:
        raise CheckpointError(f"model path {where}: weights do not fit the model: " + "; ".join(problems))
    model.load_state_dict(state, strict=True, assign=True)
    # Non-persistent buffers (the rotary tables) are not in any file: build them on the CPU.
    rotary = model.showo.model.rotary_emb
    with torch.device("cpu"):
        model.showo.model.rotary_emb = type(rotary)(config=model.showo.config)
    left = [n for n, b in model.named_buffers() if b.is_meta] + [
        n for n, q in model.named_parameters() if q.is_meta
    ]
    if left:
        raise CheckpointError(f"model path {where}: tensors not loaded: {left[:10]}")


def _load_tokenizer(llm: Path):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(llm))
    except Exception as err:
        raise CheckpointError(f"{llm}: cannot load the tokenizer: {type(err).__name__}: {err}") from err
    # UniversalPrompting: [PAD] as pad, then the nine task/image tokens (no-ops when saved with them).
    tok.add_special_tokens({"pad_token": PAD_TOKEN})
    tok.add_tokens(list(NEW_TOKENS))
    return tok


# --------------------------------------------------------------------------- built in code
TINY_WORDS = (
    "USER ASSISTANT : ? . , a an the of and or photo does this image show answer yes no Yes No is are "
    "there left right above below one two three four five six red orange yellow green blue purple pink "
    "brown black white circle circles square squares triangle triangles cross crosses"
).split()
ENDOFTEXT = "<|endoftext|>"


def tiny_tokenizer(words: tuple[str, ...] | list[str] = TINY_WORDS) -> PreTrainedTokenizerFast:
    """A word-level tokenizer in Show-o's id layout: <unk>, <|endoftext|> (bos = eos, as Phi),
    the words; then [PAD] and the nine new tokens at llm_vocab_size + 0..9."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, ENDOFTEXT: 1}
    for w in words:
        vocab.setdefault(w, len(vocab))
    for t in (PAD_TOKEN, *NEW_TOKENS):
        vocab[t] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok.add_special_tokens(["<unk>", ENDOFTEXT, PAD_TOKEN, *NEW_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=ENDOFTEXT, eos_token=ENDOFTEXT, unk_token="<unk>", pad_token=PAD_TOKEN
    )


PHI_1_5 = dict(
    # microsoft/phi-1_5 config.json
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=24,
    num_attention_heads=32,
    num_key_value_heads=32,
    partial_rotary_factor=0.5,
    hidden_act="gelu_new",
    layer_norm_eps=1e-5,
    max_position_embeddings=2048,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    qk_layernorm=False,
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attention_dropout=0.0,
)
SHOWO_512 = dict(
    vocab_size=58_498, llm_vocab_size=50_295, codebook_size=8_192, num_vq_tokens=1_024, max_text_len=128
)
"""configs/showo_demo_512x512.yaml (model.showo, dataset.preprocessing.max_seq_length)."""
TINY_DIMS = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2
)
TINY_VQ = MagvitConfig(
    ch=32,
    encoder_ch_mult=(1, 1, 1, 1),
    encoder_num_res_blocks=(1, 1, 1, 1),
    decoder_ch_mult=(1, 1, 1, 1),
    decoder_num_res_blocks=(1, 1, 1, 1),
    z_channels=6,
)
"""32 px -> 4 x 4 = 16 tokens of 64 codes (8x downsampling)."""


def phi_config(vocab_size: int, **dims) -> PhiConfig:
    return PhiConfig(**{**PHI_1_5, **dims, "vocab_size": vocab_size})


def tiny_showo(
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    *,
    max_text_len: int = 16,
    sampler: SamplerSettings | None = None,
    **sampler_overrides,
) -> ShowoAdapter:
    """A random tiny Show-o (Phi 64 wide, 2 layers; MAGVIT-v2 32 channels, 64 codes, 32 px) from
    `seed`, drawn on the CPU whatever `device`, so every role built from one seed holds the same
    weights. sampler_overrides: steps, schedule, ... (None = default; tiny default 4 steps)."""
    tok = tiny_tokenizer()
    llm_vocab = tok.convert_tokens_to_ids(PAD_TOKEN)
    K, T = TINY_VQ.codebook_size, 16
    layout = ShowoLayout(llm_vocab + NUM_NEW_TOKENS + K + 1, llm_vocab, K, T, max_text_len)
    torch.manual_seed(seed)
    model = ShowoUnified(phi_config(layout.vocab_size, max_position_embeddings=256, **TINY_DIMS), TINY_VQ)
    model = model.to(dtype).to(device).eval()
    base = sampler or SamplerSettings(steps=4)
    base = replace(base, **{k: v for k, v in sampler_overrides.items() if v is not None})
    return ShowoAdapter(model, tok, layout, sampler=base)


def showo_512_meta() -> ShowoUnified:
    """Show-o-512's layout (Phi-1.5 sizes, 1,024 image tokens, 8,192 codes, 58,498 ids, the
    official MAGVIT-v2) on the meta device: no weights, for shape checks."""
    with torch.device("meta"):
        return ShowoUnified(phi_config(SHOWO_512["vocab_size"]), MagvitConfig())


def check_showo_shapes(model: ShowoUnified, layout: ShowoLayout) -> dict[str, tuple[int, ...]]:
    """One forward of each path on dummy inputs (works on the meta device); raises ValueError
    naming a mismatch, returns the shapes seen."""
    layout.check()
    vq, phi = model.vq_model.config, model.showo.config
    g = math.isqrt(layout.num_vq_tokens)
    size = g * vq.downsample
    problems = []
    if vq.codebook_size != layout.codebook_size:
        problems.append(f"MAGVIT-v2 codes {vq.codebook_size} != codebook_size {layout.codebook_size}")
    if phi.vocab_size != layout.vocab_size:
        problems.append(f"Phi vocab_size {phi.vocab_size} != {layout.vocab_size}")
    L = layout.max_text_len + 1 + layout.num_vq_tokens + 2
    if phi.max_position_embeddings < L:
        problems.append(f"generation sequence {L} > max_position_embeddings {phi.max_position_embeddings}")
    if problems:
        raise ValueError("Show-o config does not fit together: " + "; ".join(problems))
    dev = model.device
    K, V = layout.codebook_size, layout.vocab_size
    shapes = {}
    with torch.no_grad():
        ids = torch.zeros(1, L, dtype=torch.long, device=dev)
        is_pad = torch.zeros(1, L, dtype=torch.bool, device=dev)
        image = torch.zeros(1, L, dtype=torch.bool, device=dev)
        image[:, layout.max_text_len + 1 :] = True
        mask = omni_mask(is_pad, None, image)
        shapes["logits"] = tuple(model.showo(input_ids=ids, attention_mask=mask).logits.shape)
        shapes["latents"] = tuple(model.vq_model.encoder(torch.zeros(1, 3, size, size, device=dev)).shape)
        shapes["decoded"] = tuple(
            model.vq_model.decoder(torch.zeros(1, vq.z_channels, g, g, device=dev)).shape
        )
        shapes["codes"] = (1, model.vq_model.quantize.embedding.shape[0])
    expected = {
        "logits": (1, L, V),
        "latents": (1, vq.z_channels, g, g),
        "decoded": (1, 3, size, size),
        "codes": (1, K),
    }
    for key, want in expected.items():
        if shapes[key] != want:
            raise ValueError(f"Show-o shape check: {key} is {shapes[key]}, expected {want}")
    return shapes


# ------------------------------------------------------------------------- names and loading
TINY_NAME = "showo_tiny"
"""model.name of the tiny Show-o built in code."""


def is_showo(name_or_path: str) -> bool:
    """Whether a model.name is a Show-o: the tiny one built in code or a Show-o checkpoint dir."""
    return name_or_path == TINY_NAME or (Path(name_or_path).is_dir() and is_showo_checkpoint(name_or_path))


def load_showo(
    name_or_path: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    steps: int | None = None,
    schedule: str | None = None,
    logprob_draws: int | None = None,
) -> ShowoAdapter:
    """The Show-o named: "showo_tiny" (built in code from seed 0) or a Show-o checkpoint directory; steps /
    schedule / logprob_draws override the model's own (None = keep)."""
    overrides = dict(steps=steps, schedule=schedule, logprob_draws=logprob_draws)
    if name_or_path == TINY_NAME:
        return tiny_showo(seed=0, dtype=dtype, device=device, **overrides)
    return ShowoAdapter.from_pretrained(name_or_path, dtype=dtype, device=device, **overrides)


def showo_image_size(name_or_path: str) -> int:
    """Image side in pixels, from the configs only (no weights): sqrt(num_vq_tokens) times the
    MAGVIT-v2 downsampling factor."""
    if name_or_path == TINY_NAME:
        return math.isqrt(16) * TINY_VQ.downsample
    p = Path(name_or_path)
    files = check_showo_checkpoint_dir(p)
    cfg = _read_json(p / "config.json")
    vq = MagvitConfig.from_json(_read_json(files["vq"] / "config.json"))
    return math.isqrt(int(cfg.get("num_vq_tokens", 256))) * vq.downsample
