"""The run directory: atomic writes, per-step Parquet parts, verified checkpoints.

PYTHONPATH=. pytest tests/test_storage.py
"""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from gapray.storage import CorruptCheckpointError, RunDir
from gapray.storage.atomic import atomic_write


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# --- atomic writes ------------------------------------------------------------------------------


def test_atomic_writes_leave_no_temp_files(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_json("a/b.json", {"x": 1, "y": np.float32(0.5)})
    run.write_text("note.txt", "hi\n")
    run.write_bytes("blob.bin", b"\x00\x01")
    assert run.read_json("a/b.json") == {"x": 1, "y": 0.5}
    assert _files(run.root) == ["a/b.json", "blob.bin", "note.txt"]


def test_exception_mid_write_keeps_old_file(tmp_path):
    run = RunDir(tmp_path)
    run.write_text("state.json", "old")

    def half_then_crash(f):
        f.write(b"new but incomp")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_write(run.path("state.json"), half_then_crash)
    assert run.path("state.json").read_text() == "old"
    assert _files(tmp_path) == ["state.json"]


def test_config_and_summary(tmp_path):
    run = RunDir(tmp_path)
    run.write_config({"model": {"name": "toy", "lr": 1e-4}, "steps": (1, 2)})
    text = run.path("config.yaml").read_text()
    assert "name: toy" in text and "- 1" in text
    run.write_summary({"final_geneval": 0.5})
    assert run.read_json("summary.json") == {"final_geneval": 0.5}


def test_open_missing_run_dir_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        RunDir(tmp_path / "nope", create=False)


# --- metrics ------------------------------------------------------------------------------------


def test_metrics_rewrite_replaces_step_and_reads_sorted(tmp_path):
    run = RunDir(tmp_path)
    for step in (3, 1, 2):
        run.log_metrics(step, {"loss": float(step), "phase": "train"})
    run.log_metrics(2, {"loss": 20.0, "phase": "resumed"})  # a resumed run redoes step 2
    t = run.read_metrics()
    assert t.column("step").to_pylist() == [1, 2, 3]
    assert t.column("loss").to_pylist() == [1.0, 20.0, 3.0]
    assert t.column("phase").to_pylist() == ["train", "resumed", "train"]
    assert _files(tmp_path / "metrics") == [f"step_{s:07d}.parquet" for s in (1, 2, 3)]


def test_metrics_mixed_schemas(tmp_path):
    run = RunDir(tmp_path)
    run.log_metrics(0, {"loss": 1, "n": 4})  # int loss
    run.log_metrics(1, {"loss": 0.5, "geneval_overall": np.float64(0.25)})  # float loss, eval column
    run.log_metrics(2, {"loss": None, "tag": "x"})
    run.log_metrics(3, {"tag": 7})  # a logging slip: str in one step, int in another
    t = run.read_metrics()
    assert t.schema.field("loss").type == pa.float64()
    assert t.column("loss").to_pylist() == [1.0, 0.5, None, None]
    assert t.column("n").to_pylist() == [4, None, None, None]
    assert t.column("geneval_overall").to_pylist() == [None, 0.25, None, None]
    assert t.column("tag").to_pylist() == [None, None, "x", "7"]
    assert t.column_names[0] == "step"


def test_metrics_consolidate_and_step_check(tmp_path):
    run = RunDir(tmp_path)
    run.log_metrics(5, {"loss": 0.1})
    run.log_metrics(4, {"loss": 0.2})
    run.consolidate()
    t = pq.read_table(run.path("metrics.parquet"))  # readable without gapray
    assert t.column("step").to_pylist() == [4, 5]
    with pytest.raises(ValueError, match="step"):
        run.log_metrics(6, {"step": 7})
    with pytest.raises(TypeError, match="loss"):
        run.log_metrics(6, {"loss": [1.0]})
    assert RunDir(tmp_path).read_metrics().num_rows == 2
    assert RunDir(tmp_path / "empty").read_metrics().num_rows == 0


# --- rollouts and images ------------------------------------------------------------------------


def test_rollouts_round_trip_with_token_arrays(tmp_path):
    run = RunDir(tmp_path)
    tokens = np.arange(12, dtype=np.int32).reshape(3, 4)  # (N, T)
    cols = {
        "prompt_id": ["a", "a", "b"],
        "prompt": ["a red cube", "a red cube", "two balls"],
        "sample_index": [0, 1, 0],
        "seed": np.array([2**40, 2**40 + 1, 7], dtype=np.int64),
        "version": [3, 3, 3],
        "tokens": tokens,
        "p_yes": np.array([0.9, 0.2, 0.5]),
        "accepted": [True, False, True],
    }
    run.log_rollouts(2, cols)
    run.log_rollouts(1, {**cols, "tokens": [np.array([1, 2], dtype=np.int32)] * 3})  # ragged form
    t = run.read_rollouts()
    assert t.schema.field("tokens").type == pa.list_(pa.int32())
    assert t.column("step").to_pylist() == [1, 1, 1, 2, 2, 2]
    two = run.read_rollouts(2)
    assert np.array_equal(np.array(two.column("tokens").to_pylist()), tokens)
    assert two.column("seed").to_pylist()[0] == 2**40
    assert two.column("accepted").to_pylist() == [True, False, True]
    with pytest.raises(ValueError, match="lengths"):
        run.log_rollouts(3, {"a": [1, 2], "b": [1]})


def test_save_images_geneval_layout(tmp_path):
    run = RunDir(tmp_path)
    img = Image.new("RGB", (8, 8), (255, 0, 0))
    meta = {"tag": "single_object", "prompt": "a photo of a cube", "include": [{"class": "cube", "count": 1}]}
    out = run.save_images(7, [(0, meta, [img, img]), (12, meta, [img])])
    assert out == tmp_path / "samples" / "step_0000007"
    assert _files(out) == [
        "00000/metadata.jsonl",
        "00000/samples/0000.png",
        "00000/samples/0001.png",
        "00012/metadata.jsonl",
        "00012/samples/0000.png",
    ]
    assert json.loads((out / "00000" / "metadata.jsonl").read_text()) == meta
    assert Image.open(out / "00012" / "samples" / "0000.png").getpixel((0, 0)) == (255, 0, 0)


# --- checkpoints --------------------------------------------------------------------------------


def _save_model(d):
    (d / "config.json").write_text('{"model_type": "toy"}')
    (d / "model.safetensors").write_bytes(os.urandom(4096))


def _state(step):
    return {"step": step, "version": step, "optimizer": {"m": torch.ones(3) * step}, "rng": np.arange(3)}


def test_checkpoint_save_verify_latest_and_load(tmp_path):
    run = RunDir(tmp_path)
    assert run.latest_checkpoint() is None
    p10 = run.save_checkpoint(10, _save_model, _state(10))
    p20 = run.save_checkpoint(20, _save_model, _state(20))
    assert p20 == tmp_path / "checkpoints" / "step_0000020"
    assert run.latest_checkpoint() == p20
    run.verify_checkpoint(p10)
    manifest = json.loads((p20 / "MANIFEST.json").read_text())
    assert sorted(f["path"] for f in manifest["files"]) == [
        "config.json",
        "model.safetensors",
        "trainer_state.pt",
    ]
    state = run.load_trainer_state(p20)
    assert state["step"] == 20 and torch.equal(state["optimizer"]["m"], torch.full((3,), 20.0))
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


def test_truncated_weights_name_file_and_previous_good(tmp_path):
    run = RunDir(tmp_path)
    run.save_checkpoint(10, _save_model, _state(10))
    p20 = run.save_checkpoint(20, _save_model, _state(20))
    weights = p20 / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CorruptCheckpointError) as info:
        run.latest_checkpoint()
    err = info.value
    assert err.file == "model.safetensors" and "truncated" in err.reason
    assert err.previous_good == tmp_path / "checkpoints" / "step_0000010"
    msg = str(err)
    assert "checkpoints/step_0000020" in msg and "model.safetensors" in msg
    assert "previous good checkpoint is checkpoints/step_0000010" in msg
    assert pickle.loads(pickle.dumps(err)).previous_good == err.previous_good
    assert run.latest_checkpoint(verify=False) == p20


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: (p / "MANIFEST.json").unlink(), "missing manifest"),
        (lambda p: (p / "config.json").unlink(), "missing file"),
        (lambda p: (p / "config.json").write_text('{"model_type": "toY"}'), "sha256 mismatch"),
        (lambda p: (p / "config.json").write_text('{"model_type": "toy", "x": 1}'), "size mismatch"),
    ],
)
def test_verify_detects_damage(tmp_path, damage, reason):
    run = RunDir(tmp_path)
    p = run.save_checkpoint(1, _save_model, _state(1))
    damage(p)
    with pytest.raises(CorruptCheckpointError, match=reason) as info:
        run.verify_checkpoint(p)
    assert info.value.previous_good is None
    with pytest.raises(CorruptCheckpointError):
        run.latest_checkpoint()


def test_leftover_tmp_checkpoint_ignored_then_cleaned(tmp_path):
    run = RunDir(tmp_path)
    p10 = run.save_checkpoint(10, _save_model, _state(10))
    leftover = tmp_path / "checkpoints" / ".tmp-step_0000020"  # a run killed mid-checkpoint
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half")
    assert run.latest_checkpoint() == p10
    run.save_checkpoint(11, _save_model, _state(11))
    assert not leftover.exists()


def test_failed_save_keeps_previous(tmp_path):
    run = RunDir(tmp_path)
    p10 = run.save_checkpoint(10, _save_model, _state(10))

    def crash(d):
        (d / "model.safetensors").write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        run.save_checkpoint(20, crash, _state(20))
    assert run.latest_checkpoint() == p10


def test_keep_rotation_and_resave_same_step(tmp_path):
    run = RunDir(tmp_path)
    for step in (1, 2, 3, 4):
        run.save_checkpoint(step, _save_model, _state(step), keep=2)
    assert [p.name for p in run.list_checkpoints()] == ["step_0000003", "step_0000004"]
    run.save_checkpoint(4, _save_model, _state(40), keep=2)  # a resumed run redoes step 4
    assert run.load_trainer_state(run.latest_checkpoint())["step"] == 40
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_0000003", "step_0000004"]
    with pytest.raises(ValueError, match=r"keep must be an int >= 0 \(0 = keep all\), got -1"):
        run.save_checkpoint(5, _save_model, _state(5), keep=-1)
    assert [p.name for p in run.list_checkpoints()] == ["step_0000003", "step_0000004"]  # nothing written


def test_keep_zero_keeps_every_checkpoint(tmp_path):
    # run.keep_checkpoints=0 is documented "keep all"
    run = RunDir(tmp_path)
    for step in (10, 20, 30, 40, 50):
        run.save_checkpoint(step, _save_model, _state(step), keep=0)
    names = ["step_0000010", "step_0000020", "step_0000030", "step_0000040", "step_0000050"]
    assert [p.name for p in run.list_checkpoints()] == names
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == names  # no temp/trash left
    for p in run.list_checkpoints():
        run.verify_checkpoint(p)
    assert run.load_trainer_state(run.latest_checkpoint())["step"] == 50
    # a later save with keep=2 (a resumed run with another setting) prunes down to the newest two
    run.save_checkpoint(60, _save_model, _state(60), keep=2)
    assert [p.name for p in run.list_checkpoints()] == ["step_0000050", "step_0000060"]
