"""Stage 2 of the toy Show-o recipe: train the Phi backbone and its head on understanding and
mask-prediction generation together (the MAGVIT-v2 LFQ tokenizer of stage 1 stays frozen).

Where it sits: `gapray toy pretrain --family showo` (gapray/toy/pretrain_showo_run.py) runs this
after the LFQ stage (pretrain_lfq.py). One step draws an understanding batch and a generation
batch from the toy world's train prompts and sums three losses, each through the sequences the
Show-o adapter builds at run time (`ShowoAdapter.understanding_hidden`, the path `judge` reads;
`_gen_inputs` / `_code_logits`, the path `generate` and `image_logprobs` read), never a layout
built here:

- answer loss: cross-entropy of "yes"/"no" (the adapter's yes/no words) at the last position of
  the understanding sequence <|mmu|> <|soi|> codes <|eoi|> <bos> judge prompt, labelled by the
  same rule as the toy Janus (`pretrain_lm.question_scene`: --labels exact, the prompt's exact
  scene or a near-miss scene of a kind weighted by --negatives, clutter is "no"). The image
  codes come from the adapter's own encoder (`encode_images`), of the rendered scene or, for a
  --round-trip share of rows, of the scene's tokenizer round trip (the pixels the judge meets
  on the model's own samples).
- patch loss: at every image-code position of that sequence the LM head names the cell's
  content (`pretrain_lm.patch_words`: colour and shape word, "no" for an empty cell, with
  --patch-position the row and column words too), the dense signal that broke the toy Janus's
  understanding plateau (docs/toy_recipe_notebook.md).
- generation loss: Show-o's mask prediction. Per row a progress t ~ U(0, 1), a mask ratio
  r = schedule(t) from the adapter's own schedule (`sampler.schedule`, cosine), ceil(16 r) of
  the 16 image tokens replaced by [MASK] at random (`layout.masked_count`), and cross-entropy
  of the true codes at the masked positions; CFG dropout: a share of rows see the empty prompt
  (Show-o's unconditional row).

    ub = und_batch(adapter, prompts, rng, 0.3, labels="exact", negatives=w, round_trip=0.5)
    patch, answer, p_yes = und_losses(adapter, ub)
    gb = mask_batch(adapter, texts, tokens, rng, cfg_dropout=0.1)
    gen = mask_loss(adapter, gb)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gapray.models.showo import ShowoAdapter, mask_schedule, masked_count
from gapray.toy.pretrain_lm import patch_words, question_scene
from gapray.toy.pretrain_vq import cell_codes
from gapray.toy.render import render
from gapray.types import Prompt


@dataclass
class ShowoUndBatch:
    """An understanding batch: image codes, judge prompts, per-code targets and yes/no labels."""

    codes: torch.Tensor  # (B, T) LFQ codes of each row's image, raster order
    texts: list[str]  # (B,) the judge prompt (judge_template with the question about the prompt)
    patch_targets: torch.Tensor  # (B, T, 2 or 4) word ids: colour, shape [, row, column]
    labels: torch.Tensor  # (B,) bool: does the scene satisfy the asked prompt
    tags: list[str]

    def to(self, device: torch.device | str) -> ShowoUndBatch:
        return ShowoUndBatch(
            self.codes.to(device),
            self.texts,
            self.patch_targets.to(device),
            self.labels.to(device),
            self.tags,
        )


def und_batch(
    adapter: ShowoAdapter,
    prompts: list[Prompt],
    rng: np.random.Generator,
    distractor_p: float,
    colour_neg_p: float = 0.0,
    *,
    labels: str,
    negatives: dict[str, float] | None = None,
    round_trip: float = 0.0,
    patch_position: bool = False,
) -> ShowoUndBatch:
    """One understanding batch of `prompts`: scenes and labels from `question_scene` (the toy
    Janus's rule and draws), images encoded by the adapter's tokenizer as `judge` encodes them.

    round_trip: share of rows whose image is the scene's round trip through the tokenizer (each
    cell's content code decoded by `adapter.decode`), not the rendered scene."""
    if not 0.0 <= round_trip <= 1.0:
        raise ValueError(f"round_trip must lie in [0, 1], got {round_trip}")
    scenes, answers = zip(
        *(
            question_scene(p, rng, distractor_p, colour_neg_p, labels=labels, negatives=negatives)
            for p in prompts
        ),
        strict=True,
    )
    images = [render(s) for s in scenes]
    if round_trip > 0:  # no draw otherwise, as the Janus recipe
        rows = np.flatnonzero(rng.random(len(scenes)) < round_trip)
        if rows.size:
            decoded = adapter.decode(cell_codes([scenes[i] for i in rows]))
            for i, im in zip(rows, decoded, strict=True):
                images[i] = im
    q = adapter.question
    return ShowoUndBatch(
        adapter.encode_images(images).cpu(),
        [adapter.judge_template.format(question=q.format(prompt=p.text)) for p in prompts],
        patch_words(adapter, list(scenes), position=patch_position),
        torch.tensor(answers),
        [p.tag for p in prompts],
    )


IMAGE_START = 2
"""Position of the first image code in the understanding sequence (after <|mmu|> <|soi|>)."""


def und_losses(
    adapter: ShowoAdapter, batch: ShowoUndBatch
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(patch loss, answer loss, (B,) P(yes)) on one understanding batch; P(yes) is the judge's
    score, P(yes) / (P(yes) + P(no)) over the adapter's yes and no words."""
    h, last = adapter.understanding_hidden(batch.codes, batch.texts)  # (B, L, D), (B,)
    head = adapter.model.showo.lm_head
    T = adapter.num_image_tokens
    patch_logp = F.log_softmax(head(h[:, IMAGE_START : IMAGE_START + T]).float(), dim=-1)  # (B, T, V)
    hit = patch_logp.gather(-1, batch.patch_targets)  # (B, T, 2 or 4)
    patch = -hit[..., :2].mean() - (hit[..., 2:].mean() if hit.shape[-1] > 2 else 0.0)
    logp = F.log_softmax(head(h[torch.arange(len(batch.texts)), last]).float(), dim=-1)  # (B, V)
    yes = logp[:, adapter.yes_ids].logsumexp(-1)
    no = logp[:, adapter.no_ids].logsumexp(-1)
    answer = -torch.where(batch.labels, yes, no).mean()  # full-vocabulary CE on the right word(s)
    return patch, answer, torch.sigmoid(yes - no).detach()


@dataclass
class MaskBatch:
    """A mask-prediction batch: prompt texts (empty for CFG-dropped rows), the true codes, the
    masked positions and the model's image input (vocabulary ids, [MASK] where masked)."""

    texts: list[str]
    tokens: torch.Tensor  # (B, T) true codes
    masked: torch.Tensor  # (B, T) bool, at least one True per row
    image_ids: torch.Tensor  # (B, T) code_offset + code, or the [MASK] id


def mask_batch(
    adapter: ShowoAdapter,
    texts: list[str],
    tokens: torch.Tensor,
    rng: np.random.Generator,
    cfg_dropout: float,
) -> MaskBatch:
    """Show-o's training masks: per row t ~ U(0, 1), ratio schedule(t) (the adapter's
    schedule), ceil(T * ratio) positions masked uniformly at random; rows dropped for CFG
    (probability cfg_dropout) get the empty prompt."""
    if not 0.0 <= cfg_dropout <= 1.0:
        raise ValueError(f"cfg_dropout must lie in [0, 1], got {cfg_dropout}")
    B, T = tokens.shape
    ratios = mask_schedule(adapter.sampler.schedule, torch.from_numpy(rng.random(B)))  # (B,)
    counts = torch.tensor([masked_count(T, float(r)) for r in ratios])  # (B,) in [1, T]
    ranks = torch.from_numpy(rng.random((B, T))).argsort(-1).argsort(-1)  # a random permutation
    masked = ranks < counts[:, None]
    drop = rng.random(B) < cfg_dropout
    lay = adapter.layout
    image_ids = torch.where(masked, torch.full_like(tokens, lay.mask_id), tokens + lay.code_offset)
    return MaskBatch(["" if d else t for t, d in zip(texts, drop, strict=True)], tokens, masked, image_ids)


def mask_loss(adapter: ShowoAdapter, batch: MaskBatch) -> tuple[torch.Tensor, float]:
    """(mean cross-entropy of the true codes at the masked positions, their top-1 accuracy),
    through the adapter's generation sequence and code-logits forward."""
    dev = adapter.device
    text, attn, Lt = adapter._gen_inputs(batch.texts, cfg=False)
    logits = adapter._code_logits(text, batch.image_ids.to(dev), attn, Lt)  # (B, T, K)
    masked, tokens = batch.masked.to(dev), batch.tokens.to(dev)
    picked = logits[masked].float()  # (M, K)
    loss = F.cross_entropy(picked, tokens[masked])
    return loss, float((picked.argmax(-1) == tokens[masked]).float().mean())
