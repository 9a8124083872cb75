"""`gapray diagnose MODEL [--sets A,B,...] [--out DIR] [overrides]`: measure a model's internal
gap before training, and split it with external judges.

MODEL is a local Janus checkpoint directory (composed as `model=janus_pro_7b model.name=MODEL`
unless a `model=` override is given), `toy` (the shipped toy model; its sets are the toy
world's test split by difficulty and its default judge the exact verifier, `toy_verifier`), or
a layout built in code (`tiny`, `janus_pro_shape`). Overrides are the run's config keys:
generation.* (CFG weight, temperature, batch size, workers and GPUs), reward.question /
reward.threshold (the question every judge is asked), eval.images_per_prompt, eval.limit
(prompts per set), eval.judges=[DIR,...] and eval.judge_gpus / judge_cpus / judge_batch_size,
run.seed, run.ray_address. Everything is checked before any actor starts (exit 2 naming what is
wrong); the last stdout line is the summary as one JSON object.

    gapray diagnose toy
    gapray diagnose /ckpt/Janus-Pro-7B eval.judges=[/ckpt/Qwen2.5-VL-72B-Instruct] eval.judge_gpus=2 \
        generation.gpus_per_worker=1 run.ray_address=auto
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from gapray.config import BUILTIN_MODELS

TOY_JUDGE = "eval.judges=[toy_verifier]"


def compose_overrides(model: str, first_set: str, overrides: list[str]) -> list[str]:
    """The config overrides a diagnosis of MODEL runs with (user overrides last, so they win)."""
    keys = [o.lstrip("+~").partition("=")[0] for o in overrides]
    base = [f"model={model}"] if model in BUILTIN_MODELS else []
    if model not in BUILTIN_MODELS:
        base = ([] if "model" in keys else ["model=janus_pro_7b"]) + [f"model.name={model}"]
    if "eval.judges" not in keys:  # eval=judge's default judge is the toy's verifier
        base.append(TOY_JUDGE if model == "toy" else "eval.judges=[]")
    return [*base, "eval=judge", f"eval.prompts={first_set}", *overrides]


def main(argv: list[str] | None = None) -> int:
    from gapray.diagnose.sets import default_sets

    parser = argparse.ArgumentParser(
        prog="gapray diagnose",
        description="Measure a model's internal gap per prompt set and split it with external judges.",
    )
    parser.add_argument("model", help="a Janus checkpoint directory, `toy`, `tiny` or `janus_pro_shape`")
    parser.add_argument("overrides", nargs="*", help="config overrides (key=value), e.g. eval.judges=[DIR]")
    parser.add_argument(
        "--sets", help="comma-separated prompt sets in difficulty order (default: by model; see the docs)"
    )
    parser.add_argument("--out", help="output folder (default runs/diagnose-<model>-<timestamp>)")
    parser.add_argument(
        "--compare",
        help="comma-separated folders of earlier diagnoses (other models) to draw beside this one",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)

    from gapray.config import ConfigError, load_config, save
    from gapray.data.prompts import PromptFileError
    from gapray.diagnose.compute import check_diagnosis, diagnose
    from gapray.diagnose.report import load_diagnosis, write_report
    from gapray.models import CheckpointError
    from gapray.models.vlm_judge import JudgeError
    from gapray.placement import ResourceError
    from gapray.workers.pool import WorkerError

    sets = (
        [s.strip() for s in args.sets.split(",") if s.strip()]
        if args.sets
        else list(default_sets(args.model))
    )
    if not sets:
        parser.error("--sets: no prompt set given")
    start = time.perf_counter()
    try:
        cfg = load_config(compose_overrides(args.model, sets[0], list(args.overrides)))
        if cfg.model.name not in BUILTIN_MODELS:
            from gapray.models.janus import check_checkpoint_dir

            check_checkpoint_dir(Path(cfg.model.name))
        check_diagnosis(cfg, sets)
        compare = [load_diagnosis(d) for d in (args.compare or "").split(",") if d.strip()]
    except (ConfigError, PromptFileError, CheckpointError, JudgeError, ValueError) as err:
        print(f"gapray diagnose: {err}", file=sys.stderr)
        return 2
    name = Path(args.model.rstrip("/")).name or "model"
    out = Path(args.out or f"runs/diagnose-{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    save(cfg, out / "config.yaml")
    if not args.quiet:
        print(f"[diagnose] {args.model} -> {out}: sets {', '.join(sets)}", file=sys.stderr)
    try:
        diag = diagnose(cfg, sets, out, progress=not args.quiet)
    except (ResourceError, WorkerError, JudgeError) as err:
        print(f"gapray diagnose: {err}", file=sys.stderr)
        return 2
    report = write_report(diag, out, compare)
    summary = {
        "out": str(out),
        "model": diag.model,
        "judges": dict(zip(diag.judges, diag.judge_specs, strict=True)),
        "images_per_prompt": diag.images_per_prompt,
        "seconds": round(time.perf_counter() - start, 1),
        "sets": {
            s.name: {
                "n_prompts": s.results["n_prompts"],
                "n_images": s.results["n_images"],
                "non_unification": s.results["non_unification"],
                "non_unification_ci": s.results["non_unification_ci"],
                "judges": {
                    j: {k: v for k, v in q.items() if k != "per_tag"} for j, q in s.results["judges"].items()
                },
                "kappa": s.results["kappa"],
            }
            for s in diag.sets
        },
        "report": report,
    }
    from gapray.storage.atomic import atomic_write_text

    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
    print(json.dumps(summary, allow_nan=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
