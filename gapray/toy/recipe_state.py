"""A toy pretraining recipe's resumable state (`gapray toy pretrain`, either family).

Where it sits: under both recipe drivers (gapray/toy/pretrain.py for the toy Janus,
gapray/toy/pretrain_showo_run.py for the toy Show-o). It owns `<out>/state.pt`: the weights,
the optimizers, the numpy and torch RNG states, the progress (stage, step, elapsed seconds, and
whatever a stage records there) and the flags, written atomically, so a killed run continues
where it stopped when started again with the same --out. A state.pt of the other family is
refused by name.

    rs = RecipeState(out / "state.pt", "janus", model, {"vq_opt": vq, "lm_opt": lm}, rng, args, "vq")
    if not args.fresh:
        rs.resume(device)            # ValueError for another family's state.pt
    state = rs.progress              # {"stage", "step", "elapsed", ...}, edited by the driver
    ...; rs.maybe_save(args.save_every)   # every few minutes; rs.save() at a stage's end
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename: a reader never sees half a file."""
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class RecipeState:
    """The resumable state of one recipe run (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        family: str,
        model: torch.nn.Module,
        optimizers: dict[str, torch.optim.Optimizer],
        rng: np.random.Generator,
        args: argparse.Namespace,
        first_stage: str,
    ):
        self.path, self.family, self.model, self.optimizers = path, family, model, optimizers
        self.rng, self.args = rng, args
        self.progress: dict = {"stage": first_stage, "step": 0, "elapsed": 0.0}
        self._clock()

    def _clock(self) -> None:
        self.start = time.perf_counter() - self.progress["elapsed"]
        self.last_save = time.perf_counter()

    def seconds(self) -> float:
        """Seconds of training so far, earlier runs of this --out included."""
        return time.perf_counter() - self.start

    def resume(self, device: torch.device) -> None:
        """Load state.pt when there is one (weights, optimizers, RNGs, progress)."""
        if not self.path.exists():
            return
        saved = torch.load(self.path, map_location=device, weights_only=False)
        family = saved.get("args", {}).get("family", "janus")
        if family != self.family:
            raise ValueError(f"{self.path} is a {family} run; use another --out or --fresh")
        self.model.load_state_dict(saved["model"])
        for key, opt in self.optimizers.items():
            opt.load_state_dict(saved[key])
        self.rng.bit_generator.state = saved["rng"]
        torch.set_rng_state(saved["torch_rng"].cpu())
        self.progress = saved["progress"]
        self._clock()
        stage, step = self.progress["stage"], self.progress["step"]
        print(f"[pretrain] resumed {self.path}: stage {stage} step {step}", flush=True)

    def save(self) -> None:
        self.progress["elapsed"] = self.seconds()
        atomic_save(
            {
                "model": self.model.state_dict(),
                **{key: opt.state_dict() for key, opt in self.optimizers.items()},
                "rng": self.rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "progress": dict(self.progress),
                "args": vars(self.args),
            },
            self.path,
        )

    def maybe_save(self, every_minutes: float) -> None:
        """Save when the last save is more than `every_minutes` old."""
        if time.perf_counter() - self.last_save > 60 * every_minutes:
            self.save()
            self.last_save = time.perf_counter()
