"""A preallocated KV cache for image generation: written in place, read only up to its fill.

Where it sits: `JanusAdapter.generate` (cache="static", the default) decodes its T image tokens
into one of these. Each layer's keys and values are allocated once for prompt + T positions at
the first write (no torch.cat per step, as a DynamicCache does), and attention reads the filled
prefix only (a view of length L + t + 1 at step t), where transformers' StaticCache makes every
step attend over all L + T slots behind a mask: for Janus's 576 tokens that is on average twice
the attention work. The fill is a Python int, so nothing waits on the device to know it.

    cache = PreallocatedCache(model.config.text_config, max_cache_len=L + T)
    out = language_model(inputs_embeds=..., attention_mask=mask[:, : L + t + 1], past_key_values=cache)
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class PreallocatedLayer(CacheLayerMixin):
    """One decoder layer's keys/values: (B, H, max_len, D) tensors filled from position 0 on."""

    is_compileable = False
    is_sliding = False

    def __init__(self, max_cache_len: int):
        super().__init__()
        self.max_cache_len = max_cache_len
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, dk = key_states.shape
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = key_states.new_zeros(b, h, self.max_cache_len, dk)
        self.values = value_states.new_zeros(b, h, self.max_cache_len, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        end = self.length + n
        if end > self.max_cache_len:
            raise ValueError(f"PreallocatedCache: {end} positions exceed max_cache_len {self.max_cache_len}")
        self.keys[:, :, self.length : end] = key_states
        self.values[:, :, self.length : end] = value_states
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0  # asked before this step's update

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.max_cache_len


class PreallocatedCache(Cache):
    """A PreallocatedLayer per decoder layer of `config` (a text config with num_hidden_layers)."""

    def __init__(self, config, max_cache_len: int):
        super().__init__(layers=[PreallocatedLayer(max_cache_len) for _ in range(config.num_hidden_layers)])
