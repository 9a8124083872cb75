"""`gapray bench paper`: the paper's table (base, SFT, C-SFT, DPO, C-DPO) and gapray's online
variants, on the toy model, several seeds: mean +- sd, each trained row's difference from its own
seed's base with a paired bootstrap 95% interval, and a plain verdict per row (improves or not:
exact-scene accuracy up with the interval above 0, without drawing more objects).

Every trained row is the default toy run (configs/run/toy.yaml) plus the overrides in `ROWS`
below, at the same steps and the same prompt budget (steps x prompts_per_step x
images_per_prompt; checked before anything starts). Each (row, seed) is one `gapray run`
(`execute`) on one local Ray session started once, with `run.seed` = the seed. The base row
trains nothing: it is the start evaluation of the trained rows of that seed (same start model,
same evaluation seed), so it costs no extra run; the table says whether those start
evaluations agreed.

    gapray bench paper                                   # all rows, seeds 0-4, the toy run's steps
    gapray bench paper --rows base,dpo,c-dpo --seeds 1   # a subset
    gapray bench paper --steps 20 run.eval_every=20      # config overrides pass through

One (row, seed) of the default toy run (100 steps) took 138-191 s on a quiet 2-core CPU, so the
whole table (6 trained rows x 5 seeds, 30 runs) takes 70-95 minutes there. Prints a Markdown table and writes
<out>/paper-<model>-<timestamp>.json and .md, rewritten after every run (with "complete":
false until the last), so an interrupted bench keeps what it measured. Run directories go to
--scratch (default: a temporary folder, removed at the end).

Row overrides come after the passthrough overrides, so a row stays what its name says
(`curriculum=band` given by hand changes DPO, not C-DPO).

This file plans and runs the bench; the rows, metrics and targets are in `paper_spec.py`, the
aggregation, the checks and the Markdown in `paper_table.py`.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from gapray.bench import write_results
from gapray.bench.paper_spec import (
    EXACT_GAIN,
    INTERVAL_LEVEL,
    METRIC_NAMES,
    METRICS,
    OBJECTS_RISE,
    ROW_BY_KEY,
    ROWS,
    TARGET_ROWS,
    UNDERSTANDING_TOLERANCE,
    Plan,
)
from gapray.bench.paper_table import aggregate, f3, markdown
from gapray.config import Config, ConfigError, load_config, to_dict

# See gapray/bench/loop.py: the tiny random model's judge makes no pair under the paper's rule.
TINY_DEFAULTS = ("pairs=best_worst", "pairs.min_chosen=0")


# ------------------------------------------------------------------------------ the runs


def make_plan(args: argparse.Namespace, scratch: Path) -> Plan:
    """Every config loaded and validated (and the budgets compared) before Ray starts."""
    from gapray.config import default_config_dir

    select: list[str] = []
    if args.model is not None:
        groups = {p.stem for p in (default_config_dir() / "model").glob("*.yaml")}
        select = [f"model={args.model}" if args.model in groups else f"model.name={args.model}"]
    user = list(args.overrides)
    # The table is the toy world's: its exact verifier is the evaluator of every row.
    common = [*select, "eval=toy", *user]
    if load_config(common).model.name == "tiny" and not any(o.startswith("pairs") for o in user):
        common = [*select, "eval=toy", *TINY_DEFAULTS, *user]
    if args.steps is not None:
        common.append(f"run.steps={args.steps}")
    rows = [ROW_BY_KEY[k] for k in args.rows]
    seeds = list(range(args.seeds))
    trained = [r for r in rows if r.overrides is not None]
    configs = {}
    for seed in seeds:
        for row in trained:
            out = scratch / f"{row.key}-seed{seed}"
            configs[row.key, seed] = load_config(
                [*common, *row.overrides, f"run.seed={seed}", f"run.out_dir={out}", "run.progress=false"]
            )
    ref = next(iter(configs.values()), None) or load_config([*common, "run.progress=false"])
    budgets = {key: _budget(cfg) for key, cfg in configs.items()}
    if len({tuple(b.values()) for b in budgets.values()}) > 1:
        lines = ", ".join(f"{k[0]} seed {k[1]}: {b}" for k, b in budgets.items())
        raise ConfigError(
            f"the trained rows' prompt budgets differ ({lines}); the table compares equal budgets"
        )
    return Plan(rows, seeds, common, configs, _budget(ref))


def _budget(cfg: Config) -> dict:
    r, c, g = cfg.run, cfg.curriculum, cfg.generation
    return {
        "steps": r.steps,
        "prompts_per_step": c.prompts_per_step,
        "images_per_prompt": g.images_per_prompt,
        "images": r.steps * c.prompts_per_step * g.images_per_prompt,
    }


def run_all(plan: Plan, on_run) -> list[dict]:
    """Every (seed, trained row) in one Ray session, seed by seed (an interrupted bench has every
    row for its first seeds). A run that fails is recorded with its error; the rest go on."""
    import ray

    from gapray.placement import connect_ray
    from gapray.run import execute

    runs: list[dict] = []
    keys = list(plan.configs)
    where = connect_ray(plan.configs[keys[0]]) if keys else None
    try:
        for i, (key, seed) in enumerate(keys, 1):
            row, cfg = ROW_BY_KEY[key], plan.configs[key, seed]
            tag = f"gapray bench paper: [{i}/{len(keys)}] seed {seed}, {row.label}"
            print(f"{tag}: start ({' '.join(row.overrides) or 'the default toy run'})", file=sys.stderr)
            t0 = time.perf_counter()
            rec = {"row": key, "seed": seed, "run_dir": cfg.run.out_dir}
            try:
                summary = execute(cfg, progress=False)
                rec |= {"start": _metrics(summary["start"]), "final": _metrics(summary["final"])}
                rec["version"] = summary.get("version")
            except Exception as err:  # recorded in the table; the other runs still go
                rec["error"] = f"{type(err).__name__}: {err}"
            rec["wall_s"] = round(time.perf_counter() - t0, 1)
            print(f"{tag}: {_run_line(rec)}", file=sys.stderr)
            runs.append(rec)
            on_run(runs)
    finally:
        if where == "local":
            ray.shutdown()
    return runs


def base_only_evals(plan: Plan) -> list[dict]:
    """Start evaluations when no trained row was asked for: the run's evaluation, in-process."""
    import torch

    from gapray.eval.base import run_local
    from gapray.eval.stage import eval_settings, make_evaluator
    from gapray.run import _threads
    from gapray.workers.generation import GenerationWorker

    out = []
    threads = torch.get_num_threads()
    try:
        for seed in plan.seeds:
            cfg = load_config([*plan.common, f"run.seed={seed}", "run.progress=false"])
            print(f"gapray bench paper: seed {seed}, base: start evaluation", file=sys.stderr)
            t0 = time.perf_counter()
            g = dataclasses.replace(cfg.generation, backend="hf")
            worker = GenerationWorker(cfg.model, g, _threads(cfg, g.cpus_per_worker))
            evaluator = make_evaluator(cfg.eval)
            results = run_local(evaluator, worker.model, None, eval_settings(cfg), limit=cfg.eval.limit)
            flat = {f"{evaluator.name}_{k}": v for k, v in evaluator.headline(results).items()}
            out.append({"seed": seed, "start": _metrics(flat), "wall_s": round(time.perf_counter() - t0, 1)})
    finally:
        torch.set_num_threads(threads)
    return out


def _metrics(m: dict) -> dict:
    """A run's flat evaluation metrics (toy_geneval_overall, toy_geneval_<tag>, ...) -> this
    table's record (geneval_overall, ..., geneval_per_tag)."""
    tags = {k.removeprefix("toy_geneval_"): v for k, v in m.items() if k.startswith("toy_geneval_")}
    tags.pop("overall", None)
    return {k: m.get(f"toy_{k}") for k in METRICS} | {"geneval_per_tag": tags}


def _run_line(rec: dict) -> str:
    if "error" in rec:
        return f"FAILED after {rec['wall_s']:.0f} s: {rec['error']}"
    s, f = rec["start"], rec["final"]
    parts = [f"{METRIC_NAMES[k]} {f3(s[k])} -> {f3(f[k])}" for k in METRICS[:3]]
    return f"done in {rec['wall_s']:.0f} s: " + ", ".join(parts)


# ---------------------------------------------------------------------------- the command
def bench(args: argparse.Namespace, argv: list[str], scratch: Path, out: Path) -> dict:
    from gapray.bench.loop import machine

    plan = make_plan(args, scratch)
    ref = next(iter(plan.configs.values()), None) or load_config([*plan.common, "run.progress=false"])
    if ref.model.name == "toy":
        from gapray.models import TOY_CHECKPOINT

        if not (TOY_CHECKPOINT / "config.json").is_file():
            raise ConfigError(
                f"the toy checkpoint is missing at {TOY_CHECKPOINT}; train it with `gapray toy pretrain`"
            )
    res = {
        "benchmark": "paper",
        "timestamp": time.strftime("%Y%m%d-%H%M%S"),
        "command": "gapray bench paper " + shlex.join(argv),
        "model": Path(ref.model.name).name or "model",
        "rows": [r.key for r in plan.rows],
        "row_overrides": {r.key: list(r.overrides) if r.overrides is not None else None for r in plan.rows},
        "seeds": plan.seeds,
        "common_overrides": plan.common,
        "budget": plan.budget,
        "eval": {
            "kind": ref.eval.kind,
            "images_per_prompt": ref.eval.images_per_prompt,
            "limit": ref.eval.limit,
        },
        "targets": {
            "rows": list(TARGET_ROWS),
            "exact_scene_gain": EXACT_GAIN,
            "exact_scene_interval": f"{INTERVAL_LEVEL:.0%} paired bootstrap interval above 0",
            "objects_per_image_rise": OBJECTS_RISE,
            "understanding_tolerance": UNDERSTANDING_TOLERANCE,
        },
        "machine": machine(),
        "complete": False,
        "runs": [],
        "base_runs": [],
        "config": to_dict(ref),
    }
    print(
        f"gapray bench paper: model {ref.model.name}, rows {', '.join(res['rows'])}, seeds {plan.seeds}, "
        f"{len(plan.configs)} run(s); common overrides: {' '.join(plan.common) or '(none)'}",
        file=sys.stderr,
    )

    def save(runs: list[dict]) -> None:
        res["runs"] = list(runs)
        res["table"] = aggregate(plan, res["runs"], res["base_runs"])
        res["machine"]["load_average_1m_end"] = _load()
        write(res, out)

    if plan.configs:
        run_all(plan, save)
    else:
        res["base_runs"] = base_only_evals(plan)
    res["complete"] = True
    save(res["runs"])
    return res


def write(res: dict, out: Path) -> tuple[Path, Path]:
    return write_results(out, f"paper-{res['model']}-{res['timestamp']}", res, markdown(res))


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="gapray bench paper", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", help="toy, tiny or a checkpoint directory (default: the run's model, toy)")
    ap.add_argument(
        "--seeds", type=int, default=5, help="seeds 0..N-1 via run.seed (default 5; intervals need 2+)"
    )
    ap.add_argument("--steps", type=int, help="steps of every trained row (default: the toy run's run.steps)")
    ap.add_argument(
        "--rows",
        default=",".join(r.key for r in ROWS),
        help=f"comma-separated subset of: {', '.join(r.key for r in ROWS)} (default all)",
    )
    ap.add_argument("--out", default="benchmarks/results", help="results folder (default benchmarks/results)")
    ap.add_argument("--scratch", help="keep the run directories here (default: a temporary folder, removed)")
    ap.add_argument("overrides", nargs="*", help="config overrides for every row, as for `gapray run`")
    args = ap.parse_args(argv)
    keys = [k.strip() for k in args.rows.split(",") if k.strip()]
    unknown = [k for k in keys if k not in ROW_BY_KEY]
    if unknown or not keys:
        ap.error(
            f"--rows: unknown row(s) {', '.join(unknown) or '(none given)'}; one of {', '.join(ROW_BY_KEY)}"
        )
    args.rows = [r.key for r in ROWS if r.key in keys]  # table order, no duplicates
    if args.seeds < 1:
        ap.error("--seeds must be >= 1")
    if args.steps is not None and args.steps < 1:
        ap.error("--steps must be >= 1")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.scratch:
        scratch = Path(args.scratch) / f"paper-{time.strftime('%Y%m%d-%H%M%S')}"
        scratch.mkdir(parents=True)
    else:
        scratch = Path(tempfile.mkdtemp(prefix="gapray-bench-paper-"))
    try:
        res = bench(args, argv, scratch, Path(args.out))
    except ConfigError as err:
        print(f"gapray bench paper: {err}", file=sys.stderr)
        return 2
    finally:
        if not args.scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    js, md = write(res, Path(args.out))
    print(markdown(res))
    print(f"results: {js} {md}", file=sys.stderr)
    return 0


def _load() -> float | None:
    import os

    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
