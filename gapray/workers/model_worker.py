"""What generation and reward workers share: the model they hold, its version, weight loading.

worker = ModelWorker(model_cfg, threads=2, lora_scaling=1.0)
worker.load_weights(version, bucket_refs)   # a WeightSync push, applied in place
"""

from __future__ import annotations

import torch

from gapray.workers.sync import LoraMergeState, apply_update


def resolve_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def load_adapter(model_cfg, device: str):
    """The model every role starts from (policy, reference and judge share initial weights:
    models built in code, "tiny" and "janus_pro_shape", come from the same fixed seed)."""
    from gapray.models import load_model

    dtype = resolve_dtype(model_cfg.dtype, device)
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
        self.lora_scaling = lora_scaling
        self.merge_state = LoraMergeState.empty()

    def ready(self) -> dict:
        from gapray.placement import actor_location

        return {**actor_location(), "version": self.version, "device": self.device}

    def get_version(self) -> int:
        return self.version

    def load_weights(self, version: int, bucket_refs: list) -> int:
        """Pull the buckets of a versioned update and copy them in; on any error the version
        stays what it was and the error (naming the tensor) propagates to the driver."""
        import ray

        buckets = ray.get(bucket_refs)
        tensors = {k: v for b in buckets for k, v in b.items()}
        apply_update(self.model.model, tensors, lora_scaling=self.lora_scaling, merge_state=self.merge_state)
        self.version = version
        return version
