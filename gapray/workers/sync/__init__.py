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

`sync.transport=compiled_graph` (compiled.py) sends the same manifest and buckets through one
Ray Compiled Graph, learner -> every worker, one execution per bucket: shared-memory channels
instead of a Ray call per hop (the object-store path pays about a millisecond per call: the
generator's reports, the forwards, the ref resolution, the acks). Same version owner, same
manifest check, one bucket at a time; a replaced worker replays the learner's kept copies of
the last push through the object store, and the graph is rebuilt around it. The hang once seen
at `teardown()` was Ray's: an actor-to-actor channel is sized by the writer's own
`DAGContext.buffer_size_bytes` (1 MB by default; `_buffer_size_bytes` at compile does not reach
it), a larger message makes the writer resize it, and `teardown()` closes only the channels it
compiled, so a reader waiting on the resized one never wakes. The learner sizes its channel for
the largest message a push can send before the compile, and refuses a larger one by name.

    exporter = WeightExporter()                                    # on each learner rank
    for item in exporter.export(model, bucket_mb=64, emit=rank == 0): ...   # manifest, buckets
    receiver = BucketReceiver(); receiver.begin(version, manifest, model, ...)  # on a worker
    receiver.apply(version, bucket)                                # per bucket, in place
    apply_update(model, bucket, lora_scaling=s, merge_state=state)  # one bucket, checked first

The package, one side per file:

- `wire.py`: what a push carries (TensorSpec, SyncManifest, WireBucket, LeadBucket; copy_into,
  same_bytes);
- `export.py`: the learner's side (WeightExporter; lead_first, the object store's order;
  ExportStream on the driver over its refs);
- `receive.py`: a worker's side (BucketReceiver, PeakMemory, SyncAck, check_manifest);
- `push.py`: the driver's side (WeightSync, the policy version's one owner; WeightLedger; SyncStats);
- `compiled.py`: the compiled-graph transport (`sync.transport=compiled_graph`): its messages and
  the driver's side (CompiledSync, a WeightSync whose buckets go learner -> workers through one
  Ray Compiled Graph, an execution per bucket; the learner's side is export.CompiledExport);
- `update.py`: applying a bucket in place, checked first, LoRA merged (check_update, apply_update).
"""

from gapray.workers.sync.compiled import BucketReport, CompiledSync, PushItem, PushRequest
from gapray.workers.sync.export import CompiledExport, ExportStream, WeightExporter, lead_first
from gapray.workers.sync.push import SyncStats, WeightLedger, WeightSync
from gapray.workers.sync.receive import BucketReceiver, PeakMemory, SyncAck, check_manifest
from gapray.workers.sync.update import (
    LORA_A,
    LORA_B,
    LoraMergeState,
    UpdatePlan,
    apply_update,
    bucket_bytes,
    check_update,
    lora_target,
    pack_buckets,
    trainable_tensors,
)
from gapray.workers.sync.wire import (
    TORN,
    LeadBucket,
    SyncManifest,
    TensorSpec,
    WireBucket,
    as_bytes_array,
    as_tensors,
    copy_into,
    same_bytes,
)


def resolve_transport(cfg) -> str:
    """The transport a run's pushes take (`cfg`: the whole Config): sync.transport as set, or
    for "auto" the compiled graph wherever it can serve the config (`compiled_graph_misfits`:
    one learner rank, the sync pipeline, transformers generation) and the object store
    otherwise. The compiled graph skips Ray's per-call overhead: on the toy run's push it moved
    0.34-0.46x an in-memory copy's MB/s, the object store 0.22-0.27x, side by side
    (benchmarks/results/loop-toy-20261208-*)."""
    from gapray.config_checks import compiled_graph_misfits

    t = cfg.sync.transport
    if t == "auto":
        return "object_store" if compiled_graph_misfits(cfg) else "compiled_graph"
    if t not in ("object_store", "compiled_graph"):
        raise ValueError(f"sync.transport must be auto, object_store or compiled_graph, got {t!r}")
    return t


def make_sync(cfg) -> WeightSync:
    """The driver's WeightSync for a Config, by `resolve_transport`."""
    if resolve_transport(cfg) == "compiled_graph":
        return CompiledSync(cfg.sync.bucket_mb)
    return WeightSync(cfg.sync.bucket_mb)


__all__ = [
    "LORA_A",
    "LORA_B",
    "TORN",
    "BucketReceiver",
    "BucketReport",
    "CompiledExport",
    "CompiledSync",
    "ExportStream",
    "LeadBucket",
    "LoraMergeState",
    "PeakMemory",
    "PushItem",
    "PushRequest",
    "SyncAck",
    "SyncManifest",
    "SyncStats",
    "TensorSpec",
    "UpdatePlan",
    "WeightExporter",
    "WeightLedger",
    "WeightSync",
    "WireBucket",
    "apply_update",
    "as_bytes_array",
    "as_tensors",
    "bucket_bytes",
    "check_manifest",
    "check_update",
    "copy_into",
    "lead_first",
    "lora_target",
    "make_sync",
    "pack_buckets",
    "resolve_transport",
    "same_bytes",
    "trainable_tensors",
]
