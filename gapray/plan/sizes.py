"""The model's sizes, from its own config: parameter counts and the shapes activations scale
with, read from a model built on the meta device (no weights loaded). The published Janus-Pro
1B / 7B layouts are planned without a checkpoint."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path

LAYOUTS = ("janus_pro_1b", "janus_pro_7b")
"""Model groups whose published layout is planned without a checkpoint (`gapray plan
model=janus_pro_7b`): transformers' Janus config at Janus-Pro's sizes (gapray.models.tiny)."""


@dataclass(frozen=True)
class ModelSizes:
    """Parameter counts and the shapes activations scale with, read from a model's config."""

    label: str
    parts: dict[str, int]
    """Top-level module -> parameters (vision_model, aligner, vqmodel, ..., lm_head)."""
    trainable: int
    """Parameters that train under the configured model.trainable."""
    trainable_in_layers: int
    """Of those, the ones inside the LLM's decoder layers (the rest is FSDP's root unit)."""
    frozen_in_layers: int
    """Frozen parameters inside the decoder layers (LoRA's base weights): sharded with them."""
    layer_params: int
    """Parameters of one decoder layer of the LLM (an FSDP unit)."""
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    codebook: int
    image_tokens: int
    vision_hidden: int
    vision_layers: int
    vision_intermediate: int
    image_size: int
    vq_channels: int
    """Channels of the VQ decoder's full-resolution level (its largest feature maps)."""

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def frozen(self) -> int:
        """Frozen parameters outside the decoder layers: held once, never sharded."""
        return self.total - self.trainable - self.frozen_in_layers

    @property
    def root_params(self) -> int:
        """Trainable parameters outside the decoder layers (embeddings, final norm, ...)."""
        return self.trainable - self.trainable_in_layers


def janus_layout(name: str):
    """The JanusConfig of a published Janus-Pro layout ("janus_pro_1b" | "janus_pro_7b"): the
    Llama backbone (1B: 2048 x 24 layers, 7B: 4096 x 30, intermediate 11008, vocabulary
    102,400), SigLIP-L at 384 px, the 16,384 x 8 VQ; an untied text LM head, as the checkpoints
    hold (7B: 7,407,773,323 parameters, the 14.8 GB of its bf16 safetensors)."""
    from gapray.models.tiny import janus_pro_config

    if name not in LAYOUTS:
        raise ValueError(f"no built-in layout {name!r}; known: {', '.join(LAYOUTS)}")
    return janus_pro_config(name.rsplit("_", 1)[1])


def model_config_for(name: str):
    """The transformers config of `model.name` without loading any weights: a checkpoint
    directory's config.json, the toy checkpoint's, or the model built in code."""
    from transformers import JanusConfig

    from gapray.models import TOY_CHECKPOINT

    if name in LAYOUTS or name in ("janus_pro_shape", "tiny"):
        return copy.deepcopy(_builtin_config(name))
    path = TOY_CHECKPOINT if name == "toy" else Path(name)
    return JanusConfig.from_pretrained(str(path))


@functools.cache
def _builtin_config(name: str):
    """The config of a model built in code (or a published layout), built once per process."""
    if name in LAYOUTS:
        return janus_layout(name)
    if name == "janus_pro_shape":
        from gapray.models.shapes import shape_config

        return shape_config()
    from gapray.models import load_model

    return load_model("tiny").model.config  # small: its vocabulary comes from its tokenizer


@functools.lru_cache(maxsize=32)
def _sizes_cached(config_json: str, trainable: str, lora_rank: int, lora_alpha: float) -> ModelSizes:
    import torch
    from transformers import JanusConfig, JanusForConditionalGeneration

    from gapray.models.janus import JanusAdapter

    cfg = JanusConfig.from_dict(json.loads(config_json))
    with torch.device("meta"):
        model = JanusForConditionalGeneration(cfg)
    parts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.model.named_children()}
    seen = {id(p) for p in model.model.parameters()}
    head = [p for p in model.lm_head.parameters() if id(p) not in seen]  # tied: counted once
    parts["lm_head"] = sum(p.numel() for p in head)
    # The adapter's own rules for what trains and what a decoder layer is (no parameter names
    # here): an adapter shell around the meta model; LoRA adapters from peft, on meta too.
    shell = JanusAdapter.__new__(JanusAdapter)
    shell.model, shell._peft, shell._teacher = model, None, None
    shell.set_trainable(trainable, lora_rank=lora_rank, lora_alpha=lora_alpha)
    layers = shell.decoder_layers()
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable == "lora":
        parts["lora adapters"] = n_train
    in_layers = [p for layer in layers for p in layer.parameters()]
    t, v, q = cfg.text_config, cfg.vision_config, cfg.vq_config
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    return ModelSizes(
        label="",
        parts=parts,
        trainable=n_train,
        trainable_in_layers=sum(p.numel() for p in in_layers if p.requires_grad),
        frozen_in_layers=sum(p.numel() for p in in_layers if not p.requires_grad),
        layer_params=sum(p.numel() for p in layers[0].parameters()),
        hidden=t.hidden_size,
        intermediate=t.intermediate_size,
        layers=t.num_hidden_layers,
        heads=t.num_attention_heads,
        kv_heads=t.num_key_value_heads or t.num_attention_heads,
        head_dim=head_dim,
        vocab=t.vocab_size,
        codebook=q.num_embeddings,
        image_tokens=v.num_image_tokens,
        vision_hidden=v.hidden_size,
        vision_layers=v.num_hidden_layers,
        vision_intermediate=int(v.hidden_size * v.mlp_ratio),
        image_size=v.image_size,
        vq_channels=q.base_channels * q.channel_multiplier[0],
    )


def model_sizes(
    name: str, trainable: str = "llm", lora_rank: int = 16, lora_alpha: float = 32.0
) -> ModelSizes:
    """`ModelSizes` of `model.name` (or a layout name), built on the meta device (exact counts;
    Janus-Pro-7B in about a second, LoRA adapters from peft in a few)."""
    cfg = model_config_for(name)
    sizes = _sizes_cached(cfg.to_json_string(use_diff=False), trainable, lora_rank, float(lora_alpha))
    return dataclasses.replace(sizes, label=name)
