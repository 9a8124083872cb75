"""Weight sync: learner weights -> generation / reward workers through the Ray object store.

Only what trains travels: the LLM backbone's parameters (or, under LoRA, the adapter matrices,
merged into the receiving worker's own base weights on arrival). The learner packs them into
buckets of about `bucket_mb` MB, puts each bucket in the object store once, and hands the same
list of object refs to every target; each target pulls the buckets and copies them in place,
then reports the version it now holds. Every sample records the version that generated it.

    buckets = pack_buckets(named_tensors, bucket_mb=64)          # on the learner
    refs = [ray.put(b) for b in buckets]
    apply_update(model, bucket, lora_scaling=s, merge_state=state)  # on a worker, per bucket
    check_update(model, bucket, ...).apply()                        # the same in two phases
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch

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


def _lora_target(name: str) -> tuple[str, str] | None:
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
                self.params[name].copy_(t)
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
) -> UpdatePlan:
    """Check a received update against `model` completely (names, shapes, every LoRA pair it
    completes, including pairs whose other half arrived in an earlier bucket) and return the
    plan that applies it. Changes nothing; raises ValueError naming the first tensor or layer
    that does not fit."""
    params = dict(model.named_parameters())
    plain: dict[str, torch.Tensor] = {}
    lora: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        target = _lora_target(name)
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


@dataclass(frozen=True)
class SyncStats:
    """One push: version sent, bytes, buckets, seconds from export start to the last ack."""

    version: int
    bytes: int
    buckets: int
    seconds: float
    nodes: int = 1
    """Ray nodes whose object store holds the buckets after every target pulled them (the
    learner's node plus each other node a target runs on): > 1 means they crossed nodes."""

    def as_metrics(self) -> dict[str, float]:
        return {
            "sync_ms": 1000 * self.seconds,
            "sync_mb": self.bytes / 2**20,
            "sync_buckets": float(self.buckets),
            "sync_nodes": float(self.nodes),
        }


class WeightSync:
    """Driver-side: versioned pushes from learner rank 0 to the worker pools."""

    def __init__(self, bucket_mb: float):
        self.bucket_mb = bucket_mb
        self.version = 0

    def push(self, learner_group, targets: list) -> SyncStats:
        """Export the learner's trainable weights once, load them into every target pool, wait
        for every worker's acknowledgement of the new version."""
        import ray

        t0 = time.perf_counter()
        version = self.version + 1
        refs, nbytes = learner_group.export_weights(self.bucket_mb)
        acks = [ref for pool in targets for ref in pool.load_weights_async(version, refs)]
        held = ray.get(acks)
        if any(v != version for v in held):
            raise RuntimeError(f"weight sync: workers report versions {held}, expected {version}")
        self.version = version
        seconds = time.perf_counter() - t0
        expect = {p.get("node_id") for p in learner_group.placement[:1]}
        expect |= {w.get("node_id") for pool in targets for w in pool.placement}
        return SyncStats(version, nbytes, len(refs), seconds, nodes=_holding_nodes(refs, len(expect)))


def _holding_nodes(refs: list, expect: int, patience_s: float = 2.0) -> int:
    """How many nodes' object stores hold a copy of the buckets, asked of their owner (the
    learner). A target acknowledges its pull before its location update reaches the owner, so
    this asks again (every 20 ms, at most `patience_s`) until `expect` nodes are listed: the
    learner's and every target's. Buckets small enough to travel inline live in no object
    store and count none."""
    import ray

    deadline = time.perf_counter() + patience_s
    while True:
        locations = ray.experimental.get_object_locations(refs)
        nodes = len({node for loc in locations.values() for node in loc.get("node_ids") or []})
        if nodes >= expect or time.perf_counter() > deadline:
            return nodes
        time.sleep(0.02)
