"""Stage 2 of the toy recipe: train the Janus LLM, vision encoder and generation head together.

Where it sits: `gapray toy pretrain` (gapray/toy/pretrain.py) runs this after the VQ stage. One
step draws an understanding batch and a generation batch from the toy world's train prompts
and sums three losses, each through the same prompt formats the adapter uses at run time:

- patch loss: at every image-placeholder position of the judge prompt the LM head must name
  the content of that cell, a two-hot target (colour word + shape word, or "no" for an empty
  cell; with --patch-position also the cell's row and column words, a second mean added to the
  first). This is what breaks the understanding plateau: a dense, first-order signal that ties
  each image token to words before any question-vs-image matching is needed.
- answer loss: cross-entropy of "yes"/"no" at the last position of the judge prompt
  (`adapter.judge_template` + `adapter.question`), labelled by one of two rules (the recipe's
  --labels). geneval (its default, the shipped model's recipe): GenEval's lenient verdict, where
  distractor objects still get "yes". exact: the exact-scene rule (`exact_scene`: what the
  prompt asks and nothing else), so clutter gets "no"; scenes are the prompt's exact scene (yes)
  or a near-miss scene (`near_miss_scene`: an extra object, a count off by one, a swapped
  relation, a wrong colour or shape; kinds weighted by --negatives).
- generation NLL: teacher-forced image-token log-probs (as `image_logits`), with CFG dropout:
  a share of rows use Janus's unconditional prompt (all tokens but <bos> and <begin_of_image>
  replaced by pad) so CFG sampling works.

    stats = lm_step(adapter, und_batch, gen_batch, weights)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gapray.eval.exact_scene import exact_scene
from gapray.eval.geneval import evaluate_image
from gapray.models.janus import JanusAdapter
from gapray.toy.detector import scene_detections
from gapray.toy.pretrain_vq import cell_codes, to_pixels, vq_round_trip
from gapray.toy.world import (
    COLORS,
    GRID,
    NEAR_MISS_KINDS,
    SHAPES,
    Scene,
    ToyObject,
    colour_caption,
    make_splits,
    near_miss,
    near_miss_kinds,
    near_miss_scene,
    sample_scene,
)
from gapray.types import GENEVAL_TAGS, Prompt


@dataclass
class UndBatch:
    """An understanding batch: judge-format inputs, per-patch targets and yes/no labels."""

    input_ids: torch.Tensor  # (B, L) left-padded, 16 image placeholders per row
    attention_mask: torch.Tensor  # (B, L)
    pixel_values: torch.Tensor  # (B, 3, 32, 32)
    patch_targets: torch.Tensor  # (B, 16, 2 or 4) word ids: colour, shape [, row, column]
    labels: torch.Tensor  # (B,) bool: does the scene satisfy the asked prompt (exact or GenEval rule)
    tags: list[str]

    def to(self, device: torch.device | str) -> UndBatch:
        t = [
            x.to(device) for x in (self.input_ids, self.attention_mask, self.pixel_values, self.patch_targets)
        ]
        return UndBatch(*t, self.labels.to(device), self.tags)


def by_tag(prompts: list[Prompt]) -> dict[str, list[Prompt]]:
    out: dict[str, list[Prompt]] = {}
    for p in prompts:
        out.setdefault(p.tag, []).append(p)
    return out


def draw_prompts(
    pool: dict[str, list[Prompt]], rng: np.random.Generator, n: int, tag_weights: dict[str, float]
):
    """n prompts: a tag by `tag_weights` (uniform over tags present if empty), then a prompt."""
    tags = [t for t in GENEVAL_TAGS if t in pool and tag_weights.get(t, 1.0) > 0]
    w = np.array([tag_weights.get(t, 1.0) for t in tags], dtype=float)
    picks = rng.choice(len(tags), size=n, p=w / w.sum())
    return [pool[tags[k]][rng.integers(len(pool[tags[k]]))] for k in picks]


def gen_prompts(
    pool: dict[str, list[Prompt]], rng: np.random.Generator, n: int, caption_share: float, seed: int = 0
) -> list[Prompt]:
    """n generation prompts: train prompts drawn uniformly over tags (`draw_prompts`), of which a
    binomial(n, caption_share) number are colour captions instead (`colour_caption`, no held-apart
    composition of split seed `seed`). caption_share 0 draws exactly what `draw_prompts` draws
    (the generator's stream unchanged, so older recipes replay as they were)."""
    if not 0.0 <= caption_share <= 1.0:
        raise ValueError(f"caption_share must lie in [0, 1], got {caption_share}")
    if caption_share == 0.0:
        return draw_prompts(pool, rng, n, {})
    k = int(rng.binomial(n, caption_share))
    return draw_prompts(pool, rng, n - k, {}) + [colour_caption(rng, seed) for _ in range(k)]


def add_distractors(scene: Scene, rng: np.random.Generator, k: int) -> Scene:
    """The scene plus k random objects in free cells."""
    free = [
        c for c in range(GRID * GRID) if (c // GRID, c % GRID) not in {(o.row, o.col) for o in scene.objects}
    ]
    cells = rng.choice(free, size=min(k, len(free)), replace=False)
    extra = [
        ToyObject(
            SHAPES[rng.integers(len(SHAPES))],
            COLORS[rng.integers(len(COLORS))],
            int(c) // GRID,
            int(c) % GRID,
        )
        for c in cells
    ]
    return Scene(tuple(sorted([*scene.objects, *extra], key=lambda o: (o.row, o.col))))


def colour_near_miss(prompt: Prompt, rng: np.random.Generator, tries: int = 12) -> Prompt:
    """A near miss that changes a colour (when the prompt has one; else any near miss)."""
    words = set(prompt.text.split())
    for _ in range(tries):
        nm = near_miss(prompt, rng)
        if (set(nm.text.split()) ^ words) & set(COLORS):
            return nm
    return nm


LABEL_RULES = ("exact", "geneval")
"""How question_scene labels a scene: the exact-scene rule or GenEval's lenient one."""
DEFAULT_NEGATIVES = {kind: 1.0 for kind in NEAR_MISS_KINDS}
"""Weights of the near-miss scene kinds among the negatives (renormalised over a tag's kinds)."""


def parse_weights(text: str, names: tuple[str, ...], what: str) -> dict[str, float]:
    """ "a=1,b=0.5" -> {"a": 1.0, "b": 0.5}; an error names `what` and the bad entry."""
    out: dict[str, float] = {}
    for kv in (t for t in text.split(",") if t.strip()):
        key, sep, val = kv.partition("=")
        key = key.strip()
        if not sep or key not in names:
            raise ValueError(f"{what}: entry {kv!r} is not name=weight with a name in {names}")
        try:
            out[key] = float(val)
        except ValueError:
            raise ValueError(f"{what}: weight of {key!r} is not a number: {val!r}") from None
        if out[key] < 0:
            raise ValueError(f"{what}: weight of {key!r} must be >= 0, got {out[key]}")
    return out


def question_scene(
    prompt: Prompt,
    rng: np.random.Generator,
    distractor_p: float,
    colour_neg_p: float = 0.0,
    *,
    labels: str,
    negatives: dict[str, float] | None = None,
) -> tuple[Scene, bool]:
    """A scene to ask `prompt` about and its true answer.

    labels (LABEL_RULES; no default here: `gapray toy pretrain --labels` owns it):

    labels="exact": half the scenes are the prompt's exact scene (yes);
    the other half are near-miss scenes (`near_miss_scene`), the kind drawn by `negatives`
    (kind -> weight, DEFAULT_NEGATIVES when None; renormalised over the kinds the prompt's tag
    has), with 1-2 distractor objects added at rate distractor_p. The label is the exact-scene
    rule's verdict on the scene, so clutter is "no".

    labels="geneval" (the old recipe): the prompt's own scene or a near miss's (half each), with
    1-2 distractors at rate distractor_p; the label is GenEval's verdict, so clutter is "yes".
    For prompts with colours, colour_neg_p of the near misses are colour changes: near_miss draws
    shape and colour changes evenly, and the judge learned shape checks long before colour checks.
    """
    if labels not in LABEL_RULES:
        raise ValueError(f"labels must be one of {LABEL_RULES}, got {labels!r}")
    if labels == "geneval":
        if rng.random() < 0.5:
            src = prompt
        elif any(o.color for o in prompt.include) and rng.random() < colour_neg_p:
            src = colour_near_miss(prompt, rng)
        else:
            src = near_miss(prompt, rng)
        scene = sample_scene(src, rng)
        if rng.random() < distractor_p:
            scene = add_distractors(scene, rng, int(rng.integers(1, 3)))
        ok, _ = evaluate_image(prompt, scene_detections(scene))
        return scene, ok
    weights = DEFAULT_NEGATIVES if negatives is None else negatives
    if rng.random() < 0.5:
        scene = sample_scene(prompt, rng)
    else:
        kinds = [k for k in near_miss_kinds(prompt) if weights.get(k, 0.0) > 0]
        if not kinds:
            raise ValueError(
                f"negatives {weights} give no near-miss kind for tag {prompt.tag!r} "
                f"(its kinds: {near_miss_kinds(prompt)})"
            )
        w = np.array([weights[k] for k in kinds], dtype=float)
        scene = near_miss_scene(prompt, rng, kinds[rng.choice(len(kinds), p=w / w.sum())])
        if rng.random() < distractor_p:
            scene = add_distractors(scene, rng, int(rng.integers(1, 3)))
    ok, _ = exact_scene(prompt, scene_detections(scene))
    return scene, ok


def und_batch(
    adapter: JanusAdapter,
    prompts: list[Prompt],
    rng: np.random.Generator,
    distractor_p: float,
    colour_neg_p: float = 0.0,
    *,
    labels: str,
    negatives: dict[str, float] | None = None,
    round_trip: float = 0.0,
    patch_position: bool = False,
) -> UndBatch:
    """One understanding batch of `prompts`, scenes and labels from `question_scene`.

    round_trip: share of rows whose pixels are the scene's VQ round trip (`vq_round_trip`: what
    the judge sees when it scores the model's own samples) instead of the rendered scene.
    patch_position: the patch targets name each cell's row and column too (`patch_words`)."""
    if not 0.0 <= round_trip <= 1.0:
        raise ValueError(f"round_trip must lie in [0, 1], got {round_trip}")
    scenes, answers = zip(
        *(
            question_scene(p, rng, distractor_p, colour_neg_p, labels=labels, negatives=negatives)
            for p in prompts
        ),
        strict=True,
    )
    q = adapter.question
    texts = [adapter.judge_template.format(question=q.format(prompt=p.text)) for p in prompts]
    # The processor expands <image_placeholder> exactly as judge() does; pixels come straight from
    # the renderer (the processor's 32 px resize and 0.5/0.5 normalisation are the identity + affine).
    enc = adapter.tokenizer(
        [t.replace("<image_placeholder>", _image_span(adapter)) for t in texts],
        padding=True,
        return_tensors="pt",
    )
    pixels = to_pixels(list(scenes))  # (B, 3, 32, 32)
    if round_trip > 0:  # no draw otherwise: a round_trip=0 recipe keeps its data stream
        rows = np.flatnonzero(rng.random(len(scenes)) < round_trip)
        if rows.size:
            pixels[rows] = vq_round_trip(adapter, [scenes[i] for i in rows])
    return UndBatch(
        enc["input_ids"],
        enc["attention_mask"],
        pixels,
        patch_words(adapter, list(scenes), position=patch_position),
        torch.tensor(answers),
        [p.tag for p in prompts],
    )


def _image_span(adapter: JanusAdapter) -> str:
    tok = adapter.tokenizer
    return tok.boi_token + tok.image_token * adapter.num_image_tokens + tok.eoi_token


POSITION_WORDS = ("one", "two", "three", "four")
"""The words that name a cell's row and column (1-based) in the position-aware patch targets."""
assert len(POSITION_WORDS) >= GRID, "a position word for every row and column of the grid"


def patch_words(adapter: JanusAdapter, scenes: list[Scene], position: bool = False) -> torch.Tensor:
    """(B, 16, 2) word ids of each cell's colour and shape, raster order; "no" twice if empty.

    position=True: (B, 16, 4), the cell's row and column words (POSITION_WORDS) after them, for
    every cell: a relation question ("a triangle below a circle") needs each image token's
    hidden state to carry where it is, and neither the colour/shape targets nor RoPE (which puts
    position in the attention scores, not in the values read) ask for that."""
    vocab = adapter.tokenizer.get_vocab()
    no = vocab["no"]
    out = torch.full((len(scenes), GRID * GRID, 4 if position else 2), no, dtype=torch.long)
    if position:
        cells = torch.arange(GRID * GRID)
        words = torch.tensor([vocab[w] for w in POSITION_WORDS])
        out[:, :, 2] = words[cells // GRID]
        out[:, :, 3] = words[cells % GRID]
    for b, s in enumerate(scenes):
        for o in s.objects:
            out[b, o.row * GRID + o.col, :2] = torch.tensor([vocab[o.color], vocab[o.shape]])
    return out


def und_losses(adapter: JanusAdapter, batch: UndBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(patch loss, answer loss, (B,) P(yes)) on one understanding batch."""
    model = adapter.model
    mask = batch.attention_mask
    out = model(
        input_ids=batch.input_ids,
        attention_mask=mask,
        position_ids=adapter._positions(mask),
        pixel_values=batch.pixel_values.to(model.dtype),
    )
    logp = F.log_softmax(out.logits.float(), dim=-1)  # (B, L, V)
    img = batch.input_ids == model.config.image_token_id  # (B, L), 16 True per row, raster order
    patch_logp = logp[img].view(len(batch.labels), -1, logp.shape[-1])  # (B, 16, V)
    hit = patch_logp.gather(-1, batch.patch_targets)  # (B, 16, 2 or 4)
    # Two-hot (colour, shape); position targets add their own mean, so the naming keeps its weight.
    patch = -hit[..., :2].mean() - (hit[..., 2:].mean() if hit.shape[-1] > 2 else 0.0)
    last = logp[:, -1]  # (B, V) next-token distribution after "<|Assistant|>:"
    yes = last[:, adapter.yes_ids].logsumexp(-1)
    no = last[:, adapter.no_ids].logsumexp(-1)
    target = torch.where(batch.labels, yes, no)
    answer = -target.mean()  # full-vocabulary CE on the right answer word(s)
    return patch, answer, torch.sigmoid(yes - no).detach()


def gen_batch(prompts: list[Prompt], rng: np.random.Generator) -> tuple[list[str], torch.Tensor]:
    """Prompt texts and (B, 16) target image tokens of one scene of each prompt."""
    scenes = [sample_scene(p, rng) for p in prompts]
    return [p.text for p in prompts], cell_codes(scenes)


def gen_nll(
    adapter: JanusAdapter, texts: list[str], tokens: torch.Tensor, drop: torch.Tensor
) -> torch.Tensor:
    """Mean per-token NLL of `tokens` (B, 16); rows where drop (B,) is True see the unconditional
    prompt (the adapter's CFG row), the rest the conditional one. Same embedding, positions and
    head as `JanusAdapter.image_logits`."""
    model = adapter.model
    ids, mask = adapter._encode_gen_prompts(texts, True)  # (2B, L): cond rows, then uncond rows
    B, L = len(texts), ids.shape[1]
    rows = torch.arange(B, device=drop.device) + B * drop.long()
    ids, mask = ids[rows], mask[rows]  # (B, L)
    embeds = torch.cat(
        [model.get_input_embeddings()(ids), model.prepare_embeddings_for_image_generation(tokens[:, :-1])],
        dim=1,
    )  # (B, L+15, D)
    full = torch.cat([mask, mask.new_ones(B, tokens.shape[1] - 1)], dim=1)
    h = model.model.language_model(
        inputs_embeds=embeds, attention_mask=full, position_ids=adapter._positions(full)
    ).last_hidden_state  # (B, L+15, D)
    logits = model.model.generation_head(h[:, L - 1 :])  # (B, 16, K)
    return F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten())


@torch.no_grad()
def quick_understanding(adapter: JanusAdapter, prompts: list[Prompt], seed: int = 0, n: int = 96) -> dict:
    """toy_eval's understanding questions (`understanding_questions`) on a seeded subset of n
    `prompts`, for the training log: "acc" and "per_tag" over the prompt_near_miss pairs (one
    scene asked about its prompt and a near miss prompt), "exact_acc" and "per_kind" over the
    exact-scene near-miss scene pairs."""
    from gapray.eval.toy_eval import understanding_metrics, understanding_questions

    rng = np.random.default_rng(seed)
    idx = sorted(int(i) for i in rng.choice(len(prompts), size=min(n, len(prompts)), replace=False))
    qs = understanding_questions(
        adapter, [prompts[i] for i in idx], idx, seed=seed, batch_size=len(idx) * 12, progress=False
    )
    old = [q for q in qs if q.kind == "prompt_near_miss"]
    exact = [q for q in qs if q.kind != "prompt_near_miss"]
    m_old = understanding_metrics(*zip(*old, strict=True))
    m_exact = understanding_metrics(*zip(*exact, strict=True), [q.kind for q in exact])
    return {
        "acc": m_old["understanding_accuracy"],
        "per_tag": m_old["understanding_per_tag"],
        "exact_acc": m_exact["understanding_accuracy"],
        "per_kind": m_exact["understanding_per_kind"],
    }


@torch.no_grad()
def patch_accuracy(adapter: JanusAdapter, scenes: list[Scene]) -> float:
    """Share of object cells whose image-token LM-head output ranks the cell's colour first among
    the colour words and its shape first among the shape words (the per-patch readout the patch
    loss trains; with --patch-position the same distribution also holds the row and column words,
    so a plain top two would read those). Chance is 1 / (6 colours x 8 shapes) ~ 0.02."""
    # Any question will do: only the image-token positions are read (they precede the text).
    prompts = [make_splits(0)["train"][0]] * len(scenes)
    # only the image-token positions are read: the label rule does not matter
    batch = und_batch(adapter, prompts, np.random.default_rng(0), 0.0, labels="geneval")
    batch = UndBatch(
        batch.input_ids,
        batch.attention_mask,
        to_pixels(scenes),
        patch_words(adapter, scenes),
        batch.labels,
        batch.tags,
    ).to(adapter.device)
    model = adapter.model
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=adapter._positions(batch.attention_mask),
        pixel_values=batch.pixel_values.to(model.dtype),
    )
    img = batch.input_ids == model.config.image_token_id
    logits = out.logits[img].view(len(scenes), -1, out.logits.shape[-1])  # (B, 16, V)
    vocab = adapter.tokenizer.get_vocab()
    hits = []
    for k, words in ((0, COLORS), (1, SHAPES)):
        ids = torch.tensor([vocab[w] for w in words], device=logits.device)
        best = ids[logits[..., ids].argmax(-1)]  # (B, 16): the top word of the group
        hits.append(best == batch.patch_targets[..., k])
    filled = batch.patch_targets[..., 0] != vocab["no"]  # (B, 16)
    return float((hits[0] & hits[1])[filled].float().mean())
