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
from gapray.algos.schedule import check_schedule, lr_at
from gapray.models.base import guidance
from gapray.workers import fsdp
from gapray.workers.fsdp import SHARDINGS, resolve_compute_dtype
from gapray.workers.model_worker import load_adapter

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


def check_learner_settings(cfg) -> None:
    """The learner.* scale settings, refused with the field's name (config_checks runs the same
    rules before any actor starts)."""
    if cfg.sharding not in SHARDINGS:
        raise ValueError(f"learner.sharding must be one of {', '.join(SHARDINGS)}, got {cfg.sharding!r}")
    if cfg.compute_dtype not in ("auto", "float32", "bfloat16"):
        raise ValueError(
            f"learner.compute_dtype must be auto, float32 or bfloat16, got {cfg.compute_dtype!r}"
        )
    check_schedule(cfg.lr_schedule, cfg.warmup_updates, cfg.decay_updates, cfg.min_lr_ratio)


def _fp32(model_cfg):
    """model_cfg with dtype float32: the learner's master weights."""
    import dataclasses

    return dataclasses.replace(model_cfg, dtype="float32")


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
        if world_size > 1 and not dist.is_initialized():
            backend = "nccl" if self.device.startswith("cuda") else "gloo"
            dist.init_process_group(backend, init_method=f"tcp://{master}", rank=rank, world_size=world_size)
        check_learner_settings(learner_cfg)
        self.model_cfg = model_cfg
        self.compute_dtype = resolve_compute_dtype(learner_cfg.compute_dtype, self.device)
        # fp32 master weights whatever model.dtype (the generation and reward workers' dtype):
        # AdamW on bf16 weights loses updates below bf16's resolution. Loaded on the CPU under
        # FSDP (fully_shard moves each unit's shard to the device), else onto the device.
        self.sharded = world_size > 1 and learner_cfg.sharding == "fsdp"
        load_on = "cpu" if self.sharded else self.device
        self.policy = load_adapter(_fp32(model_cfg), load_on)
        self.policy.set_trainable(
            model_cfg.trainable, lora_rank=model_cfg.lora_rank, lora_alpha=model_cfg.lora_alpha
        )
        self.policy.model.train()
        self.reference = None
        if learner_cfg.reference == "none" and learner_cfg.algorithm == "dpo":
            raise ValueError("learner.reference=none: learner.algorithm=dpo needs a reference ('initial')")
        if learner_cfg.reference == "initial" and model_cfg.trainable != "lora":
            # A frozen copy of the initial trainable weights sharing every frozen tensor with
            # the policy; under LoRA the reference is the same model with its adapters disabled,
            # so no second copy is held.
            self.reference = self.policy.frozen_copy()
        self.mesh = fsdp.make_mesh(world_size, self.device) if self.sharded else None
        fsdp.prepare_policy(
            self.policy, self.device, self.mesh, self.compute_dtype, learner_cfg.activation_checkpointing
        )
        if self.reference is not None:
            fsdp.prepare_reference(self.reference, self.policy, self.device, self.mesh, self.compute_dtype)
        self.named_params = self.policy.trainable_parameters()  # fp32 masters (sharded under FSDP)
        self.params = list(self.named_params.values())
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=learner_cfg.lr,
            betas=tuple(learner_cfg.betas),
            weight_decay=learner_cfg.weight_decay,
        )
        self.version = 0
        self.updates = 0  # optimizer updates applied so far (the LR schedule's clock)
        self.bad_steps_in_a_row = 0

    def ready(self) -> dict:
        n_train = sum(p.numel() for p in self.params)
        from gapray.placement import actor_location

        return {
            **actor_location(),
            "rank": self.rank,
            "trainable_params": n_train,
            "device": self.device,
            "sharding": "fsdp" if self.sharded else "none",
            "compute_dtype": str(self.compute_dtype).removeprefix("torch."),
        }

    # ------------------------------------------------------------------------------ log-probs
    def _autocast(self):
        """fp32 master weights, compute in learner.compute_dtype: under FSDP the mixed-precision
        policy casts each unit as it is gathered; unsharded, torch.autocast does."""
        if self.sharded or self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.split(":")[0], dtype=self.compute_dtype)

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
                logps = self._logps(self.reference, prompts, tokens)[0]
                if self.sharded:
                    # FSDP keeps a root unit gathered after its forward (for the backward that
                    # follows); the reference has none, so free its gathered root now.
                    self.reference.training_module().reshard()
                return logps
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
        # Under FSDP every forward/backward is a collective (all-gather, reduce-scatter), so
        # every rank runs as many micro-batches as the rank with the most rows (rank 0); a rank
        # short of rows runs the update's first row with weight 0 (exact zero gradients).
        most = -(-len(chunk) // self.world_size)
        n_micro = -(-most // mb) if self.sharded else -(-len(mine) // mb)
        for i in range(n_micro):
            rows = mine[i * mb : (i + 1) * mb]
            weight = len(rows) / len(chunk)  # this micro-batch's share of the update's mean
            if not rows:
                rows = [chunk[0]]
            prompts = [batch["prompts"][r] for r in rows]
            if self.cfg.algorithm == "dpo":
                loss, metrics = self._dpo_loss(prompts, batch["chosen"][rows], batch["rejected"][rows])
            else:
                loss, metrics = self._sft_loss(prompts, batch[key][rows])
            (loss * weight).backward()
            if weight > 0:
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
        # Under FSDP the gradients are already reduce-scattered: each rank checks its shards
        # and no reach flags are needed.
        grads = [fsdp.local(p.grad) for p in self.params if p.grad is not None]
        bad_grad = torch.stack([~torch.isfinite(g).all() for g in grads]).any() if grads else False
        bad_metric = not all(np.isfinite(v) for v in sums.values())
        reach = [] if self.sharded else [float(p.grad is not None) for p in self.params]
        flags = torch.cat(
            [
                torch.tensor([float(bad_metric)], dtype=torch.float64, device=self.device)
                + torch.as_tensor(bad_grad, device=self.device).double(),
                torch.tensor([sums[k] for k in names], dtype=torch.float64, device=self.device),
                torch.tensor(reach, dtype=torch.float64, device=self.device),
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
        if self.world_size > 1 and not self.sharded:
            reached = flags[1 + len(names) :] > 0
            self._all_reduce_grads([p for p, r in zip(self.params, reached.tolist(), strict=True) if r])
        grad_norm = fsdp.clip_grad_norm(self.params, self.cfg.max_grad_norm)
        lr = self.lr_now()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.updates += 1
        return {**metrics, "grad_norm": float(grad_norm), "lr": lr, "skipped": 0.0}

    def lr_now(self) -> float:
        """The learning rate of the next optimizer update (learner.lr_schedule, warmup_updates,
        decay_updates, min_lr_ratio; counted in optimizer updates over the whole run)."""
        c = self.cfg
        return lr_at(self.updates, c.lr, c.lr_schedule, c.warmup_updates, c.decay_updates, c.min_lr_ratio)

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
    def export_weights(self, bucket_mb: float, full: bool = False):
        """The trainable tensors that changed since the last export (all of them with `full`),
        as a generator (a Ray streaming method): rank 0 yields the LeadBucket (the manifest
        with bucket 0) as soon as bucket 0 is gathered, the SyncManifest alone (small: it returns
        inline), then each later bucket (sync.export.lead_first); the other ranks yield nothing
        but must run it too, in step (an FSDP2 DTensor's gather is a collective). See
        sync.WeightExporter."""
        from gapray.workers.sync.export import lead_first

        yield from lead_first(
            self._exporter().export(
                self.policy.model, bucket_mb, emit=self.rank == 0, full=full, params=self.named_params
            )  # named_params: what the optimizer trains, held, so no walk of the module tree per push
        )

    def _exporter(self):
        from gapray.workers.sync import WeightExporter

        if getattr(self, "weight_exporter", None) is None:
            self.weight_exporter = WeightExporter()
        return self.weight_exporter

    # The compiled-graph transport (sync.transport=compiled_graph, gapray/workers/sync/compiled.py):
    # its export runs on the graph's thread, a replay's on the actor's own; one lock keeps them
    # off the kept copies at the same time.
    def prepare_compiled_push(self, bucket_mb: float) -> int:
        """Before the graph is compiled: size this process's compiled-graph channels for the
        largest message a push can send (Ray sizes an actor's output channel from its own
        DAGContext); returns the size in bytes."""
        import threading

        from ray.dag import DAGContext

        from gapray.workers.sync.export import CompiledExport

        if self.world_size != 1:
            raise ValueError("sync.transport=compiled_graph needs learner.num_ranks=1")
        if getattr(self, "export_lock", None) is None:
            self.export_lock = threading.Lock()
        with self.export_lock:
            if getattr(self, "compiled", None) is not None:  # a graph rebuilt: end its export first
                self.compiled.finish()
            size = CompiledExport.buffer_for(self._exporter(), self.named_params, bucket_mb)
            DAGContext.get_current().buffer_size_bytes = size
            self.compiled = CompiledExport(self._exporter(), size)
        return size

    def compiled_export(self, request):
        """One execution of the compiled push: the manifest with bucket 0, then a bucket each."""
        import time

        from gapray.workers.sync.compiled import PushItem

        t0 = time.perf_counter()
        with self.export_lock:
            manifest, bucket = self.compiled.step(
                self.policy.model, self.named_params, request.version, request.index, request.bucket_mb
            )
        return PushItem(request.version, request.index, manifest, bucket, time.perf_counter() - t0)

    def pushed_weights(self, bucket_mb: float):
        """What was last pushed (the kept copies, after any push in flight is run to its end),
        as a streaming generator: the manifest, then each bucket (a replaced worker's replay)."""
        with self.export_lock:
            self.compiled.finish()
            yield from self._exporter().export_sent(bucket_mb)

    def save_checkpoint(self, run_root: str, step: int, extra_state: dict, keep: int) -> str:
        """Every rank calls this (a collective). The trainable weights and the AdamW state go to
        `distributed/` with torch.distributed.checkpoint, each rank writing its own shards (the
        optimizer is never gathered); the model part, gathered once for it, is written by rank 0
        in `save_pretrained` form; rank 0 writes trainer_state.pt (version, update count, RNG,
        the driver's extra state) and the manifest. Needs a filesystem every rank shares."""
        import torch.distributed.checkpoint as dcp

        from gapray.storage import RunDir
        from gapray.storage import checkpoints as ck

        ckpt_dir = RunDir(run_root).checkpoint_dir
        tmp = ck.tmp_checkpoint_dir(ckpt_dir, step)
        if self.rank == 0:
            ck.begin_checkpoint(ckpt_dir, step)
        fsdp.barrier(self.world_size)
        dcp.save(self._dcp_state(), checkpoint_id=str(tmp / ck.DISTRIBUTED))
        full = {n: fsdp.full_tensor(p.detach()).to("cpu") for n, p in self.named_params.items()}
        final = ""
        if self.rank == 0:
            self._save_model(tmp, full)
            state = {
                "learner_version": self.version,
                "learner_updates": self.updates,
                "learner_ranks": self.world_size,
                "torch_rng": torch.get_rng_state(),
                **extra_state,
            }
            torch.save(state, tmp / ck.TRAINER_STATE)
            final = str(ck.finish_checkpoint(ckpt_dir, step, keep))
        fsdp.barrier(self.world_size)
        return final

    def _dcp_state(self) -> dict:
        """{"model": the trainable weights, "optim": AdamW state}, keyed by parameter name
        (DTensor shards under FSDP), so a checkpoint loads on any number of ranks."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return {
            "model": dict(self.named_params),
            "optim": get_optimizer_state_dict(self.policy.model, self.optimizer),
        }

    def _save_model(self, path, full: dict[str, torch.Tensor]) -> None:
        """The policy in save_pretrained form. Sharded, rank 0 writes it from a plain fp32 copy
        of the initial model on the CPU with the gathered trainable weights copied in (so the
        frozen parts are the checkpoint's own, not their compute-dtype copies)."""
        if not self.sharded:
            self.policy.save_pretrained(path)
            return
        plain = load_adapter(_fp32(self.model_cfg), "cpu")
        m = self.model_cfg
        plain.set_trainable(m.trainable, lora_rank=m.lora_rank, lora_alpha=m.lora_alpha)
        params = plain.trainable_parameters()
        with torch.no_grad():
            for name, t in full.items():
                params[name].copy_(t)
        plain.save_pretrained(path)

    def load_checkpoint(self, path: str) -> dict:
        """Restore trainable weights, optimizer, version and update count (every rank calls
        it); returns the driver's extra state. A checkpoint written by any number of ranks
        loads on any number (torch.distributed.checkpoint reshards); one without a
        distributed part (written before it existed) loads unsharded."""
        from pathlib import Path

        from gapray.storage import checkpoints as ck

        state = ck.load_trainer_state(path, trainable=False)
        dcp_dir = Path(path) / ck.DISTRIBUTED
        if dcp_dir.is_dir():
            self._load_dcp(dcp_dir, path)
        else:
            self._load_legacy(state, path)
        self.version = state["learner_version"]
        self.updates = int(state.get("learner_updates", state.get("optimizer_updates", 0)))
        torch.set_rng_state(state["torch_rng"])
        skip = ("optimizer", "trainable", "torch_rng", "learner_updates", "learner_ranks")
        return {k: v for k, v in state.items() if k not in skip}

    def _load_dcp(self, dcp_dir, path: str) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        meta = dcp.FileSystemReader(str(dcp_dir)).read_metadata().state_dict_metadata
        saved = {k[len("model.") :] for k in meta if k.startswith("model.")}
        if saved != set(self.named_params):
            unknown = sorted(saved - set(self.named_params)) or sorted(set(self.named_params) - saved)
            raise ValueError(
                f"checkpoint {path}: its trainable tensors are not this learner's "
                f"(model.trainable / LoRA settings differ?), e.g. {unknown[0]}"
            )
        with_state = {n for n in self.named_params if f"optim.state.{n}.exp_avg" in meta}
        target = self._dcp_state()  # the weights load in place; initialises the AdamW state
        dcp.load(target, checkpoint_id=str(dcp_dir), planner=_partial_load_planner())
        set_optimizer_state_dict(self.policy.model, self.optimizer, target["optim"])
        for name, p in self.named_params.items():  # no state saved: AdamW starts it afresh, as then
            if name not in with_state:
                self.optimizer.state.pop(p, None)

    def _load_legacy(self, state: dict, path: str) -> None:
        if self.sharded:
            raise ValueError(
                f"checkpoint {path}: has no distributed part; resume it with learner.num_ranks=1"
            )
        missing = [n for n in state["trainable"] if n not in self.named_params]
        if missing:
            raise ValueError(f"checkpoint {path}: trainable tensors unknown to this model, e.g. {missing[0]}")
        for name, t in state["trainable"].items():
            fsdp.copy_full_(self.named_params[name], t)
        self.optimizer.load_state_dict(state["optimizer"])


def _partial_load_planner():
    """Load what the checkpoint has: AdamW state exists only for parameters that have had a
    gradient, which the freshly initialised target holds for all (the rest is dropped after)."""
    from torch.distributed.checkpoint import DefaultLoadPlanner

    return DefaultLoadPlanner(allow_partial_load=True)


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

    def export_weights(self, bucket_mb: float, full: bool = False):
        """Start the export on every rank; an ExportStream over rank 0's refs (the LeadBucket's,
        the manifest's, then each later bucket's)."""
        from gapray.workers.sync import ExportStream

        gens = [
            a.export_weights.options(num_returns="streaming").remote(bucket_mb, full) for a in self.actors
        ]
        return ExportStream(gens[0], gens[1:])

    def pushed_weights(self, bucket_mb: float) -> list:
        """The last push's weights as a replay ([(manifest, bucket refs)]) from rank 0's kept
        copies: how a replaced worker catches up under sync.transport=compiled_graph."""
        import ray

        gen = self.actors[0].pushed_weights.options(num_returns="streaming").remote(bucket_mb)
        manifest, *refs = list(gen)
        return [(ray.get(manifest), refs)]

    def save_checkpoint(self, run_root: str, step: int, extra_state: dict, keep: int) -> str:
        """Every rank writes its shards (torch.distributed.checkpoint); rank 0's path."""
        import ray

        paths = ray.get([a.save_checkpoint.remote(run_root, step, extra_state, keep) for a in self.actors])
        return paths[0]

    def load_checkpoint(self, path: str) -> dict:
        import ray

        return ray.get([a.load_checkpoint.remote(path) for a in self.actors])[0]
