"""One sweep trial = one whole `gapray run`, inside the placement group Ray Tune reserved for it.

Where it sits: `gapray.sweep.runner` hands `run_trial` to a Tune `Tuner`, wrapped by
`tune.with_resources(run_trial, trial_resources)`. Each trial's resources are its roles'
requests as one `PlacementGroupFactory`:

    [{}]  +  one bundle per actor of gapray.placement.role_bundles(cfg)
             (generation workers, reward workers, learner ranks: {"CPU": c, "GPU": g} each)

How the roles land in the trial's bundles (the clean way, from Ray Tune's placement-group
docs): Tune creates the trial's placement group before the trial starts, so a trial starts only
when all its roles fit, and as many trials run at once as the cluster holds. The empty first
(head) bundle means the trainable itself, which only drives the loop (like `gapray run`'s
driver), reserves nothing: Tune then drops that bundle from the group and schedules the
trainable on bundle 0 with zero resources, and the group's bundles are exactly the roles'. Inside
the trial, `ray.util.get_current_placement_group()` is that group (Tune schedules the trainable
with placement_group_capture_child_tasks), and `gapray.run.execute(cfg, within=(group, first))`
places each actor explicitly on its bundle (`gapray.placement.place_roles(within=...)`) instead
of creating placement groups of its own; creating new ones inside a trial would ask the cluster
for resources a second time, beside the trial's reservation, and could deadlock a full cluster.
The trial never removes the group: Tune frees it when the trial ends.

Every metrics row goes to `ray.tune.report` (gapray.trackers.TuneReport), so Tune's logger
callbacks (TensorBoard, W&B, MLflow) see the run's metrics under metrics.parquet's names.

Resuming: a trial whose run directory holds summary.json finished earlier (e.g. before the
sweep driver was killed) and is not run again: it reports its last row and returns. One that
holds config.yaml but no summary was interrupted or failed (a Tune retry, or `gapray sweep
resume=DIR`): it continues that run from its last checkpoint (`gapray run resume=` semantics).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from gapray.sweep.spec import from_dict, trial_overrides, trial_slug

TRIAL_FILE = "trial.json"  # in each trial's run directory: values, overrides, attempts


def trial_config(config: dict):
    """The validated gapray Config of the trial whose Tune config is `config`."""
    from gapray.config import load_config

    spec = from_dict(config["spec"])
    run_dir = trial_dir(config)
    # quoted: the directory's name holds "=" and "," (hydra's override syntax)
    return load_config([*trial_overrides(spec, config["values"]), f"run.out_dir='{run_dir}'"])


def trial_dir(config: dict, trial_id: str | None = None) -> Path:
    spec = from_dict(config["spec"])
    random = any(a.kind != "grid" for a in spec.axes)
    if random and trial_id is None:
        from ray import tune

        trial_id = tune.get_context().get_trial_id()
    return Path(config["sweep_dir"]) / "runs" / trial_slug(config["values"], trial_id if random else None)


def trial_resources(config: dict):
    """Tune's PlacementGroupFactory for one trial: an empty head bundle (the trainable) and one
    bundle per actor of its roles (see the module docstring)."""
    from ray.tune import PlacementGroupFactory

    from gapray.config import load_config
    from gapray.placement import role_bundles

    spec = from_dict(config["spec"])
    cfg = load_config(trial_overrides(spec, config["values"]))
    return PlacementGroupFactory([{}, *(b for _, b in role_bundles(cfg))], strategy="PACK")


def run_trial(config: dict) -> None:
    """Tune's function trainable: run (or continue, or skip) the trial's gapray run."""
    from ray import tune
    from ray.util import get_current_placement_group

    from gapray.config import from_run_dir
    from gapray.placement import role_bundles
    from gapray.run import execute
    from gapray.trackers import TuneReport

    run_dir = trial_dir(config)
    record = _read(run_dir)
    if (run_dir / "summary.json").is_file():
        # Finished before: report its final row so Tune records the trial as done, run nothing.
        tune.report({"step": float(record.get("steps", 0)), "finished_before": 1.0})
        return
    resume = (run_dir / "config.yaml").is_file()
    cfg = from_run_dir(run_dir, ["run.progress=false"]) if resume else trial_config(config)
    pg = get_current_placement_group()
    within = None
    if pg is not None:
        within = (pg, len(pg.bundle_specs) - len(role_bundles(cfg)))
    attempt = {"start": time.time(), "resumed": resume, "trial_id": tune.get_context().get_trial_id()}
    record.setdefault("values", config["values"])
    record.setdefault("overrides", trial_overrides(from_dict(config["spec"]), config["values"]))
    record["attempts"] = [*record.get("attempts", []), attempt]
    _write(run_dir, record)
    try:
        summary = execute(cfg, progress=False, trackers=[TuneReport()], within=within)
    except BaseException as err:
        attempt.update(end=time.time(), error=f"{type(err).__name__}: {err}"[:2000])
        _write(run_dir, record)
        raise
    attempt["end"] = time.time()
    record["steps"] = summary["steps"]
    _write(run_dir, record)


def _read(run_dir: Path) -> dict[str, Any]:
    p = run_dir / TRIAL_FILE
    return json.loads(p.read_text()) if p.is_file() else {}


def _write(run_dir: Path, record: dict) -> None:
    from gapray.storage.atomic import atomic_write_text

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / TRIAL_FILE, json.dumps(record, indent=1, default=str))
