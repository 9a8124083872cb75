"""Show-o checkpoint directories in the official layout: recognising one (`is_showo_checkpoint`),
checking it file by file (`check_showo_checkpoint_dir`), reading its weights and tokenizer, and
the one explicit mapping from gapray's parameter names to the official files' (`official_names`,
`load_official_state`). Writing one is `adapter.ShowoAdapter.save_pretrained`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from gapray.models.showo.layout import NEW_TOKENS, PAD_TOKEN, CheckpointError
from gapray.models.showo.network import ShowoUnified

ADAPTER_FILE = "gapray_adapter.json"
SHOWO_WEIGHT_FILES = ("pytorch_model.bin", "model.safetensors", "pytorch_model.safetensors")
VQ_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "diffusion_pytorch_model.safetensors")


# ---------------------------------------------------------------------- checkpoint directories
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise CheckpointError(f"{path}: missing") from err
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: malformed JSON: {err}") from err


def _first(p: Path, names: tuple[str, ...]) -> Path | None:
    return next((p / n for n in names if (p / n).is_file()), None)


def is_showo_checkpoint(path: str | os.PathLike) -> bool:
    """Whether a directory's config.json is Show-o's (_class_name "Showo")."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("_class_name") == "Showo"
    except json.JSONDecodeError:
        return False


def check_showo_checkpoint_dir(p: Path) -> dict[str, Path]:
    """The official layout, checked file by file (errors name what is missing):

        <dir>/config.json                        Show-o's (_class_name "Showo", vocab_size, ...)
        <dir>/pytorch_model.bin | model.safetensors   showo.model.*, showo.lm_head.*
        <dir>/llm/config.json + tokenizer files  microsoft/phi-1_5 (Show-o's llm_model_path)
        <dir>/vq/config.json + model.safetensors | pytorch_model.bin   showlab/magvitv2

    gapray_adapter.json may name other llm_path / vq_path directories (relative to <dir>)."""
    p = Path(p)
    if not p.is_dir():
        raise CheckpointError(f"model path {p}: does not exist or is not a directory")
    cfg = _read_json(p / "config.json")
    if cfg.get("_class_name") != "Showo":
        raise CheckpointError(
            f"model path {p}: config.json _class_name is {cfg.get('_class_name')!r}, not 'Showo'"
        )
    if cfg.get("w_clip_vit"):
        raise CheckpointError(
            f"model path {p}: w_clip_vit checkpoints (CLIP-ViT understanding) are not supported"
        )
    for key in ("vocab_size", "llm_vocab_size"):
        if key not in cfg:
            raise CheckpointError(f"model path {p}: config.json has no {key}")
    settings = _read_json(p / ADAPTER_FILE) if (p / ADAPTER_FILE).is_file() else {}
    llm = p / settings.get("llm_path", "llm")
    vq = p / settings.get("vq_path", "vq")
    weights = _first(p, SHOWO_WEIGHT_FILES)
    if weights is None:
        raise CheckpointError(f"model path {p}: no Show-o weights (one of {list(SHOWO_WEIGHT_FILES)})")
    if not (llm / "config.json").is_file():
        raise CheckpointError(
            f"model path {p}: no {llm.name}/config.json (the Phi-1.5 config, microsoft/phi-1_5)"
        )
    if not (llm / "tokenizer_config.json").is_file():
        raise CheckpointError(f"model path {p}: no {llm.name}/tokenizer_config.json (Phi-1.5's tokenizer)")
    if not (vq / "config.json").is_file():
        raise CheckpointError(
            f"model path {p}: no {vq.name}/config.json (the MAGVIT-v2 tokenizer, showlab/magvitv2)"
        )
    vq_weights = _first(vq, VQ_WEIGHT_FILES)
    if vq_weights is None:
        raise CheckpointError(
            f"model path {p}: no MAGVIT-v2 weights in {vq.name}/ (one of {list(VQ_WEIGHT_FILES)})"
        )
    return {"showo_weights": weights, "llm": llm, "vq": vq, "vq_weights": vq_weights}


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot read weights: {type(err).__name__}: {err}") from err


def official_names(model: ShowoUnified) -> dict[str, str]:
    """gapray parameter/buffer name -> (file, official name): "showo.X" -> Show-o's "showo.X";
    "vq_model.X" -> MAGVIT-v2's "X". The one place the mapping lives."""
    out = {}
    for name in model.state_dict():
        if name.startswith("showo."):
            out[name] = f"showo:{name}"
        elif name.startswith("vq_model."):
            out[name] = f"vq:{name[len('vq_model.') :]}"
        else:
            raise AssertionError(f"unmapped parameter {name}")
    return out


def load_official_state(model: ShowoUnified, showo_sd: dict, vq_sd: dict, where: str) -> None:
    """Copy both official state dicts into `model` (built on meta) by the explicit mapping;
    refuse, naming the keys, on any missing, unexpected or misshapen tensor."""
    files = {"showo": showo_sd, "vq": vq_sd}
    mapping = official_names(model)
    expected = {f: set() for f in files}
    for src in mapping.values():
        f, key = src.split(":", 1)
        expected[f].add(key)
    problems = []
    for f, sd in files.items():
        missing = sorted(expected[f] - set(sd))
        unexpected = sorted(set(sd) - expected[f])
        label = "Show-o weights" if f == "showo" else "MAGVIT-v2 weights"
        if missing:
            problems.append(f"{label}: missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        if unexpected:
            problems.append(
                f"{label}: unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}"
            )
    state = {}
    own = model.state_dict()
    for name, src in mapping.items():
        f, key = src.split(":", 1)
        if key not in files[f]:
            continue
        t = files[f][key]
        if tuple(t.shape) != tuple(own[name].shape):
            problems.append(
                f"{key}: shape {tuple(t.shape)} in the checkpoint, the model needs {tuple(own[name].shape)}"
            )
        state[name] = t
    if problems:
        raise CheckpointError(f"model path {where}: weights do not fit the model: " + "; ".join(problems))
    model.load_state_dict(state, strict=True, assign=True)
    # Non-persistent buffers (the rotary tables) are not in any file: build them on the CPU.
    rotary = model.showo.model.rotary_emb
    with torch.device("cpu"):
        model.showo.model.rotary_emb = type(rotary)(config=model.showo.config)
    left = [n for n, b in model.named_buffers() if b.is_meta] + [
        n for n, q in model.named_parameters() if q.is_meta
    ]
    if left:
        raise CheckpointError(f"model path {where}: tensors not loaded: {left[:10]}")


def _load_tokenizer(llm: Path):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(llm))
    except Exception as err:
        raise CheckpointError(f"{llm}: cannot load the tokenizer: {type(err).__name__}: {err}") from err
    # UniversalPrompting: [PAD] as pad, then the nine task/image tokens (no-ops when saved with them).
    tok.add_special_tokens({"pad_token": PAD_TOKEN})
    tok.add_tokens(list(NEW_TOKENS))
    return tok
