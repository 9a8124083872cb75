"""What a push carries: tensor specs, the manifest, buckets as byte arrays, exact copies.

Where it sits: between the learner's exporter (gapray.workers.sync.export) and the workers'
receivers (gapray.workers.sync.receive). A `SyncManifest` lists every tensor of a push, bucket
by bucket, and reaches a worker with the first bucket, before any bucket is applied (a
`LeadBucket` under the object store); a `WireBucket` is one bucket's specs and each tensor's
bytes as a numpy array, so Ray's object store moves them out of band with one copy on each
side. `copy_into` and `same_bytes` are the exact byte copy and compare both sides use (one
memmove / memcmp per tensor: torch's 2-thread copy waited on a descheduled thread at nice 15).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

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
    arrays are views of the learner's CPU parameters (of the exporter's kept copies for a
    parameter elsewhere, of a gathered tensor for a sharded one): valid until they change."""

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


@dataclass(frozen=True)
class LeadBucket:
    """A push's first item under sync.transport=object_store: its manifest and its first bucket
    (None when nothing changed) in one object. The driver forwards its ref to every worker
    without reading it, so the workers start as soon as the learner has put it (no round trip
    through the driver for the manifest first); a worker checks the manifest whole before the
    bucket touches anything."""

    manifest: SyncManifest
    bucket: WireBucket | None


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
