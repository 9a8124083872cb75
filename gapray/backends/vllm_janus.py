"""Janus image generation as a vLLM model, plus the logits processor that does CFG inside vLLM.

Where it sits: the generation backend `vllm` (see `vllm_worker.py`) runs this model inside a vLLM
engine; the `hf` backend runs the same math through transformers (`gapray/models/janus.py`).

One id space for text and image tokens. vLLM feeds a request's sampled token ids back in as its
next input ids, and a sampled id is the column of the logits it was drawn from, so the image
codes come first: with V text ids and K VQ codes,

    id in [0, K)            image code id      -> generation_embeddings -> generation_aligner
    id == K                 BROKEN sentinel    -> never a real input; ends a request whose CFG
                                                  partner was not in the same step (CFGLogitsProcessor)
    id in [K+1, K+1+V)      text token id-K-1  -> the LLM's embed_tokens

The engine's vocabulary is therefore K + 1 + V (`janus_hf_overrides` edits the checkpoint's
config at load; the weights stay as they are), and prompts go in through `IdLayout.prompt`.
`compute_logits` returns only the K + 1 columns that can be drawn, the generation head's K logits
and the sentinel's -inf: never a (N, V + K + 1) tensor (Janus-Pro: 118,785 columns, 7.2x the
16,385), so the sampler's softmax, sort-free inverse CDF and log-probs run over the codes alone.

CFG: every image is two requests, a conditional one and an unconditional one (prompt with all
but its first and last tokens replaced by pad, as the transformers backend builds it), both with
the same seed. The batch-level `CFGLogitsProcessor` writes uncond + s * (cond - uncond) into both
rows before temperature and sampling, so both rows draw the same token from the guided
distribution and the log-probs vLLM reports (`logprobs_mode="processed_logprobs"`) are the CFG
log-probs. If the scheduler ever runs one row of a pair without the other (or at a different
position), both rows are forced to the BROKEN sentinel, which is a stop token: the engine wrapper
sees it and regenerates that pair with the same seeds, so a split costs time, never correctness.

    from vllm import ModelRegistry
    ModelRegistry.register_model(ARCH, "gapray.backends.vllm_janus:GaprayJanusForImageGeneration")
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from vllm.model_executor.layers.activation import get_act_fn
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.llama import LlamaModel
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

ARCH = "GaprayJanusForImageGeneration"
CFG_KEY = "gapray_cfg"
"""SamplingParams.extra_args key: (pair id, "cond" | "uncond", cfg_scale)."""
TEXT_VOCAB_ATTR = "gapray_text_vocab_size"
LLM_PREFIX = "model.language_model."
GEN_PREFIXES = ("model.generation_embeddings.", "model.generation_aligner.", "model.generation_head.")


def janus_hf_overrides(config):
    """hf_overrides for the engine: keep the checkpoint's JanusConfig, point it at our model class,
    remember the text vocabulary V and widen the engine's vocabulary to V + K + 1. Idempotent."""
    if not hasattr(config, "vq_config"):  # vLLM first probes the callable with a bare config
        return config
    if not hasattr(config, TEXT_VOCAB_ATTR):
        setattr(config, TEXT_VOCAB_ATTR, config.text_config.vocab_size)
        config.text_config.vocab_size += config.vq_config.num_embeddings + 1
    config.architectures = [ARCH]
    return config


@dataclass(frozen=True)
class IdLayout:
    """The engine's ids of an overridden JanusConfig: codes [0, K), sentinel K, text K+1 on."""

    text_vocab: int  # V
    codebook: int  # K

    @property
    def sentinel(self) -> int:
        return self.codebook

    @property
    def text_offset(self) -> int:
        return self.codebook + 1

    def prompt(self, text_ids: list[int]) -> list[int]:
        """Tokenizer ids -> the engine's prompt ids."""
        return [i + self.text_offset for i in text_ids]

    def codes(self, engine_ids: list[int]) -> torch.Tensor:
        """Sampled engine ids -> (T,) image codes; raises on an id that is not a code."""
        t = torch.tensor(engine_ids, dtype=torch.long)
        if t.numel() and (t.min() < 0 or t.max() >= self.codebook):
            raise ValueError(f"engine ids outside the codebook [0, {self.codebook}): {engine_ids[:8]}...")
        return t


def id_layout(config) -> IdLayout:
    """The IdLayout of an overridden JanusConfig."""
    return IdLayout(getattr(config, TEXT_VOCAB_ATTR), config.vq_config.num_embeddings)


def is_generation_weight(name: str) -> bool:
    """Checkpoint tensors this model holds: the LLM and the generation embedding/aligner/head (not
    the vision encoder, understanding aligner, VQ model or text lm_head)."""
    return name.startswith(LLM_PREFIX) or name.startswith(GEN_PREFIXES)


class _Aligner(nn.Module):
    """transformers' JanusVQVAEAlignerMLP: fc1, then (act, linear) per extra layer."""

    def __init__(self, vq):
        super().__init__()
        self.fc1 = nn.Linear(vq.embed_dim, vq.projection_dim)
        self.hidden_layers = nn.ModuleList(
            nn.Linear(vq.projection_dim, vq.projection_dim) for _ in range(1, vq.num_hidden_layers)
        )
        self.act = get_act_fn(vq.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        for layer in self.hidden_layers:
            x = layer(self.act(x))
        return x


class _Head(nn.Module):
    """transformers' JanusVQVAEHead: proj_out -> act -> vision_head (K logits)."""

    def __init__(self, vq):
        super().__init__()
        self.proj_out = nn.Linear(vq.image_token_embed_dim, vq.projection_dim)
        self.act = get_act_fn(vq.hidden_act)
        self.vision_head = nn.Linear(vq.projection_dim, vq.num_embeddings)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.vision_head(self.act(self.proj_out(h)))


class GaprayJanusForImageGeneration(nn.Module):
    """Janus's generation path on vLLM's Llama layers; loads a transformers Janus checkpoint."""

    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.ids = id_layout(config)
        self.text_vocab, self.codebook = self.ids.text_vocab, self.ids.codebook
        text = copy.deepcopy(config.text_config)
        text.vocab_size = self.text_vocab  # the checkpoint's embed_tokens shape
        self.language_model = LlamaModel(
            vllm_config=vllm_config.with_hf_config(text, architectures=["LlamaForCausalLM"]),
            prefix=f"{prefix}.language_model" if prefix else "language_model",
        )
        vq = config.vq_config
        self.generation_embeddings = nn.Embedding(vq.num_embeddings, vq.embed_dim)
        self.generation_aligner = _Aligner(vq)
        self.generation_head = _Head(vq)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(N,) mixed ids -> (N, D): text ids through embed_tokens, image ids through the
        generation embedding + aligner. Both are computed for every token (no data-dependent
        branch, so the forward stays graph-capturable); the unused one is discarded."""
        is_image = input_ids < self.codebook  # (N,)
        off = self.ids.text_offset
        text = self.language_model.embed_input_ids((input_ids - off).clamp(0, self.text_vocab - 1))
        codes = input_ids.clamp(0, self.codebook - 1)
        image = self.generation_aligner(self.generation_embeddings(codes)).to(text.dtype)
        return torch.where(is_image.unsqueeze(-1), image, text)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        if inputs_embeds is None:
            inputs_embeds = self.embed_input_ids(input_ids)
        return self.language_model(None, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, K + 1): the generation head's K logits and the sentinel's -inf (the
        only ids that can be drawn; text ids sit above K + 1 and have no column)."""
        image = self.generation_head(hidden_states)  # (N, K)
        return torch.cat([image, image.new_full((image.shape[0], 1), float("-inf"))], dim=1)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """transformers names -> ours: `model.language_model.*` goes to vLLM's LlamaModel (which
        fuses q/k/v and gate/up), `model.generation_*` to the plain modules; the rest of the
        checkpoint (vision encoder, VQ model, text lm_head) is not part of generation."""
        params = dict(self.named_parameters())
        llm_weights, loaded = [], set()
        for name, tensor in weights:
            if name.startswith(LLM_PREFIX):
                llm_weights.append((name[len(LLM_PREFIX) :], tensor))
            elif name.startswith(GEN_PREFIXES):
                ours = name[len("model.") :].replace(".activation_fn.", ".act.")
                param = params[ours]
                getattr(param, "weight_loader", default_weight_loader)(param, tensor)
                loaded.add(ours)
        loaded |= {"language_model." + n for n in self.language_model.load_weights(llm_weights)}
        return loaded


class CFGLogitsProcessor(LogitsProcessor):
    """Batch-level CFG: for each (cond, uncond) pair in this step, both rows get
    uncond + s * (cond - uncond) over the image columns [0, K); rows without extra_args pass through.

    Pairs are found by the id in extra_args[CFG_KEY]. A pair whose rows are not both in the batch
    at the same output position (a scheduler split, a preemption) gets the BROKEN sentinel."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        ids = id_layout(vllm_config.model_config.hf_config)
        self.codebook, self.sentinel = ids.codebook, ids.sentinel
        self.rows: dict[int, tuple[object, str, float, list[int]]] = {}  # batch index -> request

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        cfg = (sampling_params.extra_args or {}).get(CFG_KEY)
        if cfg is not None and (len(cfg) != 3 or cfg[1] not in ("cond", "uncond")):
            raise ValueError(f"{CFG_KEY} must be (pair id, 'cond' | 'uncond', scale), got {cfg!r}")

    def is_argmax_invariant(self) -> bool:
        return False  # CFG changes the argmax: it must run before greedy/temperature sampling

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for index, params, _prompt, output_ids in batch_update.added:
            cfg = (params.extra_args or {}).get(CFG_KEY) if params is not None else None
            if cfg is None:
                self.rows.pop(index, None)
            else:
                self.rows[index] = (cfg[0], cfg[1], float(cfg[2]), output_ids)
        for a, b, direction in batch_update.moved:
            ra, rb = self.rows.pop(a, None), self.rows.pop(b, None)
            if ra is not None:
                self.rows[b] = ra
            if rb is not None and direction.name == "SWAP":
                self.rows[a] = rb

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        pairs: dict[object, dict[str, int]] = {}
        for index, (pair, role, _scale, _out) in self.rows.items():
            if index < logits.shape[0]:
                pairs.setdefault(pair, {})[role] = index
        cond, uncond, scale, broken = [], [], [], []
        for members in pairs.values():
            c, u = members.get("cond"), members.get("uncond")
            if c is not None and u is not None and len(self.rows[c][3]) == len(self.rows[u][3]):
                cond.append(c)
                uncond.append(u)
                scale.append(self.rows[c][2])
            else:
                broken.extend(members.values())
        lo, hi = 0, self.codebook
        if cond:
            c = torch.tensor(cond, device=logits.device)
            u = torch.tensor(uncond, device=logits.device)
            s = torch.tensor(scale, device=logits.device, dtype=logits.dtype).unsqueeze(1)  # (P, 1)
            lc, lu = logits[c, lo:hi], logits[u, lo:hi]  # (P, K) each
            guided = lu + s * (lc - lu)
            logits[c, lo:hi] = guided
            logits[u, lo:hi] = guided
        if broken:
            b = torch.tensor(broken, device=logits.device)
            logits[b] = float("-inf")
            logits[b, self.sentinel] = 0.0
        return logits
