"""The learner role: K ranks under torch.distributed doing online DPO (or self-filtered SFT).

    pairs (prompt, chosen tokens, rejected tokens) --LearnerGroup.update--> one optimizer step

Each rank holds the policy (trainable part chosen in config: LLM backbone, all, or LoRA) and,
for DPO, a frozen reference (the initial weights; under LoRA the same model with adapters
disabled; learner.reference=none, for SFT, holds none). Log-probs are taken under the
distribution the sampler draws from unless configured otherwise (`LogprobSettings`: the CFG
weight and the temperature of generation). A step's pairs are split across ranks and
micro-batches; gradients are summed with all_reduce (gloo on CPU, nccl on GPU), each
micro-batch weighted by its share of the step's pairs so the update equals the one-process
mean. An optimizer update takes learner.pairs_per_update rows over all ranks together when set
(the global batch then does not grow with num_ranks), else micro_batch_size * grad_accum per
rank. Every rank enters the same collectives in the same order whatever rows it got (a rank
with none adds zeros), with every tensor on its own device. A non-finite loss on any rank
skips the step everywhere.

Rank 0 exports the trainable weights for WeightSync and writes checkpoints: the policy in
`save_pretrained` form plus `trainer_state.pt` (optimizer, the trainable tensors, version and
whatever the driver adds: curriculum and RNG states).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from gapray.algos.dpo import dpo_objective, sft_loss
from gapray.models.base import guidance
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
GRAD_BUCKET_BYTES = 64 * 2**20  # gradients are all-reduced in flat buckets of about this size


@dataclass(frozen=True)
class LogprobSettings:
    """How the learner scores image tokens: the adapters' `cfg_scale` argument (None: the
    conditional distribution) and the softmax temperature."""

    cfg_scale: float | None
    temperature: float

    @classmethod
    def from_config(cls, learner_cfg, generation_cfg) -> LogprobSettings:
        """learner.logprob_cfg_scale None follows the sampler (generation.cfg_scale); 1 is no
        guidance, through the one CFG rule (`models.base.guidance`); the temperature is always
        the sampler's, so the trained distribution is the one the images were drawn from."""
        scale = learner_cfg.logprob_cfg_scale
        scale = generation_cfg.cfg_scale if scale is None else scale
        return cls(cfg_scale=guidance(scale), temperature=generation_cfg.temperature)


def learner_device(rank: int) -> str:
    """The device a rank computes on: under Ray each rank sees only its own GPU (cuda:0); ranks
    started side by side on one host (tests) take one GPU each."""
    if not torch.cuda.is_available():
        return "cpu"
    index = rank % torch.cuda.device_count()
    torch.cuda.set_device(index)  # NCCL uses the current device
    return f"cuda:{index}"


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
        *,
        logprobs: LogprobSettings,
    ):
        torch.set_num_threads(max(1, threads))
        torch.manual_seed(seed + rank)
        self.rank, self.world_size = rank, world_size
        self.cfg = learner_cfg
        self.logprobs = logprobs
        self.device = learner_device(rank)
        if world_size > 1:
            backend = "nccl" if self.device.startswith("cuda") else "gloo"
            dist.init_process_group(backend, init_method=f"tcp://{master}", rank=rank, world_size=world_size)
        # .to: the tiny model is built in code on the CPU; checkpoints load onto the device.
        self.policy = load_adapter(model_cfg, self.device)
        self.policy.model.to(self.device)
        self.policy.set_trainable(
            model_cfg.trainable, lora_rank=model_cfg.lora_rank, lora_alpha=model_cfg.lora_alpha
        )
        self.policy.model.train()
        self.reference = None
        if learner_cfg.reference == "none" and learner_cfg.algorithm == "dpo":
            raise ValueError("learner.reference=none: learner.algorithm=dpo needs a reference ('initial')")
        if learner_cfg.reference == "initial" and model_cfg.trainable != "lora":
            # A frozen copy of the initial weights; under LoRA the reference is the same model
            # with its adapters disabled, so no second copy is held.
            self.reference = load_adapter(model_cfg, self.device)
            self.reference.model.to(self.device).requires_grad_(False)
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
        from gapray.placement import actor_location

        return {**actor_location(), "rank": self.rank, "trainable_params": n_train, "device": self.device}

    # ------------------------------------------------------------------------------ log-probs
    def _autocast(self):
        # fp32 master weights, bf16 compute on GPU
        if self.device.startswith("cuda") and self.policy.model.dtype == torch.float32:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _logps(self, adapter, prompts: list[str], tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed (N,) and per-token (N, T) log-probs under the configured distribution."""
        with self._autocast():
            return adapter.image_logprobs(
                prompts, tokens, cfg_scale=self.logprobs.cfg_scale, temperature=self.logprobs.temperature
            )

    def _reference_logps(self, prompts: list[str], tokens: torch.Tensor) -> torch.Tensor:
        if self.cfg.reference == "none":
            raise RuntimeError("learner.reference=none: this learner holds no reference model")
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
        `rows_per_update()` rows; within one, rank r takes rows r::world in micro-batches of
        micro_batch_size whose gradients accumulate before the step."""
        key = "chosen" if self.cfg.algorithm == "dpo" else "tokens"
        total = len(batch["prompts"])
        per_step = self.rows_per_update()
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

    def rows_per_update(self) -> int:
        """The global batch of one optimizer update: learner.pairs_per_update (the same whatever
        the number of ranks), else micro_batch_size * grad_accum on each of the world_size ranks."""
        if self.cfg.pairs_per_update is not None:
            return int(self.cfg.pairs_per_update)
        return self.cfg.micro_batch_size * self.cfg.grad_accum * self.world_size

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
            # learner.beta_per_token: log-ratios per image token (T = tokens.shape[1]), so beta
            # means the same at 16 tokens (toy) and 576 (Janus-Pro)
            num_tokens=int(tokens.shape[1]) if self.cfg.beta_per_token else None,
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
        # One vector, reduced in one call, on this rank's device (NCCL takes no CPU tensors):
        # (1 + M + P,) = [bad flag, M metric sums, for each of the P trainable parameters whether
        # this rank's rows reached it]. Every branch below is then taken alike on every rank.
        grads = [p.grad for p in self.params if p.grad is not None]
        bad_grad = torch.stack([~torch.isfinite(g).all() for g in grads]).any() if grads else False
        bad_metric = not all(np.isfinite(v) for v in sums.values())
        flags = torch.cat(
            [
                torch.tensor([float(bad_metric)], dtype=torch.float64, device=self.device)
                + torch.as_tensor(bad_grad, device=self.device).double(),
                torch.tensor([sums[k] for k in names], dtype=torch.float64, device=self.device),
                torch.tensor(
                    [float(p.grad is not None) for p in self.params], dtype=torch.float64, device=self.device
                ),
            ]
        )
        if self.world_size > 1:
            dist.all_reduce(flags)  # bad flags, metric sums and reach counts from every rank
        flags = flags.cpu()
        metrics = {
            k: float(v) / total for k, v in zip(names, flags[1 : 1 + len(names)].tolist(), strict=True)
        }
        if flags[0] > 0:
            # NaN/inf on some rank: apply nothing, so the weights stay as they were.
            self.optimizer.zero_grad(set_to_none=False)
            self.bad_steps_in_a_row += 1
            return {"skipped": 1.0}
        self.bad_steps_in_a_row = 0
        if self.world_size > 1:
            reached = flags[1 + len(names) :] > 0
            self._all_reduce_grads([p for p, r in zip(self.params, reached.tolist(), strict=True) if r])
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.optimizer.step()
        return {**metrics, "grad_norm": float(grad_norm), "skipped": 0.0}

    def _all_reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Sum the gradients of `params` (those some rank's rows reached; the same list on every
        rank) over the ranks, in flat buckets. A rank whose rows did not reach a parameter adds
        zeros; parameters no rank reached keep no gradient, so AdamW skips them as a one-rank
        learner would (no weight decay on them)."""
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for bucket in _grad_buckets(params, GRAD_BUCKET_BYTES):
            flat = torch.cat([p.grad.reshape(-1) for p in bucket])  # (sum of numels,)
            dist.all_reduce(flat)
            offset = 0
            for p in bucket:
                n = p.grad.numel()
                p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
                offset += n

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


def _grad_buckets(params: list[torch.nn.Parameter], limit: int) -> list[list[torch.nn.Parameter]]:
    """Consecutive runs of parameters of one gradient dtype and device, about `limit` bytes
    each (a larger gradient gets a bucket of its own); the same order on every rank."""
    buckets: list[list[torch.nn.Parameter]] = []
    size = 0
    for p in params:
        g = p.grad
        nbytes = g.numel() * g.element_size()
        last = buckets[-1][-1].grad if buckets else None
        if last is None or last.dtype != g.dtype or last.device != g.device or size + nbytes > limit:
            buckets.append([])
            size = 0
        buckets[-1].append(p)
        size += nbytes
    return buckets


class LearnerGroup:
    """Driver-side handle over the K learner ranks."""

    def __init__(self, actors: list):
        self.actors = actors
        self.placement: list[dict] = []  # each rank's ready() info: node, pid, device

    def start(self) -> list[dict]:
        import ray

        self.placement = ray.get([a.ready.remote() for a in self.actors])
        return self.placement

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
