"""Verified checkpoints: save_pretrained weights + trainer state + a MANIFEST of hashes.

Where it sits: the learner calls `save_checkpoint` every few steps and at the end of a run; a
resumed run calls `latest_checkpoint` then `load_trainer_state`. Layout of one checkpoint:

    checkpoints/step_0000020/
        config.json, model.safetensors, ...   # written by the save_model callback (save_pretrained)
        trainer_state.pt                      # optimizer, curriculum, RNG states, step, version
        distributed/                          # (sharded learners) torch.distributed.checkpoint:
                                              #   trainable weights + AdamW state, one file per rank
        MANIFEST.json                         # {"files": [{"path", "size", "sha256"}, ...]}

Everything is written into `checkpoints/.tmp-step_0000020/` first, and the directory is renamed
into place only after MANIFEST.json is on disk, so a `step_*` directory is always complete; a
run killed mid-save leaves only a `.tmp-` directory, which readers skip and the next save
removes. Files damaged later (a full disk, a bad copy) are caught by `verify_checkpoint`.

    path = save_checkpoint(root / "checkpoints", 20, lambda d: model.save_pretrained(d), state)
    state = load_trainer_state(latest_checkpoint(root / "checkpoints"))

Several writers (the ranks of a sharded learner, each writing its own shard files into the same
directory on a shared filesystem) use the two halves: one process calls `begin_checkpoint`,
every rank writes under `tmp_checkpoint_dir(...)`, then that one process calls
`finish_checkpoint`, which hashes everything the ranks wrote into the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gapray.storage.atomic import atomic_write_text, fsync_dir, fsync_file

MANIFEST = "MANIFEST.json"
TRAINER_STATE = "trainer_state.pt"
DISTRIBUTED = "distributed"
"""The torch.distributed.checkpoint directory inside a checkpoint (sharded learner state)."""
CKPT_RE = re.compile(r"^step_(\d{7})$")
_CHUNK = 1 << 20


class CorruptCheckpointError(RuntimeError):
    """A checkpoint whose files do not match its MANIFEST.json.

    `path` is the checkpoint, `file` the bad file (relative to it), `reason` what is wrong and
    `previous_good` the newest earlier checkpoint that verifies (None if none does, or unknown).
    """

    def __init__(self, path: Path, file: str, reason: str, previous_good: Path | None = None):
        self.path, self.file, self.reason, self.previous_good = Path(path), file, reason, previous_good
        msg = f"corrupt checkpoint {_show(self.path)}: {file}: {reason}"
        if previous_good is not None:
            msg += (
                f"; the previous good checkpoint is {_show(previous_good)}; resume from it with "
                f"resume={previous_good} (or move {_show(self.path)} aside to resume from it "
                f"automatically)"
            )
        super().__init__(msg)

    def __reduce__(self):  # picklable across Ray / multiprocessing boundaries
        return (type(self), (self.path, self.file, self.reason, self.previous_good))


def _show(path: Path) -> str:
    """`checkpoints/step_0000010` style: the part a user recognises inside a run directory."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}" if path.parent.name else str(path)


def ckpt_name(step: int) -> str:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    return f"step_{step:07d}"


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints (renamed into place), oldest first; `.tmp-`/`.trash-` dirs skipped."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if p.is_dir() and CKPT_RE.match(p.name))


def checkpoint_step(path: Path) -> int:
    m = CKPT_RE.match(Path(path).name)
    if m is None:
        raise ValueError(f"{path} is not a checkpoint directory (step_NNNNNNN)")
    return int(m.group(1))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _trash(path: Path) -> None:
    # Rename first, then delete: a run killed mid-delete leaves a `.trash-` directory that no
    # reader mistakes for a (corrupt) checkpoint.
    trash = path.with_name(f".trash-{path.name}-{secrets.token_hex(4)}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def clean_leftovers(ckpt_dir: Path) -> None:
    """Remove `.tmp-step_*` / `.trash-*` directories left by a run killed mid-save or mid-delete."""
    if not ckpt_dir.is_dir():
        return
    for p in ckpt_dir.iterdir():
        if p.name.startswith((".tmp-step_", ".trash-")):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def _check_keep(keep) -> None:
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
        raise ValueError(f"keep must be an int >= 0 (0 = keep all), got {keep!r}")


def tmp_checkpoint_dir(ckpt_dir: Path, step: int) -> Path:
    """Where checkpoint `step` is written before it is renamed into place."""
    return Path(ckpt_dir) / f".tmp-{ckpt_name(step)}"


def begin_checkpoint(ckpt_dir: Path, step: int) -> Path:
    """Clear leftovers and create the empty temporary directory of checkpoint `step`."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    clean_leftovers(ckpt_dir)
    tmp = tmp_checkpoint_dir(ckpt_dir, step)
    tmp.mkdir()
    return tmp


def finish_checkpoint(ckpt_dir: Path, step: int, keep: int = 3) -> Path:
    """Hash every file written into the temporary directory into MANIFEST.json, rename it into
    place (replacing an existing `step`), and keep the newest `keep` (0 = all)."""
    _check_keep(keep)
    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / ckpt_name(step)
    tmp = tmp_checkpoint_dir(ckpt_dir, step)
    files = []
    for p in sorted(q for q in tmp.rglob("*") if q.is_file()):
        rel = p.relative_to(tmp).as_posix()
        if rel == MANIFEST:
            raise ValueError(f"save_model wrote {MANIFEST}, which is reserved for the checkpoint manifest")
        fsync_file(p)  # the callback's writes are not fsynced; the manifest must not outlive them
        files.append({"path": rel, "size": p.stat().st_size, "sha256": _sha256(p)})
    manifest = {"format": 1, "step": step, "files": files}
    atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    for d in sorted({p.parent for p in tmp.rglob("*")} | {tmp}, reverse=True):
        fsync_dir(d)

    if final.exists():
        _trash(final)
    os.replace(tmp, final)
    fsync_dir(ckpt_dir)

    # Rotation only after the new checkpoint is complete: a crash above never costs an old one.
    # keep=0 keeps all (run.keep_checkpoints=0); test it explicitly rather than lean on `[:-0]`.
    if keep > 0:
        for old in list_checkpoints(ckpt_dir)[:-keep]:
            _trash(old)
    return final


def save_checkpoint(
    ckpt_dir: Path,
    step: int,
    save_model: Callable[[Path], None],
    state: dict[str, Any],
    keep: int = 3,
) -> Path:
    """Write checkpoint `step` and keep the newest `keep` (0 = keep all); returns `ckpt_dir/step_NNNNNNN`.

    `save_model(dir)` writes the model into `dir` (e.g. `model.save_pretrained(dir)`), so the
    checkpoint loads with transformers alone; `state` goes to trainer_state.pt via torch.save.
    Saving a step that already exists (a resumed run redoing it) replaces that checkpoint.
    """
    import torch  # here, not at module top: reading metrics must not pay for importing torch

    _check_keep(keep)
    tmp = begin_checkpoint(ckpt_dir, step)
    save_model(tmp)
    torch.save(state, tmp / TRAINER_STATE)
    return finish_checkpoint(ckpt_dir, step, keep)


def verify_checkpoint(path: Path, hashes: bool = True) -> None:
    """Check every file against MANIFEST.json; raise `CorruptCheckpointError` on the first bad one.

    `hashes=False` checks presence and sizes only (catches truncation in milliseconds instead of
    reading gigabytes of weights).
    """
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        entries = manifest["files"]
    except FileNotFoundError:
        raise CorruptCheckpointError(path, MANIFEST, "missing manifest") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CorruptCheckpointError(path, MANIFEST, f"unreadable manifest ({e})") from None
    for entry in entries:
        rel = entry["path"]
        f = path / rel
        if not f.is_file():
            raise CorruptCheckpointError(path, rel, "missing file")
        size = f.stat().st_size
        if size != entry["size"]:
            kind = "truncated" if size < entry["size"] else "size mismatch"
            raise CorruptCheckpointError(path, rel, f"{kind}: {size} bytes, manifest says {entry['size']}")
        if hashes and _sha256(f) != entry["sha256"]:
            raise CorruptCheckpointError(path, rel, "sha256 mismatch")


def latest_checkpoint(ckpt_dir: Path, verify: bool = True) -> Path | None:
    """The newest complete checkpoint, or None if there is none.

    If the newest fails verification this raises instead of silently falling back (which would
    quietly throw away training); the error names the previous good checkpoint (`previous_good`).
    """
    ckpts = list_checkpoints(Path(ckpt_dir))
    if not ckpts:
        return None
    newest = ckpts[-1]
    if not verify:
        return newest
    try:
        verify_checkpoint(newest)
    except CorruptCheckpointError as err:
        previous = None
        for older in reversed(ckpts[:-1]):
            try:
                verify_checkpoint(older)
            except CorruptCheckpointError:
                continue
            previous = older
            break
        raise CorruptCheckpointError(err.path, err.file, err.reason, previous) from None
    return newest


def load_trainer_state(path: Path, trainable: bool = True) -> dict[str, Any]:
    """The `state` dict given to `save_checkpoint` (tensors on CPU). For a checkpoint with a
    distributed part, `state["trainable"]` (with trainable=True) holds its trainable weights
    read back whole, name -> tensor, whatever number of ranks wrote them."""
    import torch

    # weights_only=False: the state holds Python RNG state, numpy arrays and curriculum records,
    # which the safe unpickler rejects; the file is our own, written by save_checkpoint and
    # covered by the manifest's hash, so full unpickling is acceptable here.
    state = torch.load(Path(path) / TRAINER_STATE, map_location="cpu", weights_only=False)
    if trainable and "trainable" not in state and (Path(path) / DISTRIBUTED).is_dir():
        state["trainable"] = read_distributed(Path(path) / DISTRIBUTED, "model.")
    return state


def read_distributed(dcp_dir: Path, prefix: str) -> dict[str, Any]:
    """The tensors under `prefix` (e.g. "model.") of a torch.distributed.checkpoint directory,
    whole and on the CPU, in one process (no process group), keyed without the prefix."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = dcp.FileSystemReader(str(dcp_dir)).read_metadata().state_dict_metadata
    target = {
        key: torch.empty(tuple(m.size), dtype=m.properties.dtype)
        for key, m in meta.items()
        if key.startswith(prefix) and isinstance(m, TensorStorageMetadata)
    }
    # The flat keys DCP stores ("model.<name>") load into a nested {"model": {<name>: t}}.
    nested = {prefix.rstrip("."): {k[len(prefix) :]: t for k, t in target.items()}}
    dcp.load(nested, checkpoint_id=str(dcp_dir), no_dist=True)
    return nested[prefix.rstrip(".")]
