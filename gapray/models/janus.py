"""Janus family adapter on transformers' `JanusForConditionalGeneration`.

Implements the model seam of `base.py` (generate with CFG, decode, judge, image log-probs) for
Janus / Janus-Pro checkpoints in `save_pretrained` layout, and for the tiny models built in
`tiny.py`. The generation path is

    prompt text -> <bos> ... <begin_of_image>  --LLM-->  h  --generation_head-->  logits over VQ codes
    image token -> generation_embeddings -> generation_aligner -> next LLM input

and the understanding path is the usual image-text chat: the processor expands
`<image_placeholder>` into `<begin_of_image>` + T placeholders + `<end_of_image>`, the vision
encoder's patch features replace the placeholders, and the LM head's next-token distribution
after the question is read at the "yes"/"no" tokens.

Sampling and teacher forcing run the same code path (same prompt encoding, same position ids,
same CFG combination), so a greedy CFG sample is exactly the argmax of the teacher-forced CFG
logits of its own tokens (tested).

    adapter = JanusAdapter.from_pretrained("/path/to/Janus-Pro-1B")
    tokens = adapter.generate(["a photo of a cat"], n=4, cfg_scale=5.0, seed=0)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import (
    AutoTokenizer,
    DynamicCache,
    JanusForConditionalGeneration,
    JanusImageProcessorPil,
    JanusProcessor,
)

from gapray.models.base import (
    DEFAULT_QUESTION,
    Judgement,
    TrainableMode,
    check_generate_args,
    check_judge_args,
    combine_cfg,
)
from gapray.models.kv_cache import PreallocatedCache
from gapray.models.sampling import RowSampler

DEFAULT_GEN_TEMPLATE = "<|User|>: {prompt}\n\n<|Assistant|>:"
"""Janus-Pro's chat format; the processor appends <begin_of_image> for generation."""
DEFAULT_JUDGE_TEMPLATE = "<|User|>: <image_placeholder>\n{question}\n\n<|Assistant|>:"
ADAPTER_FILE = "gapray_adapter.json"
"""Adapter settings saved beside the checkpoint (templates, answer words)."""
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


class CheckpointError(ValueError):
    """A model path that is missing or does not hold a loadable Janus checkpoint."""


def gen_prompt_ids(tokenizer, template: str, prompt: str) -> tuple[list[int], list[int]]:
    """One prompt's generation ids (template + <begin_of_image>) and its unconditional twin for
    CFG: every token but the first and the last (<bos>, <begin_of_image>) replaced by pad, as
    Janus builds them. The one place this rule lives: the transformers path (batches of these,
    left-padded) and the vLLM engine both use it."""
    ids = list(tokenizer(template.format(prompt=prompt) + tokenizer.boi_token)["input_ids"])
    return ids, [ids[0], *[tokenizer.pad_token_id] * (len(ids) - 2), ids[-1]]


def _row_seeds(seed: int | list[int], rows: int) -> list[int]:
    if isinstance(seed, int):
        # Row r of a call with seed s always gets the same stream, whatever the batch split.
        return [seed * 1_000_003 + r for r in range(rows)]
    if len(seed) != rows:
        raise ValueError(f"seed: got {len(seed)} per-row seeds for {rows} output rows")
    return list(seed)


class JanusAdapter:
    """One Janus model plus its processor, behind the four operations of the model seam."""

    family = "janus"

    def __init__(
        self,
        model: JanusForConditionalGeneration,
        processor: JanusProcessor,
        *,
        gen_template: str = DEFAULT_GEN_TEMPLATE,
        judge_template: str = DEFAULT_JUDGE_TEMPLATE,
        question: str = DEFAULT_QUESTION,
        yes_words: tuple[str, ...] = ("yes", "Yes"),
        no_words: tuple[str, ...] = ("no", "No"),
        threshold: float = 0.5,
        extra_settings: dict | None = None,
    ):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.gen_template = gen_template
        self.judge_template = judge_template
        self.question = question
        self.threshold = threshold
        # Settings the adapter does not use itself but keeps with the checkpoint, e.g. the
        # cfg_scale / temperature a toy model was tuned with (read by `gapray eval`).
        self.extra_settings = dict(extra_settings or {})
        self.yes_ids = self._answer_ids(yes_words, "yes_words")
        self.no_ids = self._answer_ids(no_words, "no_words")
        self.trainable_mode: TrainableMode | None = None
        self._peft = None  # peft.PeftModel wrapping self.model when mode == "lora"
        self._teacher: _TeacherForcing | None = None  # built by training_module()
        cfg = model.config
        self.num_image_tokens = cfg.vision_config.num_image_tokens
        self.codebook_size = cfg.vq_config.num_embeddings
        self.image_size = cfg.vision_config.image_size
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            raise CheckpointError("the tokenizer has no pad token; Janus's unconditional CFG row needs one")

    # ----------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, device: str = "cpu"
    ) -> JanusAdapter:
        """Load a local `save_pretrained` directory (model + processor), or a hub id where a
        network exists. Errors name the path and what is wrong with it."""
        p = Path(path)
        local = p.exists() or str(path).startswith((".", "/", "~")) or os.sep in str(path).rstrip("/")[:1]
        if p.exists() and not p.is_dir():
            raise CheckpointError(f"model path {path}: is a file, expected a checkpoint directory")
        if local or p.exists():
            check_checkpoint_dir(p)
        try:
            model = JanusForConditionalGeneration.from_pretrained(str(path), dtype=dtype).to(device)
            tokenizer = AutoTokenizer.from_pretrained(str(path))
            image_processor = JanusImageProcessorPil.from_pretrained(str(path))
        except Exception as err:  # any loader failure (OSError, SafetensorError, ...) is the path's fault
            raise CheckpointError(
                f"model path {path}: cannot load a Janus checkpoint: {type(err).__name__}: {err}"
            ) from err
        model.eval()
        processor = JanusProcessor(
            image_processor, tokenizer, num_image_tokens=model.config.vision_config.num_image_tokens
        )
        settings = {}
        settings_file = p / ADAPTER_FILE
        if settings_file.exists():
            try:
                settings = json.loads(settings_file.read_text())
            except json.JSONDecodeError as err:
                raise CheckpointError(f"{settings_file}: malformed JSON: {err}") from err
            for key in ("yes_words", "no_words"):
                if key in settings:
                    settings[key] = tuple(settings[key])
        known = {"gen_template", "judge_template", "question", "yes_words", "no_words", "threshold"}
        extra = {k: v for k, v in settings.items() if k not in known}
        settings = {k: v for k, v in settings.items() if k in known}
        return cls(model, processor, extra_settings=extra, **settings)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write model (LoRA merged), tokenizer, image processor and adapter settings to `path`;
        the directory loads with plain transformers (`JanusForConditionalGeneration`)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        model = self.model
        if self._peft is not None:
            # Merge into a copy so the live model keeps its adapters and optimizer state.
            import copy

            model = copy.deepcopy(self._peft).merge_and_unload()
        model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        self.processor.image_processor.save_pretrained(path)
        settings = {
            "gen_template": self.gen_template,
            "judge_template": self.judge_template,
            "question": self.question,
            "yes_words": [self.tokenizer.convert_ids_to_tokens(i) for i in self.yes_ids],
            "no_words": [self.tokenizer.convert_ids_to_tokens(i) for i in self.no_ids],
            "threshold": self.threshold,
            **self.extra_settings,
        }
        (path / ADAPTER_FILE).write_text(json.dumps(settings, indent=2))

    # ------------------------------------------------------------------------------- parameters
    @property
    def device(self) -> torch.device:
        return self.model.lm_head.weight.device

    def set_trainable(self, mode: TrainableMode, *, lora_rank: int = 8, lora_alpha: int = 16) -> None:
        """Choose what trains. "llm": the language model only (the paper: only the LLM backbone
        is fine-tuned); "all": everything but the VQ tokenizer (frozen in Janus); "lora": LoRA
        adapters on the language model's attention and MLP projections, everything else frozen."""
        if mode not in ("llm", "all", "lora"):
            raise ValueError(f"trainable mode must be one of llm, all, lora; got {mode!r}")
        if self._peft is not None and mode != "lora":
            raise ValueError("LoRA adapters are attached; merge them (save and reload) before another mode")
        if mode == "lora" and self._peft is None:
            from peft import LoraConfig, get_peft_model

            cfg = LoraConfig(
                r=lora_rank, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules=LORA_TARGETS
            )
            # get_peft_model injects LoRA layers into self.model's modules in place, so every
            # forward below (which calls self.model) runs with the adapters.
            self._peft = get_peft_model(self.model, cfg)
        for name, param in self.model.named_parameters():
            if mode == "lora":
                param.requires_grad_("lora_" in name)
            elif mode == "llm":
                param.requires_grad_(name.startswith("model.language_model."))
            else:
                param.requires_grad_(not name.startswith("model.vqmodel."))
        self.trainable_mode = mode

    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def reference_mode(self):
        """Context manager in which forwards run the frozen reference: LoRA adapters disabled.
        Only meaningful under LoRA; with full fine-tuning the reference is a separate copy."""
        if self._peft is None:
            raise ValueError("reference_mode needs LoRA adapters (set_trainable('lora'))")
        return self._peft.disable_adapter()

    # ----------------------------------------------------------------------------- generation
    def _encode_gen_prompts(self, prompts: list[str], cfg: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompt ids ending in <begin_of_image>; with cfg, the unconditional rows
        follow the conditional ones: every real token but the first and the last (<bos>,
        <begin_of_image>) replaced by pad, as Janus builds them. Returns ids, mask (R, L)."""
        pairs = [gen_prompt_ids(self.tokenizer, self.gen_template, p) for p in prompts]
        rows = [c for c, _ in pairs] + ([u for _, u in pairs] if cfg else [])
        L = max(len(r) for r in rows)
        ids = torch.tensor([[self.pad_id] * (L - len(r)) + r for r in rows])  # left padding
        mask = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in rows])
        return ids.to(self.device), mask.to(self.device)

    @staticmethod
    def _positions(mask: torch.Tensor) -> torch.Tensor:
        # Left padding: real tokens count from 0, pads sit at 0 (they are masked anyway).
        return (mask.cumsum(-1) - 1).clamp(min=0)

    _cfg = staticmethod(combine_cfg)  # the one CFG combination (models.base)

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        n: int = 1,
        cfg_scale: float | None = 5.0,
        temperature: float = 1.0,
        seed: int | list[int] = 0,
        batch_size: int = 64,
        return_logprobs: bool = False,
        cache: str = "static",
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Sample T image tokens for each of n images per prompt -> (len(prompts)*n, T) long.

        Rows are grouped by prompt (row r is prompt r // n). Each row draws from its own
        counter-based stream seeded from `seed` (or from `seed[r]`; `gapray.models.sampling`),
        on the model's device, so a row's tokens depend on its seed and prompt only, not on the
        batch it ran in. temperature 0 is greedy. cache: "static" (preallocated KV cache, the
        default) or "dynamic" (grown per step; the same tokens, kept as a check). With
        return_logprobs, also the (N, T) log-probs of the drawn tokens under the distribution
        they were drawn from (CFG-combined, at `temperature`; at temperature 0, under the
        temperature-1 distribution)."""
        check_generate_args(prompts, n, cfg_scale, temperature)
        rows = [p for p in prompts for _ in range(n)]
        seeds = _row_seeds(seed, len(rows))
        chunks = [
            self._generate_rows(
                rows[i : i + batch_size], seeds[i : i + batch_size], cfg_scale, temperature, cache
            )
            for i in range(0, len(rows), batch_size)
        ]
        tokens = torch.cat([c[0] for c in chunks])
        return (tokens, torch.cat([c[1] for c in chunks])) if return_logprobs else tokens

    def _generate_rows(
        self,
        prompts: list[str],
        seeds: list[int],
        cfg_scale: float | None,
        temperature: float,
        cache: str = "static",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch: prefill, then T decode steps. cache "static": a PreallocatedCache for
        prompt + T positions, written in place, attention over the filled prefix, the mask a
        view of one mask built once; "dynamic": a DynamicCache grown by torch.cat each step
        (the older path, kept to check the static one against). Tokens are drawn on the
        model's device by `RowSampler`, row r from seeds[r] alone."""
        lm = self.model.model.language_model
        R, T = len(prompts), self.num_image_tokens
        ids, mask = self._encode_gen_prompts(prompts, cfg_scale is not None)
        Rp, L = ids.shape
        sampler = RowSampler(seeds, self.device)
        full_mask = torch.cat([mask, mask.new_ones(Rp, T)], dim=1)  # (R', L + T)
        if cache == "static":
            kv = PreallocatedCache(self.model.config.text_config, max_cache_len=L + T)
        elif cache == "dynamic":
            kv = DynamicCache(config=self.model.config.text_config)
        else:
            raise ValueError(f"cache must be 'static' or 'dynamic', got {cache!r}")
        out = lm(
            inputs_embeds=self.model.get_input_embeddings()(ids),
            attention_mask=mask,
            position_ids=self._positions(mask),
            past_key_values=kv,
            use_cache=True,
        )
        pos = self._positions(mask)[:, -1:]  # (R', 1)
        tokens = torch.empty(R, T, dtype=torch.long, device=self.device)
        logprobs = torch.empty(R, T, dtype=torch.float32, device=self.device)
        for t in range(T):
            logits = self._guided_head(out.last_hidden_state[:, -1], cfg_scale)
            tokens[:, t], logprobs[:, t] = sampler.sample(logits, temperature, t)  # (R,) each
            if t == T - 1:
                break
            nxt = tokens[:, t : t + 1]
            if cfg_scale is not None:
                nxt = torch.cat([nxt, nxt])  # both CFG rows consume the same token
            pos = pos + 1
            out = lm(
                inputs_embeds=self.model.prepare_embeddings_for_image_generation(nxt),
                attention_mask=full_mask[:, : L + t + 1],
                position_ids=pos,
                past_key_values=kv,
                use_cache=True,
            )
        return tokens, logprobs

    def _guided_head(self, h: torch.Tensor, cfg_scale: float | None) -> torch.Tensor:
        """(R', D) last hidden states -> (R, K) CFG logits. The head's last layer is affine, so
        uncond + s (cond - uncond) of its outputs is that layer applied to the same mix of its
        inputs (the bias weighs 1 + s - s = 1): one (R, K) matmul instead of (2R, K)."""
        head = self.model.model.generation_head
        if cfg_scale is None:
            return head(h).float()
        a = head.activation_fn(head.proj_out(h))
        cond, uncond = a.chunk(2)
        return head.vision_head(uncond + cfg_scale * (cond - uncond)).float()

    def image_logprobs(
        self,
        prompts: list[str],
        tokens: torch.Tensor,
        cfg_scale: float | None = None,
        temperature: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced log-probs of `tokens` (N, T) given prompts[i] for row i.

        Returns (summed (N,), per token (N, T)), differentiable w.r.t. the trainable parameters.
        With cfg_scale the distribution is the CFG-combined one the sampler draws from (both the
        conditional and the unconditional pass carry gradients, as in Flow-GRPO); without it,
        the plain conditional distribution (T2I-R1's choice)."""
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 for log-probs, got {temperature}")
        logits = self.image_logits(prompts, tokens, cfg_scale)  # (N, T, K)
        logp = F.log_softmax(logits.float() / temperature, dim=-1)
        per_token = logp.gather(-1, tokens.to(self.device).unsqueeze(-1)).squeeze(-1)  # (N, T)
        return per_token.sum(-1), per_token

    def image_logits(
        self, prompts: list[str], tokens: torch.Tensor, cfg_scale: float | None = None
    ) -> torch.Tensor:
        """Teacher-forced generation-head logits (N, T, K) for every position of `tokens`,
        CFG-combined when cfg_scale is given; position t sees the prompt and tokens[:, :t]."""
        if len(prompts) != tokens.shape[0]:
            raise ValueError(f"image_logprobs: {len(prompts)} prompts for {tokens.shape[0]} token rows")
        if tokens.ndim != 2 or tokens.shape[1] != self.num_image_tokens:
            raise ValueError(
                f"image_logprobs: tokens must be (N, {self.num_image_tokens}), got {tuple(tokens.shape)}"
            )
        if cfg_scale is not None and not cfg_scale > 1:
            raise ValueError(f"cfg_scale: classifier-free guidance needs a scale > 1, got {cfg_scale}")
        tokens = tokens.to(self.device)
        ids, mask = self._encode_gen_prompts(list(prompts), cfg_scale is not None)  # (R, L)
        tok_in = tokens if cfg_scale is None else torch.cat([tokens, tokens])  # (R, T)
        return self._cfg(self.training_module()(ids, mask, tok_in), cfg_scale)  # (N, T, K)

    # ------------------------------------------------------------------- what the learner wraps
    def training_module(self) -> torch.nn.Module:
        """The teacher-forcing forward as one module call, (ids, mask, tokens) -> raw
        generation-head logits: the module the learner shards with FSDP (its forward must be
        the entry point so FSDP's root hooks run) and every image_logits call goes through.
        It holds `self.model` as its child, so parameter names under it are `model.` + the
        model's own names."""
        if self._teacher is None:
            self._teacher = _TeacherForcing(self.model)
        return self._teacher

    def decoder_layers(self) -> list[torch.nn.Module]:
        """The LLM's decoder layers, in order: the units FSDP shards one at a time and
        activation checkpointing recomputes."""
        return list(self.model.model.language_model.layers)

    def frozen_copy(self) -> JanusAdapter:
        """A frozen reference: a copy of this adapter whose trainable parameters are copied
        and frozen while every frozen one (the vision tower, the VQ, and under trainable=llm
        the generation head) is the same tensor as here, held once. Needs set_trainable
        first; not under LoRA (its reference is `reference_mode`)."""
        import copy

        if self.trainable_mode is None or self._peft is not None:
            raise ValueError(
                "frozen_copy: call set_trainable('llm' | 'all') first (LoRA uses reference_mode)"
            )
        shared = {id(p): p for p in self.model.parameters() if not p.requires_grad}
        model = copy.deepcopy(self.model, memo=dict(shared))
        model.requires_grad_(False).eval()
        return JanusAdapter(
            model,
            self.processor,
            gen_template=self.gen_template,
            judge_template=self.judge_template,
            question=self.question,
            yes_words=tuple(self.tokenizer.convert_ids_to_tokens(i) for i in self.yes_ids),
            no_words=tuple(self.tokenizer.convert_ids_to_tokens(i) for i in self.no_ids),
            threshold=self.threshold,
            extra_settings=self.extra_settings,
        )

    # ------------------------------------------------------------------------------- decoding
    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, batch_size: int = 64) -> list[Image.Image]:
        """(N, T) image tokens -> N RGB PIL images through the VQ decoder (pixels in [-1, 1])."""
        if tokens.ndim != 2 or tokens.shape[1] != self.num_image_tokens:
            raise ValueError(
                f"decode: tokens must be (N, {self.num_image_tokens}), got {tuple(tokens.shape)}"
            )
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.codebook_size):
            raise ValueError(f"decode: token ids must lie in [0, {self.codebook_size})")
        images = []
        for i in range(0, tokens.shape[0], batch_size):
            pix = self.model.decode_image_tokens(tokens[i : i + batch_size].to(self.device))  # (B, H, W, 3)
            arr = ((pix.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
            images.extend(Image.fromarray(np.ascontiguousarray(a)) for a in arr)
        return images

    # ---------------------------------------------------------------------------- understanding
    def _answer_ids(self, words: tuple[str, ...], field: str) -> list[int]:
        vocab = self.tokenizer.get_vocab()
        ids = sorted({vocab[w] for w in words if w in vocab})
        if not ids:
            raise CheckpointError(f"{field}: none of {list(words)} is a single token of this tokenizer")
        return ids

    @torch.no_grad()
    def judge(
        self,
        images: list[Image.Image],
        prompts: list[str],
        question: str | None = None,
        batch_size: int = 64,
    ) -> Judgement:
        """P(yes)/(P(yes)+P(no)) for "does image i show prompts[i]?" and the yes/no decision.

        `question` is a template with {prompt} (default: the adapter's, from config)."""
        q = question or self.question
        check_judge_args(images, prompts, q)
        scores = []
        for i in range(0, len(images), batch_size):
            texts = [
                self.judge_template.format(question=q.format(prompt=p)) for p in prompts[i : i + batch_size]
            ]
            imgs = [im.convert("RGB") for im in images[i : i + batch_size]]
            enc = self.processor(text=texts, images=imgs, padding=True, return_tensors="pt")
            mask = enc["attention_mask"].to(self.device)
            logits = self.model(
                input_ids=enc["input_ids"].to(self.device),
                attention_mask=mask,
                position_ids=self._positions(mask),
                pixel_values=enc["pixel_values"].to(self.device, self.model.dtype),
                logits_to_keep=1,
            ).logits[:, -1]  # (B, V)
            logp = F.log_softmax(logits.float(), dim=-1)
            lse_yes = logp[:, self.yes_ids].logsumexp(-1)
            lse_no = logp[:, self.no_ids].logsumexp(-1)
            scores.append(torch.sigmoid(lse_yes - lse_no))  # = P(yes) / (P(yes) + P(no))
        p_yes = torch.cat(scores).cpu()
        return Judgement(p_yes=p_yes, decision=p_yes >= self.threshold)  # s = 1 when S >= threshold


class _TeacherForcing(torch.nn.Module):
    """Teacher-forced generation logits of a Janus model in one forward: prompt embeddings
    (R, L, D) then the image-token embeddings of tokens[:, :-1], through the LLM (no KV cache),
    into the generation head at the L-1 .. L+T-2 positions. forward(ids (R, L), mask (R, L),
    tokens (R, T)) -> (R, T, K)."""

    def __init__(self, model: JanusForConditionalGeneration):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        m = self.model
        L = ids.shape[1]
        embeds = torch.cat(
            [
                m.get_input_embeddings()(ids),  # (R, L, D)
                m.prepare_embeddings_for_image_generation(tokens[:, :-1]),  # (R, T-1, D)
            ],
            dim=1,
        )
        full_mask = torch.cat([mask, mask.new_ones(mask.shape[0], tokens.shape[1] - 1)], dim=1)
        h = m.model.language_model(
            inputs_embeds=embeds,
            attention_mask=full_mask,
            position_ids=JanusAdapter._positions(full_mask),
            use_cache=False,  # teacher forcing needs no cache (and checkpointing must not fill one)
        ).last_hidden_state  # (R, L+T-1, D)
        return m.model.generation_head(h[:, L - 1 :])  # (R, T, K)


def check_checkpoint_dir(p: Path) -> None:
    if not p.exists():
        raise CheckpointError(f"model path {p}: does not exist")
    if not (p / "config.json").is_file():
        raise CheckpointError(f"model path {p}: no config.json (not a save_pretrained checkpoint directory)")
    try:
        cfg = json.loads((p / "config.json").read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"model path {p}: config.json is malformed JSON: {err}") from err
    if cfg.get("model_type") != "janus":
        raise CheckpointError(
            f"model path {p}: config.json model_type is {cfg.get('model_type')!r}, not 'janus'"
        )
    if not any(p.glob("*.safetensors")) and not any(p.glob("*.bin")):
        raise CheckpointError(f"model path {p}: no weight files (*.safetensors)")
    for name in ("tokenizer_config.json", "preprocessor_config.json"):
        if not (p / name).is_file():
            raise CheckpointError(f"model path {p}: no {name} (save the processor with the model)")


def check_janus_shapes(
    model: JanusForConditionalGeneration, prompt_len: int = 8
) -> dict[str, tuple[int, ...]]:
    """Check that a Janus model's parts fit together, by config and by one forward of each path
    on dummy inputs (works on the meta device, so a 7B layout is checked without weights).

    Raises ValueError naming the mismatch; returns the shapes seen."""
    cfg = model.config
    v, q, t = cfg.vision_config, cfg.vq_config, cfg.text_config
    grid = v.image_size // v.patch_size
    problems = []
    if v.num_image_tokens != grid * grid:
        problems.append(
            f"vision num_image_tokens {v.num_image_tokens} != (image_size/patch_size)^2 = {grid * grid}"
        )
    if q.num_patches != grid:
        problems.append(f"vq num_patches {q.num_patches} != vision grid {grid}")
    if v.projection_dim != t.hidden_size:
        problems.append(f"vision projection_dim {v.projection_dim} != LLM hidden_size {t.hidden_size}")
    if q.projection_dim != t.hidden_size or q.image_token_embed_dim != t.hidden_size:
        problems.append(f"vq projection/image_token_embed dims must equal LLM hidden_size {t.hidden_size}")
    if not 0 <= cfg.image_token_id < t.vocab_size:
        problems.append(f"image_token_id {cfg.image_token_id} outside the vocabulary ({t.vocab_size})")
    if problems:
        raise ValueError("Janus config does not fit together: " + "; ".join(problems))

    device = model.lm_head.weight.device
    T, K, D = v.num_image_tokens, q.num_embeddings, t.hidden_size
    shapes: dict[str, tuple[int, ...]] = {}
    with torch.no_grad():
        # Generation path: prompt embeddings + T-1 image-token embeddings -> T distributions over K codes.
        tokens = torch.zeros(1, T, dtype=torch.long, device=device)
        text = model.get_input_embeddings()(torch.zeros(1, prompt_len, dtype=torch.long, device=device))
        img = model.prepare_embeddings_for_image_generation(tokens[:, :-1])
        h = model.model.language_model(inputs_embeds=torch.cat([text, img], 1)).last_hidden_state
        shapes["generation_logits"] = tuple(model.model.generation_head(h[:, prompt_len - 1 :]).shape)
        # Understanding path: pixels -> T patch features in the LLM's width.
        pix = torch.zeros(1, 3, v.image_size, v.image_size, device=device)
        shapes["image_features"] = tuple(model.model.get_image_features(pix).pooler_output.shape)
        # Decoding: T tokens -> pixels.
        shapes["decoded"] = tuple(model.decode_image_tokens(tokens).shape)
    expected = {
        "generation_logits": (1, T, K),
        "image_features": (1, T, D),
        "decoded": (1, v.image_size, v.image_size, 3),
    }
    for key, want in expected.items():
        if shapes[key] != want:
            raise ValueError(f"Janus shape check: {key} is {shapes[key]}, expected {want}")
    return shapes
