"""Pool mechanics: the driver-side handle over N Ray actors of one worker class.

A pool splits each step's rows into contiguous shares, one per worker, and keeps the latest
weights it was sent: a worker that dies mid-step is replaced, brought to the current version,
and its share retried, so a step neither loses nor duplicates samples (every row's seed is
fixed by the driver, so the retry draws exactly the same images). The worker classes are plain
Python (`generation.py`, `reward.py`); the caller's `make_actor` places and sizes each actor.

    pool = WorkerPool("generation", make_actor, size=2); pool.start()
    outs = pool.map_shares("generate", n_rows, lambda s: (rows[s], seeds[s]))
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


class WorkerError(RuntimeError):
    """A worker could not start, or raised on its share of a step (bad model path, tokens the
    judge cannot decode, ...): not a crash to retry. The message names the pool, worker and rows."""


def describe(err: BaseException) -> str:
    """The user-facing cause of a Ray error: the original exception's type and message."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    msg = str(getattr(err, "error_msg", "") or err)
    # An actor whose __init__ raised: the traceback's last "SomeError: message" line.
    lines = [ln.strip() for ln in msg.splitlines() if re.match(r"^\s*[\w.]+(Error|Exception): ", ln)]
    if not lines:
        return msg.splitlines()[0] if msg else type(err).__name__
    # "gapray.models.janus.CheckpointError: ..." -> "CheckpointError: ..."
    return re.sub(r"^[\w.]+\.(\w+): ", r"\1: ", lines[-1])


def shares(n_rows: int, n_workers: int) -> list[slice]:
    """Contiguous, nearly equal row ranges, one per worker (empty ones dropped)."""
    bounds = np.linspace(0, n_rows, n_workers + 1).round().astype(int)
    return [slice(a, b) for a, b in itertools.pairwise(bounds) if b > a]


@dataclass
class WorkerPool:
    """Driver-side handle over N actors of one worker class, with replacement on failure."""

    name: str
    make_actor: object  # callable(index) -> actor handle (placed and sized by the caller)
    size: int
    actors: list = field(default_factory=list)
    current: tuple[int, object] | None = None
    """(version, the ledger's replay: [(manifest, refs)]), or (version, a callable returning
    one when asked: the compiled-graph transport's, from the learner's kept copies)."""
    restarts: int = 0
    max_restarts: int = 3
    placement: list[dict] = field(default_factory=list)  # each worker's ready() info: node, pid

    def start(self) -> None:
        import ray
        from ray.exceptions import RayError

        self.actors = [self.make_actor(i) for i in range(self.size)]
        self.placement = [{} for _ in self.actors]
        for i, a in enumerate(self.actors):
            try:
                self.placement[i] = ray.get(a.ready.remote())
            except RayError as err:
                raise WorkerError(f"{self.name} worker {i} failed to start: {describe(err)}") from None

    def load_weights_async(self, version: int, parts: list) -> list:
        """Replay pushes into every worker (WeightSync.push streams; this is for a whole
        replay): parts are a WeightLedger's [(manifest, bucket refs)], oldest first."""
        self.current = (version, parts)
        return [a.load_weights.remote(version, parts) for a in self.actors]

    def versions(self) -> list[int]:
        import ray

        return ray.get([a.get_version.remote() for a in self.actors])

    def _replace(self, i: int, err: Exception) -> None:
        import ray

        if self.restarts >= self.max_restarts:
            raise RuntimeError(f"{self.name} worker {i} died {self.restarts + 1} times; giving up") from err
        self.restarts += 1
        log.warning("%s worker %d died (%s); starting a replacement", self.name, i, type(err).__name__)
        with contextlib.suppress(Exception):  # already gone
            ray.kill(self.actors[i])
        self.actors[i] = self.make_actor(i)
        try:
            self.placement[i] = ray.get(self.actors[i].ready.remote())
        except ray.exceptions.RayError as e:
            raise WorkerError(
                f"{self.name} worker {i}: the replacement failed to start: {describe(e)}"
            ) from None
        if self.current is not None:
            ray.get(self.actors[i].load_weights.remote(*self.replay_parts()))

    def replay_parts(self) -> tuple[int, list]:
        """(the pushed version, the pushes that rebuild it: [(manifest, bucket refs)])."""
        assert self.current is not None
        version, parts = self.current
        return version, parts() if callable(parts) else parts

    def replace(self, i: int, err: Exception) -> None:
        """Replace dead worker i and load it with the last pushed weights (for callers that
        track their own calls on the workers, e.g. gapray.pipeline's streamed shares)."""
        self._replace(i, err)

    def heal(self) -> None:
        """Replace dead workers and bring every worker to the last pushed version (after a
        worker died during a weight sync)."""
        import ray
        from ray.exceptions import RayActorError

        for i, actor in enumerate(self.actors):
            try:
                held = ray.get(actor.get_version.remote())
            except RayActorError as err:
                self._replace(i, err)
                continue
            if self.current is not None and held != self.current[0]:
                ray.get(actor.load_weights.remote(*self.replay_parts()))

    def call_one(self, method: str, *args, **kwargs):
        """Call `method` on worker 0 (e.g. an evaluation), replacing it if it dies."""
        import ray
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

        while True:
            try:
                return ray.get(getattr(self.actors[0], method).remote(*args, **kwargs))
            except (RayActorError, ActorDiedError, ActorUnavailableError) as err:
                self._replace(0, err)
            except RayTaskError as err:
                raise WorkerError(f"{self.name} worker 0 failed in {method}: {describe(err)}") from None

    def map_shares(self, method: str, n_rows: int, args_for) -> list:
        """Call `method` on each worker with args_for(share slice); a worker that dies is
        replaced and its share retried. Results come back in share order."""
        import ray
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

        parts = shares(n_rows, len(self.actors))
        pending = {i: getattr(self.actors[i], method).remote(*args_for(s)) for i, s in enumerate(parts)}
        results: dict[int, object] = {}
        while pending:
            i, ref = next(iter(pending.items()))
            try:
                results[i] = ray.get(ref)
                del pending[i]
            except (RayActorError, ActorDiedError, ActorUnavailableError) as err:
                self._replace(i, err)
                pending[i] = getattr(self.actors[i], method).remote(*args_for(parts[i]))
            except RayTaskError as err:
                s = parts[i]
                raise WorkerError(
                    f"{self.name} worker {i} failed in {method} on rows {s.start}..{s.stop - 1}: {describe(err)}"
                ) from None
        return [results[i] for i in range(len(parts))]
