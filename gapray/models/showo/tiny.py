"""Show-o built in code: the tiny Show-o (a word-level tokenizer in Show-o's id layout, Phi 64 wide,
MAGVIT-v2 of 64 codes at 32 px) for tests and CPU runs, Show-o-512's layout on the meta device,
and `check_showo_shapes`, one dummy forward of each path. No files are read."""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from transformers import PhiConfig, PreTrainedTokenizerFast

from gapray.models.showo.adapter import ShowoAdapter
from gapray.models.showo.layout import (
    NEW_TOKENS,
    NUM_NEW_TOKENS,
    PAD_TOKEN,
    MagvitConfig,
    SamplerSettings,
    ShowoLayout,
)
from gapray.models.showo.network import ShowoUnified, omni_mask

# --------------------------------------------------------------------------- built in code
TINY_WORDS = (
    "USER ASSISTANT : ? . , a an the of and or photo does this image show answer yes no Yes No is are "
    "there left right above below one two three four five six red orange yellow green blue purple pink "
    "brown black white circle circles square squares triangle triangles cross crosses"
).split()
ENDOFTEXT = "<|endoftext|>"


def tiny_tokenizer(words: tuple[str, ...] | list[str] = TINY_WORDS) -> PreTrainedTokenizerFast:
    """A word-level tokenizer in Show-o's id layout: <unk>, <|endoftext|> (bos = eos, as Phi),
    the words; then [PAD] and the nine new tokens at llm_vocab_size + 0..9."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, ENDOFTEXT: 1}
    for w in words:
        vocab.setdefault(w, len(vocab))
    for t in (PAD_TOKEN, *NEW_TOKENS):
        vocab[t] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok.add_special_tokens(["<unk>", ENDOFTEXT, PAD_TOKEN, *NEW_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=ENDOFTEXT, eos_token=ENDOFTEXT, unk_token="<unk>", pad_token=PAD_TOKEN
    )


PHI_1_5 = dict(
    # microsoft/phi-1_5 config.json
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=24,
    num_attention_heads=32,
    num_key_value_heads=32,
    partial_rotary_factor=0.5,
    hidden_act="gelu_new",
    layer_norm_eps=1e-5,
    max_position_embeddings=2048,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    qk_layernorm=False,
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attention_dropout=0.0,
)
SHOWO_512 = dict(
    vocab_size=58_498, llm_vocab_size=50_295, codebook_size=8_192, num_vq_tokens=1_024, max_text_len=128
)
"""configs/showo_demo_512x512.yaml (model.showo, dataset.preprocessing.max_seq_length)."""
TINY_DIMS = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2
)
TINY_VQ = MagvitConfig(
    ch=32,
    encoder_ch_mult=(1, 1, 1, 1),
    encoder_num_res_blocks=(1, 1, 1, 1),
    decoder_ch_mult=(1, 1, 1, 1),
    decoder_num_res_blocks=(1, 1, 1, 1),
    z_channels=6,
)
"""32 px -> 4 x 4 = 16 tokens of 64 codes (8x downsampling)."""


def phi_config(vocab_size: int, **dims) -> PhiConfig:
    return PhiConfig(**{**PHI_1_5, **dims, "vocab_size": vocab_size})


def tiny_showo(
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    *,
    max_text_len: int = 16,
    sampler: SamplerSettings | None = None,
    **sampler_overrides,
) -> ShowoAdapter:
    """A random tiny Show-o (Phi 64 wide, 2 layers; MAGVIT-v2 32 channels, 64 codes, 32 px) from
    `seed`, drawn on the CPU whatever `device`, so every role built from one seed holds the same
    weights. sampler_overrides: steps, schedule, ... (None = default; tiny default 4 steps)."""
    tok = tiny_tokenizer()
    llm_vocab = tok.convert_tokens_to_ids(PAD_TOKEN)
    K, T = TINY_VQ.codebook_size, 16
    layout = ShowoLayout(llm_vocab + NUM_NEW_TOKENS + K + 1, llm_vocab, K, T, max_text_len)
    torch.manual_seed(seed)
    model = ShowoUnified(phi_config(layout.vocab_size, max_position_embeddings=256, **TINY_DIMS), TINY_VQ)
    model = model.to(dtype).to(device).eval()
    base = sampler or SamplerSettings(steps=4)
    base = replace(base, **{k: v for k, v in sampler_overrides.items() if v is not None})
    return ShowoAdapter(model, tok, layout, sampler=base)


def showo_512_meta() -> ShowoUnified:
    """Show-o-512's layout (Phi-1.5 sizes, 1,024 image tokens, 8,192 codes, 58,498 ids, the
    official MAGVIT-v2) on the meta device: no weights, for shape checks."""
    with torch.device("meta"):
        return ShowoUnified(phi_config(SHOWO_512["vocab_size"]), MagvitConfig())


def check_showo_shapes(model: ShowoUnified, layout: ShowoLayout) -> dict[str, tuple[int, ...]]:
    """One forward of each path on dummy inputs (works on the meta device); raises ValueError
    naming a mismatch, returns the shapes seen."""
    layout.check()
    vq, phi = model.vq_model.config, model.showo.config
    g = math.isqrt(layout.num_vq_tokens)
    size = g * vq.downsample
    problems = []
    if vq.codebook_size != layout.codebook_size:
        problems.append(f"MAGVIT-v2 codes {vq.codebook_size} != codebook_size {layout.codebook_size}")
    if phi.vocab_size != layout.vocab_size:
        problems.append(f"Phi vocab_size {phi.vocab_size} != {layout.vocab_size}")
    L = layout.max_text_len + 1 + layout.num_vq_tokens + 2
    if phi.max_position_embeddings < L:
        problems.append(f"generation sequence {L} > max_position_embeddings {phi.max_position_embeddings}")
    if problems:
        raise ValueError("Show-o config does not fit together: " + "; ".join(problems))
    dev = model.device
    K, V = layout.codebook_size, layout.vocab_size
    shapes = {}
    with torch.no_grad():
        ids = torch.zeros(1, L, dtype=torch.long, device=dev)
        is_pad = torch.zeros(1, L, dtype=torch.bool, device=dev)
        image = torch.zeros(1, L, dtype=torch.bool, device=dev)
        image[:, layout.max_text_len + 1 :] = True
        mask = omni_mask(is_pad, None, image)
        shapes["logits"] = tuple(model.showo(input_ids=ids, attention_mask=mask).logits.shape)
        shapes["latents"] = tuple(model.vq_model.encoder(torch.zeros(1, 3, size, size, device=dev)).shape)
        shapes["decoded"] = tuple(
            model.vq_model.decoder(torch.zeros(1, vq.z_channels, g, g, device=dev)).shape
        )
        shapes["codes"] = (1, model.vq_model.quantize.embedding.shape[0])
    expected = {
        "logits": (1, L, V),
        "latents": (1, vq.z_channels, g, g),
        "decoded": (1, 3, size, size),
        "codes": (1, K),
    }
    for key, want in expected.items():
        if shapes[key] != want:
            raise ValueError(f"Show-o shape check: {key} is {shapes[key]}, expected {want}")
    return shapes
