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

Files, one role each (the package's public names are re-exported here):

    sizes.py     the model's sizes from its own config: ModelSizes, the published layouts
                 (LAYOUTS, janus_layout), model_config_for, model_sizes (meta device)
    roles.py     the per-role byte arithmetic: Line, RolePlan, Plan, the generation / reward /
                 learner plans, KV cache, AdamW, decoder-layer activations, gpu_memory_bytes,
                 build_plan
    check.py     preflight: check_plan, plan_error (a ConfigError naming the knobs), the
                 learner's fix suggestions
    command.py   `gapray plan`: format_plan (the table), plan_from_overrides, main
    __main__.py  `python -m gapray.plan`
"""

from gapray.plan.check import (
    ROLE_KEYS,
    check_plan,
    plan_error,
)
from gapray.plan.command import (
    format_plan,
    main,
    plan_from_overrides,
)
from gapray.plan.roles import (
    DTYPE_BYTES,
    GIB,
    JUDGE_TEXT_TOKENS,
    PROMPT_TOKENS,
    Line,
    Plan,
    RolePlan,
    adamw_bytes,
    build_plan,
    decoder_layer_bytes,
    generation_plan,
    gpu_memory_bytes,
    kv_cache_bytes,
    learner_plan,
    learner_settings,
    reward_plan,
    storage_dtype,
    vllm_memory_fraction,
)
from gapray.plan.sizes import (
    LAYOUTS,
    ModelSizes,
    janus_layout,
    model_config_for,
    model_sizes,
)

__all__ = [
    "DTYPE_BYTES",
    "GIB",
    "JUDGE_TEXT_TOKENS",
    "LAYOUTS",
    "PROMPT_TOKENS",
    "ROLE_KEYS",
    "Line",
    "ModelSizes",
    "Plan",
    "RolePlan",
    "adamw_bytes",
    "build_plan",
    "check_plan",
    "decoder_layer_bytes",
    "format_plan",
    "generation_plan",
    "gpu_memory_bytes",
    "janus_layout",
    "kv_cache_bytes",
    "learner_plan",
    "learner_settings",
    "main",
    "model_config_for",
    "model_sizes",
    "plan_error",
    "plan_from_overrides",
    "reward_plan",
    "storage_dtype",
    "vllm_memory_fraction",
]
