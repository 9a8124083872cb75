"""External judges and the diagnosis: a tiny random LLaVA (a real transformers
image-text-to-text architecture, built in code and loaded through AutoModelForImageTextToText
+ AutoProcessor) as the judge, a tiny Janus as the model.

- the judge summary on hand-set verdicts: quadrants add up to the images, the split and kappa
  are exactly the hand-computed ones;
- the judge adapter: its chat template, batched = one by one, decision at the threshold;
- a judge directory that is not an image-text-to-text model is refused, naming it, before any
  actor starts (gapray diagnose and gapray run, exit 2);
- (ray) `gapray diagnose tiny` with two tiny judges: GenEval-layout images, table, plots, HTML,
  quadrants that add up, verdicts equal to the judge's own on the written pixels; and
  `eval=judge` in a tiny run logs the quadrants at the start and the end;
- (slow) `gapray diagnose toy` with the exact verifier as the judge: its split is what the
  verifier says about the same images.

    PYTHONPATH=. python -m pytest tests/test_diagnose.py -q
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from gapray.diagnose.stats import QUADRANT_NAMES, cohen_kappa
from gapray.eval.judge_eval import judge_summary
from gapray.models.tiny_vlm import save_tiny_vlm
from gapray.models.vlm_judge import JudgeError, VlmJudge, check_judge_dir
from tests.conftest import TINY_RUN


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory) -> Path:
    return save_tiny_vlm(tmp_path_factory.mktemp("judges") / "tiny-llava-a", seed=0)


@pytest.fixture(scope="module")
def vlm_dir_b(tmp_path_factory) -> Path:
    return save_tiny_vlm(tmp_path_factory.mktemp("judges") / "tiny-llava-b", seed=1)


@pytest.fixture(scope="module")
def not_a_vlm(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("judges") / "text-only-llama"
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
        )
    ).save_pretrained(path)
    return path


def record(index, self_yes, a_yes, b_yes, tag="t"):
    return {
        "index": index,
        "sample": 0,
        "tag": tag,
        "judge_yes": self_yes,
        "external": {"a": {"p_yes": float(a_yes), "yes": a_yes}, "b": {"p_yes": float(b_yes), "yes": b_yes}},
    }


def test_judge_summary_on_hand_set_verdicts():
    # self:  Y Y Y N N N N N ; judge a: Y N Y Y N N N Y ; judge b: Y Y N N N N Y N
    s = [1, 1, 1, 0, 0, 0, 0, 0]
    a = [1, 0, 1, 1, 0, 0, 0, 1]
    b = [1, 1, 0, 0, 0, 0, 1, 0]
    tags = ["x", "x", "x", "x", "y", "y", "y", "y"]
    recs = [record(i, bool(s[i]), bool(a[i]), bool(b[i]), tags[i]) for i in range(8)]
    out = judge_summary(recs, ["a", "b"], seed=0)
    qa = out["judges"]["a"]
    assert sum(qa[q] for q in QUADRANT_NAMES) == qa["n_images"] == 8
    assert (qa["both_yes"], qa["self_yes_judge_no"], qa["self_no_judge_yes"], qa["both_no"]) == (2, 1, 2, 3)
    assert qa["weak_generation"] == pytest.approx(3 / 5) and qa["misunderstanding"] == pytest.approx(2 / 5)
    qb = out["judges"]["b"]
    assert (qb["both_yes"], qb["self_yes_judge_no"], qb["self_no_judge_yes"], qb["both_no"]) == (2, 1, 1, 4)
    assert qb["weak_generation"] == pytest.approx(4 / 5)
    # kappa(a, b): agree on 0, 4, 5 -> p_o = 3/8; yes-rates 4/8 and 3/8: p_e = 0.5*0.375 + 0.5*0.625 = 0.5
    assert out["kappa"]["a|b"] == pytest.approx((3 / 8 - 0.5) / 0.5)
    # kappa(self, a): agree on 0, 2, 4, 5, 6 -> p_o = 5/8; yes-rates 3/8, 4/8: p_e = 0.5
    assert out["kappa"]["self|a"] == pytest.approx((5 / 8 - 0.5) / 0.5) == qa["kappa_self"]
    assert out["non_unification"] == pytest.approx(5 / 8)
    x = out["judges"]["a"]["per_tag"]["x"]  # images 0-3: self Y Y Y N, a Y N Y Y
    assert (x["both_yes"], x["self_yes_judge_no"], x["self_no_judge_yes"], x["both_no"]) == (2, 1, 1, 0)
    assert x["misunderstanding"] == 1.0
    assert out["per_tag"]["y"]["non_unification"] == 1.0 and out["per_tag"]["y"]["non_unification_ci"] == [
        1.0,
        1.0,
    ]
    lo, hi = out["non_unification_ci"]
    assert lo <= 5 / 8 <= hi
    assert cohen_kappa(s, s) == 1.0


def test_vlm_judge_loads_through_the_auto_classes_and_scores(vlm_dir):
    from transformers import AutoModelForImageTextToText

    judge = VlmJudge.from_pretrained(vlm_dir)
    assert isinstance(judge.model, AutoModelForImageTextToText._model_mapping[type(judge.model.config)])
    assert judge.chat_text("is it red?") == "USER : <image> is it red? ASSISTANT : "  # its own template
    images = [Image.new("RGB", (32, 32), c) for c in ("red", "blue", "white")]
    prompts = ["a red circle", "two blue squares", "a photo of a cat"]
    both = judge.judge(images, prompts, batch_size=3)
    one = [float(judge.judge([im], [p]).p_yes[0]) for im, p in zip(images, prompts, strict=True)]
    assert both.p_yes.tolist() == pytest.approx(one, abs=1e-5)  # left padding: batching changes nothing
    assert all(0 < v < 1 for v in one) and len(set(one)) == 3
    mid = sorted(one)[1]
    assert judge.judge(images, prompts, threshold=mid).decision.tolist() == [
        v >= mid for v in both.p_yes.tolist()
    ]


def test_a_judge_that_is_not_image_text_to_text_is_refused_before_any_actor(not_a_vlm, tmp_path, capsys):
    import ray

    with pytest.raises(JudgeError, match=f"judge {not_a_vlm}: not an image-text-to-text model.*'llama'"):
        check_judge_dir(not_a_vlm)
    with pytest.raises(JudgeError, match="no such directory"):
        check_judge_dir(tmp_path / "nowhere")
    from gapray.diagnose.command import main as diagnose_main
    from gapray.run import main as run_main

    out = tmp_path / "diag"
    assert diagnose_main(["tiny", f"eval.judges=[{not_a_vlm}]", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(not_a_vlm) in err and "not an image-text-to-text model" in err and "eval.judges" in err
    assert not out.exists() and not ray.is_initialized()  # nothing written, no Ray, no actor
    assert diagnose_main(["tiny", "--out", str(out)]) == 2  # a diagnosis needs a judge
    assert "eval=judge needs at least one external judge" in capsys.readouterr().err
    assert not out.exists() and not ray.is_initialized()
    run_out = tmp_path / "run"
    rc = run_main(
        [
            *TINY_RUN,
            "eval=judge",
            "eval.prompts=geneval",
            f"eval.judges=[{not_a_vlm}]",
            f"run.out_dir={run_out}",
        ]
    )
    assert rc == 2 and str(not_a_vlm) in capsys.readouterr().err
    assert not run_out.exists() and not ray.is_initialized()


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=4, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.mark.ray
@pytest.mark.slow
def test_diagnose_tiny_with_two_judges(local_ray, vlm_dir, vlm_dir_b, tmp_path, capsys):
    from gapray.diagnose.command import main

    out = tmp_path / "diag"
    rc = main(
        [
            "tiny",
            f"eval.judges=[{vlm_dir},{vlm_dir_b}]",
            "eval.limit=3",
            "eval.images_per_prompt=2",
            "eval.judge_cpus=0.5",
            "--sets",
            "geneval,geneval_hard",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert list(summary["sets"]) == ["geneval", "geneval_hard"]
    assert "[diagnose] set 2/2 geneval_hard done" in captured.err  # a progress line per set
    names = ["tiny_llava_a", "tiny_llava_b"]
    for name, folder in (("geneval", "geneval"), ("geneval_hard", "geneval_hard")):
        s = summary["sets"][name]
        assert s["n_images"] == 6 and set(s["judges"]) == set(names)
        for q in s["judges"].values():
            assert sum(q[k] for k in QUADRANT_NAMES) == s["n_images"]  # the quadrants add up
        assert set(s["kappa"]) == {"self|tiny_llava_a", "self|tiny_llava_b", "tiny_llava_a|tiny_llava_b"}
        verdicts = [json.loads(x) for x in (out / folder / "verdicts.jsonl").read_text().splitlines()]
        assert len(verdicts) == 6 and (out / folder / "00002" / "samples" / "0001.png").is_file()
        assert (
            json.loads((out / folder / "00000" / "metadata.jsonl").read_text())["prompt"]
            == verdicts[0]["prompt"]
        )
    # The actor judged exactly the pixels written to the GenEval folders, with reward.question.
    judge = VlmJudge.from_pretrained(vlm_dir)
    verdicts = [json.loads(x) for x in (out / "geneval" / "verdicts.jsonl").read_text().splitlines()]
    images = [
        Image.open(out / "geneval" / f"{v['index']:05d}" / "samples" / f"{v['sample']:04d}.png")
        for v in verdicts
    ]
    again = judge.judge(images, [v["prompt"] for v in verdicts]).p_yes.tolist()
    assert [v["external"]["tiny_llava_a"]["p_yes"] for v in verdicts] == pytest.approx(again, abs=1e-5)
    table = pq.read_table(out / "table.parquet").to_pylist()
    overall = [r for r in table if r["tag"] == "all"]
    assert {(r["set"], r["judge"]) for r in overall} == {
        (s, j) for s in ("geneval", "geneval_hard") for j in names
    }
    for f in (
        "table.md",
        "non_unification.png",
        "quadrants.png",
        "index.html",
        "summary.json",
        "config.yaml",
    ):
        assert (out / f).is_file(), f
    # Read back (as --compare reads another model's) and drawn beside another diagnosis.
    from gapray.diagnose.report import load_diagnosis, write_report

    back = load_diagnosis(out)
    assert [s.name for s in back.sets] == ["geneval", "geneval_hard"] and back.judges == names
    assert (
        back.sets[1].results["judges"]["tiny_llava_b"]["both_no"]
        == summary["sets"]["geneval_hard"]["judges"]["tiny_llava_b"]["both_no"]
    )
    other = dataclasses.replace(back, model="other-model")
    write_report(back, out, [other])
    assert "| other-model | geneval | all |" in (out / "table.md").read_text()
    page = (out / "index.html").read_text()
    grids = sorted(p.name for p in (out / "quadrants").iterdir())
    assert grids and all(f"quadrants/{g}" in page for g in grids)  # relative links, all present


@pytest.mark.ray
@pytest.mark.slow
def test_eval_judge_in_a_tiny_run_logs_the_quadrants_at_start_and_end(local_ray, vlm_dir, tmp_path):
    from gapray.config import load_config
    from gapray.run import execute
    from gapray.storage import RunDir

    cfg = load_config(
        [
            *TINY_RUN,
            "run.steps=1",
            "eval=judge",
            "eval.prompts=geneval",
            f"eval.judges=[{vlm_dir}]",
            "eval.limit=2",
            "eval.images_per_prompt=2",
            "eval.judge_cpus=0.5",
            f"run.out_dir={tmp_path / 'run'}",
        ]
    )
    summary = execute(cfg, progress=False)
    rows = RunDir(tmp_path / "run").read_metrics().to_pylist()
    evals = {r["step"]: r for r in rows if r.get("judge_tiny_llava_a_both_yes") is not None}
    assert sorted(evals) == [0, 1]  # at the start and at the end
    for r in evals.values():
        assert sum(r[f"judge_tiny_llava_a_{q}"] for q in QUADRANT_NAMES) == 4  # 2 prompts x 2 images
        assert "judge_tiny_llava_a_weak_generation" in r and "judge_non_unification" in r
    assert summary["evaluator"] == "judge"
    placement = json.loads((tmp_path / "run" / "placement.json").read_text())
    assert "judge tiny_llava_a" in placement


@pytest.mark.ray
@pytest.mark.slow
def test_diagnose_toy_split_agrees_with_the_verifier_on_the_same_images(local_ray, tmp_path, capsys):
    from gapray.diagnose.command import main
    from gapray.diagnose.stats import quadrants
    from gapray.eval.geneval import evaluate_image
    from gapray.eval.judge_eval import load_set
    from gapray.toy.detector import ToyDetector

    out = tmp_path / "toy"
    assert main(["toy", "eval.limit=4", "eval.images_per_prompt=4", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["judges"] == {"verifier": "toy_verifier"}
    detector = ToyDetector()
    for name in ("toy/easy", "toy/medium", "toy/hard"):
        prompts = load_set(name)
        folder = out / name.replace("/", "_")
        verdicts = [json.loads(x) for x in (folder / "verdicts.jsonl").read_text().splitlines()]
        truth = []
        for v in verdicts:  # the verifier's own verdict on the written image
            with Image.open(folder / f"{v['index']:05d}" / "samples" / f"{v['sample']:04d}.png") as im:
                truth.append(evaluate_image(prompts[v["index"]], detector.detect(im.convert("RGB")))[0])
        q = quadrants([v["judge_yes"] for v in verdicts], truth)
        got = summary["sets"][name]["judges"]["verifier"]
        assert (got["both_yes"], got["self_yes_judge_no"], got["self_no_judge_yes"], got["both_no"]) == (
            q.both_yes,
            q.self_yes_judge_no,
            q.self_no_judge_yes,
            q.both_no,
        )
        assert got["weak_generation"] == q.weak_generation and got["misunderstanding"] == q.misunderstanding


def test_eval_judge_config_is_checked_before_anything_starts(vlm_dir):
    from gapray.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"toy_verifier checks toy-world scenes only.*not geneval") as info:
        load_config(["model=tiny", "eval=judge", "eval.prompts=geneval"])
    assert info.value.keys == ["eval.judges"]
    with pytest.raises(ConfigError, match="needs at least one external judge"):
        load_config(["model=tiny", "eval=judge", "eval.prompts=geneval", "eval.judges=[]"])
    with pytest.raises(ConfigError, match=r"eval\.judge_gpus=1\.5: must be >= 0; a fraction only below 1"):
        load_config(
            [
                "model=tiny",
                "eval=judge",
                "eval.prompts=geneval",
                f"eval.judges=[{vlm_dir}]",
                "eval.judge_gpus=1.5",
            ]
        )
    cfg = load_config(
        ["model=tiny", "eval=judge", "eval.prompts=geneval", f"eval.judges=[{vlm_dir},{vlm_dir}]"]
    )
    assert cfg.eval.judges == [str(vlm_dir)] * 2


def test_judge_names_and_room():
    from types import SimpleNamespace

    from gapray.eval.judges import check_room, judge_names
    from gapray.placement import ResourceError

    assert judge_names(["/ckpt/Qwen2.5-VL-72B-Instruct/", "toy_verifier", "/x/Qwen2.5-VL-72B-Instruct"]) == [
        "qwen2_5_vl_72b_instruct",
        "verifier",
        "qwen2_5_vl_72b_instruct_2",
    ]
    ev = SimpleNamespace(judges=["/a", "/b", "toy_verifier"], judge_cpus=1.0, judge_gpus=2.0)
    check_room(ev, {"CPU": 2.0, "GPU": 4.0})  # two actors (the verifier needs none): fits
    with pytest.raises(
        ResourceError, match=r"eval.judge_gpus=2.0: 2 external judge\(s\) need 4 GPU, the cluster has 3"
    ):
        check_room(ev, {"CPU": 8.0, "GPU": 3.0})
