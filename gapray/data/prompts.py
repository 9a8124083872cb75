"""Load prompt sets from files or by built-in name into `gapray.types.Prompt` lists.

Where it sits: the first stage of the dataflow; the Curriculum draws its batches from the list
this returns, and evaluation pairs each GenEval prompt with its images.

    load_prompts("geneval")                      # 553 GenEval prompts (evaluation only)
    load_prompts("t2i_compbench/color_train")    # one T2I-CompBench category and split
    load_prompts("t2i_compbench_train")          # all eight training categories
    load_prompts("geneval_hard")                 # 300 harder GenEval-style compositions (geneval_hard.py)
    load_prompts("dpg_bench")                    # DPG-Bench's 1,065 dense prompts, tag "dpg_bench"
    load_prompts("my_prompts.jsonl")             # GenEval metadata schema, one JSON object a line
    load_prompts("color_train.txt")              # one prompt a line; tag from the file name: "color"

Ids are "<stem>/<line index, 0-based, 5 digits>" (built-ins use the set name as stem, e.g.
"geneval/00017", the same index as GenEval's sample folders). Any bad line raises
`PromptFileError` naming the file, the 1-based line number and the field.
"""

from __future__ import annotations

import json
import os
import re
from importlib import resources
from pathlib import Path

from gapray.types import Prompt

T2I_COMPBENCH_CATEGORIES = (
    "color",
    "shape",
    "texture",
    "spatial",
    "non_spatial",
    "complex",
    "numeracy",
    "3d_spatial",
)
T2I_COMPBENCH_SPLITS = ("train", "val")

# "<category>_<split>" with an optional suffix ("complex_train_action"); the lazy group keeps
# underscores inside the category ("non_spatial_train" -> "non_spatial").
_SPLIT_RE = re.compile(r"^(?P<cat>.+?)_(?:train|val|test)(?:_.+)?$")


class PromptFileError(ValueError):
    """A prompt file is missing, empty, or has a bad line; the message names file and line."""


def builtin_names() -> list[str]:
    """Every name `load_prompts` accepts besides a file path."""
    names = ["geneval", "geneval_hard", "dpg_bench", "t2i_compbench_train"]
    names += [f"t2i_compbench/{c}_{s}" for c in T2I_COMPBENCH_CATEGORIES for s in T2I_COMPBENCH_SPLITS]
    return names


def load_prompts(path_or_name: str | os.PathLike) -> list[Prompt]:
    """Prompts from a .jsonl / .txt file, or from a built-in set (see `builtin_names`)."""
    name = os.fspath(path_or_name)
    suffix = Path(name).suffix
    if suffix in (".jsonl", ".txt"):
        path = Path(name)
        if not path.is_file():
            raise PromptFileError(f"{name}: no such prompt file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise PromptFileError(f"{name}: not UTF-8 text ({err})") from None
        if suffix == ".jsonl":
            return _parse_jsonl(text, name, path.stem)
        return _parse_txt(text, name, path.stem, _category(path.stem))
    return _load_builtin(name)


def _load_builtin(name: str) -> list[Prompt]:
    # Shipped files are read through importlib.resources so an installed (even zipped) package
    # works; users never need the repository's shared/ folder.
    root = resources.files("gapray.data")
    if name == "geneval":
        res = root / "geneval" / "evaluation_metadata.jsonl"
        return _parse_jsonl(res.read_text(encoding="utf-8"), str(res), "geneval")
    if name == "geneval_hard":
        from gapray.data.geneval_hard import geneval_hard

        return geneval_hard()
    if name == "dpg_bench":
        res = root / "dpg_bench" / "dpg_bench_prompts.jsonl"
        return _parse_dpg(res.read_text(encoding="utf-8"), str(res))
    if name == "t2i_compbench_train":
        return [p for c in T2I_COMPBENCH_CATEGORIES for p in _load_builtin(f"t2i_compbench/{c}_train")]
    if name.startswith("t2i_compbench/") and name in builtin_names():
        stem = name.removeprefix("t2i_compbench/")
        res = root / "t2i_compbench" / f"{stem}.txt"
        return _parse_txt(res.read_text(encoding="utf-8"), str(res), name, _category(stem))
    raise PromptFileError(
        f"{name}: not a .jsonl/.txt prompt file nor a built-in set (built-ins: {', '.join(builtin_names())})"
    )


def _category(stem: str) -> str:
    m = _SPLIT_RE.match(stem)
    return m.group("cat") if m else stem


def _parse_jsonl(text: str, name: str, stem: str) -> list[Prompt]:
    prompts = []
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        where = f"{name} line {i + 1}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise PromptFileError(f"{where}: invalid JSON: {err}") from None
        try:
            prompt = Prompt.from_geneval(record, id=f"{stem}/{i:05d}")
        except ValueError as err:
            raise PromptFileError(f"{where}: {err}") from None
        # A GenEval record with nothing to include would pass every image; that is a broken
        # line, not a prompt.
        if not prompt.include:
            raise PromptFileError(f"{where}: field 'include' must not be empty")
        # The rule engine checks position against groups already matched, so the target must
        # come earlier (GenEval itself crashes otherwise).
        for j, spec in enumerate(prompt.include):
            if spec.position is not None and spec.position[1] >= j:
                raise PromptFileError(
                    f"{where}: field 'include[{j}].position' must refer to an earlier entry, "
                    f"got {spec.position[1]}"
                )
        prompts.append(prompt)
    if not prompts:
        raise PromptFileError(f"{name}: no prompts in file")
    return prompts


def _parse_txt(text: str, name: str, stem: str, tag: str) -> list[Prompt]:
    # strip() also drops the CRLF endings some T2I-CompBench files have.
    prompts = [
        Prompt(id=f"{stem}/{i:05d}", text=line.strip(), tag=tag)
        for i, line in enumerate(text.splitlines())
        if line.strip()
    ]
    if not prompts:
        raise PromptFileError(f"{name}: no prompts in file")
    return prompts


def _parse_dpg(text: str, name: str) -> list[Prompt]:
    """DPG-Bench's jsonl: {"item_id", "prompt"} a line; free text (no GenEval metadata), ids
    "dpg_bench/<line index>" as every built-in, tag "dpg_bench"."""
    prompts = []
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise PromptFileError(f"{name} line {i + 1}: invalid JSON: {err}") from None
        prompt = record.get("prompt") if isinstance(record, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptFileError(f"{name} line {i + 1}: field 'prompt' must be a non-empty string")
        prompts.append(Prompt(id=f"dpg_bench/{i:05d}", text=prompt.strip(), tag="dpg_bench"))
    if not prompts:
        raise PromptFileError(f"{name}: no prompts in file")
    return prompts
