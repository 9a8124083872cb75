"""The prompt sets of a diagnosis, in increasing difficulty.

Where it sits: the first thing `gapray diagnose` resolves (and loads, so a bad name or file is
refused before any actor starts). For a Janus-scale model: GenEval's 553 prompts, then harder
GenEval-style compositions from GenEval's own vocabulary (gapray/data/geneval_hard.py), then
T2I-CompBench's complex validation set, then DPG-Bench's dense prompts. For the toy model
(32 px, six shapes), whose images GenEval's COCO prompts mean nothing to: the toy world's test
split cut by task difficulty (single/colors, two/position, counting/color_attr). Any name
`load_prompts` accepts (a built-in or a .jsonl/.txt file) works as a set too.
"""

from __future__ import annotations

from gapray.eval.judge_eval import load_set
from gapray.types import Prompt

DEFAULT_SETS = ("geneval", "geneval_hard", "t2i_compbench/complex_val", "dpg_bench")
TOY_SETS = ("toy/easy", "toy/medium", "toy/hard")


def default_sets(model: str) -> tuple[str, ...]:
    return TOY_SETS if model == "toy" else DEFAULT_SETS


def slug(name: str) -> str:
    """A set's folder name: "t2i_compbench/complex_val" -> "t2i_compbench_complex_val"."""
    return name.rstrip("/").replace("/", "_").replace("\\", "_").removesuffix(".jsonl").removesuffix(".txt")


def load_sets(names: list[str]) -> dict[str, list[Prompt]]:
    """name -> prompts, in the given order; PromptFileError names a bad one; repeated names
    and names that would share a folder are refused."""
    from gapray.data.prompts import PromptFileError

    slugs = [slug(n) for n in names]
    if len(set(slugs)) != len(slugs):
        raise PromptFileError(f"prompt sets {names}: two of them would share one output folder")
    return {n: load_set(n) for n in names}
