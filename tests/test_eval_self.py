"""The evaluation stage for any model (gapray/eval/): the self evaluator's metrics on hand-set
verdicts, its GenEval folder export read the way GenEval's own evaluate_images.py walks it,
shares that add up to the whole, and preflight refusing eval=toy for a model of another size.

    PYTHONPATH=. python -m pytest tests/test_eval_self.py -q
"""

from __future__ import annotations

import json
import os
import re

import pytest
from PIL import Image

from gapray.config import ConfigError, load_config
from gapray.eval.base import EvalSettings, EvalShare, merge_shares, run_local
from gapray.eval.images import eval_seeds, grid_rows
from gapray.eval.self_eval import SelfEvaluator, gap_metrics
from gapray.models.tiny import tiny_janus

N = 2
SETTINGS = EvalSettings(images_per_prompt=N, cfg_scale=3.0, temperature=1.0, seed=0, batch_size=4)


def test_gap_metrics_hand_computed():
    tags = ["a", "a", "b", "b", "b", None]
    p_yes = [0.9, 0.2, 0.6, 0.4, 0.1, 0.5]
    yes = [True, False, True, False, False, True]
    m = gap_metrics(tags, p_yes, yes)
    assert m["non_unification"] == pytest.approx(3 / 6)
    assert m["mean_p_yes"] == pytest.approx(2.7 / 6)
    assert m["per_tag"]["a"] == {"non_unification": 0.5, "mean_p_yes": pytest.approx(0.55), "n_images": 2}
    assert m["per_tag"]["b"]["non_unification"] == pytest.approx(2 / 3)
    assert m["per_tag"]["b"]["mean_p_yes"] == pytest.approx(1.1 / 3)
    assert set(m["per_tag"]) == {"a", "b"} and m["n_images"] == 6  # untagged: overall only
    assert gap_metrics([], [], [])["non_unification"] is None
    with pytest.raises(ValueError, match="2 tags, 1 scores"):
        gap_metrics(["a", "b"], [0.1], [True])


def test_eval_seeds_are_rows_of_the_whole_set():
    assert eval_seeds(0, 0, 3) == [0, 1, 2]
    assert eval_seeds(2, 20, 4) == [2 * 1_000_003 + 20 + k for k in range(4)]  # prompt 5 of 4 each


def test_merge_refuses_shares_of_different_weights():
    with pytest.raises(RuntimeError, match=r"different policy versions \[1, 2\]"):
        merge_shares([EvalShare(version=1), EvalShare(version=2)])


@pytest.fixture(scope="module")
def model():
    return tiny_janus(seed=0)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-self")
    results = run_local(SelfEvaluator("geneval"), model, out, SETTINGS, limit=6)
    return out, results


def geneval_walk(imagedir):
    """The facts of GenEval's evaluate_images.py main(): it takes each sub-folder whose name is
    all digits, json.load()s its metadata.jsonl (one object), and every file in samples/ whose
    name matches \\d+\\.png; anything else in the folder is ignored."""
    found = []
    for sub in os.listdir(imagedir):
        folder = os.path.join(imagedir, sub)
        if not os.path.isdir(folder) or not sub.isdigit():
            continue
        with open(os.path.join(folder, "metadata.jsonl")) as fp:
            metadata = json.load(fp)
        for name in os.listdir(os.path.join(folder, "samples")):
            path = os.path.join(folder, "samples", name)
            if os.path.isfile(path) and re.match(r"\d+\.png", name):
                found.append((int(sub), metadata["tag"], metadata["prompt"], metadata["include"], path))
    return found


def test_export_is_read_by_genevals_folder_walk(exported):
    out, results = exported
    found = geneval_walk(out)
    from gapray.data.prompts import load_prompts

    prompts = load_prompts("geneval")[:6]
    assert sorted({i for i, *_ in found}) == list(range(6))
    for i, p in enumerate(prompts):
        mine = [f for f in found if f[0] == i]
        assert len(mine) == N  # N samples per index
        assert {(f[1], f[2]) for f in mine} == {(p.tag, p.text)}
        assert mine[0][3] == p.to_geneval()["include"]
        with Image.open(mine[0][4]) as im:
            assert im.size == (32, 32)
    assert (out / "grid.png").is_file() and (out / "results.json").is_file()
    verdicts = [json.loads(line) for line in (out / "verdicts.jsonl").read_text().splitlines()]
    assert len(verdicts) == 6 * N
    assert sum(not v["judge_yes"] for v in verdicts) / len(verdicts) == pytest.approx(
        results["non_unification"]
    )
    assert json.loads((out / "results.json").read_text()) == results


def test_shares_add_up_to_the_whole(model, exported):
    _, whole = exported
    ev = SelfEvaluator("geneval")
    prompts = ev.prompts()[:6]
    shown = set(grid_rows(prompts))
    parts = [ev.share(model, prompts[a:b], range(a, b), SETTINGS, None, shown) for a, b in ((0, 2), (2, 6))]
    merged = merge_shares(parts[::-1])  # order of arrival does not matter
    again = ev.summarize(prompts, merged, SETTINGS)
    assert again == {k: v for k, v in whole.items() if k != "seconds"}
    assert sorted(merged.tiles) == sorted(shown)


def test_headline_names_are_per_tag(exported):
    _, results = exported
    h = SelfEvaluator().headline(results)
    assert h["non_unification"] == results["non_unification"]
    assert {k for k in h if k.startswith("non_unification_")} == {
        f"non_unification_{t}" for t in results["per_tag"]
    }


def test_eval_self_refuses_the_toy_prompt_set():
    with pytest.raises(ConfigError, match="eval=toy") as info:
        load_config(["model=tiny", "eval=self", "eval.prompts=toy"])
    assert info.value.keys == ["eval.prompts"]


@pytest.mark.parametrize("model", ["checkpoint", "janus_pro_shape"])
def test_preflight_refuses_eval_toy_for_a_model_of_another_size(model, tmp_path, capsys):
    from gapray.run import main

    if model == "checkpoint":  # a checkpoint directory: its config.json says 64 px
        ckpt = tmp_path / "tiny64"
        tiny_janus(seed=0, image_size=64).save_pretrained(ckpt)
        select, size = f"model.name={ckpt}", 64
    else:  # Janus-Pro's layout, built in code
        select, size = "model=janus_pro_shape", 384
    out = tmp_path / "run"
    rc = main([select, "eval=toy", f"run.out_dir={out}", "run.progress=false"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "eval.kind='toy'" in err and "reads 32 px images" in err and f"makes {size} px images" in err
    assert not out.exists()  # refused before anything was written or any actor started


def test_a_failed_evaluation_stops_the_run_with_a_resume_hint(tmp_path):
    # config.yaml is written before the step-0 evaluation: a worker error there is a stop
    # mid-run (exit 1, resume hint), not "bad input, nothing was written".
    from types import SimpleNamespace

    from gapray.controller import Controller, RunStopped
    from gapray.storage import RunDir
    from gapray.workers.pool import WorkerError

    class FailingPool:
        def map_shares(self, method, n_rows, args_for):
            raise WorkerError(
                f"generation worker 0 failed in {method} on rows 0..{n_rows - 1}: OSError: disk"
            )

    cfg = load_config(["model=tiny", "eval.limit=2", f"run.out_dir={tmp_path}"])
    roles = SimpleNamespace(generation=FailingPool(), reward=None, learner=None)
    ctl = Controller(cfg, RunDir(tmp_path), roles)
    with pytest.raises(RunStopped) as info:
        ctl.run_loop()
    msg = str(info.value)
    assert msg.startswith("step 0 evaluation: generation worker 0 failed in eval_share on rows 0..1")
    assert f"Resume with: gapray run resume={tmp_path}" in msg
    assert (tmp_path / "config.yaml").is_file()


def test_reward_verifier_toy_needs_toy_prompts_and_toy_images(tmp_path, capsys):
    from gapray.eval.verifier import verifies
    from gapray.run import main

    with pytest.raises(ConfigError, match="has no ground truth") as info:
        load_config(["reward.verifier=toy", "curriculum.prompts=geneval"])
    assert info.value.keys == ["reward.verifier"]
    out = tmp_path / "run"
    assert main(["model=janus_pro_shape", "reward.verifier=toy", f"run.out_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert "reward.verifier='toy': the toy world's verifier reads 32 px images" in err and "384 px" in err
    assert not out.exists()
    # auto: only where both the prompts and the images are the toy world's
    assert verifies(load_config([]), 32) and not verifies(load_config([]), 384)
    assert not verifies(load_config(["curriculum.prompts=geneval"]), 32)
