"""The generation role: a Ray actor holding the policy for sampling, and the step's rollouts.

    prompts --generate_rollouts(pool, ...)--> Rollouts (tokens, seeds, versions)

backend "hf" samples with the adapter's own generate; backend "vllm" runs gapray's Janus model
in a vLLM engine on the same checkpoint (the adapter is kept for evaluations and follows every
update too). Seeds come from the driver, so a retried share draws the same images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gapray.models.base import guidance
from gapray.workers.model_worker import ModelWorker, exclusive
from gapray.workers.pool import WorkerPool
from gapray.workers.sync import check_update


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
                gpu_memory_utilization=gen_cfg.gpu_memory_utilization,
                enforce_eager=gen_cfg.enforce_eager,
                tensor_parallel_size=gen_cfg.tensor_parallel_size,
                lora_scaling=lora_scaling,
            )

    def _checkpoint_dir(self, model_cfg) -> str:
        """A directory vLLM can load the starting weights from."""
        from gapray.models import BUILT_IN_CODE, TOY_CHECKPOINT

        if model_cfg.name == "toy":
            return str(TOY_CHECKPOINT)
        if model_cfg.name in BUILT_IN_CODE:  # built in code: save it once for the engine to read
            import tempfile

            path = tempfile.mkdtemp(prefix=f"gapray-{model_cfg.name}-")
            self.model.save_pretrained(path)
            return path
        return model_cfg.name

    # Weight updates: ModelWorker's begin_update / apply_bucket / load_weights, applied to
    # everything this worker holds or, bucket by bucket, to nothing.
    def _check_manifest(self, manifest) -> None:
        super()._check_manifest(manifest)
        if self.engine is not None:
            self.engine.check_manifest(manifest)

    def _apply(self, bucket: dict) -> None:
        """One bucket into both models: with the vLLM backend the adapter's side is checked
        first (nothing touched on a refusal), then the engine loads it in place
        (WeightUpdateError: the engine put that bucket's layers back), then the checked adapter
        copy runs; should that copy still fail, the engine's layers go back too."""
        if self.engine is None:
            return super()._apply(bucket)
        plan = check_update(
            self.model.model,
            bucket,
            lora_scaling=self.lora_scaling,
            merge_state=self.merge_state,
            params=self.params,
        )
        saved = self.engine.snapshot()
        self.engine.apply_bucket(bucket)
        try:
            plan.apply()
        except BaseException:
            self.engine.restore(saved)
            raise

    def _set_version(self, version: int) -> None:
        """Both models always report the same version."""
        self.version = version
        if self.engine is not None:
            self.engine.version = version

    @exclusive
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

    @exclusive
    def eval_share(self, evaluator, prompts, indices, settings, out_dir: str | None, shown: set[int]):
        """One share of an evaluation (gapray.eval.stage) with the weights this worker holds
        now, through its transformers adapter (which follows every update on both backends)."""
        share = evaluator.share(self.model, prompts, indices, settings, out_dir, shown)
        share.version = self.version
        return share


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
