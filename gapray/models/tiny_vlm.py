"""A tiny random image-text-to-text model of a real transformers architecture, built in code.

For tests of the external-judge path: LLaVA (`LlavaForConditionalGeneration`: a 1-layer CLIP
vision tower, a 1-layer Llama) with a word-level tokenizer, a chat template and a CLIP image
processor, saved with save_pretrained so it loads through the same AutoModelForImageTextToText
+ AutoProcessor path as Qwen2.5-VL. Its verdicts are random but deterministic per seed.

    path = save_tiny_vlm(tmp_path / "judge", seed=0)
    judge = VlmJudge.from_pretrained(path)
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from gapray.models.tiny import BASE_WORDS, build_word_tokenizer

SPECIAL = ("<pad>", "<bos>", "<eos>", "<unk>", "<image>", "USER", "ASSISTANT")
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() }} : "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}ASSISTANT : {% endif %}"
)
"""USER : <image> <question> ASSISTANT : -- the answer is the next token."""


def save_tiny_vlm(path: str | Path, seed: int = 0, image_size: int = 32, patch_size: int = 8) -> Path:
    """Build the tiny LLaVA with random weights (torch seed `seed`) and save model + processor."""
    vocab: dict[str, int] = {}
    for w in (*SPECIAL, *BASE_WORDS):
        vocab.setdefault(w, len(vocab))
    tokenizer = build_word_tokenizer(vocab, SPECIAL, image="<image>", boi="<image>", eoi="<image>")
    tokenizer.chat_template = CHAT_TEMPLATE
    text = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=vocab["<pad>"],
        bos_token_id=vocab["<bos>"],
        eos_token_id=vocab["<eos>"],
    )
    vision = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )
    # "default": the CLS feature is dropped, so the processor adds 1 to the patch count it
    # expands <image> into, and the two agree on (image_size / patch_size)^2 features.
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=vocab["<image>"],
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg).eval()
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        ),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
