"""`gapray bench paper` end to end at the smallest size: two trained rows and base, one seed."""

from __future__ import annotations

import json

import pytest

from gapray.bench.paper import ROW_BY_KEY, TARGET_ROWS, main

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# As tests/test_loop_ray.py's TINY: the tiny random model's judge says ~0.46 to everything, so
# best-vs-worst pairs with no floor make a pair from every prompt.
TINY = [
    "pairs=best_worst",
    "pairs.min_chosen=0",
    "curriculum.prompts_per_step=2",
    "generation.images_per_prompt=2",
    "eval.limit=2",
    "eval.images_per_prompt=2",
    "run.checkpoint_every=1",
]


def test_one_seed_tiny_bench_tables_base_sft_and_dpo(tmp_path, capsys):
    pytest.importorskip("ray")
    argv = ["--model", "tiny", "--seeds", "1", "--steps", "1", "--rows", "dpo,base,sft", *TINY]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    [js] = tmp_path.glob("paper-tiny-*.json")
    md = js.with_suffix(".md").read_text()
    res = json.loads(js.read_text())
    assert res["complete"] and res["rows"] == ["base", "sft", "dpo"]  # table order
    assert res["budget"] == {"steps": 1, "prompts_per_step": 2, "images_per_prompt": 2, "images": 4}
    assert [(r["row"], r["seed"]) for r in res["runs"]] == [("sft", 0), ("dpo", 0)]
    assert all("error" not in r and r["wall_s"] > 0 for r in res["runs"])
    table = res["table"]
    assert table["starts_agree"]  # both rows started from the same model, same eval seed
    base = table["rows"]["base"]["metrics"]
    for key in ("base", "sft", "dpo"):
        row = table["rows"][key]
        assert row["seeds"] == [0] and not row["failed"]
        for name in ("geneval_overall", "non_unification", "understanding_accuracy"):
            stat = row["metrics"][name]
            assert stat["n"] == 1 and 0.0 <= stat["mean"] <= 1.0, (key, name, stat)
            assert stat["sd"] is None  # one seed: no sd
        assert set(row["geneval_per_tag"]) >= {"single_object", "two_object"}
    # base is the start evaluation: its difference from itself is zero; a trained row's is final - start.
    assert base["geneval_overall"]["delta"]["mean"] == 0.0
    dpo = res["runs"][1]
    want = dpo["final"]["non_unification"] - dpo["start"]["non_unification"]
    assert table["rows"]["dpo"]["metrics"]["non_unification"]["delta"]["mean"] == pytest.approx(want)
    # The check column speaks for every trained row; the target rows say met or MISSED.
    assert table["rows"]["dpo"]["check"]["binding"] and "dpo" in TARGET_ROWS
    assert not table["rows"]["sft"]["check"]["binding"]
    dpo_text = table["rows"]["dpo"]["check"]["text"]
    assert dpo_text.startswith(("improves; targets", "does not improve; targets"))  # one seed: MISSED
    # The Markdown table has every row, its numbers, the command and the machine.
    for key in ("base", "sft", "dpo"):
        label = ROW_BY_KEY[key].label
        assert f"| {label} | {ROW_BY_KEY[key].paper} | 1 | {base_fmt(table['rows'][key])} |" in md
    assert "gapray bench paper --model tiny" in md and "Machine:" in md and "C-DPO: not run." in md
    assert md in capsys.readouterr().out


def base_fmt(row: dict) -> str:
    return f"{row['metrics']['exact_scene_overall']['mean']:.3f}"  # the first figure column


def test_unknown_row_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--rows", "dpo,nope"])
    assert "nope" in capsys.readouterr().err


def _values(exact: float, objects: float, und: float) -> dict:
    return {
        "geneval_overall": 0.4,
        "non_unification": 0.3,
        "understanding_accuracy": und,
        "judge_balanced_accuracy": 0.8,
        "exact_scene_overall": exact,
        "objects_per_image": objects,
        "geneval_per_tag": {},
    }


def test_intervals_and_verdicts_on_hand_made_runs():
    """Three seeds, base exact-scene 0.20 each: DPO gains +0.06, +0.08, +0.10 (interval above 0,
    target met); C-DPO gains +0.10 but draws 1.0 more object per image (does not improve: fuller,
    not better); SFT gains +0.10, -0.05, +0.01 (interval straddles 0)."""
    from gapray.bench.paper import Plan, aggregate

    rows = [ROW_BY_KEY[k] for k in ("base", "sft", "dpo", "c-dpo")]
    plan = Plan(rows, [0, 1, 2], [], {}, {})
    start = _values(0.20, 4.0, 0.90)
    gains = {"sft": [0.10, -0.05, 0.01], "dpo": [0.06, 0.08, 0.10], "c-dpo": [0.10, 0.10, 0.10]}
    runs = [
        {
            "row": row,
            "seed": s,
            "start": start,
            "final": _values(0.20 + g[s], 4.0 + (1.0 if row == "c-dpo" else 0.2), 0.89),
            "wall_s": 1.0,
        }
        for row, g in gains.items()
        for s in range(3)
    ]
    table = aggregate(plan, runs, [])["rows"]
    dpo = table["dpo"]["metrics"]["exact_scene_overall"]["delta"]
    assert dpo["mean"] == pytest.approx(0.08)
    # Resampling three seeds: the interval lies within the smallest and largest gain, above 0.
    assert 0.06 - 1e-12 <= dpo["lo"] < 0.08 < dpo["hi"] <= 0.10 + 1e-12
    assert table["dpo"]["check"]["met"] and table["dpo"]["check"]["improves"]
    assert table["dpo"]["check"]["text"] == "improves; targets met"
    cdpo = table["c-dpo"]["check"]
    assert not cdpo["improves"] and not cdpo["met"]
    assert cdpo["misses"] == ["objects/img +1.000 (> +0.5)"]  # its interval is the point +0.10
    sft = table["sft"]
    assert sft["metrics"]["exact_scene_overall"]["delta"]["lo"] < 0 and not sft["check"]["improves"]
    assert sft["check"]["text"].startswith("does not improve (not a target row")
    assert table["base"]["check"]["text"] == "-"
    # Understanding 0.01 below base is within the tolerance; 0.03 below is not.
    for k, g in zip((3, 4, 5), gains["dpo"], strict=True):
        runs[k]["final"] = _values(0.20 + g, 4.2, 0.87)
    assert any("understanding" in m for m in aggregate(plan, runs, [])["rows"]["dpo"]["check"]["misses"])


def test_one_seed_has_no_interval_and_cannot_meet_the_targets():
    from gapray.bench.paper import Plan, aggregate

    plan = Plan([ROW_BY_KEY["dpo"]], [0], [], {}, {})
    runs = [
        {"row": "dpo", "seed": 0, "start": _values(0.2, 4, 0.9), "final": _values(0.4, 4, 0.9), "wall_s": 1}
    ]
    row = aggregate(plan, runs, [])["rows"]["dpo"]
    assert row["metrics"]["exact_scene_overall"]["delta"]["lo"] is None
    assert row["check"]["misses"] == ["exact scene: no interval (needs 2+ seeds)"]
