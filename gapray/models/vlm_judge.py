"""An external judge: any transformers image-text-to-text model asked the self-judge's question.

Where it sits: beside the model seam, not in it. `gapray diagnose` and `eval=judge` ask an
external vision-language model (Qwen2.5-VL, LLaVA, InternVL, another Janus, ...) the same
yes/no question the model asks itself, to tell weak generation (the judge rejects the image
too) from misunderstanding (the judge accepts it). Loaded with `AutoModelForImageTextToText` +
`AutoProcessor` from a local directory; the chat is built with the processor's own chat
template (one user turn: the image, then the question; generation prompt appended), and the
score is read from the next-token distribution at the answer position:

    S = P(yes) / (P(yes) + P(no)),  P(yes) = sum over the yes tokens ("yes", "Yes"), likewise no

    check_judge_dir("/ckpt/Qwen2.5-VL-7B-Instruct")     # JudgeError naming the directory if not a VLM
    judge = VlmJudge.from_pretrained("/ckpt/Qwen2.5-VL-7B-Instruct", device="cuda")
    verdict = judge.judge(images, prompts, question="Does this image show {prompt}? ...", threshold=0.5)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from gapray.models.base import DEFAULT_QUESTION, Judgement

YES_WORDS = ("yes", "Yes")
NO_WORDS = ("no", "No")


class JudgeError(ValueError):
    """A judge path that is missing or does not hold an image-text-to-text model; names it."""


def image_text_to_text_types() -> set[str]:
    """The model_type values transformers' AutoModelForImageTextToText can load."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return set(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)


def check_judge_dir(path: str | os.PathLike) -> None:
    """Refuse, naming the directory, anything AutoModelForImageTextToText would not load:
    a missing path, no config.json, or a model_type outside the image-text-to-text mapping.
    Reads config.json only (no weights), so it runs before any actor starts."""
    p = Path(path)
    if not p.is_dir():
        raise JudgeError(f"judge {path}: no such directory (a judge is a local save_pretrained directory)")
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise JudgeError(f"judge {path}: no config.json (not a save_pretrained model directory)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as err:
        raise JudgeError(f"judge {path}: config.json is malformed JSON: {err}") from None
    model_type = cfg.get("model_type")
    if model_type not in image_text_to_text_types():
        archs = cfg.get("architectures") or []
        raise JudgeError(
            f"judge {path}: not an image-text-to-text model (config.json model_type {model_type!r}, "
            f"architectures {archs}); a judge must load with AutoModelForImageTextToText"
        )
    if not any(p.glob("*.safetensors")) and not any(p.glob("*.bin")):
        raise JudgeError(f"judge {path}: no weight files (*.safetensors)")
    if not (p / "tokenizer_config.json").is_file():
        raise JudgeError(f"judge {path}: no tokenizer_config.json (save the processor with the model)")


def _single_token_ids(tokenizer, words: tuple[str, ...], field: str, where: str) -> list[int]:
    """Ids of the answer words that are one token each, with and without a leading space
    (SentencePiece/BPE vocabularies hold both forms)."""
    ids: set[int] = set()
    for w in words:
        for form in (w, " " + w):
            enc = tokenizer.encode(form, add_special_tokens=False)
            if len(enc) == 1 and tokenizer.decode(enc).strip() == w:
                ids.add(int(enc[0]))
    if not ids:
        raise JudgeError(f"judge {where}: none of {list(words)} is a single token of its tokenizer ({field})")
    return sorted(ids)


class VlmJudge:
    """An image-text-to-text model and its processor, scoring (image, prompt) pairs yes/no."""

    def __init__(self, model, processor, name: str = "judge"):
        self.model, self.processor, self.name = model, processor, name
        self.tokenizer = getattr(processor, "tokenizer", processor)
        # The answer is read at the last position of every row, so rows are padded on the left.
        self.tokenizer.padding_side = "left"
        if (
            getattr(processor, "chat_template", None) is None
            and getattr(self.tokenizer, "chat_template", None) is None
        ):
            raise JudgeError(f"judge {name}: its processor has no chat template")
        self.yes_ids = _single_token_ids(self.tokenizer, YES_WORDS, "yes words", name)
        self.no_ids = _single_token_ids(self.tokenizer, NO_WORDS, "no words", name)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, device: str = "cpu"
    ) -> VlmJudge:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        check_judge_dir(path)
        # An actor given several GPUs (eval.judge_gpus=2 for a 72B judge) spreads the layers over
        # all it sees; one GPU or the CPU holds the whole model.
        spread = device.startswith("cuda") and torch.cuda.device_count() > 1
        try:
            if spread:
                model = AutoModelForImageTextToText.from_pretrained(str(path), dtype=dtype, device_map="auto")
            else:
                model = AutoModelForImageTextToText.from_pretrained(str(path), dtype=dtype).to(device)
            model.eval()
            processor = AutoProcessor.from_pretrained(str(path))
        except Exception as err:  # the path's fault, whatever the loader raised
            raise JudgeError(f"judge {path}: cannot load: {type(err).__name__}: {err}") from err
        return cls(model, processor, name=str(path))

    @property
    def device(self) -> torch.device:
        """Where inputs go: the input embeddings' device (the first, when spread over GPUs)."""
        return self.model.get_input_embeddings().weight.device

    def chat_text(self, question: str) -> str:
        """One user turn (image, then the question) in the processor's own chat template, with
        the assistant's generation prompt: the answer is the next token."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    @torch.no_grad()
    def judge(
        self,
        images: list[Image.Image],
        prompts: list[str],
        *,
        question: str = DEFAULT_QUESTION,
        threshold: float = 0.5,
        batch_size: int = 8,
    ) -> Judgement:
        """S = P(yes)/(P(yes)+P(no)) for "does image i show prompts[i]?", decision S >= threshold."""
        if len(images) != len(prompts):
            raise ValueError(f"judge: {len(images)} images for {len(prompts)} prompts")
        if not prompts:
            raise ValueError("judge: nothing to judge (empty batch)")
        if "{prompt}" not in question:
            raise ValueError(f"judge: question template {question!r} has no {{prompt}} field")
        scores = []
        for i in range(0, len(images), batch_size):
            texts = [self.chat_text(question.format(prompt=p)) for p in prompts[i : i + batch_size]]
            imgs = [im.convert("RGB") for im in images[i : i + batch_size]]
            enc = self.processor(text=texts, images=imgs, padding=True, return_tensors="pt")
            enc = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in enc.items()}
            if "pixel_values" in enc and enc["pixel_values"].is_floating_point():
                enc["pixel_values"] = enc["pixel_values"].to(self.model.dtype)
            logits = self.model(**enc).logits[:, -1]  # (B, V): the answer position
            logp = F.log_softmax(logits.float(), dim=-1)
            lse_yes = logp[:, self.yes_ids].logsumexp(-1)
            lse_no = logp[:, self.no_ids].logsumexp(-1)
            scores.append(torch.sigmoid(lse_yes - lse_no))  # = P(yes) / (P(yes) + P(no))
        p_yes = torch.cat(scores).cpu()
        return Judgement(p_yes=p_yes, decision=p_yes >= threshold)
