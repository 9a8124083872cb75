"""Show-o family adapter: a mask-prediction (MaskGIT) generator behind the model seam of `base.py`.

Show-o (showlab/Show-o) is one Phi-1.5 transformer over one vocabulary: Phi's text ids, then
10 new tokens ([PAD] and <|soi|> <|eoi|> <|sov|> <|eov|> <|t2i|> <|mmu|> <|t2v|> <|v2v|> <|lvg|>),
then the codes of a MAGVIT-v2 LFQ tokenizer, then one [MASK] id last:

    ids  [0, llm_vocab)  text   |  llm_vocab: [PAD], +1..+9 the task/image tokens
         code c          code_offset + c   (code_offset = llm_vocab + 10)
         [MASK]          vocab_size - 1    (Show-o-512: 50,295 + 10 + 8,192 + 1 = 58,498)

Attention is "omni": causal over text, full over the image segment (<|soi|> ... <|eoi|>).

    generation     [PAD]* <|t2i|> <bos> prompt <eos> | <|soi|> T image ids <|eoi|>
                   (the text part left-padded to max_text_len + 1 tokens; image tokens see all
                   real tokens, text is causal, nothing attends to [PAD])
    understanding  <|mmu|> <|soi|> T image ids <|eoi|> <bos> question ... (full attention over
                   the image prefix, causal after; the answer is read at the last position)

Operations, as the seam wants them:

- `generate`: MaskGIT sampling as Show-o's `t2i_generate`: start all [MASK]; each of `steps`
  steps samples every masked token, keeps known ones, and re-masks the floor(T * schedule((s+1)/S))
  least confident (confidence = log p of the drawn token + annealed Gumbel noise; at least one
  kept and one re-masked per step); the last step's draws are the image. Every (row, image
  position) draws from its own counter-based stream on the model's device (`sampling.uniforms`
  keyed by the row's seed, per-row seeds as for Janus): the token by the inverse CDF of its
  distribution, the re-masking noise as Gumbel(-log(-log u)); the text part has a fixed
  length, so a row depends only on its prompt and seed, not on its batch.
- CFG, through the project's one rule (`base.guidance`): logits = uncond + w * (cond - uncond)
  with w = the configured cfg_scale. Show-o writes (1 + s) * cond - s * uncond, which is the
  same with w = 1 + s: Show-o's guidance_scale s corresponds to generation.cfg_scale = s + 1
  (its 512 px demo, s = 5, is cfg_scale 6). The unconditional row is Show-o's: the empty
  prompt through the same template.
- temperature: the softmax temperature of the token draws (Show-o fixes it at 1; gapray's
  default 1.0 is Show-o's sampler). Show-o's own `generation_temperature` scales the
  re-masking noise instead; here it is `mask_temperature`, annealed as Show-o does
  (multiplied by (1 - (s+1)/S) at every step, cumulatively).
- `decode`: LFQ codes -> bits (+-1, most significant first) -> the MAGVIT-v2 decoder.
- `judge`: P(yes) / (P(yes) + P(no)) at the answer position of the understanding path; the image
  is encoded by the MAGVIT-v2 encoder + LFQ (resize shorter side, centre crop, as Show-o).
- `image_logprobs`: a mask-prediction model has no exact image likelihood. The surrogate is the
  Monte Carlo masked-token log-likelihood (the MaskGIT / masked-diffusion ELBO form, as LLaDA
  estimates it): for each of K draws, t_k = (k + u_k) / K (stratified on (0, 1)), a mask ratio
  r_k = schedule(t_k), n_k = clamp(ceil(T * r_k), 1, T) positions masked uniformly at random;
  the model sees the image with those positions [MASK]ed and scores the true tokens there:

      per_token[i] = (1/K) sum_k (T / n_k) * 1[i masked in draw k] * log p_k(x_i | unmasked_k)
      summed       = sum_i per_token[i]

  (T / n_k is the inverse masking probability, so per_token[i] estimates the expected masked
  log-likelihood of token i over the schedule, and summed is on the scale of T tokens, like an
  autoregressive log-likelihood.) With cfg_scale the CFG-combined logits are scored (both rows
  see the same mask). The draws are seeded from (logprob_seed, the row's prompt, its tokens):
  the same row always gets the same masks, alone or batched, and the policy and the reference
  see the same masks (common random numbers: the DPO log-ratio's variance comes only from the
  two models' difference). The variance over seeds falls at least as 1/K (the stratified
  draws do better: on the tiny Show-o, summed over T = 16 tokens, 0.61 / 0.096 / 0.024 at
  K = 1 / 4 / 16, 10 seeds; tested); K = `logprob_draws`, default 4: each draw costs one
  forward (two with CFG) with gradients, and at T = 1,024 one draw already scores about 0.64 T
  tokens on average (the mean of cos(pi t / 2) over t).
- `set_trainable`: "llm" the Phi backbone (showo.model: embeddings, layers, final norm); "all"
  also the LM head (everything but the frozen MAGVIT-v2); "lora" LoRA on the layers' attention
  and MLP projections (peft), the rest frozen.
- Checkpoints: a directory in the official layout (see `check_showo_checkpoint_dir`): Show-o's
  config.json + weights (names showo.model.*, showo.lm_head.*), `llm/` (Phi-1.5's config.json
  and tokenizer), `vq/` (showlab/magvitv2: config.json + weights encoder.*, decoder.*,
  quantize.*). Names are mapped explicitly; a missing, unexpected or misshapen key is named.

    adapter = tiny_showo(seed=0)                       # built in code: 16 tokens, 64 codes, 32 px
    tokens = adapter.generate(["a red circle"], n=2, cfg_scale=4.0, seed=0)   # (2, 16)

Files, one role each (the package's public names are re-exported here):

    layout.py      the special tokens, ShowoLayout, SamplerSettings, MagvitConfig, the mask
                   schedules, CheckpointError
    magvit.py      the MAGVIT-v2 LFQ tokenizer (encoder, decoder, quantizer)
    network.py     ShowoUnified (Phi + MAGVIT-v2 as torch modules), the code-logits forward,
                   omni_mask
    masking.py     MaskGIT sampling (generate) and the log-likelihood surrogate (image_logprobs),
                   their seeds; a mixin of ShowoAdapter
    adapter.py     ShowoAdapter: the model seam (trainable sets, sequences, decode, judge,
                   save_pretrained / from_pretrained)
    checkpoint.py  official-layout checkpoint directories: checks, weights, names, tokenizer
    tiny.py        built in code: the tiny Show-o, Show-o-512 on meta, check_showo_shapes
    loading.py     by model.name: is_showo, load_showo, showo_image_size
"""

from gapray.models.showo.adapter import (
    DEFAULT_JUDGE_TEMPLATE,
    FAMILY,
    LORA_TARGETS,
    ShowoAdapter,
)
from gapray.models.showo.checkpoint import (
    ADAPTER_FILE,
    SHOWO_WEIGHT_FILES,
    VQ_WEIGHT_FILES,
    check_showo_checkpoint_dir,
    is_showo_checkpoint,
    load_official_state,
    official_names,
)
from gapray.models.showo.layout import (
    NEW_TOKENS,
    NUM_NEW_TOKENS,
    PAD_TOKEN,
    SCHEDULES,
    CheckpointError,
    MagvitConfig,
    SamplerSettings,
    ShowoLayout,
    mask_schedule,
    masked_count,
)
from gapray.models.showo.loading import (
    TINY_NAME,
    is_showo,
    load_showo,
    showo_image_size,
)
from gapray.models.showo.magvit import (
    AttnBlock,
    LFQuantizer,
    MagvitDecoder,
    MagvitEncoder,
    MagvitV2,
    ResnetBlock,
)
from gapray.models.showo.masking import (
    MaskPrediction,
    logprob_row_seed,
    position_keys,
)
from gapray.models.showo.network import (
    ShowoUnified,
    omni_mask,
)
from gapray.models.showo.tiny import (
    ENDOFTEXT,
    PHI_1_5,
    SHOWO_512,
    TINY_DIMS,
    TINY_VQ,
    TINY_WORDS,
    check_showo_shapes,
    phi_config,
    showo_512_meta,
    tiny_showo,
    tiny_tokenizer,
)

__all__ = [
    "ADAPTER_FILE",
    "DEFAULT_JUDGE_TEMPLATE",
    "ENDOFTEXT",
    "FAMILY",
    "LORA_TARGETS",
    "NEW_TOKENS",
    "NUM_NEW_TOKENS",
    "PAD_TOKEN",
    "PHI_1_5",
    "SCHEDULES",
    "SHOWO_512",
    "SHOWO_WEIGHT_FILES",
    "TINY_DIMS",
    "TINY_NAME",
    "TINY_VQ",
    "TINY_WORDS",
    "VQ_WEIGHT_FILES",
    "AttnBlock",
    "CheckpointError",
    "LFQuantizer",
    "MagvitConfig",
    "MagvitDecoder",
    "MagvitEncoder",
    "MagvitV2",
    "MaskPrediction",
    "ResnetBlock",
    "SamplerSettings",
    "ShowoAdapter",
    "ShowoLayout",
    "ShowoUnified",
    "check_showo_checkpoint_dir",
    "check_showo_shapes",
    "is_showo",
    "is_showo_checkpoint",
    "load_official_state",
    "load_showo",
    "logprob_row_seed",
    "mask_schedule",
    "masked_count",
    "official_names",
    "omni_mask",
    "phi_config",
    "position_keys",
    "showo_512_meta",
    "showo_image_size",
    "tiny_showo",
    "tiny_tokenizer",
]
