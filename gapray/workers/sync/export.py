"""The learner's side of a push: what changed since the last export, gathered bucket by bucket.

Where it sits: inside `LearnerWorker.export_weights` (a Ray streaming method) on every learner
rank, and `ExportStream` on the driver over rank 0's refs. The exporter keeps a CPU copy of
what it last sent (its own shard under FSDP2) and compares every byte, so a tensor no gradient
reached is skipped; it yields the manifest first (before anything is gathered), then each
bucket as soon as it is gathered (`DTensor.full_tensor()`: a collective every rank runs in the
same order; only rank 0 emits).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from gapray.workers.sync.update import lora_target
from gapray.workers.sync.wire import (
    LeadBucket,
    SyncManifest,
    TensorSpec,
    WireBucket,
    as_bytes_array,
    copy_into,
    same_bytes,
)


def _is_dtensor(p: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed
        return False
    return isinstance(p, DTensor)


def _local(p: torch.Tensor) -> torch.Tensor:
    """This rank's part of a parameter: its shard under FSDP2 (a DTensor), else all of it."""
    return p.to_local().detach() if _is_dtensor(p) else p.detach()


def _own_bytes_travel(p: torch.Tensor) -> bool:
    """Whether a bucket can carry this parameter's own memory (a contiguous CPU tensor: Ray's
    put reads it directly) rather than a copy made first."""
    return p.device.type == "cpu" and p.is_contiguous()


def _agree(flags: list[bool], device: torch.device) -> list[bool]:
    """Element-wise OR of `flags` over the learner's ranks (one all_reduce), so every rank
    gathers the same tensors in the same order; unchanged where torch.distributed is not up."""
    import torch.distributed as dist

    if not flags or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return flags
    t = torch.tensor([int(f) for f in flags], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


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
        named = list(params.items())
        changed = [full or self._changed(n, p) for n, p in named]
        pairs: dict[str, list[int]] = {}
        for i, (n, _) in enumerate(named):
            target = lora_target(n)
            if target is not None:
                pairs.setdefault(target[0], []).append(i)
        for members in pairs.values():
            if any(changed[i] for i in members):
                for i in members:
                    changed[i] = True
        device = _local(named[0][1]).device if named else torch.device("cpu")
        changed = _agree(changed, device)
        # Packing units: a tensor, or a LoRA layer's A and B together (a bucket never splits a
        # pair, so a receiver can merge each pair on the bucket that brings it).
        units: list[list[tuple[str, torch.Tensor]]] = []
        for (n, p), c in zip(named, changed, strict=True):
            if not c:
                continue
            target = lora_target(n)
            prev = lora_target(units[-1][-1][0]) if units else None
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
            trainable=len(named),
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
        keep_first: bool = False,
    ) -> Iterator[SyncManifest | WireBucket]:
        """Yield the manifest (before anything is gathered), then each bucket (a WireBucket) as
        soon as it is gathered. A CPU parameter's bytes travel straight from the parameter (no
        copy before the put); what was sent is copied into the kept copies after each bucket's
        yield, while the receivers apply it. A consumer in process must use a bucket before
        the parameters change. `keep_first`: every tensor is copied into its kept copy before
        its bucket is yielded and the kept copy's bytes travel (the compiled-graph transport,
        whose writes happen after the learner's call returns: nothing is left to keep after
        the last yield).
        Every rank of a sharded learner must run this to the end in step (each DTensor's
        full_tensor() is a collective); only the rank with `emit` yields anything."""
        manifest, groups = self.plan(model, bucket_mb, full, params)
        if emit:
            yield manifest
        for group, specs in zip(groups, manifest.buckets, strict=True):
            arrays = []
            later: list[tuple[str, torch.Tensor]] = []  # kept after the bucket is out
            for name, p in group:
                if _is_dtensor(p):
                    value = (
                        p.full_tensor().detach().to("cpu").contiguous()
                    )  # collective: every rank, same order
                    later.append((name, _local(p)))
                elif _own_bytes_travel(p) and not keep_first:
                    # Its own bytes go out (Ray's put copies them into the object store); the
                    # kept copy is refreshed after the yield, off the push's critical path.
                    value = p.detach()
                    later.append((name, value))
                else:  # e.g. on a GPU: the kept CPU copy, made now, is what travels
                    value = self._keep(name, p.detach())
                if emit:
                    arrays.append(as_bytes_array(value))
            if emit:
                yield WireBucket(specs, arrays)
            # The parameters did not change since the compare (the learner runs nothing else
            # in between), so the kept copies still record exactly what this bucket sent. A
            # consumer that stops here leaves them stale: the next export sends them again.
            for name, value in later:
                self._keep(name, value)

    def export_sent(self, bucket_mb: float) -> Iterator[SyncManifest | WireBucket]:
        """Yield a manifest and buckets of the kept copies: every tensor as last exported, i.e.
        the pushed version whatever the learner trained since (a replaced worker's replay under
        the compiled-graph transport). One rank only (the kept copies are whole tensors)."""
        manifest, groups = self.plan(torch.nn.Module(), bucket_mb, full=True, params=self.sent)
        yield manifest
        for group, specs in zip(groups, manifest.buckets, strict=True):
            yield WireBucket(specs, [as_bytes_array(t) for _, t in group])

    def _keep(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """Copy `value` into the kept CPU copy of `name` (made once, reused while its shape and
        dtype hold) and return that copy."""
        kept = self.sent.get(name)
        if kept is None or kept.shape != value.shape or kept.dtype != value.dtype:
            kept = torch.empty(value.shape, dtype=value.dtype)
            self.sent[name] = kept
        copy_into(kept, value)
        return kept


def lead_first(
    items: Iterator[SyncManifest | WireBucket],
) -> Iterator[SyncManifest | WireBucket | LeadBucket]:
    """An export's items as the object-store transport streams them: a LeadBucket (the manifest
    with bucket 0, one object the workers start on), then the manifest alone (small: it returns
    inline, the driver's copy for its ledger and stats), then buckets 1.. . A rank that emits
    nothing yields nothing (its export still runs to the end: the gathers are collectives)."""
    manifest = next(items, None)
    if manifest is None:
        return
    if not isinstance(manifest, SyncManifest):
        raise RuntimeError(f"weight export: yielded {type(manifest).__name__} before its manifest")
    first = next(items, None) if manifest.buckets else None
    yield LeadBucket(manifest, first)
    yield manifest
    yield from items


class ExportStream:
    """Driver-side view of one export from every learner rank: iterating it gives rank 0's
    refs as its export yields them (`lead_first`'s order: the LeadBucket's as soon as it is in
    the object store, the manifest's, then each later bucket's); `finish()` checks that rank 0 yielded nothing more and waits for the
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


class CompiledExport:
    """Learner-side state of the compiled-graph transport (`sync.transport=compiled_graph`).

    One push is several executions of the graph, one per bucket (one for the manifest alone
    when nothing changed): `step(request)` with `request.index == 0` starts a fresh export
    (`keep_first`: the kept copies are refreshed before each bucket leaves, since the graph
    writes the returned bucket after this call) and returns the manifest with bucket 0; later
    indices return the next bucket. Every message must fit the graph's shared-memory buffer,
    sized once at compile time (`buffer_bytes`): Ray would resize a channel for a larger one,
    and a resized channel hangs the graph's teardown (Ray 2.60), so a larger message is a
    named error instead."""

    SLACK = 64 * 2**10  # pickled framing of a message beyond its arrays and manifest

    def __init__(self, exporter: WeightExporter, buffer_bytes: int):
        self.exporter = exporter
        self.buffer_bytes = buffer_bytes
        self.stream: Iterator[SyncManifest | WireBucket] | None = None
        self.manifest: SyncManifest | None = None
        self.index = 0
        self.version: int | None = None

    @staticmethod
    def buffer_for(exporter: WeightExporter, params: dict[str, torch.Tensor], bucket_mb: float) -> int:
        """Bytes of the largest message a push can send: a bucket of at most max(bucket_mb MiB,
        the largest tensor or LoRA pair), the manifest of every trainable tensor, framing."""
        manifest, _ = exporter.plan(torch.nn.Module(), bucket_mb, full=True, params=params)
        largest = max(int(bucket_mb * 2**20), manifest.largest_bucket_bytes)
        return largest + 64 * len(manifest.names) + _pickled_size(manifest) + CompiledExport.SLACK

    def step(
        self,
        model: torch.nn.Module,
        params: dict[str, torch.Tensor],
        version: int,
        index: int,
        bucket_mb: float,
    ) -> tuple[SyncManifest | None, WireBucket | None]:
        """(the manifest on index 0, else None; bucket `index`, or None when the push has none)."""
        if index == 0:
            self.finish()
            self.stream = self.exporter.export(model, bucket_mb, keep_first=True, params=params)
            self.manifest, self.index, self.version = next(self.stream), 0, version
        elif self.stream is None or version != self.version or index != self.index:
            raise RuntimeError(
                f"compiled weight push: asked for bucket {index} of version {version}, the export "
                f"in flight is at bucket {self.index} of version {self.version}"
            )
        assert self.manifest is not None
        sent = self.manifest if index == 0 else None
        if not self.manifest.buckets:
            self.stream = None
            return sent, None
        bucket = next(self.stream)
        assert isinstance(bucket, WireBucket)
        self.index += 1
        if self.index == len(self.manifest.buckets):
            self.finish()
        size = sum(a.nbytes for a in bucket.data) + 64 * len(bucket.data)
        size += _pickled_size(sent) if sent is not None else 0
        if size + self.SLACK > self.buffer_bytes:
            raise RuntimeError(
                f"compiled weight push: a message of {size} bytes does not fit the graph's "
                f"{self.buffer_bytes}-byte buffer (sized at compile time from sync.bucket_mb and "
                "the largest trainable tensor); Ray would resize the channel and its teardown hang"
            )
        return sent, bucket

    def finish(self) -> None:
        """Run the export in flight to its end (every bucket kept, whether sent or not): after
        it the kept copies hold the whole version it exported."""
        if self.stream is not None:
            for _ in self.stream:
                pass
            self.stream = None


def _pickled_size(obj) -> int:
    import pickle

    return len(pickle.dumps(obj, protocol=5))
