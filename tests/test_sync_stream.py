"""Streamed weight sync: only changed tensors travel, bucket by bucket, one bucket of extra
memory on the receiver, a ledger that brings a late worker to the pushed version, the
export from an FSDP2-sharded learner (2 gloo ranks on CPU), and the same push through a Ray
Compiled Graph (sync.transport=compiled_graph).

    pytest tests/test_sync_stream.py -q
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time

import pytest
import torch
from conftest import TINY_RUN

from gapray.models.tiny import tiny_janus
from gapray.workers.sync import (
    BucketReceiver,
    ExportStream,
    LeadBucket,
    PeakMemory,
    SyncManifest,
    TensorSpec,
    WeightExporter,
    WeightLedger,
    WireBucket,
    apply_update,
    as_bytes_array,
    check_manifest,
    copy_into,
    same_bytes,
)

NORM = "model.language_model.norm.weight"
LAYER = "model.language_model.layers.0.self_attn.q_proj"


def _export(exporter, model, bucket_mb=0.05, full=False):
    items = list(exporter.export(model, bucket_mb, full=full))
    return items[0], [b.tensors() for b in items[1:]]


def test_only_changed_tensors_travel_and_the_first_export_is_full():
    learner = tiny_janus(seed=0)
    learner.set_trainable("llm")
    ex = WeightExporter()
    manifest, buckets = _export(ex, learner.model)
    trainable = [n for n, p in learner.model.named_parameters() if p.requires_grad]
    assert manifest.full and manifest.names == trainable and manifest.trainable == len(trainable)
    assert [list(b) for b in buckets] == [[t.name for t in b] for b in manifest.buckets]
    assert manifest.bytes == sum(t.numel() * t.element_size() for b in buckets for t in b.values())
    again, none = _export(ex, learner.model)
    assert again.names == [] and none == [] and not again.full  # nothing changed: nothing sent
    with torch.no_grad():
        dict(learner.model.named_parameters())[NORM].add_(1e-6)
    one, [bucket] = _export(ex, learner.model)
    assert one.names == [NORM] and torch.equal(bucket[NORM], dict(learner.model.named_parameters())[NORM])
    assert _export(ex, learner.model, full=True)[0].names == trainable  # asked for: everything


def test_a_lora_pair_travels_whole_and_is_never_split_across_buckets():
    learner = tiny_janus(seed=0)
    learner.set_trainable("lora", lora_rank=4, lora_alpha=8)
    ex = WeightExporter()
    _, buckets = _export(ex, learner.model, bucket_mb=0.001)  # 1 KiB: a pair is 1.5-2 KiB
    for b in buckets:  # every A sits beside its B
        prefixes = [n.split(".lora_")[0] for n in b]
        assert all(prefixes.count(p) == 2 for p in prefixes), list(b)
    with torch.no_grad():
        dict(learner.model.named_parameters())[LAYER + ".lora_B.default.weight"].add_(0.1)
    changed, _ = _export(ex, learner.model)
    assert changed.names == [LAYER + ".lora_A.default.weight", LAYER + ".lora_B.default.weight"]


def test_the_manifest_is_checked_whole_before_any_bucket():
    worker = tiny_janus(seed=0)
    good_first = (TensorSpec(NORM, (64,), "float32"),)
    bad_second = (TensorSpec(LAYER + ".weight", (3,), "float32"),)
    with pytest.raises(ValueError, match=r"q_proj.weight has shape \(3,\)"):  # in the 2nd bucket
        check_manifest(worker.model, SyncManifest((good_first, bad_second), True, 2))
    receiver = BucketReceiver()
    good = {NORM: torch.ones(64)}
    receiver.begin(1, SyncManifest.of([good]))
    with pytest.raises(ValueError, match="bucket 0 holds"):
        receiver.expect(1, {LAYER + ".weight": torch.ones(64, 64)})
    with pytest.raises(ValueError, match="before its manifest"):
        receiver.expect(2, good)


def test_same_bytes_compares_every_byte():
    a = torch.tensor([1.0, float("nan"), 0.0])
    assert same_bytes(a, a.clone())  # a NaN that stays NaN is no change (torch.equal says False)
    assert not same_bytes(a, torch.tensor([1.0, float("nan"), -0.0]))  # 0.0 -> -0.0 is one
    assert not same_bytes(a, a.to(torch.float64)) and not same_bytes(a, a[:2])
    m = torch.arange(12.0).reshape(3, 4)
    assert same_bytes(m.t(), m.t().contiguous())  # a strided view: compared on a copy, same answer
    assert not same_bytes(m.t(), m.t().contiguous() + 1)
    assert same_bytes(torch.empty(0), torch.empty(0))


def test_a_flat_bucket_gives_back_each_tensor_whatever_its_dtype():
    tensors = {
        "f": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "h": torch.tensor([1.5, -2.0, 3.25], dtype=torch.bfloat16),  # numpy has no bfloat16
        "i": torch.tensor(7, dtype=torch.int64),  # 0-d
        "e": torch.empty(0, 5),
    }
    specs = SyncManifest.of([tensors]).buckets[0]
    wire = WireBucket(specs, [as_bytes_array(t.clone()) for t in tensors.values()])
    back = wire.tensors()
    assert list(back) == list(tensors)
    assert all(back[k].dtype == v.dtype and back[k].shape == v.shape for k, v in tensors.items())
    assert all(torch.equal(back[k], v) for k, v in tensors.items())
    short = WireBucket(specs, [as_bytes_array(t) for t in list(tensors.values())[:3]])
    with pytest.raises(ValueError, match="lists 4 tensors but holds 3"):
        short.tensors()
    wrong = WireBucket(specs[:1], [as_bytes_array(torch.zeros(5))])
    with pytest.raises(ValueError, match="f arrived as 20 bytes, its spec says 24"):
        wrong.tensors()


def test_the_exporter_reuses_its_kept_copies_and_a_frozen_tensor_never_travels():
    learner = tiny_janus(seed=0)
    learner.set_trainable("llm")
    params = dict(learner.model.named_parameters())
    frozen = next(n for n, p in params.items() if not p.requires_grad)
    ex = WeightExporter()
    first, _ = _export(ex, learner.model)
    kept = {n: t.data_ptr() for n, t in ex.sent.items()}
    with torch.no_grad():
        params[NORM].add_(1.0)
        params[frozen].add_(1.0)  # not trainable: never compared, never sent
    second, [bucket] = _export(ex, learner.model)
    assert frozen not in first.names and second.names == [NORM]
    assert torch.equal(bucket[NORM], params[NORM]) and torch.equal(ex.sent[NORM], params[NORM])
    assert {n: t.data_ptr() for n, t in ex.sent.items()} == kept  # copied in place, no new buffers
    assert _export(ex, learner.model)[0].names == []  # the kept copy is what the next compares


def test_a_cpu_parameter_travels_from_its_own_memory_and_is_kept_only_after_its_bucket():
    learner = tiny_janus(seed=0)
    learner.set_trainable("llm")
    params = dict(learner.model.named_parameters())
    ex = WeightExporter()
    _export(ex, learner.model)
    with torch.no_grad():
        params[NORM].add_(1.0)
    stream = ex.export(learner.model, 0.05)
    manifest, bucket = next(stream), next(stream)
    assert manifest.names == [NORM]
    sent = bucket.tensors()[NORM]
    assert sent.data_ptr() == params[NORM].data_ptr()  # no copy before the put
    assert not torch.equal(ex.sent[NORM], params[NORM])  # not kept yet: the bucket is still out
    stream.close()  # a consumer that stops here: nothing recorded as sent, so it travels again
    again, [bucket] = _export(ex, learner.model)
    assert again.names == [NORM] and torch.equal(bucket[NORM], params[NORM])
    assert torch.equal(ex.sent[NORM], params[NORM])  # kept once the bucket was out
    assert _export(ex, learner.model)[0].names == []


def test_a_parameter_whose_memory_cannot_travel_goes_through_the_kept_copy():
    model = torch.nn.Module()
    model.w = torch.nn.Parameter(torch.arange(12.0).reshape(4, 3).t())  # not contiguous
    ex = WeightExporter()
    manifest, bucket = ex.export(model, 1.0)
    got = bucket.tensors()["w"]
    assert manifest.names == ["w"] and torch.equal(got, model.w.detach())
    assert got.data_ptr() == ex.sent["w"].data_ptr()  # the kept copy's bytes, made before the yield


def test_copy_into_copies_bytes_exactly_or_falls_back_to_torch():
    src = torch.tensor([1.0, float("nan"), -0.0])
    dst = torch.zeros(3)
    copy_into(dst, src)
    assert same_bytes(dst, src)
    strided = torch.zeros(3, 2)[:, 0]  # not contiguous: torch's copy_
    copy_into(strided, src)
    assert same_bytes(strided.contiguous(), src)
    half = torch.zeros(3, dtype=torch.bfloat16)  # another dtype: converted by copy_
    copy_into(half, torch.tensor([1.0, 2.0, 3.0]))
    assert half.tolist() == [1.0, 2.0, 3.0]


def test_the_manifest_comes_first_and_rides_on_the_first_buckets_call_to_a_worker():
    from gapray.config import load_config
    from gapray.workers.generation import GenerationWorker

    learner = tiny_janus(seed=0)
    learner.set_trainable("llm")
    cfg = load_config(["model=tiny"])
    worker = GenerationWorker(cfg.model, cfg.generation)
    ex = WeightExporter()
    manifest, *wire = ex.export(learner.model, bucket_mb=0.05)
    assert isinstance(manifest, SyncManifest) and manifest.full
    assert all(isinstance(b, WireBucket) for b in wire) and len(wire) > 1
    assert [b.names for b in wire] == [[t.name for t in b] for b in manifest.buckets]
    with pytest.raises(ValueError, match="before its manifest"):
        worker.apply_bucket(1, wire[0])  # no manifest with the first bucket: refused, nothing changed
    assert worker.version == 0
    acks = [worker.apply_bucket(1, b, manifest if i == 0 else None) for i, b in enumerate(wire)]
    assert acks[:-1] == [None] * (len(wire) - 1) and acks[-1].version == worker.version == 1
    held = dict(worker.model.model.named_parameters())
    assert all(torch.equal(held[n], p) for n, p in learner.model.named_parameters() if p.requires_grad)
    [nothing] = ex.export(learner.model, bucket_mb=0.05)  # nothing changed: the manifest alone
    assert isinstance(nothing, SyncManifest) and nothing.names == []
    ack = worker.apply_bucket(2, LeadBucket(nothing, None))  # the manifest alone: the update, acknowledged
    assert ack.version == worker.version == 2 and ack.buckets == 0
    with torch.no_grad():
        dict(learner.model.named_parameters())[NORM].add_(1.0)
    one_manifest, one = ex.export(learner.model, bucket_mb=0.05)
    assert one_manifest.names == [NORM]
    two = SyncManifest((one.specs, one.specs), False, 1)
    assert worker.apply_bucket(3, one, two) is None and worker.version == 2  # its manifest lists two
    assert worker.apply_bucket(3, one, one_manifest).version == worker.version == 3
    with pytest.raises(ValueError, match="more buckets than its manifest"):
        worker.apply_bucket(3, one)


def test_the_ledger_keeps_what_is_still_latest_and_replays_in_order():
    def manifest(*names, full=False):
        return SyncManifest((tuple(TensorSpec(n, (1,), "float32") for n in names),), full, 3)

    ledger = WeightLedger()
    ledger.record(1, manifest("a", "b", "c", full=True), ["r1"])
    ledger.record(2, manifest("a"), ["r2"])
    assert [refs for _, refs in ledger.replay()] == [["r1"], ["r2"]]  # b, c still from push 1
    ledger.record(3, manifest("b", "c"), ["r3"])
    assert [refs for _, refs in ledger.replay()] == [["r2"], ["r3"]]  # push 1 fully superseded
    ledger.record(4, manifest("a", "b", "c", full=True), ["r4"])
    assert [refs for _, refs in ledger.replay()] == [["r4"]] and ledger.version == 4


class Wide(torch.nn.Module):
    """8 x 4 MiB of float32 weights: big enough for RSS to see each bucket."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(1024, 1024, bias=False) for _ in range(8))


def _lazy_buckets(model: torch.nn.Module):
    """One bucket per layer, each made only when asked for (as buckets arrive one by one)."""
    for name, p in model.named_parameters():
        yield {name: torch.randn_like(p)}


def _measure(queue) -> None:
    """In a child process: large allocations always mmap'd (glibc's dynamic threshold off), so
    RSS follows what is alive, whatever the parent's allocator history."""
    import ctypes
    import ctypes.util

    ctypes.CDLL(ctypes.util.find_library("c")).mallopt(-3, 2**20)  # M_MMAP_THRESHOLD = 1 MiB
    torch.set_num_threads(1)
    model = Wide()
    mem = PeakMemory(trim=True)
    for _ in range(2):  # the first pass also pays one-time allocations (kernels, arenas)
        mem.start()
        for b in _lazy_buckets(model):  # bucket by bucket: each let go once applied
            apply_update(model, b)
            del b
        streamed = mem.stop()
    mem.start()
    whole = {k: v for b in list(_lazy_buckets(model)) for k, v in b.items()}  # the old way
    apply_update(model, whole)
    del whole
    queue.put((streamed, mem.stop()))


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's peak-RSS reset")
def test_receiver_peak_extra_memory_is_one_bucket_not_the_model():
    import multiprocessing as mp

    # A fresh interpreter, not a fork: a forked child shares the parent's pages copy-on-write,
    # and each page it writes is copied and counted in its RSS (in the full suite's process
    # that added a second bucket's worth to the peak).
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_measure, args=(queue,))
    child.start()
    streamed, gathered = queue.get(timeout=120)
    child.join()
    bucket = 4 * 2**20
    print(f"peak extra: streamed {streamed / 2**20:.1f} MiB, gathered {gathered / 2**20:.1f} MiB")
    assert streamed is not None and gathered is not None
    assert streamed <= bucket + 2**20  # one bucket, plus a MiB of allocator slack
    assert gathered >= 6 * bucket  # the measure sees a whole-model dict when there is one


# ----------------------------------------------------------------------- sharded (FSDP2) export
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sharded_rank(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3))
    reference = {n: p.detach().clone() for n, p in model.named_parameters()}
    for layer in model:
        fully_shard(layer, mesh=torch.distributed.device_mesh.init_device_mesh("cpu", (world,)))
    fully_shard(model)
    ex = WeightExporter()
    first = list(ex.export(model, bucket_mb=1e-4, emit=rank == 0))
    with torch.no_grad():  # only the second layer's bias changes, on whichever rank holds it
        model[1].bias.to_local().add_(1.0)
    second = list(ex.export(model, bucket_mb=1e-4, emit=rank == 0))
    if rank == 0:
        torch.save({"reference": reference, "first": first, "second": second}, out)
    dist.destroy_process_group()


def test_a_sharded_learner_exports_whole_tensors_and_only_what_changed(tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "export.pt")
    mp.start_processes(_sharded_rank, args=(2, _free_port(), out), nprocs=2, start_method="fork")
    got = torch.load(out, weights_only=False)
    manifest, buckets = got["first"][0], [b.tensors() for b in got["first"][1:]]
    assert manifest.full and manifest.names == list(got["reference"])
    sent = {k: v for b in buckets for k, v in b.items()}
    assert all(torch.equal(sent[n], t) for n, t in got["reference"].items())  # gathered whole
    assert len(buckets) > 1  # 1e-4 MiB buckets: each tensor in its own
    manifest, buckets = got["second"][0], [b.tensors() for b in got["second"][1:]]
    assert manifest.names == ["1.bias"]
    torch.testing.assert_close(buckets[0]["1.bias"], got["reference"]["1.bias"] + 1.0)


# ------------------------------------------------------------------------ through Ray, end to end
def _wait_dead(ray, actor, timeout_s: float = 60.0) -> None:
    """Until `actor`'s calls fail with RayActorError (it died), at most timeout_s."""
    import time

    from ray.exceptions import RayActorError

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get(actor.get_version.remote(), timeout=10)
        except RayActorError:
            return
        time.sleep(0.1)
    raise AssertionError(f"the killed actor still answers after {timeout_s} s")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for this file's Ray tests (its start and stop cost seconds each)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=4, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_roles(local_ray):
    """The tiny run's roles (a learner, a generation and a reward worker), shared by this file's
    Ray tests: starting them is most of each test's time."""
    from gapray.config import load_config
    from gapray.run import build_roles

    roles = build_roles(load_config(TINY_RUN))
    yield roles
    roles.shutdown()


@pytest.mark.ray
@pytest.mark.slow
def test_deltas_through_ray_and_a_replaced_worker_replays_to_the_pushed_version(local_ray, tiny_roles):
    ray, roles = local_ray, tiny_roles
    from gapray.workers.sync import WeightSync

    # Run on the actors (local functions: pickled by value, the workers cannot import tests).
    def _trainable(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.policy.model.named_parameters() if p.requires_grad}

    def _weights(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.model.named_parameters()}

    def _nudge(self, name: str) -> None:
        with torch.no_grad():
            dict(self.policy.model.named_parameters())[name].add_(0.5)

    sync, pool, learner = WeightSync(0.05), roles.generation, roles.learner.actors[0]
    first = sync.push(roles.learner, [pool])
    assert first.tensors == first.trainable > 0 and first.buckets > 1
    assert first.peak_extra_bytes is not None and first.nodes == 1
    second = sync.push(roles.learner, [pool])  # nothing trained: nothing sent
    assert (second.version, second.tensors, second.bytes, second.buckets) == (2, 0, 0, 0)
    ray.get(learner.__ray_call__.remote(_nudge, NORM))
    third = sync.push(roles.learner, [pool])
    assert third.tensors == 1 and pool.versions() == [3]
    want = ray.get(learner.__ray_call__.remote(_trainable))
    dead = pool.actors[0]
    ray.kill(dead)
    _wait_dead(ray, dead)  # ray.kill is asynchronous: the actor may still answer once
    pool.heal()  # a fresh worker: replays the ledger (push 1 whole, then push 3)
    assert pool.versions() == [3] and [len(refs) for _, refs in pool.current[1]] == [first.buckets, 1]
    held = ray.get(pool.actors[0].__ray_call__.remote(_weights))
    assert all(torch.equal(held[n], t) for n, t in want.items())
    assert not torch.equal(want[NORM], tiny_janus(seed=0).model.state_dict()[NORM])


class _Remote:
    def __init__(self, fn):
        self.remote = fn


class _FakeWorker:
    """An actor handle whose apply_bucket.remote runs in process (ray.get is the identity)."""

    def __init__(self, worker):
        self.apply_bucket = _Remote(worker.apply_bucket)


class _FakeGroup:
    def __init__(self, items):
        self.items, self.placement = items, [{"node_id": "n0"}]

    def export_weights(self, bucket_mb):
        return ExportStream(iter(self.items), [])


class _FakePool:
    def __init__(self, actors):
        self.actors, self.current = actors, None


def test_the_driver_refuses_an_export_that_does_not_match_its_manifest(monkeypatch):
    """WeightSync.push forwards the lead bucket (the manifest with bucket 0), reads the manifest
    next, then takes exactly as many more bucket refs as it lists: fewer, more, a second item
    that is not the manifest, or nothing at all are named errors (Ray's get is the identity
    here: the 'refs' are the items themselves)."""
    import ray

    from gapray.config import load_config
    from gapray.workers.generation import GenerationWorker
    from gapray.workers.sync import LeadBucket, WeightSync, lead_first

    monkeypatch.setattr(ray, "get", lambda x: x)
    learner = tiny_janus(seed=0)
    learner.set_trainable("llm")
    cfg = load_config(["model=tiny"])
    worker = GenerationWorker(cfg.model, cfg.generation)
    items = list(lead_first(WeightExporter().export(learner.model, bucket_mb=0.05)))
    lead, manifest, *rest = items
    assert (
        isinstance(lead, LeadBucket)
        and lead.manifest is manifest
        and len(rest) == len(manifest.buckets) - 1 > 0
    )
    pool = _FakePool([_FakeWorker(worker)])
    with pytest.raises(RuntimeError, match="yielded 1 bucket"):
        WeightSync(0.05).push(_FakeGroup([lead, manifest]), [pool])
    with pytest.raises(RuntimeError, match="beyond its manifest"):
        WeightSync(0.05).push(_FakeGroup([*items, rest[0]]), [pool])
    with pytest.raises(RuntimeError, match="yielded WireBucket for its manifest"):
        WeightSync(0.05).push(_FakeGroup([lead, *rest]), [pool])
    with pytest.raises(RuntimeError, match="no lead bucket"):
        WeightSync(0.05).push(_FakeGroup([]), [pool])
    fresh = GenerationWorker(cfg.model, cfg.generation)
    sync = WeightSync(0.05)
    stats = sync.push(_FakeGroup(items), [_FakePool([_FakeWorker(fresh)])])
    assert stats.version == sync.version == fresh.version == 1 and stats.buckets == len(manifest.buckets)
    assert stats.manifest_s <= stats.export_s <= stats.seconds


def _same(held: dict, want: dict) -> bool:
    return all(torch.equal(held[n], t) for n, t in want.items())


@pytest.mark.ray
@pytest.mark.slow
def test_compiled_graph_push_versions_deltas_refusal_replacement_and_teardown(local_ray, tiny_roles):
    """sync.transport=compiled_graph, to a generation and a reward worker: exactly the learner's
    weights on both over several versions, unchanged tensors skipped, a bad manifest refused
    with the workers unchanged, an apply held off while a worker's lock is taken (as by a
    generate call), a replaced worker brought to the pushed version and the graph rebuilt
    around it, a bounded teardown that leaves the actors usable."""
    from gapray.config import load_config
    from gapray.workers.sync import CompiledSync, make_sync

    ray, roles = local_ray, tiny_roles

    # Run on the actors (local functions: pickled by value, the workers cannot import tests).
    def _trainable(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.policy.model.named_parameters() if p.requires_grad}

    def _weights(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.model.named_parameters()}

    def _nudge(self, names: list[str] | None) -> None:
        with torch.no_grad():
            for n, p in self.policy.model.named_parameters():
                if p.requires_grad and (names is None or n in names):
                    p.add_(0.5)

    def _hold_lock(self, seconds: float) -> None:
        with self.lock:
            time.sleep(seconds)

    def _break_manifests(self, on: bool) -> None:
        """The learner's compiled export sends a manifest whose last tensor has a wrong shape."""
        compiled = self.compiled
        compiled.__dict__.pop("step", None)
        if not on:
            return
        step = compiled.step

        def bad(*args, **kwargs):
            manifest, bucket = step(*args, **kwargs)
            if manifest is not None and manifest.buckets:
                *head, last = manifest.buckets
                spec = dataclasses.replace(last[-1], shape=(3,))
                manifest = dataclasses.replace(manifest, buckets=(*head, (*last[:-1], spec)))
            return manifest, bucket

        compiled.step = bad

    def _small_default_channel(self) -> None:
        from ray.dag import DAGContext

        DAGContext.get_current().buffer_size_bytes = 100_000

    assert isinstance(make_sync(load_config([*TINY_RUN, "sync.transport=compiled_graph"])), CompiledSync)
    group, learner = roles.learner, roles.learner.actors[0]
    pools = [roles.generation, roles.reward]
    sync = CompiledSync(0.05)

    def holds_the_learners_weights() -> bool:
        want = ray.get(learner.__ray_call__.remote(_trainable))
        actors = [a for pool in pools for a in pool.actors]
        return all(_same(ray.get(a.__ray_call__.remote(_weights)), want) for a in actors)

    def versions() -> list[int]:
        return [v for pool in pools for v in pool.versions()]

    try:
        ray.get(learner.__ray_call__.remote(_nudge, None))  # every trainable tensor changes
        first = sync.push(group, pools)
        assert first.version == 1 and first.tensors == first.trainable > 0 and first.buckets > 1
        assert first.peak_extra_bytes is not None and versions() == [1, 1] and holds_the_learners_weights()
        second = sync.push(group, pools)  # nothing trained: the manifest alone
        assert (second.version, second.tensors, second.bytes, second.buckets) == (2, 0, 0, 0)
        ray.get(learner.__ray_call__.remote(_nudge, [NORM]))
        third = sync.push(group, pools)  # one tensor changed: one travels
        assert third.version == 3 and third.tensors == 1 and versions() == [3, 3]
        assert holds_the_learners_weights()

        # A bad manifest: refused before any tensor changes; the driver's version stays.
        ray.get(learner.__ray_call__.remote(_break_manifests, True))
        ray.get(learner.__ray_call__.remote(_nudge, [NORM]))
        before = [ray.get(a.__ray_call__.remote(_weights)) for pool in pools for a in pool.actors]
        with pytest.raises(Exception, match=r"has shape \(3,\)"):
            sync.push(group, pools)
        after = [ray.get(a.__ray_call__.remote(_weights)) for pool in pools for a in pool.actors]
        assert sync.version == 3 and versions() == [3, 3]
        assert all(_same(a, b) for a, b in zip(after, before, strict=True))
        ray.get(learner.__ray_call__.remote(_break_manifests, False))
        ray.get(learner.__ray_call__.remote(_nudge, [NORM]))
        fourth = sync.push(group, pools)  # the graph still serves after a refusal
        assert fourth.version == 4 and versions() == [4, 4] and holds_the_learners_weights()

        # An apply waits while a worker's lock is held (as a generate call holds it).
        held = roles.reward.actors[0].__ray_call__.remote(_hold_lock, 0.6)
        time.sleep(0.1)  # the hold has begun
        ray.get(learner.__ray_call__.remote(_nudge, [NORM]))
        t0 = time.perf_counter()
        assert sync.push(group, pools).version == 5 and time.perf_counter() - t0 >= 0.4
        ray.get(held)

        # A replaced worker catches up from the learner's kept copies (not what it trained
        # since); the next push rebuilds the graph around it.
        want = ray.get(learner.__ray_call__.remote(_trainable))
        ray.get(learner.__ray_call__.remote(_nudge, [NORM]))
        dead = roles.generation.actors[0]
        ray.kill(dead)
        _wait_dead(ray, dead)
        roles.generation.heal()
        assert versions() == [5, 5] and roles.generation.actors[0] is not dead
        assert _same(ray.get(roles.generation.actors[0].__ray_call__.remote(_weights)), want)
        sixth = sync.push(group, pools)
        assert sixth.version == 6 and sixth.tensors == 1 and versions() == [6, 6]
        assert holds_the_learners_weights()

        t0 = time.perf_counter()
        sync.close()
        assert sync.graph is None and time.perf_counter() - t0 < 30
        assert versions() == [6, 6]  # the actors still answer ordinary calls

        # A message larger than Ray's default channel (here lowered to 100 kB in the learner's
        # process): unless the learner sizes its channel before the compile, Ray resizes it and
        # the teardown hangs (close() raises after TEARDOWN_TIMEOUT_S).
        ray.get(learner.__ray_call__.remote(_small_default_channel))
        sync = CompiledSync(1.0)
        ray.get(learner.__ray_call__.remote(_nudge, None))
        big = sync.push(group, pools)
        assert big.buckets == 1 and big.bytes > 4 * 100_000 and holds_the_learners_weights()
        t0 = time.perf_counter()
        sync.close()
        assert time.perf_counter() - t0 < 10
    finally:
        sync.close()


def test_auto_transport_is_the_compiled_graph_only_where_it_applies():
    """sync.transport=auto: the compiled graph for one learner rank on the sync pipeline with
    transformers generation, the object store for more ranks, the async pipeline or vLLM; a
    transport set by hand is kept."""
    from gapray.config import load_config
    from gapray.workers.sync import CompiledSync, WeightSync, make_sync, resolve_transport

    def pick(*overrides: str) -> str:
        return resolve_transport(load_config([*TINY_RUN, *overrides]))

    assert load_config(list(TINY_RUN)).sync.transport == "auto"
    assert pick() == "compiled_graph"
    assert pick("learner.num_ranks=2") == "object_store"
    assert pick("run.pipeline=async") == "object_store"
    assert pick("generation=vllm") == "object_store"
    assert pick("sync.transport=object_store") == "object_store"
    assert pick("sync.transport=compiled_graph") == "compiled_graph"
    assert type(make_sync(load_config([*TINY_RUN, "run.pipeline=async"]))) is WeightSync
    assert isinstance(make_sync(load_config(list(TINY_RUN))), CompiledSync)
