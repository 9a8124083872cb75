"""Janus models built in code: tiny random ones for tests and the toy world, and real-size configs.

No weights can be downloaded in tests, so `tiny_janus()` builds a complete Janus (vision encoder,
aligner, VQ tokenizer, Llama backbone, generation embedding/aligner/head) with its own word-level
tokenizer and a PIL image processor, small enough to run on a CPU in milliseconds.
`janus_pro_config("1b")` gives the Janus-Pro-1B layout (576 image tokens, 16,384-code VQ, 384 px)
to build on the meta device for shape checks without weights.

    model = tiny_janus(seed=0)                 # JanusAdapter, 16 image tokens, 64 codes, 32 px
    model.generate(["a photo of a red circle"], n=2, cfg_scale=3.0)
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    JanusConfig,
    JanusForConditionalGeneration,
    JanusImageProcessorPil,
    JanusProcessor,
    LlamaConfig,
    PreTrainedTokenizerFast,
)

from gapray.models.janus import JanusAdapter

SPECIAL_TOKENS = (
    "<pad>",
    "<bos>",
    "<eos>",
    "<unk>",
    "<image_placeholder>",
    "<begin_of_image>",
    "<end_of_image>",
    "<|User|>",
    "<|Assistant|>",
)
BASE_WORDS = (
    # chat format, the judge question and GenEval's templates
    ": ? . , a an the of and or photo does this image show answer yes no Yes No is are there "
    "left right above below one two three four five six "
    # GenEval's ten colours and a few shapes (the toy world's classes)
    "red orange yellow green blue purple pink brown black white "
    "circle circles square squares triangle triangles cross crosses "
    "ring rings heart hearts moon moons arrow arrows"
).split()


def word_tokenizer(words: list[str] | tuple[str, ...] = BASE_WORDS) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with Janus's special tokens (<image_placeholder>, <begin_of_image>,
    <end_of_image>, chat roles) that prepends <bos>, pads on the left, and maps unknown words
    to <unk>. Loads back with AutoTokenizer from a save_pretrained directory."""
    vocab: dict[str, int] = {}
    for w in (*SPECIAL_TOKENS, *words):
        vocab.setdefault(w, len(vocab))
    return build_word_tokenizer(vocab, SPECIAL_TOKENS)


def build_word_tokenizer(
    vocab: dict[str, int],
    special_tokens: list[str] | tuple[str, ...],
    *,
    bos: str = "<bos>",
    eos: str = "<eos>",
    pad: str = "<pad>",
    unk: str = "<unk>",
    image: str = "<image_placeholder>",
    boi: str = "<begin_of_image>",
    eoi: str = "<end_of_image>",
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `vocab` (token -> id; every special token in it, at the id it
    holds there): splits on whitespace and punctuation, prepends `bos`, pads on the left, maps
    unknown words to `unk`, and names Janus's image tokens for JanusProcessor."""
    missing = [t for t in (*special_tokens, bos, eos, pad, unk, image, boi, eoi) if t not in vocab]
    if missing:
        raise ValueError(f"word tokenizer: special tokens {missing} have no id in the vocabulary")
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok.add_special_tokens(list(special_tokens))  # already in vocab: they keep their ids
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, vocab[bos])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=unk,
        padding_side="left",
        extra_special_tokens={"image_token": image, "boi_token": boi, "eoi_token": eoi},
    )


def tiny_janus_config(
    vocab_size: int,
    image_token_id: int,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    codebook_size: int = 64,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    vision_hidden: int = 32,
    vision_layers: int = 1,
    vq_channels: int = 32,
    vq_embed_dim: int = 8,
    pad_token_id: int = 0,
    bos_token_id: int = 1,
    eos_token_id: int = 2,
) -> JanusConfig:
    """A small JanusConfig whose VQ grid equals the vision patch grid (JanusConfig overwrites
    vq num_patches with image_size // patch_size): the VQ downsamples by patch_size, i.e.
    log2(patch_size) downsampling stages."""
    grid = image_size // patch_size
    if grid * patch_size != image_size or patch_size & (patch_size - 1):
        raise ValueError(
            f"image_size {image_size} must be a multiple of a power-of-two patch_size {patch_size}"
        )
    stages = patch_size.bit_length() - 1  # downsamplings of the VQ encoder
    multipliers = [1, *[min(2, 1 + i) for i in range(stages)]]  # length stages + 1
    return JanusConfig(
        text_config=LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 4,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_heads,
            max_position_embeddings=512,
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
        ),
        vision_config=dict(
            hidden_size=vision_hidden,
            num_hidden_layers=vision_layers,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
            projection_dim=hidden_size,
            num_image_tokens=grid * grid,
            mlp_ratio=2.0,
        ),
        vq_config=dict(
            embed_dim=vq_embed_dim,
            num_embeddings=codebook_size,
            latent_channels=vq_channels,
            base_channels=vq_channels,
            channel_multiplier=multipliers,
            num_res_blocks=1,
            projection_dim=hidden_size,
            image_token_embed_dim=hidden_size,
        ),
        image_token_id=image_token_id,
    )


def tiny_janus(
    seed: int = 0,
    words: list[str] | tuple[str, ...] = BASE_WORDS,
    dtype: torch.dtype = torch.float32,
    **config,
) -> JanusAdapter:
    """A random tiny Janus with its tokenizer and processor, wrapped in the adapter.
    Keyword arguments go to `tiny_janus_config` (image_size, patch_size, codebook_size, ...)."""
    tokenizer = word_tokenizer(words)
    image_token_id = tokenizer.convert_tokens_to_ids("<image_placeholder>")
    cfg = tiny_janus_config(
        len(tokenizer),
        image_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **config,
    )
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(cfg).to(dtype).eval()
    size = cfg.vision_config.image_size
    image_processor = JanusImageProcessorPil(
        size={"height": size, "width": size},
        min_size=min(14, size),
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = JanusProcessor(
        image_processor, tokenizer, num_image_tokens=cfg.vision_config.num_image_tokens
    )
    return JanusAdapter(model, processor)


JANUS_PRO_TEXT = {
    # Llama backbones of Janus-Pro (DeepSeek-LLM 1.5B / 7B layouts)
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=24, num_attention_heads=16),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=30, num_attention_heads=32),
}


def janus_pro_config(size: str = "1b") -> JanusConfig:
    """The Janus-Pro layout: SigLIP-L vision encoder at 384 px / patch 16 (576 tokens), a
    16,384-code VQ with 8-dim codes on a 24x24 grid, and the 1B or 7B Llama backbone."""
    if size not in JANUS_PRO_TEXT:
        raise ValueError(f"Janus-Pro size must be one of {sorted(JANUS_PRO_TEXT)}, got {size!r}")
    text = JANUS_PRO_TEXT[size]
    hidden = text["hidden_size"]
    return JanusConfig(
        text_config=LlamaConfig(
            vocab_size=102400,
            num_key_value_heads=text["num_attention_heads"],
            max_position_embeddings=16384,
            pad_token_id=100002,  # <｜▁pad▁｜>: Janus-Pro-1B config.json (100015 was Janus-1.3B ONNX's)
            bos_token_id=100000,
            eos_token_id=100001,
            tie_word_embeddings=False,  # the checkpoints keep language_model.lm_head apart
            **text,
        ),
        vision_config=dict(image_size=384, patch_size=16, projection_dim=hidden, num_image_tokens=576),
        vq_config=dict(
            num_embeddings=16384, embed_dim=8, projection_dim=hidden, image_token_embed_dim=hidden
        ),
        image_token_id=100581,
        tie_word_embeddings=False,
    )
