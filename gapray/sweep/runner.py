"""`gapray sweep`: the driver. Validates every trial, runs them as Ray Tune trials, writes the
results table, the scaling plots and the HTML page.

    gapray sweep learner.beta=0.05,0.1,0.2 run.seed=0,1,2 model=tiny run.steps=20
    gapray sweep sweep=configs/my_sweep.yaml sweep.max_failures=2
    gapray sweep resume=runs/sweep-20261202-010000      # finished trials are not run again
    ray job submit --address http://HEAD:8265 --working-dir . -- gapray sweep ...

What happens, in order: the spec is parsed (gapray.sweep.spec); every trial's config is
composed and validated, and preflighted (prompt files, checkpoint directories, evaluator vs
model) before anything starts, naming the key at fault; Ray is joined (sweep.ray_address, else
RAY_ADDRESS as under `ray job submit`, else a local Ray); each trial's roles must fit the
cluster; then a Tune `Tuner` runs `gapray.sweep.trial.run_trial` over the param space (grid
axes as `tune.grid_search`, random ones as `tune.choice` / `tune.uniform` /
`tune.loguniform`), each trial in its own placement group (gapray.sweep.trial), as many at
once as the cluster holds (or sweep.max_concurrent), a failed trial retried up to
sweep.max_failures times (Tune's FailureConfig). The sweep directory holds

    sweep.yaml  trials.json          the spec (resume reads it) and each trial's status
    runs/<trial>/                    each trial's gapray run directory (+ trial.json, report/)
    tune/                            Tune's experiment state (Tuner.restore) and its loggers' files
    results.parquet results_grouped.parquet results.md   (gapray.sweep.table)
    plots/*.png  index.html          (gapray.sweep.plots, gapray.sweep.html)

The last line printed is {"sweep_dir": ..., "trials": N, "ok": K, "failed": F} as JSON.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import yaml

from gapray.config import ConfigError
from gapray.sweep import spec as specs
from gapray.sweep.spec import SweepSpec

log = logging.getLogger(__name__)
TUNE_NAME = "tune"


def param_space(spec: SweepSpec, sweep_dir: Path) -> dict:
    """Tune's param space: {"values": {key: tune.grid_search / choice / uniform / loguniform},
    "spec": the spec as a dict, "sweep_dir": str}."""
    from ray import tune

    values = {}
    for a in spec.axes:
        if a.kind == specs.GRID:
            values[a.key] = tune.grid_search(list(a.values))
        elif a.kind == specs.CHOICE:
            values[a.key] = tune.choice(list(a.values))
        elif a.kind == specs.UNIFORM:
            values[a.key] = tune.uniform(*a.values)
        else:
            values[a.key] = tune.loguniform(*a.values)
    return {"values": values, "spec": specs.to_dict(spec), "sweep_dir": str(sweep_dir)}


def check_trials(spec: SweepSpec):
    """Compose, validate and preflight the config of every point of `check_points(spec)`;
    returns the configs. A ConfigError names the trial's values and the key."""
    from gapray.config import load_config
    from gapray.run import preflight

    cfgs, seen = [], set()
    for values in specs.check_points(spec):
        try:
            cfg = load_config(specs.trial_overrides(spec, values))
            key = (cfg.model.name, repr(cfg.eval), cfg.curriculum.prompts)
            if key not in seen:  # preflight loads prompt sets and reads the model's image size
                preflight(cfg)
                seen.add(key)
        except ConfigError as err:
            raise ConfigError(f"trial {specs.trial_slug(values)}: {err}", err.keys) from None
        cfgs.append(cfg)
    return cfgs


def connect(spec: SweepSpec, cfgs) -> str:
    """Join sweep.ray_address / RAY_ADDRESS, else start a local Ray that holds the largest
    trial; then check every trial fits the cluster (gapray.placement.check_resources)."""
    import ray

    from gapray.placement import check_resources, total_request

    if ray.is_initialized():
        where = "existing"
    elif spec.ray_address or os.environ.get("RAY_ADDRESS"):
        where = spec.ray_address or os.environ["RAY_ADDRESS"]
        ray.init(address=where, log_to_driver=True)
    else:
        need = max(total_request(c)["CPU"] for c in cfgs)
        ray.init(
            num_cpus=max(os.cpu_count() or 1, int(need + 0.999)),
            include_dashboard=False,
            configure_logging=False,
        )
        where = "local"
    available = ray.cluster_resources()
    for cfg in cfgs:
        check_resources(cfg, available)
    return where


def run_sweep(spec: SweepSpec, sweep_dir: Path, resume: bool = False) -> dict:
    """Run (or continue) the sweep in `sweep_dir`; returns what the last line prints."""
    import ray
    from ray import tune

    from gapray.sweep.trial import run_trial, trial_dir, trial_resources
    from gapray.trackers import tune_callbacks

    cfgs = check_trials(spec)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump(specs.to_dict(spec), sort_keys=False))
    # Trials read paths (prompt files, checkpoints) relative to where the sweep was started, as
    # `gapray run` does, not from Tune's trial directory; and Tune saves its experiment state
    # every second, so a killed driver's finished trials are known as finished on resume.
    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    where = connect(spec, cfgs)
    print(
        f"gapray sweep: {sweep_dir} on Ray ({where}), {len(specs.grid_points(spec)) * spec.num_samples} trials",
        file=sys.stderr,
    )
    trainable = tune.with_resources(run_trial, resources=trial_resources)
    run_config = tune.RunConfig(
        name=TUNE_NAME,
        storage_path=str(sweep_dir),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        callbacks=tune_callbacks(cfgs[0], sweep_dir, spec.name),
        verbose=1,
    )
    try:
        if resume:
            tuner = tune.Tuner.restore(str(sweep_dir / TUNE_NAME), trainable, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=param_space(spec, sweep_dir),
                tune_config=tune.TuneConfig(
                    num_samples=spec.num_samples,
                    max_concurrent_trials=spec.max_concurrent or None,
                    reuse_actors=False,
                    trial_dirname_creator=trial_dirname,
                ),
                run_config=run_config,
            )
        grid = tuner.fit()
        trials = []
        for result in grid:
            config = result.config
            # trial_<id> (trial_dirname below): the id names the run directory of random sweeps
            tid = Path(result.path).name.removeprefix("trial_")
            trials.append(
                {
                    "values": config["values"],
                    "run_dir": str(trial_dir(config, tid)),
                    "status": "error" if result.error else "ok",
                    "error": None
                    if result.error is None
                    else f"{type(result.error).__name__}: {result.error}"[:2000],
                }
            )
    finally:
        if where == "local":
            ray.shutdown()
    (sweep_dir / "trials.json").write_text(json.dumps(trials, indent=1, default=str))
    write_results(spec, sweep_dir, trials)
    ok = sum(t["status"] == "ok" for t in trials)
    return {"sweep_dir": str(sweep_dir), "trials": len(trials), "ok": ok, "failed": len(trials) - ok}


def trial_dirname(trial) -> str:
    """Tune's directory of a trial (under tune/): trial_<id>; its gapray run is runs/<values>."""
    return f"trial_{trial.trial_id}"


def write_results(spec: SweepSpec, sweep_dir: Path, trials: list[dict]) -> dict[str, Path]:
    """results.parquet / results_grouped.parquet / results.md, plots/*.png, each trial's
    report and index.html, from the trials' run directories."""
    import pyarrow.parquet as pq

    from gapray.report import build_report
    from gapray.storage.atomic import atomic_path, atomic_write_text
    from gapray.sweep import html, plots, table

    axes = [a.key for a in spec.axes]
    rows = []
    for t in trials:
        rows.append(table.trial_row(Path(t["run_dir"]), t["values"], t["status"], t["error"]))
    grouped = table.group_over_seeds(rows, axes, spec.seed_key, spec.bootstrap)
    for name, data in (("results.parquet", rows), ("results_grouped.parquet", grouped)):
        with atomic_path(sweep_dir / name) as tmp:
            pq.write_table(table.to_arrow(data), tmp)
    atomic_write_text(
        sweep_dir / "results.md",
        f"# gapray sweep {spec.name}\n\n" + table.markdown(rows, grouped, axes, spec.seed_key),
    )
    metrics = table.headline(sorted({c[: -len("_delta")] for r in rows for c in r if c.endswith("_delta")}))
    files = plots.plot_all(rows, grouped, metrics, axes, spec.seed_key, sweep_dir / "plots")
    reports = {}
    for t, r in zip(trials, rows, strict=True):
        if r["status"] == "ok" and (Path(t["run_dir"]) / "summary.json").is_file():
            reports[r["trial"]] = build_report(t["run_dir"])
    page = html.write_page(sweep_dir, spec.name, rows, grouped, metrics, axes, spec.seed_key, files, reports)
    return {"page": page, "table": sweep_dir / "results.parquet", "plots": sweep_dir / "plots"}


def main(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        print("sweep options (sweep.<option>=value, or keys of a sweep YAML):")
        import dataclasses

        from gapray.config import field_docs  # noqa: F401  (the run keys: python -m gapray.config --help)

        for f in dataclasses.fields(SweepSpec):
            if f.name in specs.OPTION_KEYS:
                print(f"  sweep.{f.name} (default {f.default!r})")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from gapray.placement import ResourceError

    resume = [a.partition("=")[2] for a in argv if a.partition("=")[0] == "resume"]
    try:
        if resume:
            sweep_dir = Path(resume[-1]).resolve()
            saved = sweep_dir / "sweep.yaml"
            if not saved.is_file():
                raise ConfigError(f"resume: {saved} does not exist (not a sweep directory)", ["resume"])
            if len(argv) > 1:
                raise ConfigError(
                    "resume=DIR takes no other arguments: the sweep is the one saved there", ["resume"]
                )
            spec = specs.from_dict(yaml.safe_load(saved.read_text()))
            specs.check(spec)
        else:
            spec = specs.parse_args(argv)
            sweep_dir = specs.resolve_out_dir(spec)
        out = run_sweep(spec, sweep_dir, resume=bool(resume))
    except (ConfigError, ResourceError) as err:
        print(f"gapray sweep: {err}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0 if out["failed"] == 0 else 1
