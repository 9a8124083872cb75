"""Weight sync: learner weights -> generation / reward workers, streamed bucket by bucket.

Only what trains travels, and of that only what changed since the last push: the LLM
backbone's parameters (or, under LoRA, the adapter matrices, merged into the receiving worker's
own base weights on arrival). Each learner rank keeps a `WeightExporter`, which remembers the
values it last sent (its own shard of them, for an FSDP2-sharded learner) and compares: a tensor
whose values did not change (no gradient reached it) is skipped; a LoRA pair travels whole when
either half changed. The exporter is a generator: first a `SyncManifest` (every tensor of the
push, by bucket: names, shapes, dtypes), then the buckets of about `bucket_mb` MiB, each gathered
(`DTensor.full_tensor()`, a collective every rank runs in the same order) and yielded as soon as
it is ready. Under Ray the learner's export is a streaming generator method: the manifest, a
few KB, comes back inline with the generator's first report (no object-store round trip), and
each bucket is in the object store while the next one is gathered. The driver reads the
manifest, then forwards each bucket ref to every target at once, unread, the manifest riding
by value on the first bucket's call. A target checks the whole manifest before it changes
anything (`BucketReceiver.begin`),
then copies each bucket in place as it arrives and lets it go: the extra memory a sync costs it is
one bucket (`SyncAck.peak_extra_bytes`, the kernel's peak-RSS count over the sync). The driver
keeps a `WeightLedger` of the pushes whose tensors are still the latest, so a worker that joins
late or was restarted replays them in order and holds exactly the pushed version.

    exporter = WeightExporter()                                    # on each learner rank
    for item in exporter.export(model, bucket_mb=64, emit=rank == 0): ...   # manifest, buckets
    receiver = BucketReceiver(); receiver.begin(version, manifest, model, ...)  # on a worker
    receiver.apply(version, bucket)                                # per bucket, in place
    apply_update(model, bucket, lora_scaling=s, merge_state=state)  # one bucket, checked first
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

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


# ------------------------------------------------------------------------ what a push carries
TORN = -1
"""The version a worker reports after an update failed part-way through its buckets: it holds
some tensors of the new version and some of the old, so it claims neither; a replay of the
ledger (`WorkerPool.heal`) brings it to the pushed version."""


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a push: its name (transformers' naming), full shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # torch dtype name without "torch.", e.g. "float32"

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.torch_dtype.itemsize

    def meta(self) -> torch.Tensor:
        """A storage-less tensor of this shape and dtype, for checks."""
        return torch.empty(self.shape, dtype=self.torch_dtype, device="meta")


@dataclass(frozen=True)
class SyncManifest:
    """What a push will carry, bucket by bucket, sent before the first bucket so a receiver can
    check all of it before changing anything. `full`: every trainable tensor is in it."""

    buckets: tuple[tuple[TensorSpec, ...], ...]
    full: bool
    trainable: int  # how many trainable tensors the learner holds (the push carries len(names))

    @classmethod
    def of(cls, buckets: list[dict[str, torch.Tensor]], full: bool = True) -> SyncManifest:
        """The manifest of buckets already in hand (a test, an in-process sync)."""
        specs = tuple(
            tuple(TensorSpec(n, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for n, t in b.items())
            for b in buckets
        )
        return cls(specs, full=full, trainable=sum(len(b) for b in specs))

    @property
    def names(self) -> list[str]:
        return [t.name for b in self.buckets for t in b]

    @property
    def bytes(self) -> int:
        return sum(t.nbytes for b in self.buckets for t in b)

    @property
    def largest_bucket_bytes(self) -> int:
        return max((sum(t.nbytes for t in b) for b in self.buckets), default=0)


@dataclass
class WireBucket:
    """One bucket on the wire: its tensors' specs and each tensor's bytes as a flat uint8 numpy
    array (`data`, one per spec, in order). Numpy arrays travel through Ray's object store
    out of band: the sender's put is the one copy on the way out (no gathered intermediate
    buffer), and the receiver's `tensors()` are read-only views of the store's buffer, so a
    bucket costs the receiver one copy: into its own parameters. In process (no Ray) the
    arrays are views of the exporter's kept copies, valid until its next export."""

    specs: tuple[TensorSpec, ...]
    data: list  # numpy uint8 arrays, one per spec

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.specs]

    def tensors(self) -> dict[str, torch.Tensor]:
        """name -> tensor, views of `data` (read-only where data is the object store's)."""
        import warnings

        if len(self.data) != len(self.specs):
            raise ValueError(
                f"weight update: a bucket lists {len(self.specs)} tensors but holds {len(self.data)}"
            )
        out = {}
        with warnings.catch_warnings():  # a read-only buffer: the views are only read
            warnings.simplefilter("ignore", UserWarning)
            for t, arr in zip(self.specs, self.data, strict=True):
                if arr.nbytes != t.nbytes:
                    raise ValueError(
                        f"weight update: {t.name} arrived as {arr.nbytes} bytes, its spec says {t.nbytes}"
                    )
                if t.nbytes == 0:  # no bytes to view (a 0-byte array's stride is 0)
                    out[t.name] = torch.empty(t.shape, dtype=t.torch_dtype)
                else:
                    out[t.name] = torch.from_numpy(arr).view(t.torch_dtype).view(t.shape)
        return out


def as_bytes_array(t: torch.Tensor):
    """A contiguous CPU tensor's bytes as a flat uint8 numpy array (a view, no copy)."""
    return t.reshape(-1).view(torch.uint8).numpy()


def copy_into(dst: torch.Tensor, src: torch.Tensor) -> None:
    """dst[...] = src. Two contiguous CPU tensors of one dtype and shape: one memmove (no
    intra-op thread pool: on a loaded machine torch's parallel copy waited for a descheduled
    thread per tensor); anything else: torch's copy_."""
    if (
        dst.device.type == src.device.type == "cpu"
        and dst.dtype == src.dtype
        and dst.shape == src.shape
        and dst.is_contiguous()
        and src.is_contiguous()
    ):
        n = dst.numel() * dst.element_size()
        if n:
            import ctypes

            ctypes.memmove(dst.data_ptr(), src.data_ptr(), n)
        return
    dst.copy_(src)


def as_tensors(bucket: WireBucket | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return bucket.tensors() if isinstance(bucket, WireBucket) else bucket


def _is_dtensor(p: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed
        return False
    return isinstance(p, DTensor)


def _local(p: torch.Tensor) -> torch.Tensor:
    """This rank's part of a parameter: its shard under FSDP2 (a DTensor), else all of it."""
    return p.to_local().detach() if _is_dtensor(p) else p.detach()


def _agree(flags: list[bool], device: torch.device) -> list[bool]:
    """Element-wise OR of `flags` over the learner's ranks (one all_reduce), so every rank
    gathers the same tensors in the same order; unchanged where torch.distributed is not up."""
    import torch.distributed as dist

    if not flags or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return flags
    t = torch.tensor([int(f) for f in flags], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def _libc_memcmp():
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name).memcmp if name else None
    except (OSError, AttributeError):
        return None
    if fn is not None:
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    return fn


_MEMCMP = _libc_memcmp()


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors hold exactly the same bytes (same shape and dtype, every byte equal:
    a NaN that stays NaN is unchanged, 0.0 becoming -0.0 is a change, as the receiver sees it).
    On CPU one memcmp over each tensor's memory (about 4x torch.equal's speed, measured on the
    toy's 4 MB); torch.equal on byte views elsewhere, same answer."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.numel() == 0:
        return True
    if (
        _MEMCMP is not None
        and a.device.type == b.device.type == "cpu"
        and a.is_contiguous()
        and b.is_contiguous()
    ):
        return _MEMCMP(a.data_ptr(), b.data_ptr(), a.numel() * a.element_size()) == 0
    as_bytes = [t.contiguous().view(-1).view(torch.uint8) for t in (a, b)]
    return torch.equal(*as_bytes)


class WeightExporter:
    """Learner-side, one per rank: which trainable tensors changed since the last export, and
    the export itself, bucket by bucket.

    It keeps a CPU copy of what it last sent (this rank's shard of it under FSDP2) and compares
    exactly (`same_bytes`: every byte), so a parameter no gradient reached is skipped whatever the
    optimizer (a version counter would not do: fused AdamW updates without bumping it). The
    first export, and one asked `full=True`, carries everything."""

    def __init__(self):
        self.sent: dict[str, torch.Tensor] = {}

    def _changed(self, name: str, p: torch.Tensor) -> bool:
        prev = self.sent.get(name)
        local = _local(p)
        return prev is None or not same_bytes(prev, local.to(prev.device))

    def plan(
        self,
        model: torch.nn.Module,
        bucket_mb: float,
        full: bool = False,
        params: dict[str, torch.Tensor] | None = None,
    ) -> tuple[SyncManifest, list[list[tuple[str, torch.Tensor]]]]:
        """(the manifest, the parameters of each bucket): every changed trainable tensor, a LoRA
        pair whole when either half changed, in model order, in buckets of ~bucket_mb MiB.
        `params`: the trainable tensors by name in model order, when the caller holds them (the
        learner's optimizer set: walking the module tree costs ~2 ms a push on the toy model)."""
        if bucket_mb <= 0:
            raise ValueError(f"bucket_mb must be > 0, got {bucket_mb}")
        if params is None:
            params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        params = list(params.items())
        changed = [full or self._changed(n, p) for n, p in params]
        pairs: dict[str, list[int]] = {}
        for i, (n, _) in enumerate(params):
            target = _lora_target(n)
            if target is not None:
                pairs.setdefault(target[0], []).append(i)
        for members in pairs.values():
            if any(changed[i] for i in members):
                for i in members:
                    changed[i] = True
        device = _local(params[0][1]).device if params else torch.device("cpu")
        changed = _agree(changed, device)
        # Packing units: a tensor, or a LoRA layer's A and B together (a bucket never splits a
        # pair, so a receiver can merge each pair on the bucket that brings it).
        units: list[list[tuple[str, torch.Tensor]]] = []
        for (n, p), c in zip(params, changed, strict=True):
            if not c:
                continue
            target = _lora_target(n)
            prev = _lora_target(units[-1][-1][0]) if units else None
            if target is not None and prev is not None and prev[0] == target[0]:
                units[-1].append((n, p))
            else:
                units.append([(n, p)])
        limit = bucket_mb * 2**20
        groups: list[list[tuple[str, torch.Tensor]]] = [[]]
        size = 0
        for unit in units:
            nbytes = sum(p.numel() * p.element_size() for _, p in unit)  # a DTensor's: the full one's
            if groups[-1] and size + nbytes > limit:
                groups.append([])
                size = 0
            groups[-1].extend(unit)
            size += nbytes
        groups = [g for g in groups if g]
        manifest = SyncManifest(
            buckets=tuple(
                tuple(TensorSpec(n, tuple(p.shape), str(p.dtype).removeprefix("torch.")) for n, p in g)
                for g in groups
            ),
            full=all(changed),
            trainable=len(params),
        )
        return manifest, groups

    def export(
        self,
        model: torch.nn.Module,
        bucket_mb: float,
        *,
        emit: bool = True,
        full: bool = False,
        params: dict[str, torch.Tensor] | None = None,
    ) -> Iterator[SyncManifest | WireBucket]:
        """Yield the manifest (before anything is gathered), then each bucket (a WireBucket) as
        soon as it is gathered.
        Every rank of a sharded learner must run this to the end in step (each DTensor's
        full_tensor() is a collective); only the rank with `emit` yields anything."""
        manifest, groups = self.plan(model, bucket_mb, full, params)
        if emit:
            yield manifest
        for group, specs in zip(groups, manifest.buckets, strict=True):
            arrays = []
            for name, p in group:
                if _is_dtensor(p):
                    value = (
                        p.full_tensor().detach().to("cpu").contiguous()
                    )  # collective: every rank, same order
                    self._keep(name, _local(p))
                else:
                    # One copy serves both: the value sent (Ray's put copies it out) and what
                    # the next export compares against; kept in place, no new buffer a push.
                    value = self._keep(name, p.detach())
                if emit:
                    arrays.append(as_bytes_array(value))
            if emit:
                yield WireBucket(specs, arrays)

    def _keep(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """Copy `value` into the kept CPU copy of `name` (made once, reused while its shape and
        dtype hold) and return that copy."""
        kept = self.sent.get(name)
        if kept is None or kept.shape != value.shape or kept.dtype != value.dtype:
            kept = torch.empty(value.shape, dtype=value.dtype)
            self.sent[name] = kept
        copy_into(kept, value)
        return kept


class ExportStream:
    """Driver-side view of one export from every learner rank: iterating it gives rank 0's
    refs as its export yields them (the manifest's first, then each bucket's as soon as it is
    in the object store); `finish()` checks that rank 0 yielded nothing more and waits for the
    other ranks' exports (which yield nothing), raising their errors."""

    def __init__(self, first, others: list):
        self.first, self.others = first, others

    def __iter__(self):
        return self.first

    def __next__(self):
        return next(self.first)

    def finish(self) -> None:
        """Wait for every rank's export to end; raises a rank's error, or when rank 0 yields
        more than its manifest announced."""
        import ray

        extra = sum(1 for _ in self.first)
        if extra:
            raise RuntimeError(f"weight export: rank 0 yielded {extra} item(s) beyond its manifest's buckets")
        for gen in self.others:
            for ref in gen:
                ray.get(ref)


# ------------------------------------------------------------------------ the receiving side
def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _malloc_trim() -> None:
    import contextlib
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):  # not glibc
            ctypes.CDLL(name).malloc_trim(0)


class PeakMemory:
    """The peak extra resident memory of this process between `start()` and `stop()`, from the
    kernel's own peak-RSS mark (VmHWM, reset at start): every allocation counts, torch's and
    the object store's pages this process maps alike. None where /proc does not offer it."""

    def __init__(self, trim: bool = False):
        self.base: int | None = None
        self.trim = trim
        """Hand the allocator's free memory back to the OS first (glibc's malloc_trim), so memory
        freed earlier and reused does not hide what the interval allocates (a test's measure;
        a worker's counts only what the sync adds to the process's footprint)."""

    def start(self) -> None:
        if self.trim:
            _malloc_trim()
        self.base = _rss_bytes() if _reset_peak_rss() else None

    def stop(self) -> int | None:
        peak = _peak_rss_bytes()
        if self.base is None or peak is None:
            return None
        return max(0, peak - self.base)


@dataclass(frozen=True)
class SyncAck:
    """A worker's account of one update, returned with its last bucket."""

    version: int
    node_id: str
    bytes: int  # bytes of tensors applied
    buckets: int
    largest_bucket_bytes: int
    peak_extra_bytes: int | None  # PeakMemory over begin..last bucket
    seconds: float  # on the worker, from the manifest's arrival to the last bucket applied


def check_manifest(
    model: torch.nn.Module,
    manifest: SyncManifest,
    *,
    lora_scaling: float = 1.0,
    merge_state: LoraMergeState | None = None,
    params: dict[str, torch.nn.Parameter] | None = None,
) -> None:
    """Check every tensor of a push against `model` before any bucket arrives (names, shapes,
    LoRA pairs as they will complete bucket after bucket), on storage-less tensors; changes
    nothing. Raises ValueError naming the first tensor that does not fit."""
    scratch = None
    if merge_state is not None:
        scratch = LoraMergeState(base={}, pending=dict(merge_state.pending))
    params = dict(model.named_parameters()) if params is None else params
    for bucket in manifest.buckets:
        plan = check_update(
            model,
            {t.name: t.meta() for t in bucket},
            lora_scaling=lora_scaling,
            merge_state=scratch,
            params=params,
        )
        if scratch is not None:
            scratch.pending = plan.pending


@dataclass
class BucketReceiver:
    """Worker-side bookkeeping of the update in flight: its manifest, which bucket is next,
    the bytes applied and the memory it costs. `begin` then `apply` once per bucket, in order;
    each returns the SyncAck once the last bucket is in (begin does when there are none)."""

    node_id: str = ""
    version: int | None = None
    manifest: SyncManifest | None = None
    index: int = 0
    applied: int = 0
    failed: str | None = None
    t0: float = 0.0
    memory: PeakMemory = field(default_factory=PeakMemory)

    def begin(self, version: int, manifest: SyncManifest) -> SyncAck | None:
        self.version, self.manifest, self.index, self.applied, self.failed = version, manifest, 0, 0, None
        self.t0 = time.perf_counter()
        self.memory.start()
        return self._ack() if not manifest.buckets else None

    def expect(self, version: int, bucket: dict[str, torch.Tensor]) -> None:
        """Raise unless `bucket` is the next one of `version`'s manifest (same names, in order)."""
        if self.manifest is None or version != self.version:
            raise ValueError(f"weight update: a bucket of version {version} arrived before its manifest")
        if self.failed:
            raise ValueError(f"weight update to version {version}: {self.failed}")
        if self.index >= len(self.manifest.buckets):
            raise ValueError(f"weight update to version {version}: more buckets than its manifest lists")
        want = [t.name for t in self.manifest.buckets[self.index]]
        if list(bucket) != want:
            raise ValueError(
                f"weight update to version {version}: bucket {self.index} holds {list(bucket)[:3]}..., "
                f"the manifest lists {want[:3]}..."
            )

    def done(self, bucket: dict[str, torch.Tensor]) -> SyncAck | None:
        """Count an applied bucket; the ack once it was the last."""
        assert self.manifest is not None
        self.applied += sum(t.numel() * t.element_size() for t in bucket.values())
        self.index += 1
        return self._ack() if self.index == len(self.manifest.buckets) else None

    def fail(self, why: str) -> None:
        self.failed = f"bucket {self.index} failed: {why}"

    def _ack(self) -> SyncAck:
        assert self.manifest is not None and self.version is not None
        return SyncAck(
            version=self.version,
            node_id=self.node_id,
            bytes=self.applied,
            buckets=self.index,
            largest_bucket_bytes=self.manifest.largest_bucket_bytes,
            peak_extra_bytes=self.memory.stop(),
            seconds=time.perf_counter() - self.t0,
        )


# ------------------------------------------------------------------------------ the driver side
class WeightLedger:
    """Driver-side: the pushes whose tensors are still the latest, oldest first, with their
    bucket refs. A push is dropped once every tensor in it was sent again by a later one (a
    full push drops all before it). Replaying the entries in order, each bucket by bucket,
    brings a fresh worker to exactly the latest version; it holds at most one copy of each
    tensor's latest value plus the older values in partly superseded pushes."""

    def __init__(self):
        self.entries: list[tuple[int, SyncManifest, list]] = []
        self.live: list[set[str]] = []  # per entry: its names no later push sent

    @property
    def version(self) -> int:
        return self.entries[-1][0] if self.entries else 0

    def record(self, version: int, manifest: SyncManifest, refs: list) -> None:
        names = set(manifest.names)
        kept = [(e, live - names) for e, live in zip(self.entries, self.live, strict=True)]
        kept = [(e, live) for e, live in kept if live and not manifest.full]
        self.entries = [e for e, _ in kept] + [(version, manifest, list(refs))]
        self.live = [live for _, live in kept] + [names]

    def replay(self) -> list[tuple[SyncManifest, list]]:
        return [(m, refs) for _, m, refs in self.entries]


@dataclass(frozen=True)
class SyncStats:
    """One push: version sent, bytes, buckets, seconds from export start to the last ack."""

    version: int
    bytes: int
    buckets: int
    seconds: float
    nodes: int = 1
    """Ray nodes the buckets reached: the learner's plus each node where a target acknowledged
    applying at least one bucket (> 1 means they crossed nodes)."""
    tensors: int = 0  # tensors sent (the changed ones)
    trainable: int = 0  # trainable tensors the learner holds
    largest_bucket_bytes: int = 0
    peak_extra_bytes: int | None = None  # the largest receiver's PeakMemory over this sync
    manifest_s: float = 0.0  # from the start until the manifest was in hand (compared, nothing gathered)
    export_s: float = 0.0  # ... until every bucket's ref was (gathered, put)
    apply_s: float = 0.0  # the slowest worker's own time, from the manifest to its last bucket

    def as_metrics(self) -> dict[str, float]:
        out = {
            "sync_ms": 1000 * self.seconds,
            "sync_mb": self.bytes / 2**20,
            "sync_buckets": float(self.buckets),
            "sync_nodes": float(self.nodes),
            "sync_tensors": float(self.tensors),
            "sync_bucket_max_mb": self.largest_bucket_bytes / 2**20,
            "sync_manifest_ms": 1000 * self.manifest_s,
            "sync_export_ms": 1000 * self.export_s,
            "sync_apply_ms": 1000 * self.apply_s,
        }
        if self.peak_extra_bytes is not None:
            out["sync_receiver_peak_extra_mb"] = self.peak_extra_bytes / 2**20
        return out


class WeightSync:
    """Driver-side: versioned, streamed pushes from the learner to the worker pools."""

    def __init__(self, bucket_mb: float):
        self.bucket_mb = bucket_mb
        self.version = 0
        self.ledger = WeightLedger()

    def push(self, learner_group, targets: list) -> SyncStats:
        """Export the changed trainable weights once (every learner rank takes part), forward each
        bucket to every target worker as soon as it is in the object store (the manifest rides by
        value on the first bucket's call; each worker checks it whole before applying anything),
        wait for every
        worker's acknowledgement of the new version. The pools learn the ledger's replay before
        any ack is awaited, so a worker that dies during the push is replaced at this version."""
        import ray

        t0 = time.perf_counter()
        version = self.version + 1
        stream = learner_group.export_weights(self.bucket_mb)
        try:
            manifest = ray.get(next(stream))  # small: inline in the generator's first report
        except StopIteration:
            raise RuntimeError("weight export: rank 0 yielded nothing (not even a manifest)") from None
        if not isinstance(manifest, SyncManifest):
            raise RuntimeError(f"weight export: rank 0 yielded {type(manifest).__name__} before its manifest")
        t_manifest = time.perf_counter()
        actors = [a for pool in targets for a in pool.actors]
        refs: list = []
        if not manifest.buckets:  # nothing changed: the manifest alone moves the version
            calls = [a.apply_bucket.remote(version, manifest) for a in actors]
        else:
            calls = []
            for i in range(len(manifest.buckets)):
                try:
                    ref = next(stream)  # forwarded unread, as soon as it is in the object store
                except StopIteration:
                    raise RuntimeError(
                        f"weight export: rank 0 yielded {i} bucket(s), its manifest lists "
                        f"{len(manifest.buckets)}"
                    ) from None
                refs.append(ref)
                calls += [a.apply_bucket.remote(version, ref, manifest if i == 0 else None) for a in actors]
        t_exported = time.perf_counter()
        self.ledger.record(version, manifest, refs)
        replay = self.ledger.replay()
        for pool in targets:
            pool.current = (version, replay)
        acks: list[SyncAck] = [r for r in ray.get(calls) if r is not None]
        stream.finish()  # after the acks: the stream's end is not on the critical path
        if len(acks) != len(actors) or any(a.version != version for a in acks):
            raise RuntimeError(
                f"weight sync: workers report versions {[a.version for a in acks]}, expected {version} "
                f"from {len(actors)} workers"
            )
        self.version = version
        seconds = time.perf_counter() - t0
        nodes = {p.get("node_id") for p in learner_group.placement[:1]}
        nodes |= {a.node_id for a in acks if a.buckets}
        peaks = [a.peak_extra_bytes for a in acks if a.peak_extra_bytes is not None]
        return SyncStats(
            version,
            manifest.bytes,
            len(refs),
            seconds,
            nodes=len(nodes),
            tensors=len(manifest.names),
            trainable=manifest.trainable,
            largest_bucket_bytes=manifest.largest_bucket_bytes,
            peak_extra_bytes=max(peaks) if peaks else None,
            manifest_s=t_manifest - t0,
            export_s=t_exported - t0,
            apply_s=max((a.seconds for a in acks), default=0.0),
        )
