"""The vLLM generation backend: one in-process vLLM engine running gapray's Janus model.

Where it sits: `GenerationWorker` holds one of these when `generation.backend == "vllm"` (the
`hf` backend holds a `JanusAdapter`). It does two of the seam's jobs for the policy: sample image
tokens with CFG (same distribution as `JanusAdapter.generate`) and take versioned weight updates
in place, without restarting the engine.

    engine = VllmJanusEngine("/path/to/janus-checkpoint")
    tokens, logprobs = engine.generate(["a red circle"], seeds=[7], cfg_scale=5.0, temperature=1.0)
    engine.load_weights(version=1, tensors={"model.language_model.norm.weight": w, ...})
    engine.apply_bucket(bucket)    # one bucket of a streamed push, in place (version set by the caller)

Weight updates arrive in transformers' names (what the learner exports, LoRA A/B included; merged as
`sync.apply_update` merges them), one bucket at a time, and are loaded in place through vLLM's
layerwise reload without re-reading the checkpoint. vLLM re-packs each layer after loading (fused
q/k/v and gate/up, the CPU GEMM's packed weights), so a layer must be fed all of its tensors: for
each layer a bucket touches, the engine sends the bucket's tensors with the rest of that layer's
(the latest value it was sent, or, for a tensor never updated, the checkpoint's, read once and
kept), and only those layers; the others keep their packed weights. Names, shapes and finiteness
are checked before anything is touched, so a bad bucket raises `WeightUpdateError` and leaves the
engine as it was; a load that fails part-way puts the bucket's layers back.
`snapshot()` / `restore(saved)` undo later updates (only the layers that differ are reloaded),
for a caller that must keep the engine in step with another copy of the model
(GenerationWorker's transformers adapter).
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from gapray.models.janus import DEFAULT_GEN_TEMPLATE, gen_prompt_ids
from gapray.workers.sync import SyncManifest, lora_target

MAX_RETRIES = 3
PROMPT_BUDGET = 512
"""Prompt tokens (template included) the engine leaves room for beside the image tokens when
no max_model_len is given: a real Janus allows 16,384 positions, and vLLM would reserve KV cache
for a sequence that long, while a generation prompt is tens of tokens."""


class WeightUpdateError(ValueError):
    """A weight update the engine refused or could not load; the engine keeps its version."""


@dataclass(frozen=True)
class EngineWeights:
    """What an engine's weights are, as `snapshot()` saw them: the version and the updated
    tensors (checkpoint names, LoRA merged) and LoRA bases then held. Tensors are never
    modified in place, so holding references is enough."""

    version: int
    latest: dict[str, torch.Tensor]
    lora_base: dict[str, torch.Tensor]


def register() -> None:
    """Make gapray's Janus model known to vLLM (idempotent; also runs in vLLM's worker processes
    through the `vllm.general_plugins` entry point when the package declares it)."""
    from vllm import ModelRegistry

    from gapray.backends.vllm_janus import ARCH

    if ARCH not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCH, "gapray.backends.vllm_janus:GaprayJanusForImageGeneration")


class VllmJanusEngine:
    """generate(prompts, seeds, cfg_scale, temperature) -> tokens (+ log-probs);
    load_weights(version, tensors); version."""

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        dtype: str = "float32",
        max_num_seqs: int = 128,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.5,
        kv_cache_gb: float | None = None,
        enforce_eager: bool = True,
        tensor_parallel_size: int = 1,
        lora_scaling: float = 1.0,
    ):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process: starts in seconds
        from safetensors import safe_open
        from transformers import AutoTokenizer
        from vllm import LLM

        from gapray.backends.vllm_janus import CFGLogitsProcessor, id_layout, janus_hf_overrides

        register()
        self.path = Path(model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        settings_file = self.path / "gapray_adapter.json"
        settings = json.loads(settings_file.read_text()) if settings_file.exists() else {}
        self.template = settings.get("gen_template", DEFAULT_GEN_TEMPLATE)
        config = json.loads((self.path / "config.json").read_text())
        self.num_image_tokens = config["vision_config"]["num_image_tokens"]
        if max_model_len is None:  # prompt + T image tokens, within the checkpoint's positions
            positions = config["text_config"].get("max_position_embeddings")
            max_model_len = self.num_image_tokens + PROMPT_BUDGET
            max_model_len = min(max_model_len, positions) if positions else max_model_len
        self.lora_scaling = lora_scaling
        # Shapes of every generation weight in the checkpoint, to check updates against.
        from gapray.backends.vllm_janus import is_generation_weight

        self._files: dict[str, Path] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        for file in sorted(self.path.glob("*.safetensors")):
            with safe_open(str(file), "pt") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                    if is_generation_weight(name):
                        self._files[name] = file
                        self._shapes[name] = tuple(f.get_slice(name).get_shape())
        self._groups = layer_groups(self._shapes)  # name -> every checkpoint name of its vLLM layer
        self._latest: dict[str, torch.Tensor] = {}  # sent tensors (merged) + layer-mates read once
        self._lora_base: dict[str, torch.Tensor] = {}  # as sync.LoraMergeState.base
        self.max_num_seqs = max_num_seqs
        kwargs = {}
        if kv_cache_gb is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_gb * 2**30)
        self.llm = LLM(
            model=str(self.path),
            skip_tokenizer_init=True,
            hf_overrides=janus_hf_overrides,
            dtype=dtype,
            seed=0,
            enforce_eager=enforce_eager,
            tensor_parallel_size=tensor_parallel_size,
            # TP > 1: one process per GPU of the worker's bundle (the bundle holds that many)
            distributed_executor_backend="mp" if tensor_parallel_size > 1 else None,
            max_num_seqs=max_num_seqs,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            logits_processors=[CFGLogitsProcessor],
            logprobs_mode="processed_logprobs",
            enable_prefix_caching=True,
            **kwargs,
        )
        hf_config = self.llm.llm_engine.model_config.hf_config
        self.ids = id_layout(hf_config)  # codes [0, K), sentinel K, text ids from K + 1
        self.codebook, self.sentinel = self.ids.codebook, self.ids.sentinel
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        self.version = 0
        self._calls = itertools.count()
        self.retried_rows = 0  # rows regenerated because the scheduler split their CFG pair

    # ----------------------------------------------------------------------------- generation
    def generate(
        self,
        prompts: list[str],
        seeds: list[int],
        cfg_scale: float | None = 5.0,
        temperature: float = 1.0,
        return_logprobs: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """One image per prompt row (repeat prompts for n images) -> (N, T) long tokens and, with
        return_logprobs, the (N, T) log-probs of the drawn tokens under the CFG distribution at
        `temperature` (at 0: greedy, log-probs at temperature 1), as `JanusAdapter.generate`."""
        if len(prompts) != len(seeds):
            raise ValueError(f"generate: {len(prompts)} prompts for {len(seeds)} seeds")
        if cfg_scale is not None and not cfg_scale > 1:
            raise ValueError(f"cfg_scale: classifier-free guidance needs a scale > 1, got {cfg_scale}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        N, T = len(prompts), self.num_image_tokens
        for i, prompt in enumerate(prompts):
            # vLLM would stop such a request short of T tokens, which reads as a lost CFG pair.
            n = len(gen_prompt_ids(self.tokenizer, self.template, prompt)[0])
            if n + T > self.max_model_len:
                raise ValueError(
                    f"generate: prompt {i} ({prompt[:40]!r}...) is {n} tokens; with {T} image tokens "
                    f"that exceeds the engine's max_model_len {self.max_model_len}"
                )
        tokens = torch.empty(N, T, dtype=torch.long)
        logprobs = torch.empty(N, T, dtype=torch.float32)
        todo = list(range(N))
        # Waves of at most max_num_seqs requests, so every pair fits in the running batch.
        per_wave = max(1, self.max_num_seqs // (2 if cfg_scale is not None else 1))
        for _attempt in range(MAX_RETRIES + 1):
            broken = []
            for w in range(0, len(todo), per_wave):
                rows = todo[w : w + per_wave]
                broken += self._run_wave(rows, prompts, seeds, cfg_scale, temperature, tokens, logprobs)
            if not broken:
                break
            self.retried_rows += len(broken)
            todo = broken  # same seeds: the retry draws what an unsplit run would have drawn
        else:
            raise RuntimeError(f"vLLM CFG: rows {broken} lost their CFG partner {MAX_RETRIES + 1} times")
        return (tokens, logprobs) if return_logprobs else tokens

    def _run_wave(self, rows, prompts, seeds, cfg_scale, temperature, tokens, logprobs) -> list[int]:
        from vllm import SamplingParams

        from gapray.backends.vllm_janus import CFG_KEY

        requests, params = [], []
        call = next(self._calls)  # pair ids unique across calls and retries
        for r in rows:
            cond, uncond = gen_prompt_ids(self.tokenizer, self.template, prompts[r])
            variants = [("cond", cond), ("uncond", uncond)] if cfg_scale is not None else [(None, cond)]
            for role, ids in variants:
                requests.append({"prompt_token_ids": self.ids.prompt(ids)})
                params.append(
                    SamplingParams(
                        max_tokens=self.num_image_tokens,
                        temperature=temperature,
                        seed=int(seeds[r]),
                        logprobs=0,
                        ignore_eos=True,
                        detokenize=False,
                        stop_token_ids=[self.sentinel],
                        extra_args={CFG_KEY: (f"{call}:{r}", role, cfg_scale)} if role else None,
                    )
                )
        outs = self.llm.generate(requests, params, use_tqdm=False)
        step = 2 if cfg_scale is not None else 1
        broken = []
        for i, r in enumerate(rows):
            got = [o.outputs[0] for o in outs[i * step : (i + 1) * step]]
            ids = list(got[0].token_ids)
            if len(ids) != self.num_image_tokens or any(list(g.token_ids) != ids for g in got):
                broken.append(r)  # a split pair (sentinel) or rows that disagree
                continue
            tokens[r] = self.ids.codes(ids)
            logprobs[r] = torch.tensor([lp[t].logprob for t, lp in zip(ids, got[0].logprobs, strict=True)])
        return broken

    # ------------------------------------------------------------------------------- weights
    def _check_update(
        self, tensors: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Validate an update and turn it into full tensors in checkpoint names (LoRA merged);
        also returns the LoRA bases first seen in it. Changes nothing on the engine."""
        plain, lora = {}, {}
        new_base: dict[str, torch.Tensor] = {}
        for name, t in tensors.items():
            if not torch.is_tensor(t):
                raise WeightUpdateError(f"weight update: {name} is a {type(t).__name__}, not a tensor")
            if not torch.isfinite(t).all():
                raise WeightUpdateError(f"weight update: {name} has non-finite values")
            target = lora_target(name)
            if target is not None:
                lora.setdefault(target[0], {})[target[1]] = t
            elif name in self._shapes:
                if tuple(t.shape) != self._shapes[name]:
                    raise WeightUpdateError(
                        f"weight update: {name} has shape {tuple(t.shape)}, the model's is {self._shapes[name]}"
                    )
                plain[name] = t
            elif not name.startswith("model.") and not name.startswith("lm_head"):
                raise WeightUpdateError(f"weight update: the model has no parameter {name!r}")
            # else: a Janus tensor generation does not use (vision encoder, VQ, lm_head): skipped
        for prefix, parts in lora.items():
            name = prefix + ".weight"
            if name not in self._shapes or set(parts) != {"A", "B"}:
                raise WeightUpdateError(
                    f"weight update: LoRA {prefix}: needs A and B for a generation weight"
                )
            delta = (parts["B"].float() @ parts["A"].float()) * self.lora_scaling
            if tuple(delta.shape) != self._shapes[name]:
                raise WeightUpdateError(f"weight update: LoRA delta for {prefix} is {tuple(delta.shape)}")
            base = self._lora_base.get(name)
            if base is None:  # W0: the weight held when LoRA first arrived
                held = self._latest.get(name)
                base = new_base[name] = held if held is not None else self._checkpoint_tensor(name)
            plain[name] = (base.float() + delta).to(base.dtype)
        return plain, new_base

    def check_manifest(self, manifest: SyncManifest) -> None:
        """Check a push's names and shapes before any bucket arrives; changes nothing."""
        for spec in (t for b in manifest.buckets for t in b):
            if lora_target(spec.name) is not None:
                continue  # checked (with its pair) as the buckets arrive
            if spec.name in self._shapes:
                if spec.shape != self._shapes[spec.name]:
                    raise WeightUpdateError(
                        f"weight update: {spec.name} has shape {spec.shape}, the model's is {self._shapes[spec.name]}"
                    )
            elif not spec.name.startswith("model.") and not spec.name.startswith("lm_head"):
                raise WeightUpdateError(f"weight update: the model has no parameter {spec.name!r}")

    def _checkpoint_tensors(self, names: list[str]) -> dict[str, torch.Tensor]:
        """Read `names` from the checkpoint, each file opened once."""
        from safetensors import safe_open

        by_file: dict[Path, list[str]] = {}
        for n in names:
            by_file.setdefault(self._files[n], []).append(n)
        out = {}
        for file, members in by_file.items():
            with safe_open(str(file), "pt") as f:
                for n in members:
                    out[n] = f.get_tensor(n)
        return out

    def _checkpoint_tensor(self, name: str) -> torch.Tensor:
        return self._checkpoint_tensors([name])[name]

    def _layers_of(self, names) -> list[str]:
        """Every checkpoint name of each vLLM layer that one of `names` belongs to, in order."""
        want = {m for n in names for m in self._groups[n]}
        return [n for n in self._shapes if n in want]

    def _values(self, names: list[str], latest: dict[str, torch.Tensor]) -> tuple[list, dict]:
        """(name, tensor) for `names` from `latest`, the rest read from the checkpoint (returned
        too, to keep: never read twice)."""
        read = self._checkpoint_tensors([n for n in names if n not in latest])
        return [(n, latest[n] if n in latest else read[n]) for n in names], read

    def _load_layers(self, weights: list[tuple[str, torch.Tensor]]) -> None:
        """In-place reload of just these layers' tensors (complete layers only)."""
        if weights:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()  # cached prompt KV was computed with the old weights

    def apply_bucket(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load one bucket in place: the layers it touches, completed from what the engine holds.
        The version is the caller's to set. WeightUpdateError on a refused bucket (nothing
        touched) or a failed load (those layers put back)."""
        full, new_base = self._check_update(tensors)
        names = self._layers_of(full)
        before, read = self._values(names, self._latest)
        latest = {**self._latest, **read, **full}
        try:
            self._load_layers([(n, latest[n]) for n in names])
        except Exception as err:
            try:
                self._load_layers(before)
            except Exception as err2:
                raise RuntimeError(
                    f"vLLM engine: loading a bucket failed ({err}) and putting its layers back failed too ({err2})"
                ) from err2
            raise WeightUpdateError(f"weight update failed and its layers were put back: {err}") from err
        self._latest = latest
        self._lora_base = {**self._lora_base, **new_base}

    def load_weights(self, version: int, tensors: dict[str, torch.Tensor]) -> int:
        """Load a versioned update (one bucket) in place; returns the version now held. On a
        refused or failed update the previous weights stay and WeightUpdateError says why."""
        try:
            self.apply_bucket(tensors)
        except WeightUpdateError as err:
            raise WeightUpdateError(
                f"weight update to version {version} refused or rolled back; the engine stays at "
                f"version {self.version}: {err}"
            ) from err
        self.version = version
        return version

    def snapshot(self) -> EngineWeights:
        """The weights held now, for `restore` (references: tensors are never changed in place)."""
        return EngineWeights(self.version, dict(self._latest), dict(self._lora_base))

    def restore(self, saved: EngineWeights) -> None:
        """Go back to the weights of `saved` (undoing the updates loaded since): reloads the layers
        whose tensors differ, and the version becomes saved.version. RuntimeError if that fails."""
        differ = [n for n, t in self._latest.items() if saved.latest.get(n) is not t]
        names = self._layers_of(differ)
        try:
            weights, _ = self._values(names, saved.latest)
            self._load_layers(weights)
        except Exception as err:
            raise RuntimeError(
                f"vLLM engine: restoring version {saved.version} (from {self.version}) failed: {err}"
            ) from err
        self._latest, self._lora_base = dict(saved.latest), dict(saved.lora_base)
        self.version = saved.version


FUSED = {".q_proj.": ".qkv_proj.", ".k_proj.": ".qkv_proj.", ".v_proj.": ".qkv_proj.",
         ".gate_proj.": ".gate_up_proj.", ".up_proj.": ".gate_up_proj."}  # fmt: skip
"""vLLM's stacked parameters: checkpoint projections it fuses into one layer."""


def layer_groups(names) -> dict[str, tuple[str, ...]]:
    """name -> every name of the same vLLM layer: the module's weight and bias, and q/k/v or
    gate/up fused together. Hand-checked: q_proj.weight's group is its q, k and v weights."""

    def layer(name: str) -> str:
        module = name.rsplit(".", 1)[0] + "."
        for part, fused in FUSED.items():
            module = module.replace(part, fused)
        return module

    members: dict[str, list[str]] = {}
    for n in names:
        members.setdefault(layer(n), []).append(n)
    return {n: tuple(members[layer(n)]) for n in names}
