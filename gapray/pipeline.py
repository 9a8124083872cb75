"""How the controller's generate and score stages are scheduled: sync or async, and streamed.

Where it sits: inside `Controller.step`, between the curriculum and the pair builder,

    rollout.fill(step)                       # launch generation for steps step..step+k (not yet launched)
    prompts, samples, scored, pairs, spans = rollout.take(step, pair_fn)  # streamed

One controller, one loop; `run.pipeline` and `run.max_staleness` only decide how far ahead
generation is launched (shared/DESIGN.md: k = 0 is sync):

    sync  (k = 0)   step t's generation is launched at the start of step t, after step t-1's
                    weight sync: every sample is made by the learner's current weights.
    async (k >= 1)  at the start of step t the generation of steps t+1..t+k is launched too, so it
                    runs on the generation workers while step t is scored, paired and learned.
                    A generation launched at the start of step s-k uses the weights pushed at the
                    end of step s-k-1 (a Ray actor runs its calls in submission order, so a later
                    weight load cannot overtake it), hence when step s learns, its samples are at
                    most k versions behind: staleness <= k by construction (checked per step).

Streaming: each generation worker's share goes out in calls of at most `generation.batch_size`
rows (the worker batches at that size anyway, and a row depends only on its prompt and seed, so
the images do not change); `ray.wait` hands each call's images to the least-loaded reward worker
as soon as they are back, so judging starts while the rest is still being generated, and each
prompt's pairs are built as soon as its group's verdicts are all in (`GroupPairs`). The only
barrier is the learner update, which needs the step's pairs. In-process pools (the sequential
stand-ins of `gapray bench loop`) run each stage when it is asked for, one after another.

A worker that dies is replaced (the pool loads its latest weights) and its calls resubmitted with
the same rows and seeds; every sample records the version that made it, so staleness stays true.

Resume: a checkpoint written at the end of step c keeps the prompts of the steps already launched
(c+1..c+k), and `restore` relaunches exactly those, with their seeds, from the checkpoint's
weights; the curriculum's saved state already counts them, so no prompt is drawn twice or skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from gapray.algos.pairs import PairStats
from gapray.eval.verifier import Truth
from gapray.types import Prompt
from gapray.workers.generation import Rollouts, generate_rollouts
from gapray.workers.pool import WorkerError, WorkerPool, describe, shares
from gapray.workers.reward import Scores, score_rollouts

PIPELINES = ("sync", "async")

PairFn = Callable[[list[str], np.ndarray, np.ndarray], tuple[list[tuple[int, int]], PairStats]]
"""build_pairs with the run's settings: (group ids, p_yes, accepted) -> (pairs, stats)."""


def staleness_bound(pipeline: str, max_staleness: int) -> int:
    """k, the most versions a sample may lag the learner that trains on it (sync: 0)."""
    if pipeline not in PIPELINES:
        raise ValueError(f"run.pipeline must be one of {PIPELINES}, got {pipeline!r}")
    if pipeline == "sync":
        return 0
    if not isinstance(max_staleness, int) or max_staleness < 0:
        raise ValueError(f"run.max_staleness must be an integer >= 0, got {max_staleness!r}")
    return max_staleness


def launch_steps(step: int, k: int, last_step: int) -> range:
    """The steps whose generation may be running when step `step` starts: step..step+k, never
    past the run's last step."""
    return range(step, min(step + k, last_step) + 1)


def staleness(learner_version: int, versions: np.ndarray, k: int) -> np.ndarray:
    """(N,) versions behind the learner of each sample; raises if any lags more than k (the
    schedule makes that impossible, so it would be a bug, not a case to train through)."""
    gap = learner_version - np.asarray(versions, dtype=np.int64)
    if len(gap) and (gap.max() > k or gap.min() < 0):
        raise RuntimeError(
            f"staleness out of bounds: samples of versions {sorted(set(versions.tolist()))} for a learner "
            f"at version {learner_version} (run.max_staleness={k})"
        )
    return gap


def chunks(n_rows: int, n_workers: int, chunk_rows: int) -> list[tuple[int, slice]]:
    """(worker, rows) calls: each worker's contiguous share (`pool.shares`) cut into calls of at
    most chunk_rows rows, in row order."""
    out = []
    for i, s in enumerate(shares(n_rows, n_workers)):
        for a in range(s.start, s.stop, chunk_rows):
            out.append((i, slice(a, min(a + chunk_rows, s.stop))))
    return out


def merge_pair_stats(parts: list[PairStats]) -> PairStats:
    """The stats of one build_pairs call over the union of disjoint groups, from each part's."""
    pairs = sum(p.pairs for p in parts)
    margin = sum(p.mean_margin * p.pairs for p in parts) / pairs if pairs else 0.0
    return PairStats(
        prompts=sum(p.prompts for p in parts),
        pairs=pairs,
        all_pass=sum(p.all_pass for p in parts),
        all_fail=sum(p.all_fail for p in parts),
        below_margin=sum(p.below_margin for p in parts),
        mean_margin=float(margin),
    )


class GroupPairs:
    """The pair builder fed prompt by prompt: rows arrive in any order as their scoring calls
    come back, and a prompt's pairs are built as soon as all of its rows are scored (a prompt
    drawn twice in one step is one group, as in build_pairs). Pairs depend only on their own
    group, so `result()` equals one build_pairs call over the step: pairs grouped by prompt,
    prompts in order of first appearance (tested)."""

    def __init__(self, group_ids: list[str], pair_fn: PairFn):
        self.group_ids, self.pair_fn = list(group_ids), pair_fn
        self.rows: dict[str, list[int]] = {}  # prompt id -> its rows, in row order (first seen first)
        for i, g in enumerate(self.group_ids):
            self.rows.setdefault(g, []).append(i)
        self.missing = {g: len(r) for g, r in self.rows.items()}  # unscored rows per prompt
        self.p_yes = np.zeros(len(group_ids), dtype=np.float32)
        self.accepted = np.zeros(len(group_ids), dtype=bool)
        self.built: dict[str, tuple[list[tuple[int, int]], PairStats]] = {}

    def add(self, rows: slice, p_yes: np.ndarray, accepted: np.ndarray) -> list[str]:
        """Record one scoring call's rows; returns the prompts it completed (their pairs built)."""
        self.p_yes[rows], self.accepted[rows] = p_yes, accepted
        done = []
        for i in range(rows.start, rows.stop):
            g = self.group_ids[i]
            self.missing[g] -= 1
            if self.missing[g] == 0:
                done.append(g)
        for g in done:
            idx = self.rows[g]
            local, stats = self.pair_fn([g] * len(idx), self.p_yes[idx], self.accepted[idx])
            self.built[g] = ([(idx[c], idx[r]) for c, r in local], stats)
        return done

    def result(self) -> tuple[list[tuple[int, int]], PairStats]:
        left = [g for g, m in self.missing.items() if m > 0]
        if left:
            raise RuntimeError(f"{len(left)} prompts are not fully scored yet")
        order = list(self.rows)
        return [p for g in order for p in self.built[g][0]], merge_pair_stats(
            [self.built[g][1] for g in order]
        )


@dataclass
class Spans:
    """Wall-clock spans of one step's rollouts (seconds, perf_counter)."""

    launched: float
    """When the step's generation calls were submitted."""
    generated: float = 0.0
    """When the last generation call came back."""
    first_scored_at: float | None = None
    """When the first scoring call was submitted."""
    scored: float = 0.0
    """When the last verdict came back."""


@dataclass
class Launched:
    """One step's generation, submitted: its prompts, row seeds, and the calls in flight."""

    step: int
    prompts: list[Prompt]
    seeds: np.ndarray  # (P * n,) int64
    rows: list[str]  # prompt text per row, n per prompt, contiguous
    calls: list[tuple[int, slice]]  # (worker, rows) per generation call
    refs: dict = field(default_factory=dict)  # ObjectRef -> (call index, actor handle)
    eager: Rollouts | None = None  # in-process pools: generated when launched
    spans: Spans = field(default_factory=lambda: Spans(time.perf_counter()))


class RolloutPipeline:
    """The controller's generate -> score stages, launched up to k steps ahead and streamed."""

    def __init__(
        self,
        k: int,
        last_step: int,
        generation,
        reward,
        n: int,
        chunk_rows: int,
        prompts_for: Callable[[int], list[Prompt]],
        seeds_for: Callable[[int, int], np.ndarray],
        verify: bool = False,
    ):
        """prompts_for(step): the curriculum's batch; seeds_for(step, rows): the row seeds
        (`controller.row_seeds`, their one owner); verify: rows get their Prompt for the toy
        verifier."""
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self.k, self.last_step, self.n, self.chunk_rows = k, last_step, n, chunk_rows
        self.generation, self.reward = generation, reward
        self.prompts_for, self.seeds_for, self.verify = prompts_for, seeds_for, verify
        self.launched: dict[int, Launched] = {}
        self.restored: dict[int, list[Prompt]] = {}  # from a checkpoint: prompts of launched steps

    # ------------------------------------------------------------------ schedule
    def fill(self, step: int) -> list[int]:
        """Launch the generation of every step in step..step+k not launched yet; returns them."""
        new = [s for s in launch_steps(step, self.k, self.last_step) if s not in self.launched]
        for s in new:
            prompts = self.restored.pop(s, None)
            self.launched[s] = self._launch(s, prompts if prompts is not None else self.prompts_for(s))
        return new

    def take(
        self, step: int, pair_fn: PairFn | None = None
    ) -> tuple[list[Prompt], Rollouts, Scores, tuple[list[tuple[int, int]], PairStats] | None, Spans]:
        """Step `step`'s prompts, rollouts, verdicts and (with `pair_fn`) its pairs, built prompt
        by prompt as each group's verdicts come back; waits for them; fill(step) first."""
        if step not in self.launched:
            raise RuntimeError(f"step {step}'s generation was never launched (call fill({step}) first)")
        job = self.launched.pop(step)
        ids = [p.id for p in job.prompts for _ in range(self.n)]
        groups = None if pair_fn is None else GroupPairs(ids, pair_fn)
        samples, scored = self._collect(job, groups)
        pairs = None if groups is None else groups.result()
        return job.prompts, samples, scored, pairs, job.spans

    def pending(self) -> dict[str, list[str]]:
        """Prompt ids of the steps launched but not taken (for the checkpoint)."""
        return {str(s): [p.id for p in job.prompts] for s, job in sorted(self.launched.items())}

    def restore(self, pending: dict[str, list[str]], prompts: list[Prompt]) -> None:
        """Relaunch these steps with these prompts (a checkpoint's `pending()`), not new draws."""
        by_id = {p.id: p for p in prompts}
        missing = sorted({pid for ids in pending.values() for pid in ids} - by_id.keys())
        if missing:
            raise ValueError(
                f"the checkpoint's launched steps name prompts not in the prompt set: {missing[:5]}"
            )
        self.restored = {int(s): [by_id[pid] for pid in ids] for s, ids in pending.items()}

    # ------------------------------------------------------------------ stages
    def _launch(self, step: int, prompts: list[Prompt]) -> Launched:
        n = self.n
        rows = [p.text for p in prompts for _ in range(n)]
        seeds = np.asarray(self.seeds_for(step, len(rows)), dtype=np.int64)
        pool = self.generation
        if not isinstance(pool, WorkerPool):  # in-process: generate now, one call
            job = Launched(step, prompts, seeds, rows, calls=[])
            job.eager = generate_rollouts(pool, [p.id for p in prompts], [p.text for p in prompts], seeds, n)
            job.spans.generated = time.perf_counter()
            return job
        job = Launched(step, prompts, seeds, rows, calls=chunks(len(rows), len(pool.actors), self.chunk_rows))
        for c in range(len(job.calls)):
            self._submit_generate(job, c)
        return job

    def _submit_generate(self, job: Launched, c: int) -> None:
        i, s = job.calls[c]
        actor = self.generation.actors[i]
        job.refs[actor.generate.remote(job.rows[s], job.seeds[s].tolist())] = (c, actor)

    def _collect(self, job: Launched, groups: GroupPairs | None) -> tuple[Rollouts, Scores]:
        prompts, n = job.prompts, self.n
        specs = [p for p in prompts for _ in range(n)] if self.verify else None
        if job.eager is not None:
            scored = score_rollouts(self.reward, job.eager, specs)
            job.spans.first_scored_at = job.spans.generated
            job.spans.scored = time.perf_counter()
            if groups is not None:
                groups.add(slice(0, len(job.eager)), scored.p_yes, scored.accepted)
            return job.eager, scored
        return self._stream(job, specs, groups)

    def _stream(
        self, job: Launched, specs: list[Prompt] | None, groups: GroupPairs | None
    ) -> tuple[Rollouts, Scores]:
        """ray.wait over the generation calls and the scoring calls together: each generated
        call is scored as soon as it is back."""
        import ray

        gen, rew = self.generation, self.reward
        n_rows = len(job.rows)
        tokens: list = [None] * len(job.calls)
        versions = np.zeros(n_rows, dtype=np.int64)
        verdicts: dict[int, tuple] = {}  # call index -> (p_yes, accepted, version, truth)
        scoring: dict = {}  # ObjectRef -> (call index, reward worker, actor handle)
        load = [0] * len(rew.actors)  # rows being scored per reward worker

        def submit_score(c: int, j: int | None = None) -> None:
            s = job.calls[c][1]
            if j is None:
                j = int(np.argmin(load))  # the least-loaded reward worker (ties: the lower index)
            actor = rew.actors[j]
            if job.spans.first_scored_at is None:
                job.spans.first_scored_at = time.perf_counter()
            ref = actor.score.remote(job.rows[s], tokens[c], None if specs is None else specs[s])
            scoring[ref] = (c, j, actor)
            load[j] += s.stop - s.start

        while job.refs or scoring:
            ready, _ = ray.wait([*job.refs, *scoring], num_returns=1)
            ref = ready[0]
            if ref in job.refs:
                c, actor = job.refs.pop(ref)
                i, s = job.calls[c]
                out = _get(ref, gen, i, actor, "generate", s)
                if out is None:  # the worker died: replaced; the same rows and seeds again
                    self._submit_generate(job, c)
                    continue
                tokens[c], versions[s] = out[0], out[1]
                if not job.refs:
                    job.spans.generated = time.perf_counter()
                submit_score(c)
            else:
                c, j, actor = scoring.pop(ref)
                s = job.calls[c][1]
                load[j] -= s.stop - s.start
                out = _get(ref, rew, j, actor, "score", s)
                if out is None:
                    submit_score(c, j)
                    continue
                verdicts[c] = out
                if groups is not None:  # the prompts this call completed get their pairs now
                    groups.add(s, out[0], out[1])
        job.spans.scored = time.perf_counter()
        order = range(len(job.calls))
        samples = Rollouts(
            prompt_ids=[p.id for p in job.prompts for _ in range(self.n)],
            prompts=job.rows,
            sample_index=np.tile(np.arange(self.n), len(job.prompts)),
            seeds=job.seeds,
            versions=versions,
            tokens=np.concatenate([tokens[c] for c in order]),
        )
        scored = Scores(
            p_yes=np.concatenate([verdicts[c][0] for c in order]),
            accepted=np.concatenate([verdicts[c][1] for c in order]),
            versions=np.concatenate(
                [np.full(len(verdicts[c][0]), verdicts[c][2], dtype=np.int64) for c in order]
            ),
            truth=None if specs is None else Truth.concat([verdicts[c][3] for c in order]),
        )
        return samples, scored


def _get(ref, pool: WorkerPool, i: int, actor, method: str, rows: slice):
    """The call's result; None when its worker died (replaced here, unless an earlier failed
    call of the same worker already did); WorkerError when the call itself raised."""
    import ray
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

    try:
        return ray.get(ref)
    except (RayActorError, ActorDiedError, ActorUnavailableError) as err:
        if pool.actors[i] is actor:
            pool.replace(i, err)
        return None
    except RayTaskError as err:
        raise WorkerError(
            f"{pool.name} worker {i} failed in {method} on rows {rows.start}..{rows.stop - 1}: {describe(err)}"
        ) from None
