"""Experiment trackers: every metrics row of a run, under its metrics.parquet names, to
TensorBoard, Weights & Biases or MLflow.

Where it sits: beside the run directory. The controller calls `tracker.log(step, row)` with the
very row it writes to `metrics/step_N.parquet` (so a tracker's names are the Parquet columns,
`step` is the x axis), and `gapray.run.execute` opens the trackers of `run.trackers` and closes
them when the run ends. In a sweep (`gapray sweep`) the trial reports each row to Ray Tune
instead (`TuneReport`) and Tune's own logger callbacks (`tune_callbacks`) write TensorBoard,
W&B and MLflow for every trial.

    gapray run run.trackers=[tensorboard,wandb] run.wandb_mode=offline
    gapray run run.trackers=[mlflow]             # file store in <run dir>/mlruns
    gapray run run.trackers=[]                   # none

tensorboard (tensorboardX) is a dependency of gapray; wandb and mlflow are the extras
`gapray[wandb]` and `gapray[mlflow]`, and asking for one that is not installed is a config
error naming the extra (`missing_extra`), raised before any actor starts.
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

TRACKERS = ("tensorboard", "wandb", "mlflow")
# tracker -> (module it imports, what to install)
EXTRAS = {
    "tensorboard": ("tensorboardX", "gapray (tensorboardX is a dependency: pip install tensorboardX)"),
    "wandb": ("wandb", "the gapray[wandb] extra: pip install 'gapray[wandb]'"),
    "mlflow": ("mlflow", "the gapray[mlflow] extra: pip install 'gapray[mlflow]'"),
}
MLFLOW_EXPERIMENT = "gapray"


class Tracker(Protocol):
    def log(self, step: int, row: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


def missing_extra(name: str) -> str | None:
    """None if tracker `name` can be used here, else what to install (the extra named)."""
    module, install = EXTRAS[name]
    return (
        None
        if importlib.util.find_spec(module) is not None
        else f"{module} is not installed; install {install}"
    )


def scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The numeric values of a metrics row as floats (bools as 0/1); None and text are left
    out, as no tracker plots them. NaN stays: it is what the step logged."""
    out = {}
    for k, v in row.items():
        if hasattr(v, "item") and getattr(v, "ndim", 0) == 0:
            v = v.item()
        if isinstance(v, bool | int | float) and v is not None:
            out[k] = float(v)
    return out


class TensorBoardTracker:
    """Scalars in `<run dir>/tensorboard/events.out.tfevents.*`, one tag per metric name.

    The event file opens at the first row, with that row's step as TensorBoard's purge step: a
    resumed run that redoes steps T.. (a driver killed after logging step T but before its
    checkpoint) writes a new file that hides the killed run's events at steps >= T, so
    TensorBoard shows each step once, as metrics/ has it."""

    def __init__(self, run_dir: Path):
        import tensorboardX  # noqa: F401  (fail here, before the run, if the extra is missing)

        self.logdir = Path(run_dir) / "tensorboard"
        self.writer = None

    def log(self, step: int, row: Mapping[str, Any]) -> None:
        if self.writer is None:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(logdir=str(self.logdir), flush_secs=30, purge_step=step)
        for k, v in scalars(row).items():
            if k != "step":
                self.writer.add_scalar(k, v, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class WandbTracker:
    """A W&B run named after the run directory, its files in `<run dir>/wandb`; each row is
    one `wandb.log(row, step=step)`. Offline mode (run.wandb_mode=offline) writes only there."""

    def __init__(self, run_dir: Path, project: str, mode: str | None, config: dict):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(
            project=project,
            name=Path(run_dir).name,
            dir=str(run_dir),
            mode=mode,
            config=config,
            reinit="create_new",
        )
        self.last = -1

    def log(self, step: int, row: Mapping[str, Any]) -> None:
        # W&B steps only grow: a resumed run's redone steps (already logged) are not sent again.
        if step <= self.last:
            return
        self.run.log({k: v for k, v in scalars(row).items() if k != "step"}, step=step)
        self.last = step

    def close(self) -> None:
        self.run.finish()


class MLflowTracker:
    """An MLflow run (experiment "gapray", run name = the run directory's) in the tracking URI,
    by default a file store in `<run dir>/mlruns`; each row is one log_batch at its step."""

    def __init__(self, run_dir: Path, uri: str | None, config: dict):
        from mlflow.tracking import MlflowClient

        self.uri = uri or (Path(run_dir).resolve() / "mlruns").as_uri()
        allow_file_store(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        exp = self.client.get_experiment_by_name(MLFLOW_EXPERIMENT)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(MLFLOW_EXPERIMENT)
        self.run_id = self.client.create_run(exp_id, run_name=Path(run_dir).name).info.run_id
        params = _flat(config)
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:500]) for k, v in params.items()])

    def log(self, step: int, row: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in scalars(row).items() if k != "step"]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class TuneReport:
    """Inside a `gapray sweep` trial: each row goes to `ray.tune.report`, and Tune's logger
    callbacks (TensorBoard, W&B, MLflow: `tune_callbacks`) write it for the trial."""

    def log(self, step: int, row: Mapping[str, Any]) -> None:
        from ray import tune

        tune.report({k: v for k, v in scalars(row).items() if math.isfinite(v) or k == "step"})

    def close(self) -> None:
        pass


def open_trackers(cfg, run_dir: Path) -> list[Tracker]:
    """The trackers of `cfg.run.trackers` for a run writing to `run_dir`."""
    from gapray.config import to_dict

    out: list[Tracker] = []
    for name in cfg.run.trackers:
        if name == "tensorboard":
            out.append(TensorBoardTracker(run_dir))
        elif name == "wandb":
            out.append(WandbTracker(run_dir, cfg.run.wandb_project, cfg.run.wandb_mode, to_dict(cfg)))
        elif name == "mlflow":
            out.append(MLflowTracker(run_dir, cfg.run.mlflow_uri, to_dict(cfg)))
        else:
            raise ValueError(f"run.trackers: unknown tracker {name!r}; choose from {TRACKERS}")
    return out


def close_all(trackers: list[Tracker]) -> None:
    for t in trackers:
        t.close()


def tune_callbacks(cfg, sweep_dir: Path, sweep_name: str) -> list:
    """Ray Tune's own logger callbacks for `cfg.run.trackers` in a sweep: TBXLoggerCallback
    (event files in each trial's Tune directory, tags "ray/tune/<metric>"),
    WandbLoggerCallback (one W&B run per trial, group = the sweep) and MLflowLoggerCallback (one
    MLflow run per trial; default store <sweep dir>/mlruns)."""
    out = []
    for name in cfg.run.trackers:
        if name == "tensorboard":
            from ray.tune.logger import TBXLoggerCallback

            out.append(TBXLoggerCallback())
        elif name == "wandb":
            from ray.air.integrations.wandb import WandbLoggerCallback

            kwargs = {"mode": cfg.run.wandb_mode} if cfg.run.wandb_mode else {}
            if cfg.run.wandb_mode == "offline":
                # Tune's callback asks for an API key unless WANDB_MODE says offline.
                os.environ["WANDB_MODE"] = "offline"
            out.append(
                WandbLoggerCallback(
                    project=cfg.run.wandb_project, group=sweep_name, dir=str(sweep_dir), **kwargs
                )
            )
        elif name == "mlflow":
            from ray.air.integrations.mlflow import MLflowLoggerCallback

            uri = cfg.run.mlflow_uri or (Path(sweep_dir).resolve() / "mlruns").as_uri()
            allow_file_store(uri)
            out.append(
                MLflowLoggerCallback(tracking_uri=uri, experiment_name=sweep_name, save_artifact=False)
            )
    return out


def allow_file_store(uri: str) -> None:
    """MLflow 3 refuses its file store (`file:` URIs, gapray's default: a directory anyone can
    copy, readable by the MLflow UI) unless MLFLOW_ALLOW_FILE_STORE is set; the database
    backends need the full `mlflow` package, not the skinny client of gapray[mlflow]."""
    if uri.startswith("file:") or "://" not in uri:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out
