"""The compiled-graph transport of a push (`sync.transport=compiled_graph`): its messages and the
driver's side.

Where it sits: the controller's sync stage, in place of `WeightSync.push`'s object-store path.
One Ray Compiled Graph links the learner's `compiled_export` to every target worker's
`compiled_apply`; executing it sends one bucket from the learner through a shared-memory
channel straight to every worker and brings back each worker's `BucketReport`, with none of
the per-call overhead of Ray's task path. A push is one execution per bucket (the manifest rides
with bucket 0; a push with no bucket is one execution carrying the manifest alone), so the
worker checks the whole manifest before any tensor changes and holds one bucket at a time.
The version stays `WeightSync.version`'s; a replaced worker is brought to the pushed version
by the learner's kept copies (`LearnerGroup.pushed_weights`, through the object store, since
the graph's buckets never reach it), and the graph is rebuilt around it on the next push.

Ray 2.60 facts the design rests on (measured; see the package docstring):
- the channel from one actor to another is sized by the writer process's
  `DAGContext.buffer_size_bytes`, not by `experimental_compile(_buffer_size_bytes=...)`, so the
  learner sets its own before the compile (`LearnerWorker.prepare_compiled_push`);
- a message larger than its channel makes Ray resize that channel, and a reader waiting on a
  resized channel is never woken by `teardown()` (it closes the channels it compiled), which
  then hangs: so the buffer holds the largest message a push can send and a larger one is an
  error (`CompiledExport.step`);
- graph tasks run on a background thread of each actor, beside its ordinary calls: a worker
  applies a bucket under the same lock its generate / score / eval calls take.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass

from gapray.workers.sync.push import SyncStats, WeightSync
from gapray.workers.sync.receive import SyncAck
from gapray.workers.sync.wire import SyncManifest, WireBucket

log = logging.getLogger(__name__)

GET_TIMEOUT_S = 600.0
"""The longest the driver waits for one execution (one bucket to every worker)."""
TEARDOWN_TIMEOUT_S = 30.0
"""The longest `close()` waits for Ray's teardown of the graph."""


@dataclass(frozen=True)
class PushRequest:
    """The driver's input to one execution: bucket `index` of push `version`."""

    version: int
    index: int
    bucket_mb: float


@dataclass
class PushItem:
    """The learner's output of one execution: the manifest (with bucket 0 only) and one bucket
    (None when the push has none)."""

    version: int
    index: int
    manifest: SyncManifest | None
    bucket: WireBucket | None
    learner_s: float  # the learner's own time on this execution


@dataclass(frozen=True)
class BucketReport:
    """A worker's output of one execution: the push's size (from its manifest), and its ack
    once the last bucket is in."""

    version: int
    index: int
    buckets: int
    tensors: int
    trainable: int
    bytes: int
    ack: SyncAck | None
    learner_s: float


class CompiledSync(WeightSync):
    """Driver-side: versioned pushes through one compiled graph (learner -> every target worker).
    The graph is compiled on the first push and again when a pool's workers changed (a
    replacement); `close()` tears it down, bounded."""

    def __init__(self, bucket_mb: float):
        super().__init__(bucket_mb)
        self.graph = None
        self.actors: list = []  # the workers the graph was compiled with, in order
        self.learner = None
        self.compile_s: float | None = None
        self.channel_bytes: int | None = None  # the learner -> workers channel's buffer

    # ----------------------------------------------------------------------------- the graph
    def _graph(self, learner_group, actors: list):
        import ray
        from ray.dag import InputNode, MultiOutputNode

        if len(learner_group.actors) != 1:
            raise ValueError(
                f"sync.transport=compiled_graph: needs learner.num_ranks=1, got {len(learner_group.actors)} "
                "ranks (every rank must take part in a sharded export; the graph has one learner node)"
            )
        learner = learner_group.actors[0]
        ids = [a._actor_id for a in actors]
        if self.graph is not None and ids == [a._actor_id for a in self.actors] and learner is self.learner:
            return self.graph
        self.close()
        if not actors:
            raise ValueError("sync.transport=compiled_graph: no worker to push to")
        self.channel_bytes = ray.get(learner.prepare_compiled_push.remote(self.bucket_mb))
        t0 = time.perf_counter()
        with InputNode() as request:
            item = learner.compiled_export.bind(request)
            dag = MultiOutputNode([a.compiled_apply.bind(item) for a in actors])
        try:
            self.graph = dag.experimental_compile(_max_inflight_executions=1)
        except Exception as err:
            raise RuntimeError(
                f"sync.transport=compiled_graph: Ray could not compile the push graph: {type(err).__name__}: {err}"
            ) from err
        self.compile_s = time.perf_counter() - t0
        self.actors, self.learner = list(actors), learner
        return self.graph

    def close(self) -> None:
        """Tear the graph down (its actors stay usable); raises when Ray's teardown does not
        finish within TEARDOWN_TIMEOUT_S."""
        graph, self.graph = self.graph, None
        self.actors, self.learner = [], None
        if graph is None:
            return
        done = threading.Event()

        def teardown():
            with contextlib.suppress(Exception):  # a graph whose actor died tore itself down
                graph.teardown()
            done.set()

        threading.Thread(target=teardown, name="gapray-cgraph-teardown", daemon=True).start()
        if not done.wait(TEARDOWN_TIMEOUT_S):
            raise RuntimeError(
                f"sync.transport=compiled_graph: the graph's teardown did not finish in {TEARDOWN_TIMEOUT_S:.0f} s"
            )

    # ---------------------------------------------------------------------------- the push
    def _run(self, graph, request: PushRequest, n: int) -> list[BucketReport]:
        import ray

        reports = ray.get(graph.execute(request), timeout=GET_TIMEOUT_S)
        bad = [r for r in reports if not isinstance(r, BucketReport) or r.index != request.index]
        if len(reports) != n or bad:
            raise RuntimeError(f"compiled weight push: bucket {request.index}: unexpected reports {bad[:2]}")
        return reports

    def push(self, learner_group, targets: list) -> SyncStats:
        """Export the changed tensors once and apply them on every target worker, bucket by
        bucket, through the compiled graph; wait for every worker's ack of the new version.
        The pools learn how to replay this version before the first execution, so a worker that
        dies during the push is replaced at this version."""
        actors = [a for pool in targets for a in pool.actors]
        graph = self._graph(learner_group, actors)
        t0 = time.perf_counter()
        version = self.version + 1
        for pool in targets:
            pool.current = (version, _Replay(learner_group, self.bucket_mb))
        first = self._run(graph, PushRequest(version, 0, self.bucket_mb), len(actors))
        head = first[0]
        if any((r.buckets, r.tensors, r.bytes) != (head.buckets, head.tensors, head.bytes) for r in first):
            raise RuntimeError(f"compiled weight push: workers disagree on the manifest: {first}")
        reports = [first]
        for i in range(1, head.buckets):
            reports.append(self._run(graph, PushRequest(version, i, self.bucket_mb), len(actors)))
        acks = [r.ack for r in reports[-1] if r.ack is not None]
        nodes, peak = self._accept(version, acks, len(actors), learner_group)
        return SyncStats(
            version,
            head.bytes,
            head.buckets,
            time.perf_counter() - t0,
            nodes=nodes,
            tensors=head.tensors,
            trainable=head.trainable,
            largest_bucket_bytes=max((a.largest_bucket_bytes for a in acks), default=0),
            peak_extra_bytes=peak,
            export_s=sum(rs[0].learner_s for rs in reports),
            apply_s=max((a.seconds for a in acks), default=0.0),
            channel_bytes=self.channel_bytes,
        )


@dataclass(frozen=True)
class _Replay:
    """A pool's way back to the pushed version under this transport: the learner's kept copies
    (exactly what it last pushed), through the object store (`WorkerPool.replay_parts`)."""

    learner_group: object
    bucket_mb: float

    def __call__(self) -> list:
        return self.learner_group.pushed_weights(self.bucket_mb)
