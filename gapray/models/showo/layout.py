"""Show-o's id layout and settings: the special tokens, `ShowoLayout` (the config.json facts:
vocabulary, codes, image tokens, text length), `SamplerSettings` (MaskGIT and log-prob settings),
`MagvitConfig` (the MAGVIT-v2 architecture), the mask schedules and `CheckpointError`.

The bottom of the package: plain data and arithmetic, no modules; every other file imports from here."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

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
