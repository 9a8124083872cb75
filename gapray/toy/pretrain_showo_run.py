"""`gapray toy pretrain --family showo`: train the toy Show-o from scratch on the shape world.

Where it sits: the Show-o counterpart of the toy Janus recipe (gapray/toy/pretrain.py parses the
flags and hands a `--family showo` run to `run` here). It makes the model `model=toy_showo`
loads (gapray/toy/checkpoint_showo/): a small Show-o (Phi backbone, omni-attention, one
vocabulary of words, task tokens, LFQ codes and [MASK]) with its own MAGVIT-v2 LFQ tokenizer,
32 px <-> 4 x 4 = 16 image tokens. Two stages, each resumable:

1. `lfq` (pretrain_lfq.py): the tokenizer, one code per 8x8 cell (49 cell contents), --vq-steps
   steps, then a decoder-only polish of half as many (covered pixels weighted, `polish_steps`).
2. `lm`  (pretrain_showo.py): the Phi backbone and head; understanding (yes/no answer loss on
   exact-scene questions with near-miss negatives, the per-code naming loss) and mask-prediction
   generation with CFG dropout, the same flags and data rules as the Janus recipe.

State (weights, optimizers, RNG, stage and step) goes to `<out>/state.pt` every `--save-every`
minutes (atomic), so a killed run continues where it stopped when started again with the same
--out. The final model goes to `<out>/checkpoint` in Show-o's checkpoint layout
(`ShowoAdapter.save_pretrained`, loaded by `gapray.models.showo.load_showo`), its
gapray_adapter.json holding the eval's cfg_scale, temperature and MaskGIT steps.

    gapray toy pretrain --family showo --out runs/toy-showo
    gapray toy pretrain --family showo --out /tmp/s --vq-steps 50 --lm-steps 100   # smoke run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from gapray.models.showo import (
    NUM_NEW_TOKENS,
    PAD_TOKEN,
    TINY_WORDS,
    MagvitConfig,
    SamplerSettings,
    ShowoAdapter,
    ShowoLayout,
    ShowoUnified,
    phi_config,
    tiny_tokenizer,
)
from gapray.toy.pretrain_lfq import (
    FOREGROUND_WEIGHT,
    POLISH_LR,
    lfq_round_trip_accuracy,
    lfq_step,
    polish_steps,
)
from gapray.toy.pretrain_lm import by_tag, draw_prompts, gen_batch, gen_prompts, quick_understanding
from gapray.toy.pretrain_showo import mask_batch, mask_loss, und_batch, und_losses
from gapray.toy.pretrain_vq import random_scenes
from gapray.toy.recipe_state import RecipeState
from gapray.toy.world import SHAPES, make_splits

FAMILY = "showo"
WORDS = tuple(
    dict.fromkeys(
        (*TINY_WORDS, "Does", "Answer", *SHAPES, *(s + "s" for s in SHAPES))  # the world's shapes and plurals
    )
)
"""The toy Show-o's word-level vocabulary: the tiny Show-o's words, the judge question's
capitalised words and the toy world's eight shapes (every toy prompt, caption and the judge
prompt tokenize without <unk>; tested)."""
MODEL_CONFIG = dict(
    # Phi 128 wide x 4 layers x 4 heads (head_dim 32) as the toy Janus's LLM; the text part
    # holds the longest toy caption (18 words + <|t2i|> <bos> <eos>).
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=128,
)
MAX_TEXT_LEN = 24
VQ_CONFIG = MagvitConfig(
    # 32 px -> 4 x 4 tokens (8x, three downsamplings); 6 LFQ bits = 64 codes for 49 cell contents.
    ch=32,
    encoder_ch_mult=(1, 1, 1, 1),
    encoder_num_res_blocks=(1, 1, 1, 1),
    decoder_ch_mult=(1, 1, 1, 1),
    decoder_num_res_blocks=(1, 1, 1, 1),
    z_channels=6,
)
NUM_IMAGE_TOKENS = 16
DEFAULT_MASK_STEPS = 8
"""MaskGIT steps written to the checkpoint when --mask-steps is not given (16 tokens)."""
SPLIT_SEED = 0
"""The train/val/test split the toy eval uses (gapray.eval.toy_eval.SPLIT_SEED)."""
LFQ_LR = 2e-3
ROUND_TRIP_SCENES = 256
"""Random scenes the LFQ stage's closing round-trip check reads (`lfq_round_trip_accuracy`)."""


def toy_showo(seed: int = 0, mask_steps: int = DEFAULT_MASK_STEPS) -> ShowoAdapter:
    """A random toy Show-o (MODEL_CONFIG, VQ_CONFIG, the WORDS tokenizer) from `seed`, on the CPU."""
    tok = tiny_tokenizer(WORDS)
    llm_vocab = tok.convert_tokens_to_ids(PAD_TOKEN)
    K = VQ_CONFIG.codebook_size
    layout = ShowoLayout(llm_vocab + NUM_NEW_TOKENS + K + 1, llm_vocab, K, NUM_IMAGE_TOKENS, MAX_TEXT_LEN)
    torch.manual_seed(seed)
    model = ShowoUnified(phi_config(layout.vocab_size, **MODEL_CONFIG), VQ_CONFIG).eval()
    return ShowoAdapter(model, tok, layout, sampler=SamplerSettings(steps=mask_steps))


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Flags that have no meaning for Show-o: a clear argparse error."""
    if args.judge_template is not None:
        parser.error(
            "--judge-template is a Janus flag (its <image_placeholder>); the toy Show-o uses the "
            "adapter's own understanding prompt"
        )
    if args.mask_steps is not None and args.mask_steps < 1:
        parser.error(f"--mask-steps must be >= 1, got {args.mask_steps}")


def run(args: argparse.Namespace, negatives: dict[str, float]) -> int:
    """The two stages and the final checkpoint (module docstring); args as pretrain.py parses them."""
    from gapray.toy.pretrain import lr_at

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "state.pt"
    device = torch.device(args.device)

    adapter = toy_showo(seed=args.seed, mask_steps=args.mask_steps or DEFAULT_MASK_STEPS)
    model = adapter.model.to(device)
    adapter.set_trainable("all")  # the Phi backbone and head; the tokenizer stays frozen
    lm_trainable = list(adapter.trainable_parameters().values())
    vq_opt = torch.optim.Adam(model.vq_model.parameters(), lr=LFQ_LR)
    polish_opt = torch.optim.Adam(model.vq_model.decoder.parameters(), lr=POLISH_LR)
    lm_opt = torch.optim.AdamW(lm_trainable, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    rng = np.random.default_rng(args.seed)
    rs = RecipeState(
        state_path,
        FAMILY,
        model,
        {"vq_opt": vq_opt, "polish_opt": polish_opt, "lm_opt": lm_opt},
        rng,
        args,
        "lfq",
    )
    if not args.fresh:
        try:
            rs.resume(device)
        except ValueError as err:
            raise SystemExit(f"gapray toy pretrain: {err}") from None
    state = rs.progress
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[pretrain] toy Show-o, {n_params / 1e6:.2f}M parameters on {device}; out {out}", flush=True)
    start, save = rs.start, rs.save

    def maybe_save() -> None:
        rs.maybe_save(args.save_every)

    # --- stage 1: the LFQ tokenizer -----------------------------------------------------------
    if state["stage"] == "lfq":
        model.vq_model.requires_grad_(True)  # set_trainable("all") froze it: it trains here only
        model.vq_model.train()
        polish = polish_steps(args.vq_steps)
        total = args.vq_steps + polish
        while state["step"] < total:
            s = state["step"]
            if s < args.vq_steps:  # the tokenizer: encoder and decoder, plain pixel loss
                opt, lr, fg = vq_opt, lr_at(s, args.vq_steps, LFQ_LR), 1.0
            else:  # the decoder's polish: covered pixels weighted, the encoder frozen
                model.vq_model.encoder.requires_grad_(False)
                opt, lr, fg = polish_opt, lr_at(s - args.vq_steps, polish, POLISH_LR), FOREGROUND_WEIGHT
            for g in opt.param_groups:
                g["lr"] = lr
            loss, st = lfq_step(adapter, random_scenes(rng, args.batch, 12), device=device, fg_weight=fg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state["step"] += 1
            if state["step"] % args.log_every == 0 or state["step"] in (args.vq_steps, total):
                print(
                    f"[lfq {state['step']}/{total}] {time.perf_counter() - start:.0f}s "
                    f"rec {st['rec']:.4f} enc {st['enc']:.4f} code_acc {st['code_acc']:.3f}"
                    + (" (decoder polish)" if s >= args.vq_steps else ""),
                    flush=True,
                )
            maybe_save()
        model.eval()
        acc = lfq_round_trip_accuracy(adapter, ROUND_TRIP_SCENES)
        print(f"[lfq] done: round-trip verifier accuracy {acc:.3f}", flush=True)
        state.update(stage="lm", step=0, lfq_recon_accuracy=acc)
        save()
    model.vq_model.requires_grad_(False)

    # --- stage 2: the Show-o backbone ----------------------------------------------------------
    splits = make_splits(SPLIT_SEED)
    pool = by_tag(splits["train"])
    und_weights = {k: float(v) for k, v in (kv.split("=") for kv in args.und_tags.split(",") if kv)}
    if state["stage"] == "lm":
        model.train()
        model.vq_model.eval()
        run_stats = {"patch": 0.0, "answer": 0.0, "gen": 0.0, "gen_acc": 0.0, "acc": 0.0, "n": 0}
        while state["step"] < args.lm_steps:
            s = state["step"]
            for g in lm_opt.param_groups:
                g["lr"] = lr_at(s, args.lm_steps, args.lr)
            prompts = draw_prompts(pool, rng, args.batch, und_weights)
            ub = und_batch(
                adapter,
                prompts,
                rng,
                args.distractors,
                args.colour_negatives,
                labels=args.labels,
                negatives=negatives,
                round_trip=args.round_trip,
                patch_position=args.patch_position,
            )
            patch, answer, p_yes = und_losses(adapter, ub.to(device))
            loss = args.patch_weight * patch + answer
            if s < args.gen_steps:
                texts, tokens = gen_batch(
                    gen_prompts(pool, rng, args.batch, args.gen_captions, SPLIT_SEED), rng
                )
                gen, gen_acc = mask_loss(adapter, mask_batch(adapter, texts, tokens, rng, args.cfg_dropout))
                loss = loss + args.gen_weight * gen
                run_stats["gen"] += gen.item()
                run_stats["gen_acc"] += gen_acc
            lm_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(lm_trainable, 1.0)
            lm_opt.step()
            state["step"] += 1
            run_stats["patch"] += patch.item()
            run_stats["answer"] += answer.item()
            run_stats["acc"] += ((p_yes.cpu() > 0.5) == ub.labels.cpu()).float().mean().item()
            run_stats["n"] += 1
            if state["step"] % args.log_every == 0 or state["step"] == args.lm_steps:
                k = run_stats.pop("n")
                line = " ".join(f"{key} {v / k:.3f}" for key, v in run_stats.items())
                print(
                    f"[lm {state['step']}/{args.lm_steps}] {time.perf_counter() - start:.0f}s {line}",
                    flush=True,
                )
                run_stats = {"patch": 0.0, "answer": 0.0, "gen": 0.0, "gen_acc": 0.0, "acc": 0.0, "n": 0}
            if state["step"] % (10 * args.log_every) == 0:
                model.eval()
                q = quick_understanding(adapter, splits["val"], seed=1, n=48)
                print(f"[lm {state['step']}] val understanding {q['acc']:.3f} {q['per_tag']}", flush=True)
                kinds = {k: round(v, 3) for k, v in q["per_kind"].items()}
                print(
                    f"[lm {state['step']}] val exact-scene understanding {q['exact_acc']:.3f} {kinds}",
                    flush=True,
                )
                model.train()
                model.vq_model.eval()
            maybe_save()
        state.update(stage="done", step=0)
        save()

    # --- final checkpoint ----------------------------------------------------------------------
    model.eval()
    ckpt = out / "checkpoint"
    adapter.model = model.to("cpu")
    adapter.extra_settings.update(cfg_scale=args.cfg_scale, temperature=args.temperature)
    adapter.save_pretrained(ckpt)
    total = time.perf_counter() - start
    settings = json.loads((ckpt / "gapray_adapter.json").read_text())
    print(
        f"[pretrain] wrote {ckpt} after {total / 60:.1f} min (cfg_scale {settings['cfg_scale']}, "
        f"temperature {settings['temperature']}, mask steps {settings['steps']})",
        flush=True,
    )
    if args.eval:
        from gapray.eval.toy_eval import evaluate
        from gapray.models.base import guidance

        metrics = evaluate(
            ShowoAdapter.from_pretrained(ckpt, device=args.device),
            out / "eval",
            cfg_scale=guidance(args.cfg_scale),
            temperature=args.temperature,
        )
        keys = (
            "understanding_accuracy",
            "understanding_per_tag",
            "understanding_per_kind",
            "exact_scene_overall",
            "objects_per_image",
            "geneval_overall",
            "non_unification",
            "judge_balanced_accuracy",
            "judge_balanced_accuracy_exact",
        )
        print("[pretrain] eval " + json.dumps({k: metrics.get(k) for k in keys}), flush=True)
    return 0
