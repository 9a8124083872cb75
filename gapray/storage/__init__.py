"""The run directory: everything one run writes, in formats anyone can open without gapray.

Where it sits: the controller owns one `RunDir`; the learner saves checkpoints into it, the
controller logs metrics, rollouts and sample images each step, and `gapray.plots` draws the
curves from it. Layout:

    <root>/
        config.yaml                         # the resolved config
        metrics/step_0000012.parquet        # one row per step (the source of truth)
        metrics.parquet                     # all steps, sorted (consolidate(); a convenience view)
        rollouts/step_0000012.parquet       # one row per sample: prompt, seed, tokens, p_yes, ...
        samples/step_0000012/00000/metadata.jsonl, samples/0000.png   # GenEval's folder layout
        checkpoints/step_0000012/           # save_pretrained + trainer_state.pt + MANIFEST.json
        curves.png, summary.json

Every write is atomic (temp file + fsync + rename), so a killed run never leaves a half file,
and per-step files make a resumed run's redo of a step a replacement, never a duplicate.

    run = RunDir("runs/toy")
    run.write_config(cfg)
    run.log_metrics(12, {"loss": 0.41, "mean_p_yes": 0.63})
    run.read_metrics().to_pandas()          # or: duckdb "select * from 'runs/toy/metrics/*.parquet'"
    run.save_checkpoint(12, model.save_pretrained, {"optimizer": opt.state_dict(), "step": 12})
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from gapray.storage import checkpoints as _ckpt
from gapray.storage.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from gapray.storage.checkpoints import CorruptCheckpointError, verify_checkpoint
from gapray.storage.tables import columns_to_table, list_parts, part_name, read_parts, write_part

__all__ = ["CorruptCheckpointError", "RunDir", "verify_checkpoint"]

Scalar = float | int | str | bool | None


class RunDir:
    """One run's directory. `create=False` opens an existing one read-only-ish (raises if absent)."""

    def __init__(self, root: str | os.PathLike[str], create: bool = True):
        self.root = Path(root)
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        elif not self.root.is_dir():
            raise FileNotFoundError(f"run directory {self.root} does not exist")

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def path(self, relpath: str | os.PathLike[str]) -> Path:
        return self.root / relpath

    # --- plain files ---------------------------------------------------------------------------

    def write_bytes(self, relpath: str | os.PathLike[str], data: bytes) -> Path:
        atomic_write_bytes(p := self.path(relpath), data)
        return p

    def write_text(self, relpath: str | os.PathLike[str], text: str) -> Path:
        atomic_write_text(p := self.path(relpath), text)
        return p

    def write_json(self, relpath: str | os.PathLike[str], obj: Any) -> Path:
        # default=str: numpy scalars, Paths and dates become readable text instead of a crash
        # at the end of a long run.
        return self.write_text(relpath, json.dumps(obj, indent=2, default=_json_default) + "\n")

    def read_json(self, relpath: str | os.PathLike[str]) -> Any:
        return json.loads(self.path(relpath).read_text())

    def write_config(self, resolved: Mapping[str, Any]) -> Path:
        """config.yaml: the fully resolved config (no interpolations left), as written by OmegaConf."""
        from omegaconf import OmegaConf  # installed with hydra-core; only the writer needs it

        text = OmegaConf.to_yaml(OmegaConf.create(_plain(resolved)), resolve=True)
        return self.write_text("config.yaml", text)

    def write_summary(self, d: Mapping[str, Any]) -> Path:
        return self.write_json("summary.json", dict(d))

    # --- metrics -------------------------------------------------------------------------------

    def log_metrics(self, step: int, row: Mapping[str, Scalar]) -> Path:
        """Write `metrics/step_NNNNNNN.parquet` (one row, `step` first); replaces a redone step."""
        if "step" in row and row["step"] != step:
            raise ValueError(f"row has step={row['step']!r} but is logged as step {step}")
        cols: dict[str, list[Any]] = {"step": [int(step)]}
        cols.update({k: [_scalar(k, v)] for k, v in row.items() if k != "step"})
        write_part(p := self.path("metrics") / part_name(step), columns_to_table(cols))
        return p

    def read_metrics(self) -> pa.Table:
        """All steps, sorted by step, one row each; columns missing in a step are null."""
        parts = list_parts(self.path("metrics"))
        if not parts and self.path("metrics.parquet").is_file():
            return pq.read_table(self.path("metrics.parquet"))  # a copied-out consolidated run
        return read_parts(parts, sort_by="step")

    def consolidate(self) -> Path:
        """Write metrics.parquet, the concatenation of all steps (for one-file readers)."""
        table = read_parts(list_parts(self.path("metrics")), sort_by="step")
        with atomic_path(p := self.path("metrics.parquet")) as tmp:
            pq.write_table(table, tmp)
        return p

    # --- rollouts and samples ------------------------------------------------------------------

    def log_rollouts(self, step: int, columns: Mapping[str, Sequence[Any] | np.ndarray]) -> Path:
        """Write `rollouts/step_NNNNNNN.parquet`, one row per sample, plus a `step` column.

        A 2-D array (N, T) becomes a list column keeping its dtype (int32 tokens -> list<int32>).
        """
        if not columns:
            raise ValueError("log_rollouts needs at least one column")
        n = len(next(iter(columns.values())))
        cols: dict[str, Any] = {"step": np.full(n, step, dtype=np.int64)}
        cols.update({k: v for k, v in columns.items() if k != "step"})
        write_part(p := self.path("rollouts") / part_name(step), columns_to_table(cols))
        return p

    def read_rollouts(self, step: int | None = None) -> pa.Table:
        """All rollouts (sorted by step), or only `step`'s."""
        if step is not None:
            return pq.read_table(self.path("rollouts") / part_name(step))
        return read_parts(list_parts(self.path("rollouts")), sort_by="step")

    def save_images(
        self, step: int, items: Sequence[tuple[int, Mapping[str, Any], list[Image.Image]]]
    ) -> Path:
        """GenEval's layout under samples/step_NNNNNNN/: `<index:05d>/metadata.jsonl` (the prompt's
        record, one line) and `<index:05d>/samples/0000.png`, so GenEval's evaluator reads it as is."""
        out = self.path("samples") / part_name(step).removesuffix(".parquet")
        for index, metadata, images in items:
            folder = out / f"{index:05d}"
            atomic_write_text(
                folder / "metadata.jsonl", json.dumps(dict(metadata), default=_json_default) + "\n"
            )
            for k, image in enumerate(images):
                with atomic_path(folder / "samples" / f"{k:04d}.png") as tmp:
                    image.save(tmp, format="PNG")
        return out

    # --- checkpoints ---------------------------------------------------------------------------

    @property
    def checkpoint_dir(self) -> Path:
        return self.path("checkpoints")

    def save_checkpoint(
        self, step: int, save_model: Callable[[Path], None], state: dict[str, Any], keep: int = 3
    ) -> Path:
        """See `gapray.storage.checkpoints.save_checkpoint`."""
        return _ckpt.save_checkpoint(self.checkpoint_dir, step, save_model, state, keep=keep)

    def list_checkpoints(self) -> list[Path]:
        return _ckpt.list_checkpoints(self.checkpoint_dir)

    def latest_checkpoint(self, verify: bool = True) -> Path | None:
        """Newest complete checkpoint; raises CorruptCheckpointError (with `previous_good`) if it
        fails verification."""
        return _ckpt.latest_checkpoint(self.checkpoint_dir, verify=verify)

    verify_checkpoint = staticmethod(verify_checkpoint)
    load_trainer_state = staticmethod(_ckpt.load_trainer_state)


def _scalar(key: str, v: Any) -> Scalar:
    """Metric values as plain Python scalars (numpy / 0-d torch values included)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if hasattr(v, "item"):  # numpy scalar, 0-d array or 0-d tensor
        return v.item()
    raise TypeError(f"metric {key!r}: expected float | int | str | None, got {type(v).__name__}")


def _json_default(o: Any) -> Any:
    if hasattr(o, "item") and getattr(o, "ndim", 0) == 0:
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def _plain(d: Any) -> Any:
    """Make a dict OmegaConf accepts: tuples -> lists, Paths -> str, numpy scalars -> Python."""
    if isinstance(d, Mapping):
        return {str(k): _plain(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_plain(v) for v in d]
    if isinstance(d, Path):
        return str(d)
    if hasattr(d, "item") and getattr(d, "ndim", 0) == 0:
        return d.item()
    return d
