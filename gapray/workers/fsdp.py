"""FSDP2 for the learner: what is sharded, in which dtype, and the few operations that differ
when parameters are DTensors (gradient clipping, reading and writing whole tensors).

    mesh = make_mesh(world_size, device)                       # None for one rank
    prepare_policy(adapter, device, mesh, compute, checkpointing=True)
    prepare_reference(reference, policy, device, mesh, compute)

Layout (K ranks, `learner.sharding=fsdp`):
- the policy's trainable parameters are fp32 master weights, sharded over the K ranks one
  decoder layer per FSDP unit (the adapter's `decoder_layers()`) plus one root unit (the
  adapter's `training_module()`: embeddings, final norm, and whatever else trains); gradients
  and AdamW state are sharded with them. `MixedPrecisionPolicy(param_dtype=compute,
  reduce_dtype=fp32)`: layers are all-gathered in the compute dtype (bf16 on GPU), gradients
  reduce-scattered in fp32. Gradients are summed over ranks (divide factor 1): the learner
  weights each micro-batch by its share of the update's rows, so the sum is the global mean.
- frozen parameters outside the decoder layers (vision tower, VQ, and under trainable=llm the
  generation head) are not sharded: held once per rank in the compute dtype, and the frozen
  reference uses the very same tensors (`JanusAdapter.frozen_copy`).
- the frozen reference's own copy of what trains is sharded the same way, stored in the
  compute dtype (it needs no fp32 master): per rank it holds 2 bytes x N_trainable / K.
- activation checkpointing (`learner.activation_checkpointing`) recomputes each decoder layer
  in backward (torch.distributed._composable.checkpoint: parameter names stay unchanged).

One rank (or `learner.sharding=none`) keeps plain tensors; the learner all-reduces gradients
itself and computes under torch.autocast in the compute dtype over the same fp32 master.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, distribute_tensor

SHARDINGS = ("fsdp", "none")
COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_compute_dtype(name: str, device: str) -> torch.dtype:
    """learner.compute_dtype: "auto" is bfloat16 on a GPU, float32 on the CPU."""
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"learner.compute_dtype must be auto, float32 or bfloat16, got {name!r}")
    return COMPUTE_DTYPES[name]


def make_mesh(world_size: int, device: str):
    """A 1-D device mesh over the learner ranks (the process group must be up), or None."""
    if world_size <= 1:
        return None
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cuda" if device.startswith("cuda") else "cpu", (world_size,))


def _cast_frozen(params, dtype: torch.dtype) -> None:
    with torch.no_grad():
        for p in params:
            if not p.requires_grad and p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)


def _shard(adapter, mesh, compute: torch.dtype, ignored: set) -> list:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(
        param_dtype=None if compute == torch.float32 else compute, reduce_dtype=torch.float32
    )
    units = [fully_shard(layer, mesh=mesh, mp_policy=mp) for layer in adapter.decoder_layers()]
    units.append(fully_shard(adapter.training_module(), mesh=mesh, mp_policy=mp, ignored_params=ignored))
    for unit in units:
        unit.set_gradient_divide_factor(1.0)  # sum over ranks: the loss carries each rank's share
        unit.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no PREMUL_SUM)
    return units


def _to_device(params, buffers, device: str) -> None:
    with torch.no_grad():
        for t in (*params, *buffers):
            if t.device != torch.device(device):
                t.data = t.data.to(device)


def prepare_policy(adapter, device: str, mesh, compute: torch.dtype, checkpointing: bool) -> None:
    """Frozen parameters to the compute dtype, the decoder layers checkpointed if asked, and,
    with a mesh, the trainable part sharded (FSDP2) over fp32 master weights."""
    if checkpointing:
        from torch.distributed._composable import checkpoint

        for layer in adapter.decoder_layers():
            checkpoint(layer)
    root = adapter.training_module()
    _cast_frozen(root.parameters(), compute)
    if mesh is None:
        root.to(device)
        return
    in_layers = {id(p) for layer in adapter.decoder_layers() for p in layer.parameters()}
    ignored = {p for p in root.parameters() if not p.requires_grad and id(p) not in in_layers}
    _to_device(ignored, list(root.buffers()), device)
    _shard(adapter, mesh, compute, ignored)
    plain = [n for n, p in adapter.model.named_parameters() if p.requires_grad and not isinstance(p, DTensor)]
    if plain:
        raise RuntimeError(f"FSDP: trainable parameters left outside every FSDP unit, e.g. {plain[0]}")


def prepare_reference(reference, policy, device: str, mesh, compute: torch.dtype) -> None:
    """The frozen reference (from `policy.frozen_copy()`) in the compute dtype; with a mesh its
    own tensors are sharded like the policy's, those it shares with the policy left alone."""
    root = reference.training_module()
    shared = {id(p) for p in policy.model.parameters() if not p.requires_grad}
    own = [p for p in root.parameters() if id(p) not in shared]
    _cast_frozen(own, compute)
    if mesh is None:
        root.to(device)
        return
    ignored = {p for p in root.parameters() if id(p) in shared}
    _to_device([], list(root.buffers()), device)
    _shard(reference, mesh, compute, ignored)


def is_sharded(t: torch.Tensor) -> bool:
    return isinstance(t, DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a tensor (the tensor itself when plain)."""
    return t.to_local() if isinstance(t, DTensor) else t


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor: an all-gather for a DTensor (every rank must call it, in the same
    order), the tensor itself when plain."""
    return t.full_tensor() if isinstance(t, DTensor) else t


@torch.no_grad()
def copy_full_(param: torch.Tensor, full: torch.Tensor) -> None:
    """Write a whole tensor into a parameter: each rank takes its own shard of `full` (every
    rank holds `full`, so no communication)."""
    if isinstance(param, DTensor):
        part = distribute_tensor(
            full.to(param.device, param.dtype), param.device_mesh, param.placements, src_data_rank=None
        )
        param.to_local().copy_(part.to_local())
    else:
        param.copy_(full)


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip the gradients to a global L2 norm of max_norm; returns the norm before clipping.
    With sharded gradients the norm is over every rank's shards together (DTensor reduction),
    so it equals the one-rank norm of the same gradients."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_([p for p in params if p.grad is not None], max_norm, total)
    return total


def barrier(world_size: int) -> None:
    if world_size > 1:
        dist.barrier()
