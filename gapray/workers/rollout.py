"""The generation and reward roles: Ray actors holding a model, and their driver-side pools.

    prompts --GenerationPool.generate--> Rollouts (tokens, seeds, versions)
            --RewardPool.score-->         Scores (P(yes), decision)

A worker class is plain Python; its pool makes it a Ray actor with the CPUs/GPUs and the
placement-group bundle the config gives (never decorators). A pool splits each step's rows
into contiguous shares, one per worker, and keeps the latest weights it was sent: a worker
that dies mid-step is replaced, brought to the current version, and its share retried, so a
step neither loses nor duplicates samples (every row's seed is fixed by the driver, so the
retry draws exactly the same images).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
from dataclasses import dataclass, field

import numpy as np
import torch

from gapray.workers.sync import LoraMergeState, apply_update

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


@dataclass(frozen=True)
class Rollouts:
    """N generated samples; rows of one prompt are contiguous (n per prompt)."""

    prompt_ids: list[str]
    prompts: list[str]
    sample_index: np.ndarray  # (N,) int: index of the image within its prompt's group
    seeds: np.ndarray  # (N,) int64: the sampling seed of each row
    versions: np.ndarray  # (N,) int: policy version of the weights that generated each row
    tokens: np.ndarray  # (N, T) int32 image tokens

    def __len__(self) -> int:
        return len(self.prompt_ids)


@dataclass(frozen=True)
class Scores:
    p_yes: np.ndarray  # (N,) float32: P(yes) / (P(yes) + P(no))
    accepted: np.ndarray  # (N,) bool: the judge's decision
    versions: np.ndarray  # (N,) int: judge weights' version (0 = frozen initial)


def guidance(cfg_scale: float) -> float | None:
    """Config's CFG weight -> the adapter's: a weight of 1 is the conditional distribution
    itself, so no unconditional rows are run."""
    return None if cfg_scale == 1 else cfg_scale


def resolve_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def load_adapter(model_cfg, device: str):
    """The model every role starts from (policy, reference and judge share initial weights)."""
    from gapray.models import load_model

    dtype = resolve_dtype(model_cfg.dtype, device)
    if model_cfg.name == "tiny":
        return load_model("tiny", dtype=dtype)
    return load_model(model_cfg.name, dtype=dtype, device=device)


class ModelWorker:
    """State shared by generation and reward workers: the model, its version, weight loading."""

    def __init__(self, model_cfg, threads: int, lora_scaling: float):
        torch.set_num_threads(max(1, threads))
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = load_adapter(model_cfg, self.device)
        self.version = 0
        self.lora_scaling = lora_scaling
        self.merge_state = LoraMergeState.empty()

    def ready(self) -> dict:
        return {"pid": os.getpid(), "version": self.version, "device": self.device}

    def get_version(self) -> int:
        return self.version

    def load_weights(self, version: int, bucket_refs: list) -> int:
        """Pull the buckets of a versioned update and copy them in; on any error the version
        stays what it was and the error (naming the tensor) propagates to the driver."""
        import ray

        buckets = ray.get(bucket_refs)
        tensors = {k: v for b in buckets for k, v in b.items()}
        apply_update(self.model.model, tensors, lora_scaling=self.lora_scaling, merge_state=self.merge_state)
        self.version = version
        return version


class GenerationWorker(ModelWorker):
    """Samples images for the policy. backend "hf": the adapter's own generate; backend "vllm":
    a vLLM engine running gapray's Janus model on the same checkpoint (the adapter is kept for
    evaluations and follows every update too)."""

    def __init__(self, model_cfg, gen_cfg, threads: int = 1, lora_scaling: float = 1.0):
        super().__init__(model_cfg, threads, lora_scaling)
        self.cfg = gen_cfg
        self.engine = None
        if gen_cfg.backend == "vllm":
            from gapray.backends.vllm_worker import VllmJanusEngine

            self.engine = VllmJanusEngine(
                self._checkpoint_dir(model_cfg),
                dtype="bfloat16" if self.model.model.dtype == torch.bfloat16 else "float32",
                max_num_seqs=2 * gen_cfg.batch_size,
                lora_scaling=lora_scaling,
            )

    def _checkpoint_dir(self, model_cfg) -> str:
        """A directory vLLM can load the starting weights from."""
        from gapray.models import TOY_CHECKPOINT

        if model_cfg.name == "toy":
            return str(TOY_CHECKPOINT)
        if model_cfg.name == "tiny":  # built in code: save it once for the engine to read
            import tempfile

            path = tempfile.mkdtemp(prefix="gapray-tiny-")
            self.model.save_pretrained(path)
            return path
        return model_cfg.name

    def load_weights(self, version: int, bucket_refs: list) -> int:
        if self.engine is not None:
            import ray

            tensors = {k: v for b in ray.get(bucket_refs) for k, v in b.items()}
            self.engine.load_weights(version, tensors)  # raises WeightUpdateError, engine unchanged
        return super().load_weights(version, bucket_refs)

    def generate(self, prompts: list[str], seeds: list[int]) -> tuple[np.ndarray, int]:
        """One image per row (prompts already repeated n times) -> (N, T) int32 tokens and the
        version that made them."""
        cfg_scale = guidance(self.cfg.cfg_scale)
        if self.engine is not None:
            tokens = self.engine.generate(
                list(prompts), list(seeds), cfg_scale=cfg_scale, temperature=self.cfg.temperature
            )
        else:
            tokens = self.model.generate(
                prompts,
                n=1,
                cfg_scale=cfg_scale,
                temperature=self.cfg.temperature,
                seed=list(seeds),
                batch_size=self.cfg.batch_size,
            )
        return tokens.cpu().numpy().astype(np.int32), self.version

    def evaluate(self, out_dir: str | None, **kwargs) -> dict:
        """The toy-world evaluation of the weights this worker holds now."""
        from gapray.eval.toy_eval import evaluate

        metrics = evaluate(self.model, out_dir, progress=False, **kwargs)
        metrics["version"] = self.version
        return metrics


class RewardWorker(ModelWorker):
    def __init__(self, model_cfg, reward_cfg, threads: int = 1, lora_scaling: float = 1.0):
        super().__init__(model_cfg, threads, lora_scaling)
        self.cfg = reward_cfg

    def score(self, prompts: list[str], tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Decode each row's tokens to pixels here (pixels stay where they are made) and ask the
        model's own understanding whether the image shows its prompt."""
        images = self.model.decode(
            torch.as_tensor(np.array(tokens), dtype=torch.long), batch_size=self.cfg.batch_size
        )
        verdict = self.model.judge(
            images, list(prompts), question=self.cfg.question, batch_size=self.cfg.batch_size
        )
        p_yes = verdict.p_yes.numpy().astype(np.float32)
        return p_yes, p_yes > self.cfg.threshold, self.version


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
    current: tuple[int, list] | None = None  # (version, bucket refs) of the last update
    restarts: int = 0
    max_restarts: int = 3

    def start(self) -> None:
        import ray
        from ray.exceptions import RayError

        self.actors = [self.make_actor(i) for i in range(self.size)]
        for i, a in enumerate(self.actors):
            try:
                ray.get(a.ready.remote())
            except RayError as err:
                raise WorkerError(f"{self.name} worker {i} failed to start: {describe(err)}") from None

    def load_weights_async(self, version: int, refs: list) -> list:
        self.current = (version, refs)
        return [a.load_weights.remote(version, refs) for a in self.actors]

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
            ray.get(self.actors[i].ready.remote())
        except ray.exceptions.RayError as e:
            raise WorkerError(
                f"{self.name} worker {i}: the replacement failed to start: {describe(e)}"
            ) from None
        if self.current is not None:
            ray.get(self.actors[i].load_weights.remote(*self.current))

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
                ray.get(actor.load_weights.remote(*self.current))

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


def generate_rollouts(
    pool: WorkerPool, prompt_ids: list[str], prompts: list[str], seeds: np.ndarray, n: int
) -> Rollouts:
    """n images for each prompt across the pool; seeds: (len(prompts) * n,) fixed by the driver."""
    rows = [p for p in prompts for _ in range(n)]
    outs = pool.map_shares("generate", len(rows), lambda s: (rows[s], seeds[s].tolist()))
    tokens = np.concatenate([t for t, _ in outs])
    versions = np.concatenate([np.full(len(t), v, dtype=np.int64) for t, v in outs])
    return Rollouts(
        prompt_ids=[pid for pid in prompt_ids for _ in range(n)],
        prompts=rows,
        sample_index=np.tile(np.arange(n), len(prompts)),
        seeds=seeds.astype(np.int64),
        versions=versions,
        tokens=tokens,
    )


def score_rollouts(pool: WorkerPool, rollouts: Rollouts) -> Scores:
    outs = pool.map_shares("score", len(rollouts), lambda s: (rollouts.prompts[s], rollouts.tokens[s]))
    return Scores(
        p_yes=np.concatenate([p for p, _, _ in outs]),
        accepted=np.concatenate([a for _, a, _ in outs]),
        versions=np.concatenate([np.full(len(p), v, dtype=np.int64) for p, _, v in outs]),
    )
