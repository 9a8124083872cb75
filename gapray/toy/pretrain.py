"""`gapray toy pretrain`: train the toy unified model (a small Janus) from scratch on the shape world.

Where it sits: makes the model the toy self-improvement run starts from (gapray/toy/checkpoint/).
The model must show the paper's *internal gap*: its understanding branch is a good judge of toy
scenes, its generation clearly weaker but not broken, so the self-improvement loop has room to
work. Two stages, each resumable:

1. `vq`  (pretrain_vq.py): the VQ tokenizer, one code per 8x8 cell (49 cell contents).
2. `lm`  (pretrain_lm.py): vision encoder + LLM + generation head; per-patch naming loss, the
   judge's yes/no loss (--labels exact, the default and the shipped model's recipe: the
   exact-scene rule, so clutter is "no", negatives the near-miss scene kinds weighted by
   --negatives; --labels geneval: GenEval's lenient verdict, the first toy world's recipe), and
   generation NLL with CFG dropout for the first `--gen-steps` steps at a low weight (the
   defaults keep it on throughout: notebook X3 and W2). Half the questions (--round-trip) show
   the scene's VQ round trip, the pixels the judge meets on the model's own samples, not the
   rendered scene (notebook R0), and the patch targets name each cell's row and column too
   (--patch-position; notebook R3).

State (weights, optimizer, RNG, step) goes to `<out>/state.pt` every `--save-every` minutes
(atomic), so a killed run continues where it stopped when started again with the same --out.
The final model goes to `<out>/checkpoint` in save_pretrained form (tokenizer, processor and
gapray_adapter.json with the eval's cfg_scale and temperature).

    gapray toy pretrain --out runs/toy-pretrain               # full recipe (CPU, < 2 h)
    gapray toy pretrain --out /tmp/t --vq-steps 50 --lm-steps 100   # smoke run

`--family showo` trains a toy Show-o instead with the same flags and data rules (its LFQ
tokenizer stage, then mask-prediction generation and understanding): gapray/toy/pretrain_showo_run.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gapray.models.janus import ADAPTER_FILE, JanusAdapter
from gapray.models.tiny import tiny_janus
from gapray.toy.pretrain_lm import (
    LABEL_RULES,
    by_tag,
    draw_prompts,
    gen_batch,
    gen_nll,
    gen_prompts,
    parse_weights,
    quick_understanding,
    und_batch,
    und_losses,
)
from gapray.toy.pretrain_vq import random_scenes, reconstruction_accuracy, vq_step
from gapray.toy.recipe_state import RecipeState
from gapray.toy.world import NEAR_MISS_KINDS, make_splits

MODEL_CONFIG = dict(
    # 4x4 = 16 image tokens (patch 8 on 32 px); 64 codes for the 49 cell contents;
    # head_dim 32 (128 / 4 heads) for the vLLM backend.
    image_size=32,
    patch_size=8,
    codebook_size=64,
    hidden_size=128,
    num_layers=4,
    num_heads=4,
    vision_hidden=64,
    vision_layers=2,
    vq_channels=32,
    vq_embed_dim=8,
)
FAMILIES = ("janus", "showo")
"""Toy model families `--family` trains."""
SPLIT_SEED = 0
"""The train/test split the toy eval uses (gapray.eval.toy_eval.SPLIT_SEED)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gapray toy pretrain", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--family",
        choices=FAMILIES,
        default="janus",
        help="the toy model's family: janus (the shipped toy model, this module's recipe) or showo "
        "(a toy Show-o: LFQ tokenizer, mask-prediction generation; gapray/toy/pretrain_showo_run.py)",
    )
    p.add_argument("--out", default="runs/toy-pretrain", help="run folder (state.pt, checkpoint/)")
    p.add_argument("--seed", type=int, default=0, help="model init and data seed")
    p.add_argument("--vq-steps", type=int, default=1500, help="VQ stage steps")
    p.add_argument("--lm-steps", type=int, default=10000, help="LM stage steps")
    p.add_argument(
        "--gen-steps", type=int, default=10000, help="LM steps (from the start) with the generation loss"
    )
    p.add_argument(
        "--gen-captions",
        type=float,
        default=0.0,
        help="share of generation rows that are random 3-4 object colour captions (no held-apart "
        "composition, no text of any split) instead of train prompts",
    )
    p.add_argument("--gen-weight", type=float, default=0.5, help="weight of the generation NLL")
    p.add_argument("--patch-weight", type=float, default=1.0, help="weight of the per-patch naming loss")
    p.add_argument("--batch", type=int, default=32, help="understanding and generation batch size")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (LM stage; VQ uses 2e-3)")
    p.add_argument(
        "--cfg-dropout", type=float, default=0.1, help="share of generation rows trained unconditionally"
    )
    p.add_argument(
        "--distractors",
        type=float,
        default=0.3,
        help="share of negative questions with 1-2 extra objects added (--labels geneval: of all questions)",
    )
    p.add_argument(
        "--labels",
        choices=LABEL_RULES,
        default="exact",
        help="yes/no label rule: exact (the exact-scene rule with near-miss scene negatives, clutter is "
        "no; the shipped model's recipe) or geneval (GenEval's lenient rule, clutter is yes; the first "
        "toy world's recipe)",
    )
    p.add_argument(
        "--negatives",
        default="extra_object=1,count_off_by_one=1,swapped_relation=4,wrong_colour=4,wrong_shape=1",
        help="near-miss scene kind weights for --labels exact, kind=w,... (missing kinds: 0)",
    )
    p.add_argument(
        "--und-tags",
        default="color_attr=3,colors=2,position=3",
        help="understanding tag weights, tag=w,... (others 1)",
    )
    p.add_argument(
        "--round-trip",
        type=float,
        default=0.5,
        help="share of understanding questions on the scene's VQ round trip (the pixels the judge "
        "sees on the model's own samples) instead of the rendered scene",
    )
    p.add_argument(
        "--patch-position",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the per-patch targets name each cell's row and column as well as its colour and shape",
    )
    p.add_argument(
        "--judge-template",
        default=None,
        help="the judge prompt with <image_placeholder> and {question} (default: Janus's, image first); "
        "saved with the checkpoint",
    )
    p.add_argument(
        "--colour-negatives",
        type=float,
        default=0.5,
        help="--labels geneval only: share of colour-prompt negatives that change a colour",
    )
    p.add_argument(
        "--cfg-scale", type=float, default=3.0, help="eval CFG scale written to gapray_adapter.json"
    )
    p.add_argument(
        "--temperature", type=float, default=1.0, help="eval temperature written to gapray_adapter.json"
    )
    p.add_argument(
        "--mask-steps",
        type=int,
        default=None,
        help="--family showo only: MaskGIT steps written to gapray_adapter.json for the eval (default 8)",
    )
    p.add_argument("--save-every", type=float, default=3.0, help="minutes between resumable state saves")
    p.add_argument("--log-every", type=int, default=50, help="steps between progress lines")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--fresh", action="store_true", help="ignore an existing state.pt and start over")
    p.add_argument("--eval", action="store_true", help="run the toy eval on the final checkpoint")
    return p


def lr_at(step: int, total: int, peak: float, warmup: int = 100) -> float:
    """Linear warmup, then cosine decay to 10% of peak (the issue's trials fell back without decay)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(1.0, frac))))


def lm_params(adapter: JanusAdapter) -> list[torch.nn.Parameter]:
    """Everything but the VQ (frozen after stage 1; Janus's VQ is frozen too)."""
    return [p for n, p in adapter.model.named_parameters() if ".vqmodel." not in f".{n}"]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.family == "showo":
        from gapray.toy.pretrain_showo_run import check_args

        check_args(parser, args)
    elif args.mask_steps is not None:
        parser.error("--mask-steps is a Show-o flag (--family showo)")
    try:
        negatives = parse_weights(args.negatives, NEAR_MISS_KINDS, "--negatives")
    except ValueError as err:
        parser.error(str(err))
    if not 0.0 <= args.gen_captions <= 1.0:
        parser.error(f"--gen-captions must lie in [0, 1], got {args.gen_captions}")
    if not 0.0 <= args.round_trip <= 1.0:
        parser.error(f"--round-trip must lie in [0, 1], got {args.round_trip}")
    if args.judge_template is not None:
        missing = [k for k in ("<image_placeholder>", "{question}") if k not in args.judge_template]
        if missing:
            parser.error(
                f"--judge-template must contain {' and '.join(missing)}, got {args.judge_template!r}"
            )
    if args.labels == "exact" and not any(negatives.values()):
        parser.error(f"--negatives: at least one weight must be > 0, got {args.negatives!r}")
    if args.family == "showo":
        from gapray.toy.pretrain_showo_run import run

        return run(args, negatives)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "state.pt"
    device = torch.device(args.device)

    adapter = tiny_janus(seed=args.seed, **MODEL_CONFIG)
    if args.judge_template is not None:
        adapter.judge_template = args.judge_template
    model = adapter.model.to(device)
    vq_opt = torch.optim.Adam(model.model.vqmodel.parameters(), lr=2e-3)
    lm_opt = torch.optim.AdamW(lm_params(adapter), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    rng = np.random.default_rng(args.seed)
    rs = RecipeState(state_path, "janus", model, {"vq_opt": vq_opt, "lm_opt": lm_opt}, rng, args, "vq")
    if not args.fresh:
        try:
            rs.resume(device)
        except ValueError as err:
            parser.error(str(err))
    state = rs.progress
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[pretrain] {n_params / 1e6:.2f}M parameters on {device}; out {out}", flush=True)
    start, save = rs.start, rs.save

    def maybe_save() -> None:
        rs.maybe_save(args.save_every)

    # --- stage 1: VQ -------------------------------------------------------------------------
    if state["stage"] == "vq":
        model.train()
        while state["step"] < args.vq_steps:
            s = state["step"]
            for g in vq_opt.param_groups:
                g["lr"] = lr_at(s, args.vq_steps, 2e-3)
            loss, st = vq_step(model, random_scenes(rng, args.batch, 12), device=device)
            vq_opt.zero_grad(set_to_none=True)
            loss.backward()
            vq_opt.step()
            state["step"] += 1
            if state["step"] % args.log_every == 0 or state["step"] == args.vq_steps:
                print(
                    f"[vq {state['step']}/{args.vq_steps}] {time.perf_counter() - start:.0f}s "
                    f"rec {st['rec']:.4f} enc {st['enc']:.4f} code_acc {st['code_acc']:.3f}",
                    flush=True,
                )
            maybe_save()
        model.eval()
        acc = reconstruction_accuracy(model, 256)
        print(f"[vq] done: round-trip verifier accuracy {acc:.3f}", flush=True)
        state.update(stage="lm", step=0, vq_recon_accuracy=acc)
        save()

    # --- stage 2: LM ---------------------------------------------------------------------------
    splits = make_splits(SPLIT_SEED)
    pool = by_tag(splits["train"])
    model.model.vqmodel.requires_grad_(False)
    und_weights = {k: float(v) for k, v in (kv.split("=") for kv in args.und_tags.split(",") if kv)}
    if state["stage"] == "lm":
        model.train()
        model.model.vqmodel.eval()
        run = {"patch": 0.0, "answer": 0.0, "gen": 0.0, "acc": 0.0, "n": 0}
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
            patch, answer, p_yes = und_losses(adapter, ub.to(device))  # p_yes: (B,)
            loss = args.patch_weight * patch + answer
            if s < args.gen_steps:
                texts, tokens = gen_batch(
                    gen_prompts(pool, rng, args.batch, args.gen_captions, SPLIT_SEED), rng
                )
                drop = torch.from_numpy(rng.random(len(texts)) < args.cfg_dropout)
                gen = gen_nll(adapter, texts, tokens.to(device), drop.to(device))
                loss = loss + args.gen_weight * gen
                run["gen"] += gen.item()
            lm_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(lm_params(adapter), 1.0)
            lm_opt.step()
            state["step"] += 1
            run["patch"] += patch.item()
            run["answer"] += answer.item()
            run["acc"] += ((p_yes.cpu() > 0.5) == ub.labels.cpu()).float().mean().item()
            run["n"] += 1
            if state["step"] % args.log_every == 0 or state["step"] == args.lm_steps:
                k = run.pop("n")
                line = " ".join(f"{key} {v / k:.3f}" for key, v in run.items())
                print(
                    f"[lm {state['step']}/{args.lm_steps}] {time.perf_counter() - start:.0f}s {line}",
                    flush=True,
                )
                run = {"patch": 0.0, "answer": 0.0, "gen": 0.0, "acc": 0.0, "n": 0}
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
                model.model.vqmodel.eval()
            maybe_save()
        state.update(stage="done", step=0)
        save()

    # --- final checkpoint ----------------------------------------------------------------------
    model.eval()
    ckpt = out / "checkpoint"
    adapter.model = model.to("cpu")
    adapter.save_pretrained(ckpt)
    settings = json.loads((ckpt / ADAPTER_FILE).read_text())
    settings.update(cfg_scale=args.cfg_scale, temperature=args.temperature)
    (ckpt / ADAPTER_FILE).write_text(json.dumps(settings, indent=2))
    total = time.perf_counter() - start
    print(f"[pretrain] wrote {ckpt} after {total / 60:.1f} min", flush=True)
    if args.eval:
        from gapray.eval.toy_eval import evaluate

        metrics = evaluate(
            JanusAdapter.from_pretrained(ckpt, device=args.device),
            out / "eval",
            cfg_scale=args.cfg_scale,
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


if __name__ == "__main__":
    sys.exit(main())
