"""Bad input to `gapray run`: a clear error, a non-zero exit, and nothing already written damaged.

One test per row of docs/bad_inputs.md (the table quotes the messages these tests check).

    pytest tests/test_bad_inputs.py            # the rows that need no Ray (seconds)
    pytest -m ray tests/test_bad_inputs.py     # all rows (a local Ray; about two minutes)

Exit codes: 2 = refused before the loop started (nothing written); 1 = stopped mid-run (the
steps and checkpoints written so far stay valid, and the message says how to resume).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_RUN

from gapray.config import load_config
from gapray.models.tiny import tiny_janus
from gapray.placement import ResourceError, check_resources
from gapray.run import main
from gapray.storage import RunDir
from gapray.workers.generation import GenerationWorker

REPO = Path(__file__).resolve().parent.parent
TINY = [*TINY_RUN, "run.eval_every=100"]


def run_cli(capsys, *args: str) -> tuple[int, str]:
    """`gapray run ARGS` in this process; (exit code, the `gapray run: ...` message)."""
    capsys.readouterr()
    rc = main(list(args))
    err = capsys.readouterr().err
    lines = err.splitlines()
    first = next(
        (i for i, ln in enumerate(lines) if ln.startswith("gapray run: ") and " on Ray (" not in ln), None
    )
    return rc, "" if first is None else "\n".join(lines[first:]).strip()


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------ refused before Ray


def test_unknown_key_cli(tmp_path):
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(REPO)}
    res = subprocess.run(
        [sys.executable, "-m", "gapray.cli", "run", "run.stepz=3", f"run.out_dir={out}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    assert "gapray run: unknown key 'run.stepz'; did you mean 'run.steps'?" in res.stderr
    assert not out.exists()


def test_compiled_graph_sync_refuses_what_it_cannot_serve(tmp_path, capsys):
    out = tmp_path / "run"
    bad = ["sync.transport=compiled_graph", "learner.num_ranks=2", "run.pipeline=async", "generation=vllm"]
    rc, msg = run_cli(capsys, *bad, f"run.out_dir={out}")
    assert rc == 2
    assert "sync.transport='compiled_graph': compiled_graph needs learner.num_ranks=1" in msg
    assert "sync.transport='compiled_graph': compiled_graph needs run.pipeline=sync" in msg
    assert "sync.transport='compiled_graph': compiled_graph needs generation.backend=hf" in msg
    assert not out.exists()


def test_missing_model_path(tmp_path, capsys):
    out = tmp_path / "run"
    rc, msg = run_cli(capsys, "model.name=/nonexistent/Janus-Pro-7B", f"run.out_dir={out}")
    assert rc == 2
    assert (
        "model.name='/nonexistent/Janus-Pro-7B': must be 'toy', 'tiny', 'janus_pro_shape', 'showo_tiny', 'toy_showo' or an existing checkpoint directory"
        in msg
    )
    assert not out.exists()


def test_model_path_without_config_json(tmp_path, capsys):
    model, out = tmp_path / "Janus-Pro-7B", tmp_path / "run"
    model.mkdir()
    rc, msg = run_cli(capsys, f"model.name={model}", f"run.out_dir={out}")
    assert rc == 2
    assert (
        msg == f"gapray run: model path {model}: no config.json (not a save_pretrained checkpoint directory)"
    )
    assert not out.exists()


def test_model_path_with_unreadable_config_json(tmp_path, capsys):
    model, out = tmp_path / "Janus-Pro-7B", tmp_path / "run"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "janus", ')  # a copy cut short
    rc, msg = run_cli(capsys, f"model.name={model}", f"run.out_dir={out}")
    assert rc == 2
    assert msg.startswith(f"gapray run: model path {model}: config.json is malformed JSON: Expecting")
    assert not out.exists()


def test_malformed_prompt_file_names_file_and_line(tmp_path, capsys):
    prompts, out = tmp_path / "prompts.jsonl", tmp_path / "run"
    good = {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"}
    prompts.write_text(json.dumps(good) + "\n" + '{"tag": "single_object", "prompt": "a dog"\n')
    rc, msg = run_cli(capsys, *TINY, f"curriculum.prompts={prompts}", f"run.out_dir={out}")
    assert rc == 2
    assert msg.startswith(f"gapray run: {prompts} line 2: invalid JSON: ")
    assert not out.exists()


def test_prompt_record_missing_field(tmp_path, capsys):
    prompts, out = tmp_path / "prompts.jsonl", tmp_path / "run"
    prompts.write_text('{"tag": "single_object", "include": [{"class": "cat", "count": 1}]}\n')
    rc, msg = run_cli(capsys, *TINY, f"curriculum.prompts={prompts}", f"run.out_dir={out}")
    assert rc == 2
    assert msg == f"gapray run: {prompts} line 1: field 'prompt' must be a non-empty string"
    assert not out.exists()


def test_empty_prompt_set(tmp_path, capsys):
    prompts, out = tmp_path / "prompts.txt", tmp_path / "run"
    prompts.write_text("\n  \n")
    rc, msg = run_cli(capsys, *TINY, f"curriculum.prompts={prompts}", f"run.out_dir={out}")
    assert rc == 2
    assert msg == f"gapray run: {prompts}: no prompts in file"
    assert not out.exists()


def test_missing_prompt_file(tmp_path, capsys):
    prompts, out = tmp_path / "prompts.jsonl", tmp_path / "run"
    rc, msg = run_cli(capsys, *TINY, f"curriculum.prompts={prompts}", f"run.out_dir={out}")
    assert rc == 2
    assert f"curriculum.prompts='{prompts}': prompt file {prompts} does not exist" in msg
    assert not out.exists()


def test_resume_of_missing_run_dir(tmp_path, capsys):
    rc, msg = run_cli(capsys, f"resume={tmp_path / 'nope'}")
    assert rc == 2
    assert msg == f"gapray run: run.resume: {tmp_path / 'nope' / 'config.yaml'} does not exist"


def test_check_resources_names_roles_and_shortfall():
    cfg = load_config(["generation.num_workers=2", "generation.gpus_per_worker=1"])
    check_resources(cfg, {"CPU": 8.0, "GPU": 2.0})  # fits
    with pytest.raises(ResourceError) as e:
        check_resources(cfg, {"CPU": 8.0})
    msg = str(e.value)
    assert "the roles need 3 CPU, 2 GPU but the cluster has 8 CPU, 0 GPU (short of GPU)" in msg
    assert "generation: 2 x (1 CPU, 1 GPU)" in msg
    with pytest.raises(ResourceError, match=r"short of CPU"):
        check_resources(load_config(["learner.num_ranks=16"]), {"CPU": 4.0, "GPU": 0.0})


# --------------------------------------------------------------------------- on a local Ray


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    # The workers import BadTokensGenerationWorker from this file (pickled by reference).
    path = os.pathsep.join([str(Path(__file__).parent), str(REPO)])
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        configure_logging=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    yield ray
    ray.shutdown()


class BadTokensGenerationWorker(GenerationWorker):
    """From its second call on, returns token ids outside the codebook: images the judge's
    decoder cannot read (what a mismatched VQ or a corrupted transfer would produce)."""

    calls = 0

    def generate(self, *args, **kwargs):
        tokens, version = super().generate(*args, **kwargs)
        self.calls += 1
        if self.calls >= 2:
            tokens = tokens + np.int32(1 << 20)
        return tokens, version


@pytest.mark.ray
def test_not_enough_resources(ray_local, tmp_path, capsys):
    out = tmp_path / "run"
    rc, msg = run_cli(capsys, *TINY, "generation.gpus_per_worker=1", f"run.out_dir={out}")
    assert rc == 2
    assert (
        "gapray run: the roles need 2 CPU, 1 GPU but the cluster has 4 CPU, 0 GPU (short of GPU)." in msg
    ), msg
    assert not out.exists()


def test_model_path_without_weights(tmp_path, capsys):
    model, out = tmp_path / "Janus-Pro-7B", tmp_path / "run"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "janus"}')  # weights never copied
    rc, msg = run_cli(capsys, f"model.name={model}", f"run.out_dir={out}")
    assert rc == 2
    assert msg == f"gapray run: model path {model}: no weight files (*.safetensors)"
    assert not out.exists()


@pytest.mark.ray
def test_model_path_that_does_not_load(ray_local, tmp_path, capsys):
    model, out = tmp_path / "Janus-Pro-7B", tmp_path / "run"
    tiny_janus().save_pretrained(model)
    (model / "model.safetensors").write_bytes(b"not a safetensors file")  # a copy gone wrong
    rc, msg = run_cli(capsys, f"model.name={model}", f"run.out_dir={out}")
    assert rc == 2
    assert msg.startswith(
        f"gapray run: generation worker 0 failed to start: CheckpointError: model path {model}: "
        "cannot load a Janus checkpoint"
    ), msg
    assert not out.exists()


@pytest.mark.ray
def test_image_the_judge_cannot_read(ray_local, tmp_path, capsys, monkeypatch):
    import gapray.workers.generation as generation

    monkeypatch.setattr(generation, "GenerationWorker", BadTokensGenerationWorker)
    out = tmp_path / "run"
    rc, msg = run_cli(capsys, *TINY, "run.steps=3", "run.checkpoint_every=1", f"run.out_dir={out}")
    assert rc == 1
    assert msg.startswith(
        "gapray run: step 2: reward worker 0 failed in score on rows 0..15: "
        "ValueError: decode: token ids must lie in [0, "
    )
    assert f"Nothing of step 2 was written. Steps logged so far stay in {out}; its last checkpoint is " in msg
    assert f"Resume with: gapray run resume={out}" in msg
    run = RunDir(out)
    assert [m["step"] for m in run.read_metrics().to_pylist()] == [0, 1]
    assert run.read_rollouts().num_rows == 16
    run.verify_checkpoint(run.latest_checkpoint())


@pytest.mark.ray
def test_nan_loss_is_skipped_counted_and_stops_the_run(ray_local, tmp_path, capsys):
    out = tmp_path / "run"
    # lr=1e30 makes the weights inf within the first updates (when depends on the drawn prompts:
    # step 1's update alone in the first toy world, steps 1-2 in world v2): every later loss is NaN.
    args = [*TINY, "run.steps=6", "learner.lr=1e30", "learner.max_bad_steps=2", "run.checkpoint_every=1"]
    rc, msg = run_cli(capsys, *args, f"run.out_dir={out}")
    assert rc == 1
    stop = int(msg.removeprefix("gapray run: step ").split(":")[0])
    assert 3 <= stop < 6, msg
    assert msg == (
        f"gapray run: step {stop}: 2 optimizer steps in a row had a NaN/inf loss or gradient and were skipped "
        f"(learner.max_bad_steps=2); stopping. Steps logged so far stay in {out}; its last checkpoint is "
        f"checkpoints/step_{stop:07d}. Resume with: gapray run resume={out} (e.g. with a lower learner.lr)"
    )
    rows = RunDir(out).read_metrics().to_pylist()
    assert [m["step"] for m in rows] == list(range(stop + 1))
    # The last two steps were skipped; earlier ones updated (0.0) or had no pair to learn (None).
    assert [m["skipped_steps"] for m in rows[-2:]] == [1.0, 1.0]
    assert [m["bad_steps_in_a_row"] for m in rows[-2:]] == [1.0, 2.0]
    assert all(m["skipped_steps"] in (0.0, None) for m in rows[1:-2])
    # Skipped steps change no weights.
    assert rows[-1]["version"] == rows[-2]["version"] == rows[-3]["version"]


@pytest.mark.ray
def test_bad_override_on_resume_damages_nothing(ray_local, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(capsys, *TINY, "run.steps=1", f"run.out_dir={out}")[0] == 0
    before = snapshot(out)
    rc, msg = run_cli(capsys, f"resume={out}", "learner.lr=-1")
    assert rc == 2
    assert "learner.lr=-1.0: must be > 0" in msg
    assert snapshot(out) == before
