"""The evaluator seam: what an evaluator computes on a worker, what comes back, what is written.

An evaluator (`self_eval.SelfEvaluator`, `toy_eval.ToyEvaluator`) has a prompt set and four
steps: `share` runs on a generation worker over some of the prompts (images, own judgements,
the evaluator's own checks) and returns an `EvalShare`; the driver merges the shares,
`summarize`s them into the results dict (results.json), takes the `headline` scalars for
metrics.parquet / summary.json, and `write_outputs` writes verdicts.jsonl, results.json and
grid.png beside the images the workers wrote in GenEval's folder layout.

    settings = EvalSettings(images_per_prompt=4, cfg_scale=5.0, temperature=1.0, seed=0, batch_size=16)
    results = run_local(ToyEvaluator(), model, "runs/eval-toy", settings)   # one process
    EvalStage(...).evaluate(step)                                         # over the pool (stage.py)
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gapray.eval.images import grid_rows, make_grid, open_png, png_bytes, tile, write_prompt_folder
from gapray.models.base import DEFAULT_QUESTION
from gapray.storage.atomic import atomic_write_bytes, atomic_write_text
from gapray.types import Prompt


@dataclass(frozen=True)
class EvalSettings:
    """How the images of an evaluation are drawn; the same on every worker."""

    images_per_prompt: int
    cfg_scale: float | None
    """The adapters' CFG argument (None = no guidance; see models.base.guidance)."""
    temperature: float
    seed: int
    batch_size: int
    question: str = DEFAULT_QUESTION
    """The yes/no question every judge is asked ({prompt} = the prompt text): reward.question in
    a run, so evaluation and training ask the same question."""
    threshold: float = 0.5
    """Decision yes when S = P(yes) / (P(yes) + P(no)) >= threshold: reward.threshold in a run."""


@dataclass
class EvalShare:
    """One worker's part of an evaluation (or the merge of all parts)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    """One per image: index, sample, prompt_id, tag, prompt, judge_p_yes, judge_yes, ok (the
    verdict that colours its grid frame) and the evaluator's own fields."""
    questions: list[tuple[str | None, bool, bool]] = field(default_factory=list)
    """Understanding questions asked, if the evaluator asks any: (tag, true answer, decision);
    the toy evaluator's are toy_eval.Question, the same 3-tuple with the pair's kind as .kind."""
    tiles: dict[int, list[bytes]] = field(default_factory=dict)
    """Grid tiles (PNG bytes) of the prompts shown in grid.png, by prompt index."""
    version: int = 0
    """Policy version of the weights that made the images."""

    def keep(self, index: int, prompt: Prompt, images, shown: set[int], out) -> None:
        """What every evaluator keeps of one prompt's images: its grid tiles if the grid shows
        it, and its GenEval folder under `out` (when given)."""
        if index in shown:
            self.tiles[index] = [tile(im) for im in images]
        if out is not None:
            write_prompt_folder(Path(out) / f"{index:05d}", prompt, images)

    images: dict[tuple[int, int], bytes] = field(default_factory=dict)
    """(index, sample) -> the image as PNG bytes, for evaluators judged outside the worker
    (eval=judge: the external judges see these pixels); empty for every other evaluator."""


def merge_shares(shares: Sequence[EvalShare]) -> EvalShare:
    """Shares in prompt order -> one share; all of them must come from the same weights."""
    versions = {s.version for s in shares}
    if len(versions) > 1:
        raise RuntimeError(f"evaluation shares come from different policy versions {sorted(versions)}")
    out = EvalShare(version=versions.pop() if versions else 0)
    for s in shares:
        out.records += s.records
        out.questions += s.questions
        out.tiles |= s.tiles
        out.images |= s.images
    out.records.sort(key=lambda r: (r["index"], r["sample"]))
    return out


class Evaluator(Protocol):
    name: str
    """Prefix of every metric it logs in a run ("self_non_unification", "toy_geneval_overall")."""

    def prompts(self) -> list[Prompt]:
        """The evaluated prompt set, in index order."""
        ...

    def share(
        self,
        model,
        prompts: Sequence[Prompt],
        indices: Sequence[int],
        settings: EvalSettings,
        out: Path | None,
        shown: set[int],
    ) -> EvalShare:
        """Evaluate `prompts` (index `indices[j]` in the set) with `model`; write their folders
        under `out`; return tiles for the indices in `shown`."""
        ...

    def summarize(self, prompts: Sequence[Prompt], merged: EvalShare, settings: EvalSettings) -> dict:
        """The results dict (results.json) from all shares."""
        ...

    def headline(self, results: dict) -> dict[str, float | None]:
        """The scalar metrics a run logs, unprefixed ("non_unification", "non_unification_colors")."""
        ...


def write_outputs(out: Path, prompts: Sequence[Prompt], merged: EvalShare, results: dict) -> None:
    """verdicts.jsonl (one line per image), results.json and grid.png, each written atomically."""
    rows = []
    for index in sorted(merged.tiles):
        mine = [r for r in merged.records if r["index"] == index]
        rows.append(
            (prompts[index].text, [open_png(t) for t in merged.tiles[index]], [r["ok"] for r in mine])
        )
    if rows:
        atomic_write_bytes(out / "grid.png", png_bytes(make_grid(rows)))
    atomic_write_text(out / "verdicts.jsonl", "".join(json.dumps(r) + "\n" for r in merged.records))
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, allow_nan=False) + "\n")


def run_local(
    evaluator: Evaluator,
    model,
    out_dir: str | Path | None,
    settings: EvalSettings,
    *,
    limit: int | None = None,
    meta: dict | None = None,
    judges=None,
) -> dict:
    """The whole evaluation in this process (`gapray eval`): one share of every prompt.
    `judges`: the external judges (`gapray.eval.judges.JudgePanel`) of an evaluator that
    needs them (eval=judge)."""
    prompts = evaluator.prompts()[:limit] if limit is not None else evaluator.prompts()
    if not prompts:
        raise ValueError("no prompts to evaluate (limit < 1?)")
    start = time.perf_counter()
    out = Path(out_dir) if out_dir is not None else None
    share = evaluator.share(model, prompts, range(len(prompts)), settings, out, set(grid_rows(prompts)))
    merged = merge_shares([share])
    judge_externally(evaluator, prompts, merged, settings, judges)
    results = dict(meta or {}) | evaluator.summarize(prompts, merged, settings)
    results["seconds"] = round(time.perf_counter() - start, 2)
    if out is not None:
        write_outputs(out, prompts, merged, results)
    return results


def judge_externally(
    evaluator: Evaluator, prompts: Sequence[Prompt], merged: EvalShare, settings, judges
) -> None:
    """For an evaluator that is judged outside the workers (`external = True`, eval=judge):
    every image of `merged` goes to every judge of the panel; their verdicts land in each
    record's "external" field and the images are dropped. Other evaluators: nothing to do."""
    if not getattr(evaluator, "external", False):
        return
    if judges is None:
        raise ValueError(f"the {evaluator.name} evaluator needs its external judges (eval.judges)")
    judges.attach(prompts, merged, settings)
