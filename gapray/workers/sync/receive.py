"""A worker's side of a push: the manifest checked whole, buckets applied in order, the ack.

Where it sits: inside `ModelWorker.begin_update` / `apply_bucket` (generation and reward
workers) and the vLLM engine's update path. `BucketReceiver` keeps the update in flight (its
manifest, the next bucket, the bytes applied) and `PeakMemory` the extra memory a sync costs the
worker (the kernel's peak-RSS mark: one bucket, not the model); `SyncAck` is what the worker
returns with its last bucket.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch

from gapray.workers.sync.update import LoraMergeState, check_update
from gapray.workers.sync.wire import SyncManifest


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
