"""The Show-o network as torch modules: `ShowoUnified` (Phi-1.5 over the extended vocabulary plus
the MAGVIT-v2 tokenizer, named as the official checkpoints), `_CodeLogits` (the code-logits forward
at the image positions: the module the learner shards and every generation and log-prob forward
goes through) and `omni_mask` (Show-o's omni-attention mask).

No tokenizer, sampling or files here: `adapter.ShowoAdapter` drives these modules."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PhiConfig, PhiForCausalLM

from gapray.models.showo.layout import MagvitConfig, ShowoLayout
from gapray.models.showo.magvit import MagvitV2


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
