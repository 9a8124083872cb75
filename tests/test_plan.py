"""The memory plan (gapray/plan/): hand-computed figures for the tiny model (parameter,
gradient, optimizer and KV-cache bytes, sharding, LoRA), Janus-Pro-7B's published layout (its
parameter counts), and preflight's refusal of a learner that does not fit its GPU."""

from __future__ import annotations

import json

import pytest

from gapray.config import load_config
from gapray.plan import (
    GIB,
    build_plan,
    check_plan,
    decoder_layer_bytes,
    janus_layout,
    kv_cache_bytes,
    main,
    model_sizes,
)

H, FFN, LAYERS, HEADS = 64, 256, 2, 2  # tiny_janus_config's LLM: 64 wide, 4x MLP, 2 layers, 2 heads
T_TINY = (32 // 8) ** 2  # 32 px, patch 8: 16 image tokens


@pytest.fixture(scope="module")
def tiny_vocab() -> int:
    return model_sizes("tiny").vocab


def _llm_params(vocab: int, h: int, i: int, layers: int) -> int:
    """A Llama backbone without biases: the embedding, per layer q/k/v/o (4 h^2), gate/up/down
    (3 h i) and two RMSNorms, and the final norm."""
    return vocab * h + layers * (4 * h * h + 3 * h * i + 2 * h) + h


def test_tiny_learner_bytes_by_hand(tiny_vocab):
    n = _llm_params(tiny_vocab, H, FFN, LAYERS)
    cfg = load_config(["model=tiny"])  # trainable=llm, one CPU rank: float32 everywhere
    s = model_sizes("tiny")
    assert s.trainable == n
    learner = build_plan(cfg, gpu_memory=None).roles["learner"]
    assert learner.get("trainable float32") == 4 * n
    assert learner.get("gradients float32") == 4 * n
    assert learner.get("AdamW states float32") == 2 * 4 * n  # exp_avg + exp_avg_sq, fp32
    assert learner.get("reference float32") == 4 * n  # its own copy of what trains
    assert learner.get(f"frozen {'float32'}") == 4 * (s.total - n)  # shared with the reference


def test_sharding_divides_what_trains_by_the_ranks(tiny_vocab):
    n = _llm_params(tiny_vocab, H, FFN, LAYERS)
    one = load_config(["model=tiny"])
    four = load_config(["model=tiny", "learner.num_ranks=4", "learner.sharding=fsdp"])
    unsharded = load_config(["model=tiny", "learner.num_ranks=4", "learner.sharding=none"])
    p1, p4, pn = (build_plan(c, gpu_memory=None).roles["learner"] for c in (one, four, unsharded))
    assert p4.get("trainable float32") == 4 * n // 4
    assert p4.get("AdamW states float32") == 8 * n // 4
    assert p4.get("frozen float32") == p1.get("frozen float32")  # held once per rank, not sharded
    assert pn.get("trainable float32") == 4 * n  # sharding=none: every rank holds it whole


def test_lora_trains_adapters_only_and_holds_no_reference():
    cfg = load_config(["model=tiny", "model.trainable=lora", "model.lora_rank=16"])
    learner = build_plan(cfg, gpu_memory=None).roles["learner"]
    # r x (in + out) per targeted projection: q, k, v, o (64 -> 64), gate, up (64 -> 256), down.
    per_layer = 16 * (4 * (H + H) + 2 * (H + FFN) + (FFN + H))
    assert per_layer == 23_552
    assert learner.get("trainable float32") == LAYERS * per_layer * 4
    assert learner.get("AdamW states float32") == LAYERS * per_layer * 8
    assert learner.get("reference") == 0


def test_kv_cache_by_hand():
    cfg = load_config(["model=tiny", "generation.batch_size=3", "generation.cfg_scale=5"])
    gen = build_plan(cfg, gpu_memory=None, prompt_tokens=32).roles["generation"]
    # 3 images x 2 (CFG) rows x 2 layers x 2 (K, V) x 2 heads x 32 head dim x (32 + 16) x 4 B
    full = 6 * 2 * 2 * 2 * 32 * (32 + T_TINY) * 4
    assert full == kv_cache_bytes(6, LAYERS, HEADS, H // HEADS, 32 + T_TINY, 4) == 294_912
    assert gen.get("KV cache") == full + full // LAYERS  # + one layer's copy as the cache grows
    no_cfg = build_plan(
        load_config(["model=tiny", "generation.batch_size=3", "generation.cfg_scale=1"]),
        gpu_memory=None,
        prompt_tokens=32,
    ).roles["generation"]
    assert no_cfg.get("KV cache") == gen.get("KV cache") // 2


def test_decoder_layer_bytes_by_hand():
    s = model_sizes("tiny")
    assert decoder_layer_bytes(s, 4, autocast=False) == 36 * H + 16 * FFN  # fp32: 6,400 B per token
    assert decoder_layer_bytes(s, 2, autocast=False) == 22 * H + 8 * FFN  # pure bf16
    assert decoder_layer_bytes(s, 2, autocast=True) == 36 * H + 8 * FFN  # bf16 autocast over fp32


def test_checkpointing_keeps_one_input_per_layer():
    base = ["model=tiny", "learner.micro_batch_size=2"]
    off = build_plan(load_config(base), gpu_memory=None, prompt_tokens=10).roles["learner"]
    on = build_plan(
        load_config([*base, "learner.activation_checkpointing=true"]), gpu_memory=None, prompt_tokens=10
    ).roles["learner"]
    tokens = 2 * 2 * 2 * (10 + T_TINY - 1)  # 2 pairs x (chosen, rejected) x CFG rows x tokens
    per_layer = 36 * H + 16 * FFN
    assert off.get("activations: layers") == LAYERS * tokens * per_layer
    assert on.get("activations: layers") == LAYERS * tokens * H * 4 + tokens * per_layer


def test_janus_pro_7b_layout_has_the_checkpoints_sizes():
    cfg = janus_layout("janus_pro_7b")
    t = cfg.text_config
    assert (t.num_hidden_layers, t.hidden_size, t.intermediate_size, t.vocab_size) == (
        30,
        4096,
        11008,
        102_400,
    )
    assert (cfg.vq_config.num_embeddings, cfg.vq_config.embed_dim) == (16_384, 8)
    assert (cfg.vision_config.hidden_size, cfg.vision_config.num_hidden_layers) == (1024, 24)  # SigLIP-L
    s = model_sizes("janus_pro_7b")
    assert s.trainable == _llm_params(102_400, 4096, 11008, 30) == 6_490_935_296
    assert s.parts["lm_head"] == 102_400 * 4096  # untied, as in the checkpoint
    assert s.total == 7_407_773_323  # 14.8 GB of bf16 safetensors


def _seven_b(*extra: str):
    return load_config(
        [
            "model=janus_pro_7b",
            "model.name=janus_pro_shape",
            "learner.gpus_per_rank=1",
            "run.gpu_memory_gib=80",
            *extra,
        ]
    )


def test_preflight_refuses_full_llm_7b_on_one_80gb_gpu():
    errors = check_plan(_seven_b(), model="janus_pro_7b")
    assert len(errors) == 1
    msg = errors[0]
    plan = build_plan(_seven_b(), model="janus_pro_7b").roles["learner"]
    assert msg.startswith(
        f"learner: the plan needs {plan.total / GIB:.2f} GiB per GPU, more than its 80.00 GiB"
    )
    assert plan.total > 200 * GIB  # fp32 master + grads + AdamW alone: 16 B x 6.49e9 = 96.7 GiB
    assert "run.gpu_memory_gib=80" in msg and "fits with" in msg
    assert "learner.num_ranks=" in msg and "learner.activation_checkpointing=true" in msg


def test_preflight_accepts_7b_on_8_sharded_ranks_with_checkpointing():
    cfg = _seven_b("learner.num_ranks=8", "learner.activation_checkpointing=true")
    assert check_plan(cfg, model="janus_pro_7b") == []
    plan = build_plan(cfg, model="janus_pro_7b").roles["learner"]
    assert plan.get("trainable float32") == 4 * 6_490_935_296 // 8
    assert plan.total < 40 * GIB
    # Without checkpointing the 32 rows x 607 tokens of one micro-batch do not fit even sharded.
    assert check_plan(_seven_b("learner.num_ranks=8"), model="janus_pro_7b")


def test_check_reads_a_checkpoint_config_and_skips_cpu_roles(tmp_path):
    janus_layout("janus_pro_7b").to_json_file(tmp_path / "config.json")
    cfg = load_config(
        ["model=janus_pro_7b", f"model.name={tmp_path}", "learner.gpus_per_rank=1", "run.gpu_memory_gib=80"]
    )
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "janus"
    errors = check_plan(cfg)
    assert len(errors) == 1 and errors[0].startswith("learner:")  # generation and reward run on CPU
    assert (
        check_plan(load_config(["model=janus_pro_7b", f"model.name={tmp_path}", "learner.gpus_per_rank=1"]))
        == []
    )


def test_fractional_gpu_budget_and_generation_refusal():
    cfg = load_config(
        [
            "model=tiny",
            "generation.gpus_per_worker=0.5",
            "run.gpu_memory_gib=0.0001",
            "generation.batch_size=64",
        ]
    )
    plan = build_plan(cfg)
    assert plan.roles["generation"].budget == int(0.5 * 0.0001 * GIB)
    errors = check_plan(cfg)
    assert len(errors) == 1 and errors[0].startswith("generation: the plan needs")
    assert "0.5 GPU" in errors[0] and "generation.batch_size" in errors[0]


def test_gapray_plan_prints_the_table(capsys):
    rc = main(["model=janus_pro_7b", "learner.gpus_per_rank=1", "run.gpu_memory_gib=80"])
    out, err = capsys.readouterr()
    assert rc == 2  # the learner does not fit
    assert "published janus_pro_7b layout" in out
    for what in (
        "weights bfloat16",
        "KV cache",
        "AdamW states float32",
        "activations: layers",
        "DOES NOT FIT",
    ):
        assert what in out
    assert err.startswith("gapray plan: learner: the plan needs")
    assert main(["model=tiny"]) == 0


def test_plan_error_is_a_config_error_naming_the_knobs():
    from gapray.config import ConfigError
    from gapray.plan import plan_error

    assert plan_error(load_config(["model=tiny"])) is None  # CPU roles: nothing to check
    err = plan_error(load_config(["model=tiny", "learner.gpus_per_rank=1", "run.gpu_memory_gib=0.0001"]))
    assert isinstance(err, ConfigError)
    assert str(err).startswith("memory plan (gapray plan):\n  learner: the plan needs")
    assert err.keys == [
        "learner.num_ranks",
        "learner.micro_batch_size",
        "learner.activation_checkpointing",
        "run.gpu_memory_gib",
    ]


def test_vllm_engine_claims_its_share_of_the_gpu():
    cfg = load_config(
        ["model=tiny", "generation=vllm", "generation.gpus_per_worker=1", "run.gpu_memory_gib=80"]
    )
    gen = build_plan(cfg).roles["generation"]
    assert gen.get("vLLM engine") == int(0.5 * 80 * GIB)  # gpu_memory_utilization 0.5 of 80 GiB
    assert gen.get("KV cache") == 0  # inside the engine's share
    assert gen.get("weights float32") == model_sizes("tiny").total * 4  # the adapter kept beside it
