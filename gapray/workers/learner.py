"""The learner role: K ranks under torch.distributed doing online DPO (or self-filtered SFT).

    pairs (prompt, chosen tokens, rejected tokens) --LearnerGroup.update--> one optimizer step

Each rank holds the policy (trainable part chosen in config: LLM backbone, all, or LoRA) and a
frozen reference (the initial weights; under LoRA the same model with adapters disabled). A
step's pairs are split across ranks and micro-batches; gradients are summed with all_reduce
(gloo on CPU, nccl on GPU), each micro-batch weighted by its share of the step's pairs so the
update equals the one-process mean. A non-finite loss on any rank skips the step everywhere.

Rank 0 exports the trainable weights for WeightSync and writes checkpoints: the policy in
`save_pretrained` form plus `trainer_state.pt` (optimizer, the trainable tensors, version and
whatever the driver adds: curriculum and RNG states).
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch
import torch.distributed as dist

from gapray.algos.dpo import dpo_objective, sft_loss
from gapray.workers.model_worker import load_adapter
from gapray.workers.sync import bucket_bytes, pack_buckets, trainable_tensors

DPO_METRICS = (
    "loss",
    "pref_loss",
    "nll",
    "reward_chosen",
    "reward_rejected",
    "reward_margin",
    "reward_accuracy",
)


class LearnerWorker:
    def __init__(
        self,
        model_cfg,
        learner_cfg,
        rank: int,
        world_size: int,
        master: str,
        seed: int,
        threads: int = 1,
    ):
        torch.set_num_threads(max(1, threads))
        torch.manual_seed(seed + rank)
        self.rank, self.world_size = rank, world_size
        self.cfg = learner_cfg
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if world_size > 1:
            backend = "nccl" if self.device == "cuda" else "gloo"
            dist.init_process_group(backend, init_method=f"tcp://{master}", rank=rank, world_size=world_size)
        self.policy = load_adapter(model_cfg, self.device)
        self.policy.set_trainable(
            model_cfg.trainable, lora_rank=model_cfg.lora_rank, lora_alpha=model_cfg.lora_alpha
        )
        self.policy.model.train()
        self.reference = None
        if model_cfg.trainable != "lora":
            # A frozen copy of the initial weights; under LoRA the reference is the same model
            # with its adapters disabled, so no second copy is held.
            self.reference = load_adapter(model_cfg, self.device)
            self.reference.model.requires_grad_(False)
        self.params = list(self.policy.trainable_parameters().values())
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=learner_cfg.lr,
            betas=tuple(learner_cfg.betas),
            weight_decay=learner_cfg.weight_decay,
        )
        self.version = 0
        self.bad_steps_in_a_row = 0

    def ready(self) -> dict:
        n_train = sum(p.numel() for p in self.params)
        return {"pid": os.getpid(), "rank": self.rank, "trainable_params": n_train, "device": self.device}

    # ------------------------------------------------------------------------------ log-probs
    def _autocast(self):
        if self.device == "cuda" and self.policy.model.dtype == torch.float32:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _logps(self, adapter, prompts: list[str], tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self._autocast():
            return adapter.image_logprobs(prompts, tokens, cfg_scale=self.cfg.logprob_cfg_scale)

    def _reference_logps(self, prompts: list[str], tokens: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.reference is not None:
                return self._logps(self.reference, prompts, tokens)[0]
            with self.policy.reference_mode():
                return self._logps(self.policy, prompts, tokens)[0]

    # --------------------------------------------------------------------------------- update
    def update(self, batch: dict) -> dict[str, float]:
        """Learn from one online step's batch; every rank gets the whole batch.

        batch: {"prompts": list[str] (P,), "chosen": (P, T) int array, "rejected": (P, T)} for
        DPO, or {"prompts", "tokens": (N, T)} for SFT. The rows are cut into optimizer steps of
        micro_batch_size * grad_accum * world_size rows; within one, rank r takes rows r::world
        in micro-batches of micro_batch_size whose gradients accumulate before the step."""
        key = "chosen" if self.cfg.algorithm == "dpo" else "tokens"
        total = len(batch["prompts"])
        per_step = self.cfg.micro_batch_size * self.cfg.grad_accum * self.world_size
        results = [
            self._optimizer_step(batch, key, range(s, min(s + per_step, total)))
            for s in range(0, total, per_step)
        ]
        done = [r for r in results if not r["skipped"]]
        out = {k: float(np.mean([r[k] for r in done])) for k in (done[0] if done else {})}
        out.update(
            optimizer_steps=float(len(done)),
            skipped_steps=float(len(results) - len(done)),
            bad_steps_in_a_row=float(self.bad_steps_in_a_row),
            rows=float(total),
        )
        if done:
            self.version += 1
        return out

    def _optimizer_step(self, batch: dict, key: str, chunk: range) -> dict[str, float]:
        mine = list(chunk)[self.rank :: self.world_size]
        self.optimizer.zero_grad(set_to_none=False)
        sums: dict[str, float] = {}
        mb = self.cfg.micro_batch_size
        for start in range(0, len(mine), mb):
            rows = mine[start : start + mb]
            prompts = [batch["prompts"][i] for i in rows]
            if self.cfg.algorithm == "dpo":
                loss, metrics = self._dpo_loss(prompts, batch["chosen"][rows], batch["rejected"][rows])
            else:
                loss, metrics = self._sft_loss(prompts, batch[key][rows])
            (loss * (len(rows) / len(chunk))).backward()  # this micro-batch's share of the step mean
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v * len(rows)
        return self._finish_step(sums, len(chunk))

    def _dpo_loss(self, prompts, chosen: np.ndarray, rejected: np.ndarray):
        P = len(prompts)
        tokens = torch.from_numpy(np.concatenate([chosen, rejected])).long().to(self.device)  # (2P, T)
        rows = prompts + prompts
        logp, per_token = self._logps(self.policy, rows, tokens)  # (2P,), (2P, T)
        ref = self._reference_logps(rows, tokens)  # (2P,)
        return dpo_objective(
            logp[:P],
            logp[P:],
            ref[:P],
            ref[P:],
            beta=self.cfg.beta,
            loss_type=self.cfg.loss,
            nll_weight=self.cfg.nll_weight,
            chosen_nll=-per_token[:P].mean(-1),
            label_smoothing=self.cfg.label_smoothing,
        )

    def _sft_loss(self, prompts, tokens: np.ndarray):
        t = torch.from_numpy(tokens).long().to(self.device)
        _, per_token = self._logps(self.policy, prompts, t)
        loss = sft_loss(per_token)
        return loss, {"loss": float(loss.detach()), "nll": float(loss.detach())}

    def _finish_step(self, sums: dict[str, float], total: int) -> dict[str, float]:
        # Same metric names on every rank, even one that got no rows in this step.
        names = ["loss", "nll"] if self.cfg.algorithm == "sft" else list(DPO_METRICS)
        sums = {k: sums.get(k, 0.0) for k in names}
        finite = all(np.isfinite(v) for v in sums.values()) and all(
            torch.isfinite(p.grad).all() for p in self.params if p.grad is not None
        )
        flags = torch.tensor([0.0 if finite else 1.0, *[sums[k] for k in names]])
        if self.world_size > 1:
            dist.all_reduce(flags)  # bad flag and metric sums from every rank
            for p in self.params:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
        metrics = {k: float(v) / total for k, v in zip(names, flags[1:].tolist(), strict=True)}
        if flags[0] > 0:
            # NaN/inf on some rank: apply nothing, so the weights stay as they were.
            self.optimizer.zero_grad(set_to_none=False)
            self.bad_steps_in_a_row += 1
            return {"skipped": 1.0}
        self.bad_steps_in_a_row = 0
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.optimizer.step()
        return {**metrics, "grad_norm": float(grad_norm), "skipped": 0.0}

    # ---------------------------------------------------------------------- sync and checkpoint
    def export_weights(self, bucket_mb: float) -> tuple[list, int]:
        """Put the trainable weights into the object store in buckets; (refs, bytes)."""
        import ray

        buckets = pack_buckets(trainable_tensors(self.policy.model), bucket_mb)
        return [ray.put(b) for b in buckets], bucket_bytes(buckets)

    def save_checkpoint(self, run_root: str, step: int, extra_state: dict, keep: int) -> str:
        from gapray.storage import RunDir

        state = {
            "optimizer": self.optimizer.state_dict(),
            "trainable": trainable_tensors(self.policy.model),
            "learner_version": self.version,
            "torch_rng": torch.get_rng_state(),
            **extra_state,
        }
        return str(RunDir(run_root).save_checkpoint(step, self.policy.save_pretrained, state, keep=keep))

    def load_checkpoint(self, path: str) -> dict:
        """Restore trainable weights, optimizer and version; returns the driver's extra state."""
        from gapray.storage.checkpoints import load_trainer_state

        state = load_trainer_state(path)
        params = dict(self.policy.model.named_parameters())
        missing = [n for n in state["trainable"] if n not in params]
        if missing:
            raise ValueError(f"checkpoint {path}: trainable tensors unknown to this model, e.g. {missing[0]}")
        with torch.no_grad():
            for name, t in state["trainable"].items():
                params[name].copy_(t)
        self.optimizer.load_state_dict(state["optimizer"])
        self.version = state["learner_version"]
        torch.set_rng_state(state["torch_rng"])
        return {k: v for k, v in state.items() if k not in ("optimizer", "trainable", "torch_rng")}


class LearnerGroup:
    """Driver-side handle over the K learner ranks."""

    def __init__(self, actors: list):
        self.actors = actors

    def start(self) -> list[dict]:
        import ray

        return ray.get([a.ready.remote() for a in self.actors])

    def update(self, batch: dict) -> dict[str, float]:
        import ray

        results = ray.get([a.update.remote(batch) for a in self.actors])
        return results[0]  # metrics are all-reduced: every rank reports the same

    def export_weights(self, bucket_mb: float) -> tuple[list, int]:
        import ray

        return ray.get(self.actors[0].export_weights.remote(bucket_mb))

    def save_checkpoint(self, run_root: str, step: int, extra_state: dict, keep: int) -> str:
        import ray

        return ray.get(self.actors[0].save_checkpoint.remote(run_root, step, extra_state, keep))

    def load_checkpoint(self, path: str) -> dict:
        import ray

        return ray.get([a.load_checkpoint.remote(path) for a in self.actors])[0]
