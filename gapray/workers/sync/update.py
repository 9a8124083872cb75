"""Applying a weight update in place: the checks before anything changes, and LoRA merging.

Where it sits: under every receiver of a push (gapray.workers.sync.receive, the in-process
sync of the benchmarks, the vLLM engine's bucket path). A bucket (name -> tensor) is checked
whole against the model first (`check_update`: names, shapes, dtypes, LoRA pairs as they
complete bucket after bucket), and only then copied into the parameters (`UpdatePlan.apply`),
so a refused bucket changes nothing. Under LoRA the learner sends adapter matrices; the worker
merges B @ A x scaling into its own base weight, replacing the previous merge (never stacking).

    plan = check_update(model, bucket, lora_scaling=2.0, merge_state=state)   # raises, names the tensor
    plan.apply()                                                              # in place
    apply_update(model, bucket)                                               # both at once
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from gapray.workers.sync.wire import copy_into

LORA_A, LORA_B = ".lora_A.", ".lora_B."


def trainable_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Name -> detached CPU copy of every parameter that requires grad (what trains)."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def pack_buckets(tensors: dict[str, torch.Tensor], bucket_mb: float) -> list[dict[str, torch.Tensor]]:
    """Split name -> tensor into buckets of at most ~bucket_mb MB each (a tensor larger than a
    bucket gets a bucket of its own); order kept so LoRA A/B pairs of a layer mostly share one."""
    if bucket_mb <= 0:
        raise ValueError(f"bucket_mb must be > 0, got {bucket_mb}")
    limit = bucket_mb * 2**20
    buckets: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if buckets[-1] and size + nbytes > limit:
            buckets.append({})
            size = 0
        buckets[-1][name] = t
        size += nbytes
    return [b for b in buckets if b]


def bucket_bytes(buckets: Iterable[dict[str, torch.Tensor]]) -> int:
    return sum(t.numel() * t.element_size() for b in buckets for t in b.values())


def lora_target(name: str) -> tuple[str, str] | None:
    """'...q_proj.lora_A.default.weight' -> ('...q_proj', 'A'); None for a plain parameter."""
    for marker, kind in ((LORA_A, "A"), (LORA_B, "B")):
        if marker in name:
            return name.split(marker)[0], kind
    return None


@dataclass
class LoraMergeState:
    """What a worker keeps to merge LoRA updates: each target layer's original weight W0 (so a
    new version is W0 + s * B @ A, not stacked on the previous merge) and half-received pairs."""

    base: dict[str, torch.Tensor]
    pending: dict[str, dict[str, torch.Tensor]]

    @classmethod
    def empty(cls) -> LoraMergeState:
        return cls(base={}, pending={})


@dataclass
class UpdatePlan:
    """A checked weight update, ready to copy: `check_update` builds it without touching the
    model or the merge state, `apply()` copies it in. Splitting the two lets a worker holding
    two models (the vLLM backend's engine and adapter) check both before changing either."""

    params: dict[str, torch.nn.Parameter]
    plain: dict[str, torch.Tensor]  # parameter name -> its new value (shape checked)
    merges: dict[str, tuple[torch.Tensor, torch.Tensor]]  # layer prefix -> (A (r, in), B (out, r))
    pending: dict[str, dict[str, torch.Tensor]]  # the merge state's half pairs after this update
    lora_scaling: float
    merge_state: LoraMergeState | None

    def apply(self) -> int:
        """Copy the update into the model in place; returns how many parameters changed."""
        changed = 0
        with torch.no_grad():
            for name, t in self.plain.items():
                copy_into(self.params[name].data, t)
                changed += 1
            for prefix, (a, b) in self.merges.items():
                assert self.merge_state is not None  # check_update refuses LoRA without one
                weight = self.params[prefix + ".weight"]
                w0 = self.merge_state.base.setdefault(prefix, weight.detach().clone())
                delta = (b.float() @ a.float()) * self.lora_scaling  # (out, r) @ (r, in)
                weight.copy_((w0.float() + delta).to(weight.dtype))
                changed += 1
        if self.merge_state is not None:
            self.merge_state.pending.clear()
            self.merge_state.pending.update(self.pending)
        return changed


def _lora_pair_error(prefix: str, a: torch.Tensor, b: torch.Tensor, weight_shape: torch.Size) -> str | None:
    """Why B @ A cannot be merged into a weight of `weight_shape`, or None."""
    if a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0]:
        return (
            f"weight update: LoRA pair for {prefix} does not multiply: A is {tuple(a.shape)}, "
            f"B is {tuple(b.shape)} (B @ A needs B (out, r) and A (r, in))"
        )
    delta_shape = (b.shape[0], a.shape[1])
    if delta_shape != tuple(weight_shape):
        return f"weight update: LoRA delta for {prefix} is {delta_shape}, weight is {tuple(weight_shape)}"
    return None


def check_update(
    model: torch.nn.Module,
    tensors: dict[str, torch.Tensor],
    *,
    lora_scaling: float = 1.0,
    merge_state: LoraMergeState | None = None,
    params: dict[str, torch.nn.Parameter] | None = None,
) -> UpdatePlan:
    """Check a received update against `model` completely (names, shapes, every LoRA pair it
    completes, including pairs whose other half arrived in an earlier bucket) and return the
    plan that applies it. Changes nothing; raises ValueError naming the first tensor or layer
    that does not fit. `params`: the model's `dict(named_parameters())` when the caller keeps
    it (a worker, whose parameters never change identity; 0.4 ms a call on the toy's 299)."""
    params = dict(model.named_parameters()) if params is None else params
    plain: dict[str, torch.Tensor] = {}
    lora: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        target = lora_target(name)
        if target is None:
            if name not in params:
                raise ValueError(f"weight update: the model has no parameter {name!r}")
            if params[name].shape != t.shape:
                raise ValueError(
                    f"weight update: {name} has shape {tuple(t.shape)}, the model's is {tuple(params[name].shape)}"
                )
            plain[name] = t
        else:
            prefix, kind = target
            if prefix + ".weight" not in params:
                raise ValueError(f"weight update: LoRA tensor {name!r} targets no layer {prefix}.weight")
            lora.setdefault(prefix, {})[kind] = t
    if lora and merge_state is None:
        raise ValueError("weight update: LoRA tensors arrived but the worker keeps no merge state")
    pending = dict(merge_state.pending) if merge_state is not None else {}
    merges: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for prefix, parts in lora.items():
        got = {**pending.pop(prefix, {}), **parts}
        if len(got) < 2:  # the other half is in a later bucket
            pending[prefix] = got
            continue
        error = _lora_pair_error(prefix, got["A"], got["B"], params[prefix + ".weight"].shape)
        if error:
            raise ValueError(error)
        merges[prefix] = (got["A"], got["B"])
    return UpdatePlan(params, plain, merges, pending, lora_scaling, merge_state)


def apply_update(
    model: torch.nn.Module,
    tensors: dict[str, torch.Tensor],
    *,
    lora_scaling: float = 1.0,
    merge_state: LoraMergeState | None = None,
) -> int:
    """Copy received tensors into `model`'s parameters in place; LoRA A/B matrices are merged
    into the matching linear layer's weight. Returns how many parameters changed.

    Raises ValueError naming the first tensor or LoRA layer that does not fit the model; every
    check (`check_update`) runs before the first copy, so a bad update leaves the model and
    the merge state as they were."""
    return check_update(model, tensors, lora_scaling=lora_scaling, merge_state=merge_state).apply()
