"""The driver's side of a push: versions, the ledger of what is still latest, the stats.

Where it sits: the controller's sync stage (`WeightSync.push` after each update) and the pools'
healing (`WeightLedger.replay` for a worker that joins late or was restarted). The policy
version lives here, in `WeightSync.version`, and nowhere else.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gapray.workers.sync.receive import SyncAck
from gapray.workers.sync.wire import SyncManifest


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
    manifest_s: float = 0.0
    """From the start until the manifest was in hand: under object_store the lead bucket (bucket 0
    with the manifest) is then already forwarded to the workers."""
    export_s: float = 0.0  # ... until every bucket's ref was (gathered, put)
    apply_s: float = 0.0  # the slowest worker's own time, from the manifest to its last bucket
    channel_bytes: int | None = None
    """sync.transport=compiled_graph: the graph's shared-memory buffer each receiver maps once
    and keeps between syncs (sized at compile: max(bucket_mb, largest tensor) + manifest); the
    pages a message touched stay resident, which the per-sync peak does not see."""

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
        if self.channel_bytes is not None:
            out["sync_channel_buffer_mb"] = self.channel_bytes / 2**20
        return out


class WeightSync:
    """Driver-side: versioned, streamed pushes from the learner to the worker pools."""

    def __init__(self, bucket_mb: float):
        self.bucket_mb = bucket_mb
        self.version = 0
        self.ledger = WeightLedger()

    def close(self) -> None:
        """Nothing to release (the compiled-graph transport tears its graph down here)."""

    def push(self, learner_group, targets: list) -> SyncStats:
        """Export the changed trainable weights once (every learner rank takes part), forward each
        bucket to every target worker as soon as it is in the object store, unread (the first
        is a LeadBucket: the manifest with bucket 0, so the workers start on one object and each
        checks the manifest whole before applying anything), wait for every worker's
        acknowledgement of the new version. The pools learn the ledger's replay before any ack
        is awaited, so a worker that dies during the push is replaced at this version."""
        import ray

        t0 = time.perf_counter()
        version = self.version + 1
        stream = learner_group.export_weights(self.bucket_mb)
        actors = [a for pool in targets for a in pool.actors]
        try:
            lead = next(stream)  # forwarded unread, as soon as it is in the object store
            calls = [a.apply_bucket.remote(version, lead) for a in actors]
            manifest = ray.get(next(stream))  # small: inline in the generator's report
        except StopIteration:
            raise RuntimeError("weight export: rank 0 yielded no lead bucket and manifest") from None
        if not isinstance(manifest, SyncManifest):
            raise RuntimeError(f"weight export: rank 0 yielded {type(manifest).__name__} for its manifest")
        t_manifest = time.perf_counter()
        refs: list = [lead]
        for i in range(1, len(manifest.buckets)):
            try:
                ref = next(stream)  # forwarded unread, as soon as it is in the object store
            except StopIteration:
                raise RuntimeError(
                    f"weight export: rank 0 yielded {i} bucket(s), its manifest lists {len(manifest.buckets)}"
                ) from None
            refs.append(ref)
            calls += [a.apply_bucket.remote(version, ref) for a in actors]
        t_exported = time.perf_counter()
        self.ledger.record(version, manifest, refs)
        replay = self.ledger.replay()
        for pool in targets:
            pool.current = (version, replay)
        acks: list[SyncAck] = [r for r in ray.get(calls) if r is not None]
        stream.finish()  # after the acks: the stream's end is not on the critical path
        nodes, peak = self._accept(version, acks, len(actors), learner_group)
        return SyncStats(
            version,
            manifest.bytes,
            len(manifest.buckets),
            time.perf_counter() - t0,
            nodes=nodes,
            tensors=len(manifest.names),
            trainable=manifest.trainable,
            largest_bucket_bytes=manifest.largest_bucket_bytes,
            peak_extra_bytes=peak,
            manifest_s=t_manifest - t0,
            export_s=t_exported - t0,
            apply_s=max((a.seconds for a in acks), default=0.0),
        )

    def _accept(
        self, version: int, acks: list[SyncAck], workers: int, learner_group
    ) -> tuple[int, int | None]:
        """Check that every worker acknowledged `version`, make it the policy version, and
        return (nodes the push touched, the receivers' largest peak extra memory or None).
        Every transport ends its push here."""
        if len(acks) != workers or any(a.version != version for a in acks):
            raise RuntimeError(
                f"weight sync: workers report versions {[a.version for a in acks]}, expected {version} "
                f"from {workers} workers"
            )
        self.version = version
        nodes = {p.get("node_id") for p in learner_group.placement[:1]}
        nodes |= {a.node_id for a in acks if a.buckets}
        peaks = [a.peak_extra_bytes for a in acks if a.peak_extra_bytes is not None]
        return len(nodes), max(peaks) if peaks else None
