"""gapray/trackers.py: TensorBoard event files, a W&B offline run directory and an MLflow file
store hold a run's metrics under metrics.parquet's names, read back without any server
(tests/tracker_files.py); a tracker whose extra is missing is a config error naming the extra.

    PYTHONPATH=. python -m pytest tests/test_trackers.py -q
"""

from __future__ import annotations

import importlib.util
import math

import pytest
from conftest import TINY_RUN
from tracker_files import mlflow_metrics, tensorboard_scalars, wandb_history

from gapray.config import ConfigError, load_config
from gapray.trackers import MLflowTracker, TensorBoardTracker, WandbTracker, scalars

ROWS = [
    {"step": 0, "version": 0, "self_mean_p_yes": 0.25, "note": "text", "missing": None},
    {"step": 1, "version": 1, "loss": 0.69, "pairs": 4, "ok": True, "self_mean_p_yes": 0.5},
    {"step": 2, "version": 2, "loss": 0.5, "pairs": 3, "ok": False},
]


def _expected(rows) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for r in rows:
        for k, v in scalars(r).items():
            if k != "step" and math.isfinite(v):
                out.setdefault(k, {})[int(r["step"])] = v
    return out


def same(got: dict, want: dict) -> bool:
    """Same names, same steps, values equal to float32 precision (TensorBoard's)."""
    assert got.keys() == want.keys(), set(got) ^ set(want)
    for k in want:
        assert got[k].keys() == want[k].keys(), k
        assert all(math.isclose(got[k][s], v, rel_tol=1e-6, abs_tol=1e-7) for s, v in want[k].items()), k
    return True


def test_scalars_keep_numbers_only():
    assert scalars(ROWS[1]) == {
        "step": 1.0,
        "version": 1.0,
        "loss": 0.69,
        "pairs": 4.0,
        "ok": 1.0,
        "self_mean_p_yes": 0.5,
    }
    assert "note" not in scalars(ROWS[0]) and "missing" not in scalars(ROWS[0])


def test_each_tracker_holds_every_row_under_its_name(tmp_path):
    want = _expected(ROWS)
    for make in (
        lambda: TensorBoardTracker(tmp_path),
        lambda: WandbTracker(tmp_path, "gapray", "offline", {"run": {"steps": 2}}),
        lambda: MLflowTracker(tmp_path, None, {"run": {"steps": 2}}),
    ):
        tracker = make()
        for r in ROWS:
            tracker.log(int(r["step"]), r)
        tracker.close()
    assert same(tensorboard_scalars(tmp_path / "tensorboard"), want)
    assert same(wandb_history(tmp_path / "wandb"), want)
    runs = mlflow_metrics(tmp_path / "mlruns")
    assert list(runs) == [tmp_path.name] and same(runs[tmp_path.name], want)


@pytest.mark.parametrize(("tracker", "extra"), [("wandb", "gapray[wandb]"), ("mlflow", "gapray[mlflow]")])
def test_a_tracker_without_its_extra_is_a_config_error_naming_it(monkeypatch, tracker, extra):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == tracker else real(name, *a)
    )
    with pytest.raises(ConfigError) as err:
        load_config([f"run.trackers=[{tracker}]"])
    assert err.value.keys == ["run.trackers"] and extra in str(err.value)
    with pytest.raises(ConfigError, match=r"run\.trackers"):
        load_config(["run.trackers=[tensorboard,tensorboard]"])
    with pytest.raises(ConfigError, match=r"run\.wandb_mode"):
        load_config(["run.wandb_mode=sometimes"])


@pytest.mark.ray
@pytest.mark.slow
def test_a_run_and_its_resume_log_metrics_parquet_to_all_three(tmp_path):
    """One tiny 2-step run with every tracker, resumed for a third step: each tracker holds
    exactly the numeric columns of metrics.parquet (at the steps where they are finite), same
    names, same values."""
    pytest.importorskip("ray")
    from gapray.run import execute
    from gapray.storage import RunDir

    out = tmp_path / "run"
    cfg = load_config(
        [
            *TINY_RUN,
            "run.steps=2",
            "run.eval_every=0",
            "run.checkpoint_every=0",
            "run.threads_per_actor=1",
            "eval.limit=2",
            "eval.images_per_prompt=1",
            "run.trackers=[tensorboard,wandb,mlflow]",
            "run.wandb_mode=offline",
            f"run.out_dir={out}",
        ]
    )
    execute(cfg)
    # Resumed for one more step: the cumulative update count continues from the checkpoint.
    from gapray.config import from_run_dir

    execute(from_run_dir(out, ["run.steps=3"]))
    rows = RunDir(out).read_metrics().to_pylist()
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    want = _expected(rows)
    assert {"loss", "optimizer_updates", "self_mean_p_yes", "pairs", "time_step"} <= set(want)
    assert want["optimizer_updates"] == {0: 0.0, 1: 1.0, 2: 2.0, 3: 3.0}  # cumulative, across the resume
    assert same(tensorboard_scalars(out / "tensorboard"), want)
    assert same(wandb_history(out / "wandb"), want)
    runs = mlflow_metrics(out / "mlruns")
    assert list(runs) == ["run"] and same(runs["run"], want)


def test_a_resumed_run_hides_its_redone_steps_in_tensorboard(tmp_path):
    """A driver killed after logging step 2 but before its checkpoint: the resumed run redoes
    step 2 and goes on; TensorBoard (purge step) shows each step once, the redone value."""
    import time

    first = TensorBoardTracker(tmp_path)
    for r in ROWS:
        first.log(int(r["step"]), r)
    first.close()
    time.sleep(1.1)  # event files are named by the second they open in
    # the redone step 2 has no "ok": only the purge hides the killed run's ok at step 2
    redone = [
        {"step": 2, "version": 2, "loss": 0.4, "pairs": 5},
        {"step": 3, "version": 3, "loss": 0.3},
    ]
    second = TensorBoardTracker(tmp_path)
    for r in redone:
        second.log(int(r["step"]), r)
    second.close()
    got = tensorboard_scalars(tmp_path / "tensorboard")
    assert len(list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))) == 2
    assert got["loss"] == {1: pytest.approx(0.69), 2: pytest.approx(0.4), 3: pytest.approx(0.3)}
    assert got["pairs"] == {1: 4.0, 2: 5.0} and got["version"] == {0: 0.0, 1: 1.0, 2: 2.0, 3: 3.0}
    assert got["ok"] == {1: 1.0}
