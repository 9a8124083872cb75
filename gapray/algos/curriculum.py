"""Curricula: which prompts the next online step generates for (pure numpy, no Ray).

Where it sits: the first and the last stage of the controller's loop,

    prompts = curriculum.next_batch(step)                     # -> list[Prompt]
    ...generate N images per prompt, judge them, build pairs, update...
    curriculum.observe(step, {prompt_id: (n_accepted, n_total), ...})
    metrics.update(curriculum.stats())

and its state goes into every checkpoint: `state_dict()` is plain JSON (the numpy generator's
state included), so a resumed run draws exactly the batches the uninterrupted run would have.

    cur = make_curriculum("replay", prompts, batch_size=32, seed=0, replay_every=4, replay_fraction=0.25)

Kinds:
  - "uniform" (`UniformCurriculum`): shuffled epochs over the prompt set.
  - "replay" (`ReplayCurriculum`): the paper's curriculum replay. A prompt none of whose images the
    model accepted goes to a discard pool; every `replay_every` steps part of the batch comes from
    the pool (oldest first); a replayed prompt leaves the pool once one of its images passes.
  - "band" (`PassRateBandCurriculum`): mostly prompts whose estimated pass rate lies in a band
    (some images pass, some fail: that is where the paper's rule finds a pair).

The classes share an interface (`Curriculum`) and small helpers, not implementation by inheritance.
`next_batch(step)` called twice with the same step returns the same batch, so a controller that
retries a failed step does not skip prompts.
"""

from __future__ import annotations

import abc
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gapray.types import Prompt

Results = Mapping[str, tuple[int, int]]
"""prompt id -> (n_accepted, n_total) of that prompt's images in one step."""


class Curriculum(abc.ABC):
    """What the controller sees of any curriculum."""

    @abc.abstractmethod
    def next_batch(self, step: int) -> list[Prompt]:
        """The prompts of step `step` (the same list again if called twice for one step)."""

    @abc.abstractmethod
    def observe(self, step: int, results: Results) -> None:
        """Record how many of each prompt's images the model accepted at `step`."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume, as JSON-able plain types."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict()` output (of a curriculum over the same prompt set)."""

    @abc.abstractmethod
    def stats(self) -> dict[str, float]:
        """Per-step metrics."""


# ---------------------------------------------------------------------------------------------
# Shared helpers (composition, not inheritance)


def _check_prompts(prompts: Sequence[Prompt], batch_size: int) -> list[Prompt]:
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts must not be empty")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        raise ValueError("prompt ids must be unique")
    return prompts


def _fingerprint(prompts: Sequence[Prompt]) -> int:
    """A checksum of the prompt ids, so a state is never loaded into a curriculum over other prompts."""
    return zlib.crc32("\n".join(p.id for p in prompts).encode())


def _check_results(results: Results, index: Mapping[str, int]) -> list[tuple[int, int, int]]:
    """(prompt index, n_accepted, n_total) per entry; validates ids and counts."""
    out = []
    for pid, (n_acc, n_total) in results.items():
        if pid not in index:
            raise ValueError(f"observe: unknown prompt id {pid!r}")
        if not 0 <= n_acc <= n_total:
            raise ValueError(
                f"observe: prompt {pid!r} needs 0 <= n_accepted <= n_total, got ({n_acc}, {n_total})"
            )
        out.append((index[pid], int(n_acc), int(n_total)))
    return out


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    # PCG64's state is a dict of Python ints (128-bit ones too), which JSON carries exactly.
    return rng.bit_generator.state


def _set_rng_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    rng.bit_generator.state = state


class _EpochWalk:
    """An endless walk over range(n) in freshly shuffled permutations (epochs)."""

    def __init__(self, n: int, rng: np.random.Generator) -> None:
        self.n = n
        self.rng = rng
        self.order: list[int] = []
        self.pos = 0
        self.epoch = -1  # becomes 0 at the first permutation

    def take(
        self, k: int, skip: set[int] | frozenset[int] = frozenset(), avoid: frozenset[int] = frozenset()
    ) -> list[int]:
        """The next k indices, distinct when k <= n, passing over `skip` when enough others remain.

        `avoid` (indices already in the batch) is passed over before `skip` is given up. A
        passed-over index (or one already taken at an epoch boundary) is consumed for this epoch:
        it does not come round again until the next permutation.
        """
        if k <= self.n - len(skip | avoid):
            skip = skip | avoid
        elif k <= self.n - len(avoid):
            skip = avoid  # not enough prompts outside `skip`: give it up, keep the batch distinct
        else:
            skip = frozenset()
        unique = k <= self.n - len(skip)
        out: list[int] = []
        chosen: set[int] = set()
        while len(out) < k:
            if self.pos >= len(self.order):
                self.order = [int(i) for i in self.rng.permutation(self.n)]
                self.pos = 0
                self.epoch += 1
            i = self.order[self.pos]
            self.pos += 1
            if i in skip or (unique and i in chosen):
                continue
            out.append(i)
            chosen.add(i)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"order": list(self.order), "pos": self.pos, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order = [int(i) for i in state["order"]]
        self.pos = int(state["pos"])
        self.epoch = int(state["epoch"])


class _BatchMemo:
    """The last (step, batch) so that next_batch(step) is idempotent for one step."""

    def __init__(self) -> None:
        self.step: int | None = None
        self.batch: list[int] = []

    def get(self, step: int) -> list[int] | None:
        return list(self.batch) if step == self.step else None

    def put(self, step: int, batch: list[int]) -> None:
        self.step, self.batch = step, list(batch)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "batch": list(self.batch)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.batch = [int(i) for i in state["batch"]]


def _batch_pass_rate(entries: list[tuple[int, int, int]]) -> float:
    total = sum(t for _, _, t in entries)
    return sum(a for _, a, _ in entries) / total if total else 0.0


def _check_state(kind: str, prompts: Sequence[Prompt], state: dict[str, Any]) -> None:
    if state.get("kind") != kind:
        raise ValueError(f"state is for curriculum {state.get('kind')!r}, not {kind!r}")
    if state.get("prompts_crc") != _fingerprint(prompts) or state.get("n_prompts") != len(prompts):
        raise ValueError("state was saved for a different prompt set")


# ---------------------------------------------------------------------------------------------


class UniformCurriculum(Curriculum):
    """Shuffled epochs over the prompt set; the baseline without any curriculum."""

    kind = "uniform"

    def __init__(self, prompts: Sequence[Prompt], batch_size: int, seed: int) -> None:
        self.prompts = _check_prompts(prompts, batch_size)
        self.batch_size = batch_size
        self._index = {p.id: i for i, p in enumerate(self.prompts)}
        self._rng = np.random.default_rng(seed)
        self._walk = _EpochWalk(len(self.prompts), self._rng)
        self._memo = _BatchMemo()
        self._last_pass_rate = 0.0

    def next_batch(self, step: int) -> list[Prompt]:
        batch = self._memo.get(step)
        if batch is None:
            batch = self._walk.take(self.batch_size)
            self._memo.put(step, batch)
        return [self.prompts[i] for i in batch]

    def observe(self, step: int, results: Results) -> None:
        self._last_pass_rate = _batch_pass_rate(_check_results(results, self._index))

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "n_prompts": len(self.prompts),
            "prompts_crc": _fingerprint(self.prompts),
            "rng": _rng_state(self._rng),
            "walk": self._walk.state_dict(),
            "memo": self._memo.state_dict(),
            "last_pass_rate": self._last_pass_rate,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_state(self.kind, self.prompts, state)
        _set_rng_state(self._rng, state["rng"])
        self._walk.load_state_dict(state["walk"])
        self._memo.load_state_dict(state["memo"])
        self._last_pass_rate = float(state["last_pass_rate"])

    def stats(self) -> dict[str, float]:
        return {"epoch": float(max(self._walk.epoch, 0)), "batch_pass_rate": self._last_pass_rate}


class ReplayCurriculum(Curriculum):
    """The paper's curriculum replay over shuffled epochs.

    A prompt none of whose images was accepted joins the discard pool (at the back, so the pool is
    oldest first); while in the pool it is passed over by the regular walk and waits for a replay
    step. Replay steps are step > 0 with step % replay_every == 0; on them up to
    floor(replay_fraction * batch_size) prompts (at least one if replay_fraction > 0) come from the
    front of the pool, the rest from the walk. A replayed prompt that passes (n_accepted > 0) leaves the pool (its accepted images then
    are training data like any other); one that fails again goes to the back.
    """

    kind = "replay"

    def __init__(
        self,
        prompts: Sequence[Prompt],
        batch_size: int,
        seed: int,
        replay_every: int = 4,
        replay_fraction: float = 0.25,
    ) -> None:
        self.prompts = _check_prompts(prompts, batch_size)
        if replay_every < 1:
            raise ValueError(f"replay_every must be >= 1, got {replay_every!r}")
        if not 0.0 <= replay_fraction <= 1.0:
            raise ValueError(f"replay_fraction must be in [0, 1], got {replay_fraction!r}")
        self.batch_size = batch_size
        self.replay_every = replay_every
        self.replay_fraction = replay_fraction
        self._index = {p.id: i for i, p in enumerate(self.prompts)}
        self._rng = np.random.default_rng(seed)
        self._walk = _EpochWalk(len(self.prompts), self._rng)
        self._memo = _BatchMemo()
        self._pool: list[int] = []  # prompt indices, oldest first
        self._replayed_last = 0
        self._recovered = 0  # prompts that left the pool by passing, over the run
        self._last_pass_rate = 0.0

    @property
    def discard_pool(self) -> list[str]:
        """Ids of the prompts waiting for replay, oldest first."""
        return [self.prompts[i].id for i in self._pool]

    def is_replay_step(self, step: int) -> bool:
        return step > 0 and step % self.replay_every == 0

    def next_batch(self, step: int) -> list[Prompt]:
        batch = self._memo.get(step)
        if batch is None:
            n_replay = 0
            if self.is_replay_step(step):
                # floor (plus a hair against float error, e.g. 0.1 * 30), but at least one when replay is
                # on, so that small batches replay too
                share = int(self.replay_fraction * self.batch_size + 1e-9)
                n_replay = min(len(self._pool), max(share, 1 if self.replay_fraction > 0 else 0))
            replay = self._pool[:n_replay]
            batch = replay + self._walk.take(self.batch_size - n_replay, set(self._pool), frozenset(replay))
            self._replayed_last = n_replay
            self._memo.put(step, batch)
        return [self.prompts[i] for i in batch]

    def observe(self, step: int, results: Results) -> None:
        entries = _check_results(results, self._index)
        for i, n_acc, n_total in entries:
            if n_total == 0:
                continue  # no images, no evidence either way
            in_pool = i in self._pool
            if in_pool:
                self._pool.remove(i)
            if n_acc == 0:
                self._pool.append(i)  # new, or failed again: to the back
            elif in_pool:
                self._recovered += 1
        self._last_pass_rate = _batch_pass_rate(entries)

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "n_prompts": len(self.prompts),
            "prompts_crc": _fingerprint(self.prompts),
            "rng": _rng_state(self._rng),
            "walk": self._walk.state_dict(),
            "memo": self._memo.state_dict(),
            "pool": list(self._pool),
            "replayed_last": self._replayed_last,
            "recovered": self._recovered,
            "last_pass_rate": self._last_pass_rate,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_state(self.kind, self.prompts, state)
        _set_rng_state(self._rng, state["rng"])
        self._walk.load_state_dict(state["walk"])
        self._memo.load_state_dict(state["memo"])
        self._pool = [int(i) for i in state["pool"]]
        self._replayed_last = int(state["replayed_last"])
        self._recovered = int(state["recovered"])
        self._last_pass_rate = float(state["last_pass_rate"])

    def stats(self) -> dict[str, float]:
        return {
            "epoch": float(max(self._walk.epoch, 0)),
            "discard_pool_size": float(len(self._pool)),
            "replayed": float(self._replayed_last),
            "recovered_total": float(self._recovered),
            "batch_pass_rate": self._last_pass_rate,
        }


class PassRateBandCurriculum(Curriculum):
    """Sample mostly prompts whose estimated pass rate lies in band = (lo, hi), bounds included.

    The estimate per prompt is an exponential moving average of n_accepted / n_total: the first
    observation sets it, later ones update est <- (1 - ema) * est + ema * rate (ema, in (0, 1], is
    the weight of the newest observation; ema = 1 keeps only the newest). Unseen prompts count as
    in-band, so the first epoch-worth of steps is uniform.
    Each batch slot is, in expectation, an `explore` share uniform over all prompts and the rest
    uniform over the in-band prompts; with no prompt in band, all prompts are used. A batch has
    no repeats unless it is bigger than the candidate set.
    """

    kind = "band"

    def __init__(
        self,
        prompts: Sequence[Prompt],
        batch_size: int,
        seed: int,
        band: tuple[float, float] = (0.2, 0.8),
        ema: float = 0.5,
        explore: float = 0.1,
    ) -> None:
        self.prompts = _check_prompts(prompts, batch_size)
        lo, hi = band
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"band must satisfy 0 <= lo < hi <= 1, got {band!r}")
        # ema = 0 would freeze every estimate at its first observation; gapray.config_checks
        # refuses exactly what this refuses (tests/test_curriculum.py checks they agree).
        if not 0.0 < ema <= 1.0:
            raise ValueError(f"ema must be in (0, 1], got {ema!r}")
        if not 0.0 <= explore <= 1.0:
            raise ValueError(f"explore must be in [0, 1], got {explore!r}")
        self.batch_size = batch_size
        self.band = (float(lo), float(hi))
        self.ema = ema
        self.explore = explore
        self._index = {p.id: i for i, p in enumerate(self.prompts)}
        self._rng = np.random.default_rng(seed)
        self._memo = _BatchMemo()
        self._est = np.full(len(self.prompts), np.nan)  # (n_prompts,) pass-rate estimate, NaN = unseen
        self._last_pass_rate = 0.0

    def in_band(self) -> np.ndarray:
        """(n_prompts,) bool: estimate inside the band, or unseen."""
        lo, hi = self.band
        est = self._est
        return np.isnan(est) | ((est >= lo) & (est <= hi))

    def pass_rate(self, prompt_id: str) -> float | None:
        """The current estimate for one prompt, None if unseen."""
        v = self._est[self._index[prompt_id]]
        return None if np.isnan(v) else float(v)

    def next_batch(self, step: int) -> list[Prompt]:
        batch = self._memo.get(step)
        if batch is None:
            batch = self._draw()
            self._memo.put(step, batch)
        return [self.prompts[i] for i in batch]

    def _draw(self) -> list[int]:
        n = len(self.prompts)
        mask = self.in_band()
        if not mask.any():
            mask = np.ones(n, dtype=bool)  # empty band: fall back to all prompts
        # (n,) mixture: explore share uniform over all, the rest uniform over the band
        w = self.explore / n + (1.0 - self.explore) * mask / mask.sum()
        w = w / w.sum()
        k = min(self.batch_size, int((w > 0).sum()))
        out = [int(i) for i in self._rng.choice(n, size=k, replace=False, p=w)]
        if self.batch_size > k:  # batch bigger than the candidates: repeats are unavoidable
            out += [int(i) for i in self._rng.choice(n, size=self.batch_size - k, replace=True, p=w)]
        return out

    def observe(self, step: int, results: Results) -> None:
        entries = _check_results(results, self._index)
        for i, n_acc, n_total in entries:
            if n_total == 0:
                continue
            rate = n_acc / n_total
            old = self._est[i]
            self._est[i] = rate if np.isnan(old) else (1.0 - self.ema) * old + self.ema * rate
        self._last_pass_rate = _batch_pass_rate(entries)

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "n_prompts": len(self.prompts),
            "prompts_crc": _fingerprint(self.prompts),
            "rng": _rng_state(self._rng),
            "memo": self._memo.state_dict(),
            # JSON has no NaN in its standard: unseen prompts are null
            "estimates": [None if np.isnan(v) else float(v) for v in self._est],
            "last_pass_rate": self._last_pass_rate,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_state(self.kind, self.prompts, state)
        _set_rng_state(self._rng, state["rng"])
        self._memo.load_state_dict(state["memo"])
        self._est = np.array(
            [np.nan if v is None else float(v) for v in state["estimates"]], dtype=np.float64
        )
        self._last_pass_rate = float(state["last_pass_rate"])

    def stats(self) -> dict[str, float]:
        seen = ~np.isnan(self._est)
        return {
            "seen_share": float(seen.mean()),
            "mean_pass_rate": float(self._est[seen].mean()) if seen.any() else 0.0,
            "in_band_share": float(self.in_band().mean()),
            "batch_pass_rate": self._last_pass_rate,
        }


CURRICULA: dict[str, type[Curriculum]] = {
    "uniform": UniformCurriculum,
    "replay": ReplayCurriculum,
    "band": PassRateBandCurriculum,
}


def make_curriculum(
    kind: str, prompts: Sequence[Prompt], batch_size: int, seed: int, **kwargs: Any
) -> Curriculum:
    """Build a curriculum by name ("uniform", "replay", "band"); kwargs go to its constructor."""
    if kind not in CURRICULA:
        raise ValueError(f"unknown curriculum kind {kind!r}; expected one of {sorted(CURRICULA)}")
    return CURRICULA[kind](prompts, batch_size, seed, **kwargs)
