"""Show-o's image tokenizer, written here: MAGVIT-v2 with a look-up-free quantizer (LFQ), its
parameter names those of showlab/magvitv2 (taming's encoder / decoder blocks), so the official
weights load by name (`checkpoint.official_names`).

`MagvitV2.encode`: pixels in [-1, 1] -> codes; `MagvitV2.decode`: codes -> pixels. Built from a
`layout.MagvitConfig`; `network.ShowoUnified` holds one as `vq_model`."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from gapray.models.showo.layout import MagvitConfig


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
