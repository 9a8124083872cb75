"""Tests of the toy-world evaluation (gapray/eval/toy_eval.py): the metric functions on
hand-made verdicts, the grid, and whole runs of `evaluate` / `gapray eval` on a random tiny Janus
(its understanding is near chance and its images are noise; only shapes, ranges, files and
determinism are checked here, not quality).

    PYTHONPATH=. python -m pytest tests/test_toy_eval.py -q
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from gapray.eval.exact_scene import exact_scene
from gapray.eval.geneval import evaluate_image
from gapray.eval.images import grid_rows, make_grid
from gapray.eval.toy_eval import (
    QUESTION_KINDS,
    Question,
    ToyEvaluator,
    evaluate,
    main,
    self_judge_metrics,
    tag_image_counts,
    understanding_metrics,
)
from gapray.models.base import Judgement
from gapray.models.tiny import BASE_WORDS, tiny_janus
from gapray.toy.detector import ToyDetector
from gapray.toy.render import render
from gapray.toy.world import Scene, all_prompts, make_splits, near_miss_kinds, sample_scene
from gapray.types import GENEVAL_TAGS

LIMIT = 6  # the first 6 test prompts are one of each tag (round-robin ids)
N = 2  # images per prompt in these tests (4 in real runs)
UNIFORM = {"min_images_per_tag": 0}  # N images for every prompt (no per-tag minimum)
RATES = (
    "understanding_accuracy",
    "understanding_yes_rate_on_positive",
    "understanding_no_rate_on_negative",
    "geneval_overall",
    "non_unification",
    "judge_yes_rate_on_correct",
    "judge_no_rate_on_wrong",
    "judge_balanced_accuracy",
)


def _toy_words() -> list[str]:
    # The chat/question words of the tiny tokenizer plus every word of every toy prompt, so no
    # prompt word maps to <unk>.
    words = dict.fromkeys(BASE_WORDS)
    for prompts in all_prompts().values():
        for p in prompts:
            words.update(dict.fromkeys(p.text.split()))
    return list(words)


@pytest.fixture(scope="module")
def model():
    return tiny_janus(seed=0, words=_toy_words())


@pytest.fixture(scope="module")
def run(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    return out, evaluate(
        model, out, images_per_prompt=N, limit=LIMIT, seed=0, batch_size=8, progress=False, **UNIFORM
    )


# --- metric functions -------------------------------------------------------------------------


def test_self_judge_metrics_both_sides():
    correct = [True, True, True, False, False]
    accepted = [True, True, False, True, False]
    m = self_judge_metrics(correct, accepted)
    assert m["n_correct"] == 3 and m["n_wrong"] == 2
    assert m["non_unification"] == pytest.approx(2 / 5)
    assert m["judge_yes_rate_on_correct"] == pytest.approx(2 / 3)
    assert m["judge_no_rate_on_wrong"] == pytest.approx(1 / 2)
    assert m["judge_balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)


@pytest.mark.parametrize(
    ("correct", "accepted", "null"),
    [
        ([True, True], [True, False], "judge_no_rate_on_wrong"),
        ([False, False, False], [False, True, True], "judge_yes_rate_on_correct"),
    ],
)
def test_self_judge_metrics_one_side_empty(correct, accepted, null):
    m = self_judge_metrics(correct, accepted)
    assert m[null] is None
    assert m["judge_balanced_accuracy"] is None
    assert m["n_correct"] + m["n_wrong"] == len(correct)
    other = ({"judge_no_rate_on_wrong", "judge_yes_rate_on_correct"} - {null}).pop()
    assert m[other] is not None
    json.dumps(m, allow_nan=False)  # None -> null, never NaN


def test_self_judge_metrics_empty_and_mismatch():
    m = self_judge_metrics([], [])
    assert m["non_unification"] is None and m["judge_balanced_accuracy"] is None
    assert m["n_correct"] == m["n_wrong"] == 0
    with pytest.raises(ValueError, match="verdicts"):
        self_judge_metrics([True], [True, False])


def test_understanding_metrics():
    tags = ["colors", "colors", "position", "position"]
    answers = [True, False, True, False]
    decisions = [True, True, False, False]  # colors: 1/2 right, position: 1/2 right
    m = understanding_metrics(tags, answers, decisions)
    assert m["understanding_accuracy"] == pytest.approx(0.5)
    assert m["understanding_per_tag"] == {"colors": 0.5, "position": 0.5}
    assert list(m["understanding_per_tag"]) == ["colors", "position"]  # GENEVAL_TAGS order
    assert m["understanding_yes_rate_on_positive"] == pytest.approx(0.5)
    assert m["understanding_no_rate_on_negative"] == pytest.approx(0.5)
    assert m["n_questions"] == 4
    assert "understanding_per_kind" not in m  # only with kinds


def test_question_is_a_three_tuple_with_a_kind():
    q = Question("counting", True, False, "count_off_by_one")
    tag, answer, decision = q  # EvalShare.questions' (tag, answer, decision) contract
    assert (tag, answer, decision, q.kind) == ("counting", True, False, "count_off_by_one")
    back = pickle.loads(pickle.dumps(q))  # a sharded eval sends shares between processes
    assert back == q and back.kind == "count_off_by_one"
    with pytest.raises(ValueError, match="kind"):
        Question("counting", True, False, "clutter")


def test_understanding_metrics_per_kind():
    tags = ["counting"] * 6
    answers = [True, False, True, False, True, False]
    decisions = [True, False, True, True, False, True]
    kinds = ["prompt_near_miss"] * 2 + ["extra_object"] * 2 + ["count_off_by_one"] * 2
    m = understanding_metrics(tags, answers, decisions, kinds)
    assert m["understanding_per_kind"] == {
        "prompt_near_miss": 1.0,
        "extra_object": 0.5,
        "count_off_by_one": 0.0,
    }
    assert m["understanding_no_rate_per_kind"] == {
        "prompt_near_miss": 1.0,
        "extra_object": 0.0,
        "count_off_by_one": 0.0,
    }
    with pytest.raises(ValueError, match="kinds"):
        understanding_metrics(tags, answers, decisions, kinds[:2])
    with pytest.raises(ValueError, match="unknown question kinds"):
        understanding_metrics(tags[:1], answers[:1], decisions[:1], ["clutter"])


# --- grid -------------------------------------------------------------------------------------


def test_grid_rows_spread_over_tags():
    prompts = make_splits(0)["test"]
    rows = grid_rows(prompts, max_rows=16)
    assert len(rows) == 16 and rows == sorted(rows)
    assert {prompts[i].tag for i in rows} == set(GENEVAL_TAGS)
    assert grid_rows(prompts[:3], max_rows=16) == [0, 1, 2]


def test_make_grid_borders():
    tile = Image.new("RGB", (32, 32), "white")
    grid = make_grid([("a", [tile, tile], [True, False]), ("b", [tile], [False])], scale=2, border=3)
    assert grid.height > 2 * 64 and grid.width > 2 * 64
    px = grid.load()
    # The top-left pixel of each first-row tile is its border: green for correct, red for wrong.
    corners = [(x, 4) for x in range(grid.width) if px[x, 4] in ((0, 170, 0), (230, 0, 0))]
    assert px[corners[0]] == (0, 170, 0) and px[corners[-1]] == (230, 0, 0)


# --- whole runs with a stand-in model -----------------------------------------------------------


class OracleModel:
    """A stand-in model with known answers: its judge is the exact verifier, and it draws a
    correct scene of the prompt on even rows and an empty image on odd rows. A "token" row is
    (prompt index, row seed, even/odd), so decode knows what to draw."""

    def __init__(self):
        self.by_text = {p.text: p for ps in all_prompts().values() for p in ps}
        self.texts = list(self.by_text)

    def generate(self, prompts, n=1, cfg_scale=5.0, temperature=1.0, seed=0, batch_size=64):
        rows = [
            (self.texts.index(p), seed[r], r % 2) for r, p in enumerate(q for q in prompts for _ in range(n))
        ]
        return torch.tensor(rows)  # (len(prompts) * n, 3)

    def decode(self, tokens):
        images = []
        for index, row_seed, odd in tokens.tolist():
            prompt = self.by_text[self.texts[index]]
            images.append(render(Scene() if odd else sample_scene(prompt, np.random.default_rng(row_seed))))
        return images

    rule = staticmethod(exact_scene)  # the judge's rule: the exact-scene verifier

    def judge(self, images, prompts, question=None):
        detector = ToyDetector()
        ok = [
            self.rule(self.by_text[t], detector.detect(im))[0] for im, t in zip(images, prompts, strict=True)
        ]
        return Judgement(p_yes=torch.tensor(ok, dtype=torch.float32), decision=torch.tensor(ok))


class LenientOracle(OracleModel):
    """The same stand-in, judging by GenEval's lenient rule (extra objects pass)."""

    rule = staticmethod(evaluate_image)


def _n_questions(prompts) -> int:
    # One prompt_near_miss pair plus one pair per exact-scene kind the tag has.
    return sum(2 * (1 + len(near_miss_kinds(p))) for p in prompts)


def test_evaluate_oracle_plumbing():
    # Every index in evaluate must pair the right image, prompt and verdict for these to hold.
    m = evaluate(OracleModel(), images_per_prompt=4, limit=20, batch_size=6, progress=False, **UNIFORM)
    n_q = _n_questions(make_splits(0)["test"][:20])
    assert m["understanding_accuracy"] == 1.0 and m["n_questions"] == n_q
    assert m["understanding_yes_rate_on_positive"] == m["understanding_no_rate_on_negative"] == 1.0
    assert list(m["understanding_per_kind"]) == list(QUESTION_KINDS)  # the first 20 have every tag
    assert all(v == 1.0 for v in m["understanding_per_kind"].values())
    assert m["geneval_overall"] == pytest.approx(0.5)
    assert all(v == pytest.approx(0.5) for v in m["geneval_per_tag"].values())
    assert m["non_unification"] == pytest.approx(0.5)
    assert m["judge_balanced_accuracy"] == 1.0 and m["n_correct"] == m["n_wrong"] == 40


def test_understanding_catches_a_lenient_judge():
    # A judge with GenEval's rule says yes to clutter: the exact-scene questions show it (it says
    # no to an extra object only when it repeats an asked class: 0.05 here), while the old prompt
    # near-miss questions alone would read perfect.
    m = evaluate(LenientOracle(), images_per_prompt=1, limit=20, batch_size=16, progress=False, **UNIFORM)
    assert m["understanding_per_kind"]["prompt_near_miss"] == 1.0
    assert m["understanding_no_rate_per_kind"]["extra_object"] < 0.25
    assert m["understanding_per_kind"]["extra_object"] < 0.65
    assert m["understanding_accuracy"] < 1.0


def test_small_tags_get_more_images_so_every_tag_reaches_the_minimum():
    test = make_splits(0)["test"]
    counts = tag_image_counts(test, 4, 300)
    per_tag = {t: [counts.n(i) for i, p in enumerate(test) if p.tag == t] for t in GENEVAL_TAGS}
    # 6 single-object prompts: ceil(300 / 6) = 50 each; 64 colour-attribution: ceil(300 / 64) = 5.
    assert set(per_tag["single_object"]) == {50} and set(per_tag["color_attr"]) == {5}
    assert all(sum(ns) >= 300 and min(ns) >= 4 for ns in per_tag.values())
    assert tag_image_counts(test, 4, 0).per_prompt == (4,) * len(test)
    # Rows of the whole set: prompt 2's images start after prompt 0's and 1's.
    assert counts.first_row(2) == counts.n(0) + counts.n(1)
    # Through evaluate: the counts of the whole split, also under --limit, in one share's calls
    # of mixed sizes; every image is paired with its own prompt's verdict.
    m = evaluate(OracleModel(), images_per_prompt=4, limit=12, batch_size=64, progress=False)
    want = {t: sum(counts.n(i) for i in range(12) if test[i].tag == t) for t in GENEVAL_TAGS}
    assert m["images_per_tag"] == want and m["n_images"] == sum(want.values())
    assert m["images_per_prompt"] == 4 and m["min_images_per_tag"] == 300
    assert m["judge_balanced_accuracy"] == 1.0
    with pytest.raises(ValueError, match="min_images_per_tag"):
        ToyEvaluator(min_images_per_tag=-1)


# --- whole runs with a tiny random Janus --------------------------------------------------------


def test_evaluate_keys_and_ranges(run):
    _, m = run
    assert m["n_prompts"] == LIMIT and m["n_images"] == LIMIT * N
    assert m["n_correct"] + m["n_wrong"] == m["n_images"]
    assert m["n_questions"] == _n_questions(make_splits(0)["test"][:LIMIT])
    assert m["understanding_yes_rate_on_positive"] is not None  # half the questions are yes
    for key in RATES:
        assert key in m
        assert m[key] is None or 0.0 <= m[key] <= 1.0, key
    assert set(m["geneval_per_tag"]) == set(GENEVAL_TAGS)
    assert set(m["understanding_per_tag"]) == set(m["geneval_per_tag"])
    assert all(0 <= v <= 1 for v in [*m["geneval_per_tag"].values(), *m["understanding_per_tag"].values()])
    # GenEval's overall: the unweighted mean of the tag scores.
    assert m["geneval_overall"] == pytest.approx(sum(m["geneval_per_tag"].values()) / 6)
    assert m["seconds"] > 0
    json.dumps(m, allow_nan=False)


def test_evaluate_writes_geneval_layout(run):
    out, m = run
    prompts = make_splits(0)["test"][:LIMIT]
    for i, p in enumerate(prompts):
        folder = out / f"{i:05d}"
        lines = (folder / "metadata.jsonl").read_text().splitlines()
        assert len(lines) == 1 and json.loads(lines[0]) == p.to_geneval()
        samples = sorted((folder / "samples").iterdir())
        assert [s.name for s in samples] == [f"{k:04d}.png" for k in range(N)]
        with Image.open(samples[0]) as im:
            assert im.size == (32, 32)
    assert json.loads((out / "results.json").read_text()) == m
    verdicts = [json.loads(line) for line in (out / "verdicts.jsonl").read_text().splitlines()]
    assert len(verdicts) == LIMIT * N and sum(v["correct"] for v in verdicts) == m["n_correct"]
    with Image.open(out / "grid.png") as grid:
        grid.load()
        assert grid.width >= N * 32 * 4 and grid.height >= LIMIT * 32 * 4
    assert not list(out.rglob(".*tmp*"))  # atomic writes leave no temp files


def test_evaluate_deterministic_and_limit_is_a_prefix(model, run, tmp_path):
    out, m = run
    again = evaluate(
        model, images_per_prompt=N, limit=LIMIT, seed=0, batch_size=12, progress=False, **UNIFORM
    )
    drop = ("seconds",)
    assert {k: v for k, v in again.items() if k not in drop} == {k: v for k, v in m.items() if k not in drop}
    # A shorter --limit run makes exactly the first images of the longer one (seeds are per row
    # of the whole run, not per batch).
    evaluate(model, tmp_path, images_per_prompt=N, limit=2, seed=0, batch_size=4, progress=False, **UNIFORM)
    for i in range(2):
        for k in range(N):
            name = f"{i:05d}/samples/{k:04d}.png"
            assert (tmp_path / name).read_bytes() == (out / name).read_bytes()


def test_main_uses_the_checkpoints_tuned_sampling_settings(model, tmp_path, capsys):
    ckpt = tmp_path / "tuned"
    model.extra_settings.update(cfg_scale=3.0, temperature=0.7)
    try:
        model.save_pretrained(ckpt)
    finally:
        model.extra_settings.clear()
    args = [
        "--limit",
        "1",
        "--images-per-prompt",
        "1",
        "--min-images-per-tag",
        "0",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([str(ckpt), *args]) == 0
    m = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert m["cfg_scale"] == 3.0 and m["temperature"] == 0.7


def test_main_missing_checkpoint(capsys):
    assert main(["/nonexistent"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "/nonexistent" in err[0] and "does not exist" in err[0]


def test_main_prints_json_last_line(model, tmp_path, capsys):
    ckpt = tmp_path / "tiny-ckpt"
    model.save_pretrained(ckpt)
    out = tmp_path / "out"
    args = ["--limit", "6", "--images-per-prompt", "1", "--min-images-per-tag", "0", "--out", str(out)]
    rc = main([str(ckpt), *args, "--batch-size", "8"])
    assert rc == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    m = json.loads(last)
    assert m["checkpoint"] == str(ckpt) and m["n_prompts"] == 6 and m["n_images"] == 6
    assert m["cfg_scale"] == 5.0 and m["temperature"] == 1.0
    assert (out / "results.json").is_file() and (out / "grid.png").is_file()


def test_the_eval_command_scores_a_held_out_split_only(capsys):
    from gapray.eval.toy_eval import main

    with pytest.raises(SystemExit):
        main(["tiny", "--split", "train"])  # what the toy model was trained on: refused
    err = capsys.readouterr().err
    assert "--split must be one of" in err and "'train'" in err
    from gapray.eval.toy_eval import ToyEvaluator

    with pytest.raises(ValueError, match="train is what trains"):
        ToyEvaluator("train")  # in process as on the command line
