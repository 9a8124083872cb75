"""What generation and reward workers share: the model they hold, its version, weight loading.

worker = ModelWorker(model_cfg, threads=2, lora_scaling=1.0)
worker.begin_update(version, manifest)      # a WeightSync push: every tensor checked first,
worker.apply_bucket(version, bucket)        # then each bucket copied in place as it arrives
worker.load_weights(version, parts)         # a replay of the ledger (a new or healed worker)
worker.compiled_apply(item)                 # one execution of the compiled-graph push

Every call that reads or changes the weights holds `worker.lock` (`exclusive`): the compiled
graph's bucket applies run on a background thread of the actor, beside its ordinary calls.
"""

from __future__ import annotations

import functools
import threading

import torch

from gapray.workers.sync import (
    TORN,
    BucketReceiver,
    LeadBucket,
    LoraMergeState,
    SyncAck,
    SyncManifest,
    as_tensors,
    check_manifest,
    check_update,
)


def exclusive(method):
    """Run `method` holding the worker's lock: a weight update never runs while the model
    generates, judges or evaluates on another thread of the actor, nor the other way round."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self.lock:
            return method(self, *args, **kwargs)

    return locked


def resolve_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def load_adapter(model_cfg, device: str):
    """The model every role starts from (policy, reference and judge share initial weights:
    models built in code, "tiny" and "janus_pro_shape", come from the same fixed seed)."""
    from gapray.models import load_model
    from gapray.models.showo import is_showo, load_showo

    dtype = resolve_dtype(model_cfg.dtype, device)
    if is_showo(model_cfg.name):
        return load_showo(
            model_cfg.name,
            dtype=dtype,
            device=device,
            steps=model_cfg.mask_steps,
            schedule=model_cfg.mask_schedule,
            logprob_draws=model_cfg.logprob_draws,
        )
    if model_cfg.name == "tiny":  # CPU-only test model: it takes no device
        return load_model("tiny", dtype=dtype)
    return load_model(model_cfg.name, dtype=dtype, device=device)


class ModelWorker:
    """State shared by generation and reward workers: the model, its version, weight loading."""

    def __init__(self, model_cfg, threads: int, lora_scaling: float):
        torch.set_num_threads(max(1, threads))
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = load_adapter(model_cfg, self.device)
        self.version = 0
        self.lock = threading.RLock()  # see `exclusive`
        self.lora_scaling = lora_scaling
        self.merge_state = LoraMergeState.empty()
        self.receiver = BucketReceiver()
        # The model's parameters by name, kept: updates copy into them in place, never replace
        # one, so the dict stays right and each check skips walking the module tree.
        self.params = dict(self.model.model.named_parameters())

    def ready(self) -> dict:
        from gapray.placement import actor_location

        return {**actor_location(), "version": self.version, "device": self.device}

    def get_version(self) -> int:
        return self.version

    # ------------------------------------------------------------------------ weight updates
    @exclusive
    def begin_update(self, version: int, manifest: SyncManifest) -> SyncAck | None:
        """The manifest of a push: every tensor is checked against the model before any bucket
        arrives (a refusal changes nothing and keeps the version). The ack when it has no buckets."""
        self._check_manifest(manifest)
        if not self.receiver.node_id:
            import ray

            self.receiver.node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
        ack = self.receiver.begin(version, manifest)
        if ack is not None:
            self._set_version(version)
        return ack

    def _check_manifest(self, manifest: SyncManifest) -> None:
        check_manifest(
            self.model.model,
            manifest,
            lora_scaling=self.lora_scaling,
            merge_state=self.merge_state,
            params=self.params,
        )

    @exclusive
    def apply_bucket(self, version: int, bucket, manifest: SyncManifest | None = None) -> SyncAck | None:
        """Copy one bucket in place (checked first: a refused bucket changes nothing); the ack
        after the manifest's last. The first bucket's call brings the update's manifest (a
        LeadBucket under WeightSync, or beside it as load_weights passes a compiled-graph
        replay's): begin_update checks it whole first.
        A push with no buckets arrives as a LeadBucket without one (then this is begin_update).
        A failure after an earlier bucket of the update went in leaves the worker TORN (it holds
        part of the update) until a replay."""
        if isinstance(bucket, LeadBucket):  # the manifest and bucket 0 in one object
            manifest, bucket = bucket.manifest, bucket.bucket
            if bucket is None:  # nothing changed: the manifest alone moves the version
                return self.begin_update(version, manifest)
        if manifest is not None:
            self.begin_update(version, manifest)
        bucket = as_tensors(bucket)  # a WireBucket's: views of the object store's buffer
        self.receiver.expect(version, bucket)
        try:
            self._apply(bucket)
        except BaseException as err:
            if self.receiver.index > 0:
                self._set_version(TORN)
            self.receiver.fail(f"{type(err).__name__}: {err}")
            raise
        ack = self.receiver.done(bucket)
        if ack is not None:
            self._set_version(version)
        return ack

    def _apply(self, bucket: dict) -> None:
        check_update(
            self.model.model,
            bucket,
            lora_scaling=self.lora_scaling,
            merge_state=self.merge_state,
            params=self.params,
        ).apply()

    def compiled_apply(self, item):
        """One execution of the compiled-graph push (gapray/workers/sync/compiled.py): the
        manifest (checked whole first) with bucket 0, or one later bucket, applied in place
        under the lock; a BucketReport, with the ack once the last bucket is in."""
        from gapray.workers.sync.compiled import BucketReport

        with self.lock:
            if item.bucket is None:
                if item.manifest is None:
                    raise ValueError(
                        f"compiled weight push {item.version}: an item with neither manifest nor bucket"
                    )
                ack = self.begin_update(item.version, item.manifest)
            else:
                ack = self.apply_bucket(item.version, item.bucket, item.manifest)
            m = self.receiver.manifest
            assert m is not None
            return BucketReport(
                version=item.version,
                index=item.index,
                buckets=len(m.buckets),
                tensors=len(m.names),
                trainable=m.trainable,
                bytes=m.bytes,
                ack=ack,
                learner_s=item.learner_s,
            )

    @exclusive
    def load_weights(self, version: int, parts: list[tuple[SyncManifest, list]]) -> SyncAck | None:
        """Replay pushes (a WeightLedger's entries, oldest first): each manifest checked, then its
        buckets pulled and applied one at a time; the worker ends at `version`."""
        import ray

        ack = None
        for manifest, refs in parts:
            if not refs:
                ack = self.begin_update(version, manifest)
            for i, ref in enumerate(refs):
                bucket = ray.get(ref)
                ack = self.apply_bucket(version, bucket, manifest if i == 0 else None)
                del bucket  # one bucket held at a time
        self._set_version(version)
        return ack

    def _set_version(self, version: int) -> None:
        self.version = version
