"""`ShowoAdapter`: one Show-o model, its tokenizer and sampler settings behind the model seam of
`models/base.py`: trainable sets and the frozen reference, the generation sequences and the
code-logits forward, decoding, the understanding path (`judge`), and saving / loading the
official checkpoint layout. Generation and log-probs come from `masking.MaskPrediction`; the
checkpoint directory's files are read by `checkpoint`."""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from transformers import PhiConfig

from gapray.models.base import DEFAULT_QUESTION, Judgement, TrainableMode, check_judge_args
from gapray.models.showo.checkpoint import (
    ADAPTER_FILE,
    _load_tokenizer,
    _load_weights,
    _read_json,
    check_showo_checkpoint_dir,
    load_official_state,
)
from gapray.models.showo.layout import (
    NEW_TOKENS,
    NUM_NEW_TOKENS,
    PAD_TOKEN,
    CheckpointError,
    MagvitConfig,
    SamplerSettings,
    ShowoLayout,
)
from gapray.models.showo.masking import MaskPrediction
from gapray.models.showo.network import ShowoUnified, _CodeLogits, omni_mask

FAMILY = "showo"
DEFAULT_JUDGE_TEMPLATE = "USER: \n{question} ASSISTANT:"
"""Show-o's understanding prompt without CLIP (inference_mmu.py), after <bos>."""
LORA_TARGETS = r".*showo\.model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|dense)|mlp\.(fc1|fc2))"


class ShowoAdapter(MaskPrediction):
    """One Show-o model, its tokenizer and sampler settings, behind the model seam."""

    family = FAMILY

    def __init__(
        self,
        model: ShowoUnified,
        tokenizer,
        layout: ShowoLayout,
        *,
        sampler: SamplerSettings = SamplerSettings(),  # noqa: B008 (a frozen dataclass, immutable)
        judge_template: str = DEFAULT_JUDGE_TEMPLATE,
        question: str = DEFAULT_QUESTION,
        yes_words: tuple[str, ...] = ("yes", "Yes", "\u0120yes", "\u0120Yes"),
        no_words: tuple[str, ...] = ("no", "No", "\u0120no", "\u0120No"),
        threshold: float = 0.5,
        extra_settings: dict | None = None,
    ):
        layout.check()
        sampler.check()
        self.model, self.tokenizer, self.layout, self.sampler = model, tokenizer, layout, sampler
        self.judge_template, self.question, self.threshold = judge_template, question, threshold
        self.extra_settings = dict(extra_settings or {})
        vq = model.vq_model.config
        if vq.codebook_size != layout.codebook_size:
            raise CheckpointError(
                f"MAGVIT-v2 has {vq.codebook_size} codes (z_channels {vq.z_channels}), Show-o config "
                f"codebook_size is {layout.codebook_size}"
            )
        if model.showo.config.vocab_size != layout.vocab_size:
            raise CheckpointError(
                f"Phi vocab_size {model.showo.config.vocab_size} != Show-o vocab_size {layout.vocab_size}"
            )
        self._check_tokenizer()
        self.num_image_tokens = layout.num_vq_tokens
        self.codebook_size = layout.codebook_size
        self.image_size = math.isqrt(layout.num_vq_tokens) * vq.downsample
        self.bos_id = self.tokenizer.bos_token_id
        self.eos_id = self.tokenizer.eos_token_id
        self.yes_ids = self._answer_ids(yes_words, "yes_words")
        self.no_ids = self._answer_ids(no_words, "no_words")
        self._yes_words, self._no_words = yes_words, no_words
        self.trainable_mode: TrainableMode | None = None
        self._peft = None
        self._teacher: _CodeLogits | None = None  # built by training_module()

    def _check_tokenizer(self) -> None:
        lay, tok = self.layout, self.tokenizer
        got = {PAD_TOKEN: tok.convert_tokens_to_ids(PAD_TOKEN)}
        got.update({t: tok.convert_tokens_to_ids(t) for t in NEW_TOKENS})
        want = {PAD_TOKEN: lay.pad_id, **{t: lay.token_id(t) for t in NEW_TOKENS}}
        bad = [f"{t} is {got[t]}, Show-o's layout needs {want[t]}" for t in want if got[t] != want[t]]
        if bad:
            raise CheckpointError("Show-o tokenizer ids do not fit the layout: " + "; ".join(bad))
        if tok.bos_token_id is None or tok.eos_token_id is None:
            raise CheckpointError("Show-o tokenizer: needs bos and eos tokens (<|sot|> / <|eot|>)")

    def _answer_ids(self, words: tuple[str, ...], field_name: str) -> list[int]:
        vocab = self.tokenizer.get_vocab()
        ids = sorted({vocab[w] for w in words if w in vocab})
        if not ids:
            raise CheckpointError(f"{field_name}: none of {list(words)} is a single token of this tokenizer")
        return ids

    # ------------------------------------------------------------------------------ parameters
    @property
    def device(self) -> torch.device:
        return self.model.device

    def set_trainable(self, mode: TrainableMode, *, lora_rank: int = 8, lora_alpha: float = 16) -> None:
        """Choose what trains. "llm": the Phi backbone (showo.model.*); "all": also the LM head (all but the frozen
        MAGVIT-v2); "lora": LoRA adapters on the layers' q/k/v/dense and fc1/fc2, the rest frozen."""
        if mode not in ("llm", "all", "lora"):
            raise ValueError(f"trainable mode must be one of llm, all, lora; got {mode!r}")
        if self._peft is not None and mode != "lora":
            raise ValueError("LoRA adapters are attached; merge them (save and reload) before another mode")
        if mode == "lora" and self._peft is None:
            from peft import LoraConfig, get_peft_model

            cfg = LoraConfig(
                r=lora_rank, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules=LORA_TARGETS
            )
            self._peft = get_peft_model(self.model, cfg)  # injects into self.model in place
        for name, p in self.model.named_parameters():
            if mode == "lora":
                p.requires_grad_("lora_" in name)
            elif mode == "llm":
                p.requires_grad_(name.startswith("showo.model."))
            else:
                p.requires_grad_(name.startswith("showo."))
        self.trainable_mode = mode

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def reference_mode(self):
        """Forwards inside run the frozen reference (LoRA adapters disabled); LoRA only."""
        if self._peft is None:
            raise ValueError("reference_mode needs LoRA adapters (set_trainable('lora'))")
        return self._peft.disable_adapter()

    # ------------------------------------------------------------------------------- sequences
    def _text_part(self, prompt: str) -> list[int]:
        """Show-o's t2i_gen_prompt text part: [PAD]* <|t2i|> <bos> ids <eos>, max_text_len + 1 long."""
        n = self.layout.max_text_len + 1
        ids = list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if not ids or ids[0] != self.bos_id:
            ids = [self.bos_id, *ids]
        ids = [self.layout.token_id("<|t2i|>"), *ids, self.eos_id]
        if len(ids) > n:
            ids = [*ids[: n - 1], self.eos_id]
        return [self.layout.pad_id] * (n - len(ids)) + ids

    def _gen_inputs(self, prompts: list[str], cfg: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Text parts (R', Lt) of the rows (cond rows, then the empty prompt's when cfg) and the
        omni mask (R', 1, L, L) of the full sequence; returns (text ids, mask, Lt)."""
        rows = [self._text_part(p) for p in prompts]
        if cfg:
            rows += [self._text_part("")] * len(prompts)
        text = torch.tensor(rows, device=self.device)
        Lt, T = text.shape[1], self.num_image_tokens
        is_pad = torch.cat(
            [text == self.layout.pad_id, text.new_zeros(len(rows), T + 2, dtype=torch.bool)], 1
        )
        image = torch.zeros_like(is_pad)
        image[:, Lt:] = True  # <|soi|> ... <|eoi|>
        return text, omni_mask(is_pad, None, image), Lt

    def _code_logits(
        self, text: torch.Tensor, image_ids: torch.Tensor, mask: torch.Tensor, Lt: int
    ) -> torch.Tensor:
        """(R', T, K) logits over the K codes at the T image positions of [text, soi, image, eoi]."""
        R = text.shape[0]
        soi = text.new_full((R, 1), self.layout.token_id("<|soi|>"))
        eoi = text.new_full((R, 1), self.layout.token_id("<|eoi|>"))
        return self.training_module()(torch.cat([text, soi, image_ids, eoi], dim=1), mask, Lt)

    # ------------------------------------------------------------------- what the learner wraps
    def training_module(self) -> nn.Module:
        """The code-logits forward as one module call, (ids, mask, Lt) -> (R, T, K): the module
        the learner shards with FSDP (its forward is the entry point) and every generation and
        log-prob forward goes through. Its child `model` is `self.model`."""
        if self._teacher is None:
            self._teacher = _CodeLogits(self.model, self.layout)
        return self._teacher

    def decoder_layers(self) -> list[nn.Module]:
        """The Phi decoder layers, in order (FSDP units, activation checkpointing)."""
        return list(self.model.showo.model.layers)

    def frozen_copy(self) -> ShowoAdapter:
        """A frozen reference: trainable parameters copied and frozen, every frozen one (the
        MAGVIT-v2, and under trainable=llm the LM head) the same tensor as here. Needs
        set_trainable first; not under LoRA (its reference is `reference_mode`)."""
        if self.trainable_mode is None or self._peft is not None:
            raise ValueError(
                "frozen_copy: call set_trainable('llm' | 'all') first (LoRA uses reference_mode)"
            )
        shared = {id(p): p for p in self.model.parameters() if not p.requires_grad}
        model = copy.deepcopy(self.model, memo=dict(shared))
        model.requires_grad_(False).eval()
        return ShowoAdapter(
            model,
            self.tokenizer,
            self.layout,
            sampler=self.sampler,
            judge_template=self.judge_template,
            question=self.question,
            yes_words=self._yes_words,
            no_words=self._no_words,
            threshold=self.threshold,
            extra_settings=self.extra_settings,
        )

    # -------------------------------------------------------------------------------- decoding
    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, batch_size: int = 64) -> list[Image.Image]:
        """(N, T) codes -> N RGB images through the MAGVIT-v2 decoder."""
        T = self.num_image_tokens
        if tokens.ndim != 2 or tokens.shape[1] != T:
            raise ValueError(f"decode: tokens must be (N, {T}), got {tuple(tokens.shape)}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.codebook_size):
            raise ValueError(f"decode: token ids must lie in [0, {self.codebook_size})")
        out = []
        for i in range(0, tokens.shape[0], batch_size):
            pix = self.model.vq_model.decode(tokens[i : i + batch_size].to(self.device).long())
            arr = (
                ((pix.float().clamp(-1, 1) + 1) * 127.5)
                .round()
                .to(torch.uint8)
                .permute(0, 2, 3, 1)
                .cpu()
                .numpy()
            )
            out.extend(Image.fromarray(np.ascontiguousarray(a)) for a in arr)
        return out

    def _pixels(self, images: list[Image.Image]) -> torch.Tensor:
        """Show-o's image_transform: shorter side to image_size (bilinear), centre crop, [-1, 1]."""
        s = self.image_size
        out = []
        for im in images:
            im = im.convert("RGB")
            w, h = im.size
            scale = s / min(w, h)
            im = im.resize((max(s, round(w * scale)), max(s, round(h * scale))), Image.BILINEAR)
            w, h = im.size
            left, top = (w - s) // 2, (h - s) // 2
            arr = np.asarray(im.crop((left, top, left + s, top + s)), dtype=np.float32) / 127.5 - 1
            out.append(torch.from_numpy(arr).permute(2, 0, 1))
        return torch.stack(out).to(self.device, self.model.dtype)

    @torch.no_grad()
    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        """N images -> (N, T) codes (MAGVIT-v2 encoder + LFQ)."""
        return self.model.vq_model.encode(self._pixels(images))

    # --------------------------------------------------------------------------- understanding
    @torch.no_grad()
    def judge(
        self, images: list[Image.Image], prompts: list[str], question: str | None = None, batch_size: int = 64
    ) -> Judgement:
        """P(yes)/(P(yes)+P(no)) for "does image i show prompts[i]?" via the understanding path."""
        q = question or self.question
        check_judge_args(images, prompts, q)
        scores = []
        for i in range(0, len(images), batch_size):
            codes = self.encode_images(images[i : i + batch_size])
            texts = [
                self.judge_template.format(question=q.format(prompt=p)) for p in prompts[i : i + batch_size]
            ]
            scores.append(self._yes_no(codes, texts))
        p_yes = torch.cat(scores).cpu()
        return Judgement(p_yes=p_yes, decision=p_yes >= self.threshold)

    def _yes_no(self, codes: torch.Tensor, texts: list[str]) -> torch.Tensor:
        h, last = self.understanding_hidden(codes, texts)
        logits = self.model.showo.lm_head(h[torch.arange(len(texts)), last]).float()  # (B, V)
        logp = F.log_softmax(logits, dim=-1)
        return torch.sigmoid(logp[:, self.yes_ids].logsumexp(-1) - logp[:, self.no_ids].logsumexp(-1))

    def understanding_hidden(
        self, codes: torch.Tensor, texts: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The understanding path's forward (what `judge` reads, and what a training loss on it
        must go through): rows <|mmu|> <|soi|> T image ids <|eoi|> <bos> text, right-padded,
        full attention over the image prefix, causal after. Returns the last hidden states
        (B, L, D) and each row's last real position (B,); image token t sits at position 2 + t.
        Differentiable (`judge` wraps it in no_grad)."""
        lay = self.layout
        T = self.num_image_tokens
        rows = []
        for c, text in zip(codes.tolist(), texts, strict=True):
            ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            rows.append(
                [
                    lay.token_id("<|mmu|>"),
                    lay.token_id("<|soi|>"),
                    *[x + lay.code_offset for x in c],
                    lay.token_id("<|eoi|>"),
                    self.bos_id,
                    *ids,
                ]
            )
        L = max(len(r) for r in rows)
        last = torch.tensor([len(r) - 1 for r in rows], device=self.device)
        ids = torch.tensor([r + [lay.pad_id] * (L - len(r)) for r in rows], device=self.device)  # right pad
        is_pad = torch.arange(L, device=self.device)[None] > last[:, None]
        eoi = torch.full((len(rows),), T + 2, device=self.device)  # full attention up to <|eoi|>
        h = self.model.showo.model(
            input_ids=ids, attention_mask=omni_mask(is_pad, eoi, None)
        ).last_hidden_state
        return h, last

    # ----------------------------------------------------------------------------- checkpoints
    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write the official layout (LoRA merged): config.json + pytorch_model.bin (Show-o),
        llm/ (Phi config + tokenizer), vq/ (MAGVIT-v2 config + weights), gapray_adapter.json."""
        path = Path(path)
        (path / "llm").mkdir(parents=True, exist_ok=True)
        (path / "vq").mkdir(parents=True, exist_ok=True)
        model = copy.deepcopy(self._peft).merge_and_unload() if self._peft is not None else self.model
        lay = self.layout
        showo_cfg = {
            "_class_name": "Showo",
            "w_clip_vit": False,
            "vocab_size": lay.vocab_size,
            "llm_vocab_size": lay.llm_vocab_size,
            "llm_model_path": "llm",
            "codebook_size": lay.codebook_size,
            "num_vq_tokens": lay.num_vq_tokens,
            "num_new_special_tokens": NUM_NEW_TOKENS,
            "mask_token_id": lay.mask_id,
        }
        (path / "config.json").write_text(json.dumps(showo_cfg, indent=2))
        sd = {k: v.detach().cpu().contiguous() for k, v in model.showo.state_dict().items()}
        torch.save({f"showo.{k}": v for k, v in sd.items()}, path / "pytorch_model.bin")
        model.showo.config.save_pretrained(path / "llm")
        self.tokenizer.save_pretrained(path / "llm")
        vq = model.vq_model
        vq_cfg = {
            "_class_name": "MAGVITv2",
            **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(vq.config).items()},
        }
        (path / "vq" / "config.json").write_text(json.dumps(vq_cfg, indent=2))
        from safetensors.torch import save_file

        save_file(
            {k: v.detach().cpu().contiguous() for k, v in vq.state_dict().items()},
            str(path / "vq" / "model.safetensors"),
        )
        settings = {
            "family": FAMILY,
            "max_text_len": lay.max_text_len,
            **asdict(self.sampler),
            "judge_template": self.judge_template,
            "question": self.question,
            "yes_words": list(self._yes_words),
            "no_words": list(self._no_words),
            "threshold": self.threshold,
            **self.extra_settings,
        }
        (path / ADAPTER_FILE).write_text(json.dumps(settings, indent=2))

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
        **sampler_overrides,
    ) -> ShowoAdapter:
        """Load a local checkpoint directory in the official layout (`check_showo_checkpoint_dir`).
        sampler_overrides (steps, schedule, mask_temperature, logprob_draws, logprob_seed; None
        = keep) win over the checkpoint's gapray_adapter.json."""
        p = Path(path)
        files = check_showo_checkpoint_dir(p)
        cfg = _read_json(p / "config.json")
        settings = _read_json(p / ADAPTER_FILE) if (p / ADAPTER_FILE).is_file() else {}
        layout = ShowoLayout(
            vocab_size=int(cfg["vocab_size"]),
            llm_vocab_size=int(cfg["llm_vocab_size"]),
            codebook_size=int(cfg.get("codebook_size", 8192)),
            num_vq_tokens=int(cfg.get("num_vq_tokens", 256)),
            max_text_len=int(settings.get("max_text_len", 128)),
        )
        layout.check()
        if "mask_token_id" in cfg and int(cfg["mask_token_id"]) != layout.mask_id:
            raise CheckpointError(
                f"{p}/config.json: mask_token_id {cfg['mask_token_id']} != vocab_size - 1 = {layout.mask_id}"
            )
        try:
            phi = PhiConfig.from_pretrained(str(files["llm"]))
        except Exception as err:
            raise CheckpointError(
                f"{files['llm']}: cannot read the Phi config: {type(err).__name__}: {err}"
            ) from err
        phi.vocab_size = layout.vocab_size  # Show-o's resize_token_embeddings(vocab_size)
        vq_cfg = MagvitConfig.from_json(_read_json(files["vq"] / "config.json"))
        vq_cfg.check()
        with torch.device("meta"):
            model = ShowoUnified(phi, vq_cfg)
        showo_sd = _load_weights(files["showo_weights"])
        vq_sd = _load_weights(files["vq_weights"])
        load_official_state(model, showo_sd, vq_sd, where=str(p))
        model = model.to(dtype).to(device).eval()
        tokenizer = _load_tokenizer(files["llm"])
        known = set(SamplerSettings.__dataclass_fields__)
        sampler = SamplerSettings(**{k: settings[k] for k in known if k in settings})
        sampler = replace(sampler, **{k: v for k, v in sampler_overrides.items() if v is not None})
        kwargs = {k: settings[k] for k in ("judge_template", "question", "threshold") if k in settings}
        for k in ("yes_words", "no_words"):
            if k in settings:
                kwargs[k] = tuple(settings[k])
        skip = known | {
            "family",
            "max_text_len",
            "judge_template",
            "question",
            "threshold",
            "yes_words",
            "no_words",
        }
        extra = {k: v for k, v in settings.items() if k not in skip}
        return cls(model, tokenizer, layout, sampler=sampler, extra_settings=extra, **kwargs)
