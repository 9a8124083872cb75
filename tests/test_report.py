"""`gapray report RUN_DIR` (gapray/report.py) on a tiny run directory built without Ray: the
config, per-step metrics, two real toy evaluations of random tiny Janus models (4 prompts, 2
images each) and a summary, then the report's HTML, images and tables; plus a single-eval run, a
run without curves.png and the not-a-run-directory error.

    PYTHONPATH=. python -m pytest tests/test_report.py -q
"""

from __future__ import annotations

import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from gapray.eval.toy_eval import evaluate
from gapray.models.tiny import BASE_WORDS, tiny_janus
from gapray.report import build_report, main
from gapray.storage import RunDir
from gapray.toy.world import all_prompts

STEPS = 6
EVAL_KEYS = ("geneval_overall", "non_unification", "understanding_accuracy", "judge_balanced_accuracy")


def _toy_words() -> list[str]:
    words = dict.fromkeys(BASE_WORDS)
    for prompts in all_prompts().values():
        for p in prompts:
            words.update(dict.fromkeys(p.text.split()))
    return list(words)


def _eval_cols(m: dict) -> dict:
    cols = {k: m[k] for k in EVAL_KEYS}
    cols.update({f"geneval_{t}": v for t, v in m["geneval_per_tag"].items()})
    return cols


def _delta(a, b):
    return None if a is None or b is None else b - a


def _cell(v) -> str:
    """How the report writes a rate: 3 decimals, an em dash for None (e.g. the judge's balanced
    accuracy when a random model's images are all wrong)."""
    return "<td>—</td>" if v is None else f"<td>{v:.3f}</td>"


def _step_row(step: int) -> dict:
    return {
        "mean_p_yes": 0.25 + 0.0625 * step,
        "pass_rate": 0.125 * step,
        "pairs": 10 + step,
        "loss": 2.0 - 0.25 * step,
        "time_step": 0.5,
    }


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    run = RunDir(root)
    run.write_config(
        {
            "model": {"name": "tiny"},
            "learner": {"algorithm": "dpo"},
            "run": {"steps": STEPS, "eval_every": STEPS},
        }
    )
    words = _toy_words()
    kw = {"limit": 4, "images_per_prompt": 2, "seed": 0, "batch_size": 8, "progress": False}
    start = evaluate(tiny_janus(seed=0, words=words), root / "evals/step_0000000", **kw)
    final = evaluate(tiny_janus(seed=1, words=words), root / f"evals/step_{STEPS:07d}", **kw)
    run.log_metrics(0, {"version": 0, **_eval_cols(start)})
    for s in range(1, STEPS + 1):
        run.log_metrics(s, {"version": s, **_step_row(s), **(_eval_cols(final) if s == STEPS else {})})
    run.write_summary(
        {
            "run_dir": str(root),
            "steps": STEPS,
            "start": start,
            "final": final,
            "delta": {k: _delta(start[k], final[k]) for k in EVAL_KEYS},
        }
    )
    from gapray.plots import plot_curves

    plot_curves(run.read_metrics(), root / "curves.png")
    return root


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


def _check_images(index: Path) -> list[str]:
    parser = _Images()
    parser.feed(index.read_text())
    assert parser.srcs
    for src in parser.srcs:
        assert "/" not in src and src.endswith(".png"), src  # relative, beside index.html
        with Image.open(index.parent / src) as im:
            im.load()
            assert im.format == "PNG" and im.width > 50 and im.height > 50
    return parser.srcs


def test_report_full(run_dir, tmp_path):
    out = tmp_path / "rep"
    index = build_report(run_dir, out=out)
    assert index == out / "index.html" and index.is_file()
    assert sorted(_check_images(index)) == ["before_after.png", "curves.png", "evals.png"]
    assert sorted(p.name for p in out.iterdir()) == [
        "before_after.png",
        "curves.png",
        "evals.png",
        "index.html",
    ]
    assert not (run_dir / "report").exists()  # out= leaves the run directory alone

    text = index.read_text()
    summary = RunDir(run_dir, create=False).read_json("summary.json")
    start, final = summary["start"], summary["final"]
    assert start["geneval_overall"] is not None and final["geneval_overall"] is not None
    for k in EVAL_KEYS:
        d = _delta(start[k], final[k])
        assert _cell(start[k]) + _cell(final[k]) in text, k
        assert ("<td>—</td>" if d is None else f"{d:+.3f}</td>") in text, k
    for tag, v in start["geneval_per_tag"].items():
        assert f'<td class="l">{tag}</td>{_cell(v)}{_cell(final["geneval_per_tag"][tag])}' in text
    for s in range(1, STEPS + 1):
        r = _step_row(s)
        assert f"<tr><td>{s}</td><td>{r['mean_p_yes']:.3f}</td><td>{r['pass_rate']:.3f}</td>" in text
        assert f"<td>{r['pairs']}</td><td>{r['loss']:.3f}</td>" in text
    assert "start (step 0)" in text and f"final (step {STEPS})" in text
    assert "tiny" in text and "eval_every: 6" in text  # model name, config.yaml in a <pre>

    # 4 prompts (rows) x 2 images per side; tiles 32 px upscaled 4x, framed
    with Image.open(out / "before_after.png") as im:
        assert im.height > 4 * 128 and im.width > 2 * 2 * 128


def test_main_default_out_and_replot(run_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "curves.png").unlink()
    assert main([str(run)]) == 0
    index = run / "report" / "index.html"
    assert capsys.readouterr().out.strip() == str(index)
    assert "curves.png" in _check_images(index)
    assert not (run / "curves.png").exists()  # re-plotted into the report only
    assert main([str(run)]) == 0  # a rerun replaces the report
    assert not [p for p in (run / "report").iterdir() if ".tmp-" in p.name]


def test_single_eval_still_renders(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns(f"step_{STEPS:07d}", "summary.json"))
    (run / "metrics" / f"step_{STEPS:07d}.parquet").unlink()
    index = build_report(run)
    text = index.read_text()
    assert "Only one evaluation (step 0)" in text
    assert "eval_grid.png" in _check_images(index)
    assert "before_after.png" not in text


def test_not_a_run_dir(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config.yaml" in err and "metrics" in err
    (tmp_path / "config.yaml").write_text("model: {name: tiny}\n")
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "config.yaml" not in err and "missing metrics" in err
    assert not (tmp_path / "report").exists()


def test_judged_vs_true_pass_rate_and_the_gaming_warning(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    rd = RunDir(run, create=False)
    for s in range(1, STEPS + 1):  # the judged rate rises (0.125 * step), the true one stays flat
        rd.log_metrics(
            s, {"version": s, **_step_row(s), "true_pass_rate": 0.1, "true_pass_rate_geneval": 0.2}
        )
    summary = rd.read_json("summary.json")
    summary["warnings"] = [{"step": 5, "text": "judge gaming? the judged pass rate rose", "until": None}]
    rd.write_summary(summary)
    index = build_report(run)
    text = index.read_text()
    assert "pass_rates.png" in _check_images(index)
    assert "Judged vs true pass rate" in text and "Warning, from step 5:" in text
    assert "judge gaming? the judged pass rate rose" in text
    # A run without ground truth has no such section.
    assert "pass_rates.png" not in build_report(run_dir, out=tmp_path / "plain").read_text()
