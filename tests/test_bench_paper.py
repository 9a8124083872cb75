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
    assert dpo_text == "met" or dpo_text.startswith("**MISSED**")
    # The Markdown table has every row, its numbers, the command and the machine.
    for key in ("base", "sft", "dpo"):
        label = ROW_BY_KEY[key].label
        assert f"| {label} | {ROW_BY_KEY[key].paper} | 1 | {base_fmt(table['rows'][key])} |" in md
    assert "gapray bench paper --model tiny" in md and "Machine:" in md and "C-DPO: not run." in md
    assert md in capsys.readouterr().out


def base_fmt(row: dict) -> str:
    return f"{row['metrics']['geneval_overall']['mean']:.3f}"


def test_unknown_row_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--rows", "dpo,nope"])
    assert "nope" in capsys.readouterr().err
